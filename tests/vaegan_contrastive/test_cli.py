"""`python -m reproduce.dcvae`: the smoke run writes Table 2, the ablation, faithfulness, the claims and the grids;
the paper path runs end to end on a CIFAR-10 folder and a random-weight Inception file the test writes; bad
input is one line and exit code 2."""

import json
import pickle

import numpy as np
import pytest

from tests.conftest import compose_work, run_cli
from vaegan_contrastive import study as S


def _as_dict(cfg):
    from omegaconf import OmegaConf

    return OmegaConf.to_container(cfg, resolve=True)


def _compose(overrides):
    return compose_work("dcvae", overrides)


def _as_torchrun_rank(monkeypatch, rank=0, world=1):
    """This process as rank `rank` of a torchrun job (its environment variables)."""
    from common.distributed import free_port

    env = dict(RANK=rank, WORLD_SIZE=world, LOCAL_RANK=rank, MASTER_ADDR="127.0.0.1", MASTER_PORT=free_port())
    for k, v in env.items():
        monkeypatch.setenv(k, str(v))


@pytest.mark.timeout(120)
def test_smoke_run_writes_tables_and_figures(tmp_path, one_torch_thread, monkeypatch):
    """The smoke run as the one rank of a torchrun job (training in this process, the config's `processes: 2`
    ignored), W&B offline: the training curves and the tables go to the job's one W&B run (a second run opened
    for the curves used to finish it, and the first table then failed: 'Run ... is finished')."""
    import pandas as pd
    import torch.distributed as dist

    from common.tracking import read_offline_run
    from reproduce import app, dcvae

    _as_torchrun_rank(monkeypatch)
    assert S.trains_here(S.build(_as_dict(_compose(["scale=smoke"]))))
    cfg = _compose(["scale=smoke", f"results_dir={tmp_path}", "tracking.mode=offline"])
    try:
        out = app.execute("dcvae", cfg, dcvae.run)
    finally:
        if dist.is_initialized():
            dist.destroy_process_group()
    (run_dir,) = (tmp_path / "wandb" / "wandb").glob("offline-run-*")  # one W&B run
    logged = read_offline_run(run_dir)
    assert logged["group"] == "dcvae/smoke" and logged["config"]["train"]["steps"] == 6
    assert [r["step"] for r in logged["history"] if "dcvae/d_loss" in r] == list(range(6))
    assert {"ablation", "table2", "faithfulness"} <= set(logged["tables"])
    assert (out / "figures" / "dcvae_samples_recon.png").stat().st_size > 0
    t2 = pd.read_csv(out / "table2.csv")
    assert list(t2["method"]) == ["DC-VAE sampling", "DC-VAE reconstruction"]
    assert t2["CIFAR-10 FID (paper)"].tolist() == [17.9, 21.4]  # carried from reproduce/data/dcvae_paper.yaml
    sanity = pd.read_csv(out / "feature_sanity.csv").set_index("check")
    fid = sanity["FID, LeNet features"]
    assert fid["real test images vs training images"] < fid["uniform noise vs training images"]
    assert "FID, LeNet features" in (out / "tables.md").read_text()
    faithful = pd.read_csv(out / "faithfulness.csv")
    assert list(faithful["variant"]) == ["DC-VAE"] and 0 <= faithful["recon nearest its own input"].iloc[0] <= 1
    claims = json.loads((out / "claims.json").read_text())["claims"]
    verdicts = {c["key"]: c["verdict"] for c in claims}
    assert verdicts["dcvae_best_sampling_fid"] == "not measured at this scale"  # one variant: no comparison
    assert verdicts["faithful_class"] in ("holds", "does not hold")
    assert (out / "figures" / "training_curves.png").stat().st_size > 0


def test_spawned_ranks_log_their_curves_in_tracking_dir_with_the_config(tmp_path):
    """With spawned ranks (smoke: 2 processes) their rank 0 opens the W&B run of the curves: in `tracking.dir`
    (not always RESULTS/wandb) and carrying the run's resolved config, like the job's own run."""
    from types import SimpleNamespace

    from reproduce import dcvae

    cfg = _as_dict(_compose(["scale=smoke", f"results_dir={tmp_path}", f"tracking.dir={tmp_path / 'wb'}"]))
    study = S.build(cfg)
    assert not S.trains_here(study)
    kw = dcvae.training_tracking(SimpleNamespace(scale="smoke", tracker=None), cfg, study)
    assert kw["dir"] == str(tmp_path / "wb") and kw["group"] == "dcvae/smoke" and kw["mode"] == "offline"
    assert kw["config"]["train"]["steps"] == 6 and kw["config"]["tracking"]["dir"] == str(tmp_path / "wb")


