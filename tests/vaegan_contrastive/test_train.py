"""Data-parallel training: replicas and queues stay identical across ranks, exact resume, the data split,
and what each ablation variant trains."""

import pytest
import torch
from torch.utils.data import TensorDataset

from common.distributed import run_processes
from common.errors import UserError
from vaegan_contrastive.data import StepBatches
from vaegan_contrastive.models import ModelConfig
from vaegan_contrastive.train import TrainConfig, Trainer, train

MC = ModelConfig(resolution=32, channels=1, latent_dim=4, enc_ch=4, dec_ch=4, disc_ch=4, cont_dim=4)


def _tiny(variant="dcvae", **kw) -> TrainConfig:
    base = dict(
        steps=4,
        batch_size=8,
        gen_batch_size=8,
        n_critic=2,
        queue_size=16,
        in_batch_negatives=True,
        ema_decay=0.5,
        log_every=1,
        warmup_steps=1,
        progress=False,
    )
    return TrainConfig.for_variant(variant, **{**base, **kw})


def _dataset(n=32) -> TensorDataset:
    g = torch.Generator().manual_seed(1)
    return TensorDataset(torch.rand(n, 1, 32, 32, generator=g) * 2 - 1, torch.zeros(n, dtype=torch.long))


def _replica_worker(rank, world):
    trainer = Trainer(MC, _tiny())
    torch.manual_seed(100 + rank)  # different noise per rank, as in train()
    x = _dataset().tensors[0]
    start = {k: v.clone() for k, v in trainer.model.state_dict().items()}
    for it in range(4):
        trainer.step(it, x[8 * it + 4 * rank : 8 * it + 4 * rank + 4])
    return {"start": start, "end": trainer.model.state_dict(), "negatives": trainer.negatives.state_dict()}


@pytest.mark.timeout(90)
def test_replicas_and_queues_stay_identical_across_ranks():
    r0, r1 = run_processes(_replica_worker, 2, timeout_s=60)
    for k, v in r0["end"].items():
        assert torch.equal(v, r1["end"][k]), k
    for k, v in r0["negatives"].items():
        assert torch.equal(v, r1["negatives"][k]), k
    changed = [k for k, v in r0["end"].items() if not torch.equal(v, r0["start"][k])]
    assert any(k.startswith("encoder.") for k in changed) and any(k.startswith("disc.") for k in changed)
    assert int(r0["negatives"]["ptr"]) == 2 * 8 % 16  # two contrastive steps of a global batch of 8


def test_resume_is_exact(tmp_path):
    ds = _dataset()
    full = train(MC, _tiny(steps=6, batch_size=4, gen_batch_size=4, queue_size=8), ds)
    ck = tmp_path / "ck"
    train(
        MC, _tiny(steps=3, batch_size=4, gen_batch_size=4, queue_size=8, checkpoint_dir=str(ck), checkpoint_every=3), ds
    )
    resumed = train(
        MC, _tiny(steps=6, batch_size=4, gen_batch_size=4, queue_size=8, checkpoint_dir=str(ck), resume=True), ds
    )
    for k, v in full["state"].items():
        assert torch.equal(v, resumed["state"][k]), k
    # the curves too: the history saved with the checkpoint, then the same rows an uninterrupted run logs

    def rows(r):
        return [{k: v for k, v in h.items() if k != "elapsed_s"} for h in r["history"]]

    assert rows(resumed) == rows(full) and [h["step"] for h in resumed["history"]] == list(range(6))


def test_step_batches_split_one_global_batch_over_ranks():
    one = list(StepBatches(40, 8, 0, 1, steps=7, seed=2))
    two = [list(StepBatches(40, 8, r, 2, steps=7, seed=2)) for r in range(2)]
    assert all(a == b + c for a, b, c in zip(one, *two))
    assert sorted(sum(one[:5], [])) == list(range(40))  # one epoch covers every image once
    assert list(StepBatches(40, 8, 0, 1, steps=7, start_step=5, seed=2)) == one[5:]
    with pytest.raises(UserError, match="not divisible"):
        StepBatches(40, 9, 0, 2, steps=1)


def test_variants_train_only_their_terms():
    x = _dataset().tensors[0][:8]

    def changed(variant):
        t = Trainer(MC, _tiny(variant, n_critic=1))
        before = {k: v.clone() for k, v in t.model.state_dict().items()}
        t.step(0, x)
        return {
            k.split(".")[0] + "." + k.split(".")[1]
            for k, v in t.model.state_dict().items()
            if not torch.equal(v, before[k])
        }

    vae = changed("vae")
    assert not any(k.startswith("disc.") for k in vae) and "encoder.trunk" in vae and "decoder.fc" in vae
    cont = changed("vae_contrastive")
    assert "disc.trunk" in cont and "disc.adv_head" not in cont  # features trained, no adversary
    assert "disc.adv_head" in changed("vaegan")
    with pytest.raises(UserError, match="unknown variant"):
        TrainConfig.for_variant("gan")
    with pytest.raises(UserError, match="queue size 10 is not divisible"):
        TrainConfig.for_variant("dcvae", queue_size=10, batch_size=4).check(1)


