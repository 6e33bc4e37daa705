"""python -m reproduce.dcvae [scale=smoke|mini|paper] [key=value ...]

DC-VAE trained data-parallel (negatives gathered across ranks), then: Table 2's layout (IS and FID of samples
and reconstructions) beside the paper's, the ablation (VAE, VAE/GAN, VAE + contrastive, DC-VAE) at the same
budget with the linear probe, images/s with 1 and 2 processes, sample and reconstruction grids.
At mini scale every FID/IS uses a LeNet trained by this run on the training split ("FID, LeNet features"),
never comparable with the paper's Inception numbers.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any

import pandas as pd
import torch
import yaml
from omegaconf import OmegaConf

from common.distributed import default_backend, detect_env, init_process_group, run_processes
from common.errors import UserError
from common.results import beside_paper
from reproduce import app
from vaegan_contrastive import data as D, evaluate as E
from vaegan_contrastive.models import ModelConfig
from vaegan_contrastive.models import DCVAE
from vaegan_contrastive.train import VARIANTS, TrainConfig, load_model, train_worker

log = logging.getLogger("reproduce.dcvae")

PAPER_FILE = Path(__file__).parent / "data" / "dcvae_paper.yaml"
LABELS = {"vae": "VAE", "vaegan": "VAE/GAN", "vae_contrastive": "VAE + contrastive", "dcvae": "DC-VAE"}


def configs(cfg: Any) -> tuple[D.DataConfig, ModelConfig, dict[str, TrainConfig]]:
    """Typed, validated configs from the Hydra config (every problem is a one-line UserError)."""
    c = OmegaConf.to_container(cfg, resolve=True)
    data_cfg = D.DataConfig(**c["data"], seed=int(c["seed"]))
    channels = 1 if data_cfg.name == "mnist5k" else 3
    model_cfg = ModelConfig(resolution=data_cfg.resolution, channels=channels, **c["model"])
    unknown = [v for v in c["variants"] if v not in VARIANTS]
    if unknown or not c["variants"]:
        raise UserError(f"unknown variants {unknown}; choose from {', '.join(VARIANTS)}")
    if int(c["processes"]) < 1:
        raise UserError(f"processes must be >= 1, got {c['processes']}")
    train_kw = {**c["train"], "betas": tuple(c["train"]["betas"]), "seed": int(c["seed"])}
    for k in ("adversarial", "contrastive", "pixel_weight", "kl_weight"):
        train_kw.pop(k, None)
    dcvae_kl = c["train"].get("kl_weight", 1e-6)
    runs = {}
    for v in c["variants"]:
        tc = TrainConfig.for_variant(v, **train_kw)
        if v in ("dcvae", "vae_contrastive"):
            tc.kl_weight = dcvae_kl
        tc.check(world_size(c))
        runs[v] = tc
    if c["eval"]["extractor"] not in ("lenet", "inception"):
        raise UserError(f"unknown eval.extractor {c['eval']['extractor']!r}; choose lenet or inception")
    return data_cfg, model_cfg, runs


def world_size(c: dict) -> int:
    env = detect_env()
    return env.world_size if env.source in ("torchrun", "slurm") else int(c["processes"])


def plan(cfg: Any, data_cfg: D.DataConfig, model_cfg: ModelConfig, runs: dict[str, TrainConfig]) -> str:
    ws = world_size(OmegaConf.to_container(cfg, resolve=True))
    lines = [f"plan: {data_cfg.name} at {data_cfg.resolution} px, {ws} process(es), model {model_cfg}"]
    for v, tc in runs.items():
        lines.append(f"  train {LABELS[v]}: {tc.steps} iterations, global batch {tc.batch_size} "
                     f"({tc.batch_size // ws}/rank), {tc.steps // tc.n_critic} encoder/decoder updates, "
                     f"queue {tc.queue_size if tc.contrastive else '-'}")
    lines.append(f"  evaluate: {cfg.eval.extractor} features, {cfg.eval.n_samples} samples; linear probe")
    if cfg.throughput.steps:
        lines.append(f"  images/s: {cfg.throughput.steps} iterations with {list(cfg.throughput.processes)} processes")
    return "\n".join(lines)


def launch(n: int, model_cfg: ModelConfig, runs: dict[str, TrainConfig], data_cfg: D.DataConfig,
           timeout_s: float) -> dict[str, dict]:
    """Train each run on `n` spawned processes, one spawn for all (in this process when n is 1; under
    torchrun/SLURM on this job's ranks); returns rank 0's results."""
    env = detect_env()
    if env.source in ("torchrun", "slurm"):
        init_process_group()
        return train_worker(env.rank, env.world_size, model_cfg, runs, data_cfg)
    if n == 1:
        return train_worker(0, 1, model_cfg, runs, data_cfg)
    return run_processes(train_worker, n, args=(model_cfg, runs, data_cfg), timeout_s=timeout_s or 10 ** 9,
                         backend=default_backend())[0]


def extractor(cfg: Any, train: tuple[torch.Tensor, torch.Tensor], test: tuple[torch.Tensor, torch.Tensor]):
    if cfg.eval.extractor == "inception":
        return E.InceptionFeatures(cfg.eval.inception_weights)
    return E.train_lenet(*train, *test, epochs=int(cfg.eval.lenet_epochs), seed=int(cfg.seed))


def evaluate_model(model, fe, ref: E.Reference, x_test: torch.Tensor, y_test: torch.Tensor,
                   x_train: torch.Tensor, y_train: torch.Tensor, n_samples: int, seed: int) -> dict[str, float]:
    samples = model.sample(n_samples, generator=torch.Generator().manual_seed(seed))
    recon = model.reconstruct(x_test)
    s_fid, s_is = E.fid_is(fe, samples, ref)
    r_fid, r_is = E.fid_is(fe, recon, ref)
    probe = E.linear_probe(model.encode_mean(x_train), y_train, model.encode_mean(x_test), y_test, seed)
    return {"sample FID": s_fid, "sample IS": s_is, "recon FID": r_fid, "recon IS": r_is,
            "recon MSE": E.reconstruction_mse(x_test, recon), "probe acc": probe}


def grids(out, models: dict[str, Any], x_test: torch.Tensor, n: int, seed: int) -> None:
    """One PNG per variant: samples (top half) and test images over their reconstructions (bottom half)."""
    from torchvision.utils import save_image

    for v, model in models.items():
        samples = model.sample(n, generator=torch.Generator().manual_seed(seed))
        half = n // 2
        pairs = torch.stack([x_test[:half], model.reconstruct(x_test[:half])], dim=1).flatten(0, 1)
        save_image(torch.cat([samples, pairs]) * 0.5 + 0.5, out.path(f"figures/{v}_samples_recon.png"),
                   nrow=int(n ** 0.5) if int(n ** 0.5) % 2 == 0 else 8)


def curves(out, histories: dict[str, list[dict]]) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    keys = ["d_loss", "g_loss", "cont_loss", "pixel", "kl"]
    colors = dict(zip(LABELS, plt.rcParams["axes.prop_cycle"].by_key()["color"]))
    fig, axes = plt.subplots(1, len(keys), figsize=(4 * len(keys), 3))
    for ax, k in zip(axes, keys):
        for v, hist in histories.items():
            pts = [(h["step"], h[k]) for h in hist if k in h]
            if pts:
                ax.plot(*zip(*pts), label=LABELS[v], color=colors[v])
        ax.set_title(k)
        ax.set_xlabel("iteration")
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize=7)
    if axes[-1].lines:
        axes[-1].set_yscale("log")
    out.figure("training_curves", fig)


def paper_table2() -> pd.DataFrame:
    rows = yaml.safe_load(PAPER_FILE.read_text())["table2"]
    return pd.DataFrame(rows).rename(columns={
        "method": "method", "cifar10_is": "CIFAR-10 IS", "cifar10_fid": "CIFAR-10 FID",
        "stl10_is": "STL-10 IS", "stl10_fid": "STL-10 FID"})


def run(ctx: app.RunContext) -> None:
    cfg = ctx.cfg
    data_cfg, model_cfg, runs = configs(cfg)
    D.check_root(data_cfg)
    if cfg.eval.extractor == "inception":
        E.check_inception_weights(cfg.eval.inception_weights)  # fails early (one line) without weights
    print(plan(cfg, data_cfg, model_cfg, runs))
    if ctx.dry_run:
        return
    env = detect_env()
    distributed_job = env.source in ("torchrun", "slurm")
    nproc = int(cfg.processes)
    timeout = float(cfg.timeout_s)
    results = launch(nproc, model_cfg, runs, data_cfg, timeout)
    if distributed_job and env.rank != 0:
        return
    offset = 0  # W&B steps must increase: the variants are logged one after the other
    for v, r in results.items():
        for h in r["history"]:
            ctx.tracker.log({f"{v}/{k}": val for k, val in h.items() if k != "step"} | {f"{v}/iteration": h["step"]},
                            step=offset + h["step"])
        offset += runs[v].steps

    data = D.load(data_cfg)
    train_xy = D.stack(data.train, limit=int(cfg.eval.n_reference))
    test_xy = D.stack(data.test)
    fe = extractor(cfg, train_xy, test_xy)
    ref = E.Reference.of(fe, train_xy[0])
    label = f"FID, {fe.name}"
    noise = torch.rand_like(test_xy[0]) * 2 - 1
    sanity = pd.DataFrame([{"check": check, label: fid, "IS": is_} for check, (fid, is_) in (
        ("real test images vs training images", E.fid_is(fe, test_xy[0], ref)),
        ("uniform noise vs training images", E.fid_is(fe, noise, ref)))])
    acc = getattr(fe, "test_accuracy", float("nan"))
    ctx.out.table("feature_sanity", sanity, title=f"Feature-network sanity checks ({label})",
                  note=f"The feature network ({fe.name}) reaches {acc:.3f} test accuracy. FID is measured "
                       f"against {len(train_xy[0])} training images; real test images give the floor.")

    models = {v: load_model(model_cfg, r["state"]) for v, r in results.items()}
    n_samples, seed = int(cfg.eval.n_samples), int(cfg.seed)
    metrics = {v: evaluate_model(m, fe, ref, *test_xy, *train_xy, n_samples, seed) for v, m in models.items()}

    rows = []
    for v, m in metrics.items():
        tc = runs[v]
        rows.append({"variant": LABELS[v], f"sample {label}": m["sample FID"], "sample IS": m["sample IS"],
                     f"recon {label}": m["recon FID"], "recon IS": m["recon IS"], "recon MSE": m["recon MSE"],
                     "probe acc": m["probe acc"], "iterations": tc.steps, "enc/dec updates": tc.steps // tc.n_critic,
                     "train s": results[v]["wall_s"]})
    ablation = pd.DataFrame(rows)
    torch.manual_seed(seed)
    untrained = DCVAE(model_cfg).eval()
    probe_untrained = E.linear_probe(untrained.encode_mean(train_xy[0]), train_xy[1],
                                     untrained.encode_mean(test_xy[0]), test_xy[1], seed)
    ctx.out.table("ablation", ablation, title=f"Ablation at the same budget ({data_cfg.name}, {label})",
                  note=f"{nproc} processes, global batch {next(iter(runs.values())).batch_size}. Linear probe: "
                       f"logistic regression on the latent mean (an untrained encoder: {probe_untrained:.3f}). "
                       "Losses: VAE = summed squared pixel error + 0.1 KL; VAE/GAN = VAE + hinge GAN; VAE + "
                       "contrastive = InfoNCE + 1e-6 KL; DC-VAE = InfoNCE + hinge GAN + 1e-6 KL. "
                       "The paper's ablation is on CIFAR-10 with Inception features; no numbers are carried here.")
    ordering_note(ctx, metrics)

    t2 = []
    names = {"vae": ["VAE"], "vaegan": ["VAE/GAN"], "dcvae": ["DC-VAE sampling", "DC-VAE reconstruction"]}
    for v, m in metrics.items():
        for name in names.get(v, []):
            rec = name.endswith("reconstruction")
            t2.append({"method": name, f"{data_cfg.name} IS": m["recon IS" if rec else "sample IS"],
                       f"{data_cfg.name} {label}": m["recon FID" if rec else "sample FID"]})
    if t2:
        table2 = beside_paper(pd.DataFrame(t2), paper_table2(), on="method",
                              columns=["CIFAR-10 IS", "CIFAR-10 FID", "STL-10 IS", "STL-10 FID"])
        ctx.out.table("table2", table2, title="Table 2: sampling and reconstruction (measured beside the paper's)",
                      note=f"Measured: {data_cfg.name} at {data_cfg.resolution} px, {label}, "
                           f"{n_samples} samples, {len(test_xy[0])} test reconstructions, EMA decoder. "
                           "Paper: CIFAR-10/STL-10, Inception features, 50k images, 800 epochs. "
                           "Different data, feature network and budget: compare orderings, not values.")

    if int(cfg.throughput.steps):
        thr = []
        tc = runs.get("dcvae", next(iter(runs.values())))
        tc_b = TrainConfig(**{**tc.__dict__, "steps": int(cfg.throughput.steps), "progress": False,
                              "checkpoint_dir": None, "checkpoint_every": 0})
        for n in cfg.throughput.processes:
            r = run_processes(train_worker, int(n), args=(model_cfg, {"throughput": tc_b}, data_cfg),
                              timeout_s=timeout or 10 ** 9)[0]["throughput"]
            thr.append({"processes": int(n), "images/s": r["images_per_s"],
                        "global batch": tc_b.batch_size, "per-rank batch": tc_b.batch_size // int(n),
                        "timed iterations": tc_b.steps - tc_b.warmup_steps})
        ctx.out.table("throughput", pd.DataFrame(thr), title="Training throughput (DC-VAE, real images per second)",
                      note="One thread per process; the machine is shared with other jobs, so times are noisy. "
                           "The first iterations (warm-up) are not timed.")
    grids(ctx.out, models, test_xy[0], int(cfg.eval.grid), seed)
    curves(ctx.out, {v: r["history"] for v, r in results.items()})


def ordering_note(ctx: app.RunContext, metrics: dict[str, dict[str, float]]) -> None:
    have = [v for v in ("dcvae", "vaegan", "vae") if v in metrics]
    if len(have) < 3:
        return
    f = {v: metrics[v]["sample FID"] for v in have}
    holds = f["dcvae"] < f["vaegan"] < f["vae"]
    parts = [f"DC-VAE < VAE/GAN: {'yes' if f['dcvae'] < f['vaegan'] else 'no'}",
             f"DC-VAE < VAE: {'yes' if f['dcvae'] < f['vae'] else 'no'}",
             f"VAE/GAN < VAE: {'yes' if f['vaegan'] < f['vae'] else 'no'}"]
    ctx.out.note(f"Paper's ordering in sampling FID (DC-VAE < VAE/GAN < VAE): "
                 f"{'holds' if holds else 'does not hold'} here ({'; '.join(parts)}; DC-VAE {f['dcvae']:.1f}, "
                 f"VAE/GAN {f['vaegan']:.1f}, VAE {f['vae']:.1f}).")


if __name__ == "__main__":
    os.environ.setdefault("WANDB_MODE", "offline")
    app.main("dcvae", run)