@pytest.mark.parametrize(
    "overrides,message",
    [
        (["train.queue_size=100"], "queue size 100 is not divisible by the global batch 16"),
        (["data.resolution=30"], "unsupported resolution 30"),
        (["variants=[gan]"], "unknown variants"),
        (["train.batch_size=15"], "not divisible by 2 processes"),
        # checked before anything is spawned (a ZeroDivisionError, a RuntimeError in the spawned rank before)
        (["train.batch_size=0"], r"train.batch_size must be >= 1, got 0"),
        (["train.queue_size=-64"], r"train.queue_size must be >= 1, got -64"),
        (["train.log_every=0"], r"train.log_every must be >= 1, got 0"),
        (["train.ema_decay=1.5"], r"train.ema_decay must be in \[0, 1\]"),
        (["data.test_size=5"], r"data.test_size must be >= 10"),
        (["eval.n_samples=0"], r"eval.n_samples must be >= 1"),
        (["processes=0"], r"^processes must be >= 1"),
    ],
)
def test_bad_config_is_a_user_error(overrides, message):
    from common.errors import UserError

    with pytest.raises(UserError, match=message):
        S.build(_as_dict(_compose(["scale=smoke", *overrides])))


@pytest.mark.timeout(60)
def test_cli_bad_input_is_one_line_exit_2():
    paper = run_cli(["-m", "reproduce.dcvae", "scale=paper", "dry_run=true"], timeout=60)
    assert paper.returncode == 2, paper.stderr
    assert paper.stderr.strip().splitlines()[-1] == (
        "error: dataset cifar10 needs a data root: pass data.root=/path/to/cifar10"
    )


def test_paper_dry_run_checks_paths_and_prints_the_plan(tmp_path, capsys):
    from common.errors import UserError
    from reproduce import app, dcvae

    weights = tmp_path / "inception.pth"
    cfg = _compose(
        [
            "scale=paper",
            "dry_run=true",
            f"data.root={tmp_path}",
            f"eval.inception_weights={weights}",
            f"results_dir={tmp_path / 'results'}",
            "tracking.mode=disabled",
        ]
    )
    with pytest.raises(UserError, match="Inception weights file not found"):
        app.execute("dcvae", cfg, dcvae.run)
    weights.write_bytes(b"")
    assert app.execute("dcvae", cfg, dcvae.run) is None
    out = capsys.readouterr().out
    assert "625000 iterations, global batch 64" in out and "queue 8192" in out
    assert not (tmp_path / "results" / "dcvae" / "paper").exists()  # a dry run writes nothing


def test_dataset_presets_compose(tmp_path):
    st = S.build(_as_dict(_compose(["scale=paper", "+preset=stl10", f"data.root={tmp_path}"])))
    assert (st.data.name, st.model.resolution, st.model.channels) == ("stl10", 48, 3)
    st = S.build(_as_dict(_compose(["scale=paper", "+preset=celebahq256"])))
    assert (st.data.name, st.model.resolution, st.runs["dcvae"].batch_size) == ("celebahq", 256, 16)