def test_training_streams_infonce_accuracy_and_spread(caplog):
    """Every `log_every` iterations the tracker receives the InfoNCE top-1/top-5 accuracy of the positive and the
    reconstructions' spread while training runs; every `console_every` a console line carries them too."""
    import logging

    class Recorder:
        def __init__(self):
            self.calls = []

        def log(self, metrics, step=None):
            self.calls.append((step, dict(metrics)))

    rec = Recorder()
    with caplog.at_level(logging.INFO, logger="vaegan_contrastive.train"):
        train(MC, _tiny(steps=4, log_every=2, console_every=2), _dataset(), tracker=rec, name="dcvae", step_offset=100)
    assert [s for s, _ in rec.calls] == [100, 102, 103]  # while training runs, at offset steps
    keys = set(rec.calls[-1][1])
    for k in ("nce_top1_final", "nce_top5_final", "nce_top1_b1", "recon_spread", "real_spread", "d_loss"):
        assert f"dcvae/{k}" in keys
    assert all(0.0 <= m["dcvae/nce_top1_final"] <= m["dcvae/nce_top5_final"] <= 1.0 for _, m in rec.calls)
    lines = [r.getMessage() for r in caplog.records if r.getMessage().startswith("dcvae ")]
    assert len(lines) == 3 and "nce_top1_final=" in lines[-1] and "recon_spread=" in lines[-1]


def test_contrastive_weight_scales_the_contrastive_gradient():
    """`cont_weight` multiplies the InfoNCE term (KL off): the encoder's gradient doubles with the weight."""
    x = _dataset().tensors[0][:8]

    def enc_grad(weight):
        t = Trainer(MC, _tiny("vae_contrastive", n_critic=1, kl_weight=0.0, cont_weight=weight))
        t.opt_gen.step = t.opt_disc.step = lambda *a, **k: None  # keep the gradients, change nothing
        torch.manual_seed(3)
        t.contrastive_step(x)
        return torch.cat([p.grad.flatten() for p in t.model.encoder.parameters() if p.grad is not None])

    g1, g2 = enc_grad(1.0), enc_grad(2.0)
    assert g1.abs().sum() > 0 and torch.allclose(g2, 2 * g1, rtol=1e-4, atol=1e-7)


def test_dev_split_is_held_out_of_training():
    """`eval_split=dev` evaluates on the last `dev_size` training images and trains on the others, never on
    the test split (model selection)."""
    from vaegan_contrastive.data import DataConfig, load

    test = load(DataConfig(resolution=16, test_size=200))
    dev = load(DataConfig(resolution=16, test_size=200, eval_split="dev", dev_size=100))
    n = len(test.train)
    assert len(dev.train) == n - 100 and len(dev.test) == 100
    assert torch.equal(dev.test.tensors[0], test.train.tensors[0][n - 100 :])
    assert torch.equal(dev.train.tensors[0], test.train.tensors[0][: n - 100])
    with pytest.raises(UserError, match="eval_split"):
        load(DataConfig(resolution=16, eval_split="val"))


def test_seeds_share_one_split_drawn_by_split_seed():
    """`seed` redraws the training run, not the data split: runs at seeds 0 and 1 are tested on the same test
    images (before `data.split_seed`, 813 of seed 0's 1,000 test images were in seed 1's training set)."""
    from vaegan_contrastive.data import DataConfig, mnist5k

    seed0, seed1 = (load_split(DataConfig(resolution=16, test_size=200, seed=s)) for s in (0, 1))
    assert torch.equal(seed0[0], seed1[0]) and torch.equal(seed0[1], seed1[1])
    other = mnist5k(16, 200, split_seed=1)[1].tensors[0]
    assert not torch.equal(seed0[1], other)


def load_split(cfg):
    from vaegan_contrastive.data import load

    d = load(cfg)
    return d.train.tensors[0], d.test.tensors[0]


def test_each_run_resumes_only_its_own_checkpoints(tmp_path, caplog):
    """Runs trained one after the other under one `train.checkpoint_dir` each checkpoint in their own folder,
    `<variant>-<fingerprint>`: VAE/GAN never resumes VAE's weights, a changed configuration starts afresh, the
    same one resumes its own (and, at its last iteration, trains nothing)."""
    import dataclasses
    import logging

    from vaegan_contrastive import study as S
    from vaegan_contrastive.data import DataConfig

    mc = dataclasses.replace(MC, resolution=16)
    ck = dict(checkpoint_dir=str(tmp_path), checkpoint_every=2, resume=True)
    runs = {v: _tiny(v, steps=3, queue_size=16, **ck) for v in ("vae", "vaegan")}
    study = S.Study(DataConfig(resolution=16, test_size=200, subset=64), mc, runs, S.EvalConfig(), processes=1)
    with caplog.at_level(logging.INFO, logger="vaegan_contrastive.train"):
        first = S.launch(study)
        assert "resumed" not in caplog.text
        folders = sorted(p.name for p in tmp_path.iterdir())
        assert [f.split("-")[0] for f in folders] == ["vae", "vaegan"]
        assert all([p.name for p in (tmp_path / f).iterdir()] == ["ckpt_00000003.pt"] for f in folders)  # the last
        caplog.clear()
        again = S.launch(study)
        assert caplog.text.count("resumed from") == 2 and f"vaegan resumed from {tmp_path}/vaegan-" in caplog.text
        for v in runs:
            assert all(torch.equal(t, again[v]["state"][k]) for k, t in first[v]["state"].items())
            assert again[v]["history"] == first[v]["history"]
        caplog.clear()
        changed = {v: dataclasses.replace(tc, kl_weight=0.5) for v, tc in runs.items()}
        S.launch(study, runs=changed)
        assert "resumed" not in caplog.text and len(list(tmp_path.iterdir())) == 4
