"""`python -m reproduce.dcvae`: the smoke run writes Table 2, the ablation and the grids; bad input is one
line and exit code 2."""

import pytest

from tests.conftest import run_cli


def _compose(overrides):
    from hydra import compose, initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra

    from reproduce import app

    app._register_base()
    GlobalHydra.instance().clear()
    try:
        with initialize_config_dir(config_dir=str(app.CONF_ROOT / "dcvae"), version_base="1.3"):
            return compose(config_name="config", overrides=overrides)
    finally:
        GlobalHydra.instance().clear()


@pytest.mark.timeout(120)
def test_smoke_run_writes_tables_and_figures(tmp_path):
    import pandas as pd

    from reproduce import app, dcvae

    # one in-process rank keeps this test fast; test_train and test_negatives spawn real ranks
    cfg = _compose(["scale=smoke", "processes=1", f"results_dir={tmp_path}", "tracking.mode=disabled"])
    out = app.execute("dcvae", cfg, dcvae.run)
    assert (out / "figures" / "dcvae_samples_recon.png").stat().st_size > 0
    t2 = pd.read_csv(out / "table2.csv")
    assert list(t2["method"]) == ["DC-VAE sampling", "DC-VAE reconstruction"]
    assert t2["CIFAR-10 FID (paper)"].tolist() == [17.9, 21.4]  # carried from reproduce/data/dcvae_paper.yaml
    sanity = pd.read_csv(out / "feature_sanity.csv").set_index("check")
    fid = sanity["FID, LeNet features"]
    assert fid["real test images vs training images"] < fid["uniform noise vs training images"]
    assert "FID, LeNet features" in (out / "tables.md").read_text()


@pytest.mark.parametrize("overrides,message", [
    (["train.queue_size=100"], "queue size 100 is not divisible by the global batch 16"),
    (["data.resolution=30"], "unsupported resolution 30"),
    (["variants=[gan]"], "unknown variants"),
    (["train.batch_size=15"], "not divisible by 2 processes"),
])
def test_bad_config_is_a_user_error(overrides, message):
    from common.errors import UserError
    from reproduce import dcvae

    with pytest.raises(UserError, match=message):
        dcvae.configs(_compose(["scale=smoke", *overrides]))


@pytest.mark.timeout(60)
def test_cli_bad_input_is_one_line_exit_2():
    paper = run_cli(["-m", "reproduce.dcvae", "scale=paper", "dry_run=true"], timeout=60)
    assert paper.returncode == 2, paper.stderr
    assert paper.stderr.strip().splitlines()[-1] == (
        "error: dataset cifar10 needs a data root: pass data.root=/path/to/cifar10")


def test_paper_dry_run_checks_paths_and_prints_the_plan(tmp_path, capsys):
    from common.errors import UserError
    from reproduce import app, dcvae

    weights = tmp_path / "inception.pth"
    cfg = _compose(["scale=paper", "dry_run=true", f"data.root={tmp_path}", f"eval.inception_weights={weights}",
                    f"results_dir={tmp_path / 'results'}", "tracking.mode=disabled"])
    with pytest.raises(UserError, match="Inception weights file not found"):
        app.execute("dcvae", cfg, dcvae.run)
    weights.write_bytes(b"")
    assert app.execute("dcvae", cfg, dcvae.run) is None
    out = capsys.readouterr().out
    assert "625000 iterations, global batch 64" in out and "queue 8192" in out
    assert not (tmp_path / "results" / "dcvae" / "paper").exists()  # a dry run writes nothing


def test_dataset_presets_compose(tmp_path):
    from reproduce import dcvae

    data_cfg, model_cfg, runs = dcvae.configs(_compose(["scale=paper", "+preset=stl10", f"data.root={tmp_path}"]))
    assert (data_cfg.name, model_cfg.resolution, model_cfg.channels) == ("stl10", 48, 3)
    data_cfg, model_cfg, runs = dcvae.configs(_compose(["scale=paper", "+preset=celebahq256"]))
    assert (data_cfg.name, model_cfg.resolution, runs["dcvae"].batch_size) == ("celebahq", 256, 16)
