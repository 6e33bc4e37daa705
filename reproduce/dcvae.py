"""python -m reproduce.dcvae [scale=smoke|mini|paper] [key=value ...]

DC-VAE trained data-parallel (negatives gathered across ranks), then Table 2's layout (IS and FID of samples
and reconstructions) beside the paper's, the ablation (VAE, VAE/GAN, VAE + contrastive, DC-VAE) at one
budget, faithfulness of reconstructions, images/s with 1 and 2 processes, training curves, sample and
reconstruction grids, and the claims report. At mini scale every FID/IS uses a LeNet trained by this run on
the training split ("FID, LeNet features"), never comparable with the paper's Inception numbers.
"""

from __future__ import annotations

import os
from pathlib import Path

from omegaconf import OmegaConf

from common.claims import write_claims
from common.results import beside_paper
from reproduce import app
from vaegan_contrastive import bench
from vaegan_contrastive import data as D
from vaegan_contrastive import evaluate as E
from vaegan_contrastive import study as S
from vaegan_contrastive.claims import decide_claims

PAPER_FILE = Path(__file__).parent / "data" / "dcvae_paper.yaml"


def run(ctx: app.RunContext) -> None:
    cfg = OmegaConf.to_container(ctx.cfg, resolve=True)
    study = S.build(cfg)
    D.check_root(study.data)
    if study.eval.extractor == "inception":
        E.check_inception_weights(study.eval.inception_weights)  # fails early (one line) without weights
    print(S.plan(study))
    if ctx.dry_run:
        return
    tracking = (
        ctx.tracker
        if study.processes == 1
        else dict(
            project=cfg["tracking"]["project"],
            group=f"dcvae/{ctx.scale}",
            name=f"dcvae-{ctx.scale}-train",
            mode=cfg["tracking"]["mode"],
            dir=str(Path(cfg["results_dir"]).resolve() / "wandb"),
            tags=["dcvae", ctx.scale],
        )
    )
    results = S.launch(study, tracking)
    if results is None:  # another rank of a torchrun/SLURM job
        return
    ev = S.evaluate_all(study, results)
    fe, metrics, label = ev["fe"], ev["metrics"], S.feature_label(ev["fe"])
    out, name, seed = ctx.out, study.data.name, study.data.seed

    acc = getattr(fe, "test_accuracy", float("nan"))
    out.table(
        "feature_sanity",
        S.sanity_table(fe, ev["ref"], ev["test"][0], seed),
        title=f"Feature-network sanity checks ({label})",
        note=f"The feature network ({fe.name}) reaches {acc:.3f} test accuracy. FID is measured against "
        f"{len(ev['train'][0])} training images; real test images give the floor.",
    )
    probe0 = S.untrained_probe(study, ev["train"], ev["test"]) if ev["test"][1] is not None else float("nan")
    tc = next(iter(study.runs.values()))
    out.table(
        "ablation",
        S.ablation_table(study, metrics, results, label),
        title=f"Ablation at one budget ({name}, {label})",
        note=f"{study.world_size} processes, global batch {tc.batch_size}; every variant the same iterations "
        f"and encoder/decoder updates. Linear probe: logistic regression on the latent mean (an untrained "
        f"encoder: {probe0:.3f}). VAE = per-pixel MSE + KL; VAE/GAN = VAE + hinge GAN; VAE + contrastive "
        "= InfoNCE + KL; DC-VAE = InfoNCE + hinge GAN + KL (KL summed over the batch, weight "
        f"{tc.kl_weight:g}). The paper's ablation is on CIFAR-10 with Inception features.",
    )
    out.table(
        "faithfulness",
        S.faithfulness_table(metrics),
        title=f"Faithfulness of reconstructions ({fe.name})",
        note=f"{len(ev['test'][0])} test images, each reconstructed from a posterior sample (the release's path)."
        " Nearest own input: among all test inputs, in the feature network's feature space (chance "
        f"{1 / len(ev['test'][0]):.4f}).",
    )
    t2 = S.table2(metrics, name, label)
    if len(t2):
        out.table(
            "table2",
            beside_paper(
                t2,
                S.paper_table2(PAPER_FILE),
                on="method",
                columns=["CIFAR-10 IS", "CIFAR-10 FID", "STL-10 IS", "STL-10 FID"],
            ),
            title="Table 2: sampling and reconstruction (measured beside the paper's)",
            note=f"Measured: {name} at {study.data.resolution} px, {label}, {study.eval.n_samples} samples "
            f"(z clamped to [-1, 1]), {len(ev['test'][0])} test reconstructions (posterior samples), EMA "
            "decoder, IS over 10 shuffled splits (std beside). Paper: CIFAR-10/STL-10, Inception, 50k "
            "images, 800 epochs. Different data, feature network and budget: compare orderings, not values.",
        )
    if study.throughput_steps:
        out.table(
            "throughput",
            bench.process_scaling(study, study.throughput_steps, study.throughput_processes),
            title="Training throughput (DC-VAE, real images per second)",
            note="One thread per process, the same per-rank batch, negatives gathered across ranks; the "
            "machine is shared with other jobs, so times are noisy. The first iteration is not timed.",
        )
    S.grids(out, ev["models"], ev["test"][0], study.eval.grid, seed)
    out.figure("training_curves", S.curves_figure({v: r["history"] for v, r in results.items()}))
    claims = decide_claims(metrics, label, study.eval.faithful_class_min)
    write_claims(out, claims, "dcvae", ctx.scale)
    out.note("Claims: " + "; ".join(f"{c.key}: {c.verdict}" for c in claims) + ".")


if __name__ == "__main__":
    os.environ.setdefault("WANDB_MODE", "offline")
    app.main("dcvae", run)
