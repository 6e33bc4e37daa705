"""`python -m reproduce.compression`: bad input is one line and exit 2 (before any work), the paper scale
dry-runs anywhere, and a smoke run writes every table with sane values."""

import pandas as pd
import pytest
from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf

from common.claims import read_claims
from common.errors import UserError
from compression import study
from reproduce import app
from reproduce import compression as repro
from tests.conftest import ROOT, run_cli

CONF = ROOT / "reproduce" / "conf" / "compression"


def _cfg(*overrides):
    app._register_base("compression")
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        return compose(config_name="config", overrides=["scale=smoke", *overrides], return_hydra_config=False)


@pytest.mark.timeout(60)
@pytest.mark.parametrize(
    "override, message",
    [
        ("accuracy.compressors=[none,topk] compressors.topk.k=100000000", "larger than the tensor"),
        ("compressors.int4.bits=3", "bits must be one of 2, 4, 8"),
    ],
)
def test_bad_input_is_one_line_and_exit_2(override, message, tmp_path):
    r = run_cli(
        ["-m", "reproduce.compression", "scale=smoke", *override.split(), f"results_dir={tmp_path}"], timeout=60
    )
    assert r.returncode == 2, r.stderr[-2000:]
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and message in lines[0], r.stderr[-2000:]
    assert not (tmp_path / "compression" / "smoke").exists()  # nothing committed


@pytest.mark.parametrize(
    "override, message",
    [
        ("compressors.ae50.d=384", "below the hidden size|width d must be in"),
        ("accuracy.start_layer=2", "start_layer=2 is out of range"),
        ("bench.start_layer=5", "start_layer 5 is out of range"),
        ("compressors.randk.ratio=1.5", "compressors.randk: randk: ratio must be in"),
        ("accuracy.compressors=[none,zip]", "accuracy.compressors: unknown compressor label"),
        ("accuracy.layouts=[{tp:5}]", "heads do not split over tp=5"),
        ("compressors.ae50.shared=maybe", "shared"),
    ],
)
def test_bad_settings_raise_user_errors_before_any_work(override, message):
    with pytest.raises((UserError, Exception), match=message):
        study.StudyConfig.parse(OmegaConf.to_container(_cfg(override), resolve=True))


def test_scale_files_hold_only_what_differs():
    """mini is the base config itself; a smoke or paper key that equals the base's value would be a restatement."""
    import yaml

    base = yaml.safe_load((CONF / "config.yaml").read_text())
    assert set(yaml.safe_load((CONF / "scale" / "mini.yaml").read_text())) == {"scale"}
    for name in ("smoke", "paper"):
        scale = yaml.safe_load((CONF / "scale" / f"{name}.yaml").read_text())
        for block, values in scale.items():
            if block == "scale":
                continue
            assert block in base, (name, block)  # no key the base config does not know
            for key, value in values.items():
                assert key in base[block], (name, block, key)
                assert value != base[block][key], f"{name}.yaml restates {block}.{key}"


def test_paper_scale_dry_run(tmp_path, capsys):
    cfg = _cfg("scale=paper", "dry_run=true", f"results_dir={tmp_path}", "tracking.mode=disabled")
    assert app.execute("compression", cfg, repro.run) is None
    out = capsys.readouterr().out
    assert "bert-large-uncased" in out and "['TP4', 'TP2xPP2', 'TP4xPP4']" in out and "GLUE qnli" in out
    assert "bert-large-uncased (MISSING)" in out  # the data paths are checked
    assert not (tmp_path / "compression" / "paper").exists()


def test_message_table_reproduces_the_papers_byte_counts():
    msg = study.message_table(OmegaConf.to_container(_cfg().message, resolve=True)).set_index("compressor")
    assert msg.loc["ae100", "fewer_bytes"] == pytest.approx(10.24)
    assert msg.loc["int8", "vs_ring_all_reduce"] == pytest.approx(1.0, abs=1e-3)  # fp16 at TP=4: nothing saved


@pytest.mark.timeout(180)
def test_smoke_run_writes_every_table(tmp_path):
    r = run_cli(
        ["-m", "reproduce.compression", "scale=smoke", f"results_dir={tmp_path}", "tracking.mode=disabled"], timeout=170
    )
    assert r.returncode == 0, r.stderr[-3000:]
    out = tmp_path / "compression" / "smoke"
    md = (out / "tables.md").read_text()
    for name in ["throughput", "codec", "cost_model", "break_even", "accuracy", "message_bytes"]:
        assert (out / f"{name}.csv").exists(), name
    assert "(paper)" in md and (out / "figures" / "break_even.png").exists()
    claims = read_claims(out)
    assert [c.key for c in claims] == [
        "learning_keeps_accuracy",
        "early_layers_hurt",
        "break_even_bandwidth",
        "cost_model_predicts",
        "int8_all_gather_saves_nothing",
    ]
    assert claims[-1].verdict == "holds" and (out / "claims.md").exists()
    thr = pd.read_csv(out / "throughput.csv")
    assert len(thr) == 2 * 2 * 2 and (thr[thr.compressor == "none"].speedup == 1).all()
    mb = thr.set_index(["layout", "link", "compressor"]).MB_per_iter
    assert mb[("TP=2", "loopback", "int8")] < mb[("TP=2", "loopback", "none")] / 2  # bytes really shrink
    acc = pd.read_csv(out / "accuracy.csv")
    assert (
        list(acc.compressor) == ["none", "ae50", "ae50", "ae20", "int2", "ae100"] and acc.acc_mean.between(0, 1).all()
    )
    assert list(acc.group) == ["main", "main", "early", "high_ratio", "high_ratio", "ablation"]
    assert "ae20 at 19.2x fewer bytes (decides)" in claims[0].measured_evidence  # the study's ratio decides
