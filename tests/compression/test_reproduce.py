"""`python -m reproduce.compression`: bad input is one line and exit 2 (before any work), the paper scale
dry-runs anywhere, and a smoke run writes every table with sane values."""

import pandas as pd
import pytest
from hydra import compose, initialize_config_dir

from common.errors import UserError
from reproduce import app
from reproduce import compression as repro
from tests.conftest import ROOT, run_cli

CONF = ROOT / "reproduce" / "conf" / "compression"


def _cfg(*overrides):
    app._register_base()
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        return compose(config_name="config", overrides=["scale=smoke", *overrides], return_hydra_config=False)


@pytest.mark.timeout(60)
@pytest.mark.parametrize("override, message", [
    ("compressors.topk.k=100000000", "larger than the tensor"),
    ("compressors.int4.bits=3", "bits must be one of 2, 4, 8"),
])
def test_bad_input_is_one_line_and_exit_2(override, message, tmp_path):
    r = run_cli(["-m", "reproduce.compression", "scale=smoke", override, f"results_dir={tmp_path}"], timeout=60)
    assert r.returncode == 2, r.stderr[-2000:]
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and message in lines[0], r.stderr[-2000:]
    assert not (tmp_path / "compression" / "smoke").exists()  # nothing committed


@pytest.mark.parametrize("override, message", [
    ("compressors.ae50.d=384", "below the hidden size|width d must be in"),
    ("accuracy.start_layer=2", "start_layer=2 is out of range"),
    ("bench.start_layer=5", "start_layer 5 is out of range"),
    ("compressors.randk.ratio=1.5", "ratio must be in"),
])
def test_bad_settings_raise_user_errors_before_any_work(override, message):
    cfg = _cfg(override)
    with pytest.raises(UserError, match=message):
        repro.accuracy_settings(cfg)
        repro.bench_config(cfg)


def test_paper_scale_dry_run(tmp_path, capsys):
    cfg = _cfg("scale=paper", "dry_run=true", f"results_dir={tmp_path}", "tracking.mode=disabled")
    assert app.execute("compression", cfg, repro.run) is None
    out = capsys.readouterr().out
    assert "bert-large-uncased" in out and "{'tp': 2, 'pp': 2}" in out and "4 GPUs" in out
    assert not (tmp_path / "compression" / "paper").exists()
    with pytest.raises(UserError, match="needs 4 GPUs"):
        app.execute("compression", _cfg("scale=paper", f"results_dir={tmp_path}", "tracking.mode=disabled"), repro.run)


def test_message_table_reproduces_the_papers_byte_counts():
    msg = repro.message_table(_cfg()).set_index("compressor")
    assert msg.loc["ae100", "fewer_bytes"] == pytest.approx(10.24)
    assert msg.loc["int8", "vs_ring_all_reduce"] == pytest.approx(1.0, abs=1e-3)  # fp16 at TP=4: nothing saved


@pytest.mark.timeout(120)
def test_smoke_run_writes_every_table(tmp_path):
    r = run_cli(["-m", "reproduce.compression", "scale=smoke", f"results_dir={tmp_path}", "tracking.mode=disabled"],
                timeout=110)
    assert r.returncode == 0, r.stderr[-3000:]
    out = tmp_path / "compression" / "smoke"
    md = (out / "tables.md").read_text()
    for name in ["throughput", "codec", "cost_model", "break_even", "accuracy", "message_bytes", "findings"]:
        assert (out / f"{name}.csv").exists(), name
    assert "(paper)" in md and (out / "figures" / "break_even.png").exists()
    thr = pd.read_csv(out / "throughput.csv")
    assert len(thr) == 2 * 2 * 2 and (thr[thr.compressor == "none"].speedup == 1).all()
    mb = thr.set_index(["layout", "link", "compressor"]).MB_per_iter
    assert mb[("TP=2", "loopback", "int8")] < mb[("TP=2", "loopback", "none")] / 2  # bytes really shrink
    acc = pd.read_csv(out / "accuracy.csv")
    assert list(acc.compressor) == ["none", "ae50", "ae50"] and acc.acc_mean.between(0, 1).all()
