"""`python -m reproduce` ends with one table of every work's claims, read from results/<work>/<scale>/claims.json;
a work that wrote none shows as "no claims report", a failed one says so (its old report is not shown)."""

import reproduce.__main__ as entry
from common.claims import Claim, decide, write_claims
from common.results import ResultWriter


def _write(results, work, scale, claims):
    with ResultWriter(results / work / scale) as out:
        write_claims(out, claims, work, scale)
        out.commit({}, work=work, scale=scale)


CLAIM = Claim(
    key="k",
    claim="distillation beats training alone",
    paper_evidence="Table 2",
    measured_evidence="73.1 vs 50.0",
    verdict=decide(True),
)


def test_summary_reads_every_claims_report(tmp_path):
    _write(tmp_path, "mpcformer", "mini", [CLAIM, Claim("k2", "faster under MPC", "Fig. 4", "-", decide(None))])
    _write(tmp_path, "amp", "mini", [CLAIM])  # stale: amp fails below, so its old report must not be shown
    table = entry.claims_summary(["dcvae", "amp", "mpcformer"], tmp_path, "mini", failed={"amp": 1})
    assert table.to_dict("records") == [
        {"work": "dcvae", "scale": "mini", "claim": "-", "verdict": "no claims report"},
        {"work": "amp", "scale": "mini", "claim": "-", "verdict": "run failed (exit 1); claims not read"},
        {"work": "mpcformer", "scale": "mini", "claim": "distillation beats training alone", "verdict": "holds"},
        {"work": "mpcformer", "scale": "mini", "claim": "faster under MPC", "verdict": "not measured at this scale"},
    ]


def test_main_prints_progress_and_the_summary(tmp_path, monkeypatch, capsys):
    _write(tmp_path, "compression", "smoke", [CLAIM])
    calls = []

    def fake_call(cmd):
        calls.append(cmd)
        return 0

    monkeypatch.setattr(entry.subprocess, "call", fake_call)
    monkeypatch.setattr(entry, "implemented", lambda w: True)
    rc = entry.main(["compression", "dcvae", "scale=smoke", f"results_dir={tmp_path}"])
    out = capsys.readouterr().out
    assert rc == 0 and [c[2] for c in calls] == ["reproduce.compression", "reproduce.dcvae"]
    assert "=== [1/2] reproduce.compression" in out and "=== [2/2] reproduce.dcvae: ok" in out
    assert "| compression | smoke | distillation beats training alone | holds |" in out
    assert "| dcvae | smoke | - | no claims report |" in out
    written = (tmp_path / "claims_smoke.md").read_text()
    assert "no claims report" in written