def _write_cifar10(root, n_train=64, n_test=32):
    """A tiny CIFAR-10 in torchvision's `cifar-10-batches-py` pickle layout (random pixels, real format)."""
    d = root / "cifar-10-batches-py"
    d.mkdir(parents=True)
    rng = np.random.default_rng(0)

    def batch(n):
        return {"data": rng.integers(0, 256, (n, 3072), dtype=np.uint8), "labels": list(rng.integers(0, 10, n))}

    for i in range(1, 6):
        (d / f"data_batch_{i}").write_bytes(pickle.dumps(batch(n_train // 5 + (i <= n_train % 5))))
    (d / "test_batch").write_bytes(pickle.dumps(batch(n_test)))
    (d / "batches.meta").write_bytes(pickle.dumps({"label_names": [f"c{i}" for i in range(10)]}))


@pytest.mark.timeout(180)
def test_paper_path_runs_end_to_end_on_written_inputs(tmp_path, one_torch_thread):
    """scale=paper for real (not a dry run): CIFAR-10 read by torchvision from a folder this test writes, FID/IS
    through torch-fidelity's InceptionV3 loaded from a random-weight file, a tiny model, a few iterations."""
    import pandas as pd

    from reproduce import app, dcvae
    from vaegan_contrastive.evaluate import write_random_inception_weights

    _write_cifar10(tmp_path / "cifar")
    weights = write_random_inception_weights(tmp_path / "inception.pth")
    cfg = _compose(
        [
            "scale=paper",
            f"data.root={tmp_path / 'cifar'}",
            f"eval.inception_weights={weights}",
            f"results_dir={tmp_path / 'results'}",
            "tracking.mode=disabled",
            "train.steps=3",
            "train.batch_size=8",
            "train.gen_batch_size=8",
            "train.queue_size=16",
            "train.n_critic=2",
            "train.num_workers=0",
            "train.warmup_steps=1",
            "train.log_every=1",
            "model.latent_dim=8",
            "model.enc_ch=8",
            "model.dec_ch=8",
            "model.disc_ch=8",
            "eval.n_samples=10",
            "eval.n_reference=16",
            "eval.n_recon=10",
            "eval.grid=4",
            "eval.inception_features=64",
        ]
    )  # the 64-d layer: FID of 2048-d features takes minutes here
    out = app.execute("dcvae", cfg, dcvae.run)
    assert out == tmp_path / "results" / "dcvae" / "paper"
    t2 = pd.read_csv(out / "table2.csv")
    assert list(t2["method"]) == ["DC-VAE sampling", "DC-VAE reconstruction"]
    assert "cifar10 FID, Inception features" in t2.columns and t2["cifar10 FID, Inception features"].notna().all()
    assert "cifar10 IS std" in t2.columns
    assert json.loads((out / "claims.json").read_text())["scale"] == "paper"


def test_checkpoints_are_on_by_default():
    train = _compose(["scale=mini", "results_dir=/r"]).train
    assert (train.checkpoint_dir, train.checkpoint_every, train.resume) == ("/r/checkpoints/dcvae/mini", 500, True)
    assert not train.keep_checkpoints


@pytest.mark.timeout(120)
def test_dev_ablation_mode_writes_beside_the_results_and_the_claims_read_it(tmp_path, capsys, caplog, monkeypatch):
    """Also: a job killed while training resumes from its checkpoint when run again (by default), and removes
    the checkpoints once its results are written."""
    import logging

    import pandas as pd

    from reproduce import app, dcvae
    from vaegan_contrastive.train import Trainer

    base = ["scale=smoke", "processes=1", f"results_dir={tmp_path}", "tracking.mode=disabled"]
    setting = "ablation.settings=[{label: strong KL, train: {kl_weight: 0.001}, variants: [dcvae]}]"
    step = Trainer.step

    def killed_at_4(self, it, x):
        if it == 4:
            raise KeyboardInterrupt  # the job killed after its checkpoint at iteration 3 (smoke: every 3)
        return step(self, it, x)

    monkeypatch.setattr(Trainer, "step", killed_at_4)
    with pytest.raises(KeyboardInterrupt):
        app.execute("dcvae", _compose([*base, "ablation.run=true", setting]), dcvae.run)
    monkeypatch.undo()
    ckpts = tmp_path / "checkpoints" / "dcvae" / "smoke"
    assert [p.name for p in ckpts.glob("*/*.pt")] == ["ckpt_00000003.pt"] and not (tmp_path / "dcvae").exists()
    with caplog.at_level(logging.INFO, logger="vaegan_contrastive.train"):
        out = app.execute("dcvae", _compose([*base, "ablation.run=true", setting]), dcvae.run)
    assert f"resumed from {ckpts}/dcvae-" in caplog.text and "at iteration 3 of 6" in caplog.text
    assert not ckpts.exists()  # removed once the results are written
    assert out == tmp_path / "dcvae" / "smoke-dev-ablation" and not (tmp_path / "dcvae" / "smoke").exists()
    table = pd.read_csv(out / "dev_ablation.csv")
    assert table[["setting", "overrides", "variant"]].values.tolist() == [
        ["strong KL", "train.kl_weight=0.001", "DC-VAE"]
    ]
    assert "dev split" in (out / "tables.md").read_text()  # evaluated on dev whatever data.eval_split says
    # run again: the setting is carried over, nothing is trained
    capsys.readouterr()
    app.execute("dcvae", _compose([*base, "ablation.run=true", setting]), dcvae.run)
    printed = capsys.readouterr().out
    assert "1 carried over" in printed and "0 trainings" in printed
    # a plain run of the same configuration finds it; another configuration does not cite it
    found, source = dcvae.read_ablation(tmp_path / "dcvae" / "smoke", _as_dict(_compose(base)))
    assert found["strong KL"]["dcvae"]["recon FID"] == pytest.approx(table["recon FID, LeNet features"][0])
    assert source == "smoke-dev-ablation/dev_ablation.csv"
    other, why = dcvae.read_ablation(tmp_path / "dcvae" / "smoke", _as_dict(_compose([*base, "train.steps=7"])))
    assert other is None and "another configuration" in why
    # checkpointing shapes no model: a dev ablation saved before it was on by default is still cited
    saved = json.loads((out / "dev_ablation.json").read_text())
    saved["base"]["train"] |= {"checkpoint_dir": None, "checkpoint_every": 0, "resume": False}
    del saved["base"]["data"]["split_seed"]  # and before data.split_seed: split by `seed` (0 here)
    (out / "dev_ablation.json").write_text(json.dumps(saved))
    smoke = tmp_path / "dcvae" / "smoke"
    assert dcvae.read_ablation(smoke, _as_dict(_compose(base)))[0] is not None
    assert dcvae.read_ablation(smoke, _as_dict(_compose([*base, "data.split_seed=1"])))[0] is None
    assert S.build(_as_dict(_compose([*base, "seed=1"]))).data.split_seed == 0
