"""python -m reproduce.dcvae [scale=smoke|mini|paper] [ablation.run=true] [key=value ...]

DC-VAE trained data-parallel (negatives gathered across ranks), then Table 2's layout (IS and FID of samples
and reconstructions) beside the paper's, the ablation (VAE, VAE/GAN, VAE + contrastive, DC-VAE) at one
budget, faithfulness of reconstructions, images/s with 1 and 2 processes, training curves, sample and
reconstruction grids, and the claims report. At mini scale every FID/IS uses a LeNet trained by this run on
the training split ("FID, LeNet features"), never comparable with the paper's Inception numbers.

`ablation.run=true` runs only the dev ablation instead: each of `ablation.settings` (train overrides) for its
variants, evaluated on the dev split, written to RESULTS/dcvae/<scale>-dev-ablation/ (`dev_ablation.csv`,
`dev_ablation.json`). A plain run's claims cite that table when it was written for the same configuration.
"""

from __future__ import annotations

import dataclasses
import json
import os
from pathlib import Path
from typing import Any

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


def as_saved(obj: Any) -> Any:
    """`obj` as it reads back from `dev_ablation.json` (tuples become lists, keys strings), so that a
    configuration compares equal to the one saved with a dev ablation."""
    return json.loads(json.dumps(obj))


def ablation_dir(out_dir: Path) -> Path:
    """Where `ablation.run=true` writes: beside the scale's own results (RESULTS/dcvae/<scale>-dev-ablation)."""
    return out_dir.with_name(f"{out_dir.name}-dev-ablation")


CHECKPOINT_KEYS = ("checkpoint_dir", "checkpoint_every", "resume", "keep_checkpoints")  # shape no model


def ablation_base(cfg: dict[str, Any]) -> dict[str, Any]:
    """What a dev ablation must share with a run for the run's claims to cite it: everything that shapes the
    trained models and their evaluation, except the split evaluated on."""
    data = {k: v for k, v in cfg["data"].items() if k != "eval_split"}
    train = {k: v for k, v in cfg["train"].items() if k not in CHECKPOINT_KEYS}
    return {k: cfg[k] for k in ("seed", "processes", "model", "eval")} | {"train": train, "data": data}


def comparable(base: dict[str, Any]) -> dict[str, Any]:
    """A saved `ablation_base` as today's code writes it: a dev ablation saved before the checkpoint keys left
    the base still compares, and one saved before `data.split_seed` was split by `seed`."""
    train = {k: v for k, v in base.get("train", {}).items() if k not in CHECKPOINT_KEYS}
    data = {"split_seed": base.get("seed", 0)} | base.get("data", {})
    return base | {"train": train, "data": data}


def saved_ablation(target: Path, cfg: dict[str, Any]) -> tuple[dict | None, str]:
    """The dev ablation saved in `target` when it was written for this configuration (else None, why)."""
    path = target / "dev_ablation.json"
    if not path.is_file():
        return None, f"no dev ablation at {path} (`ablation.run=true` writes one)"
    saved = json.loads(path.read_text())
    if comparable(saved.get("base") or {}) != as_saved(ablation_base(cfg)):
        return None, f"the dev ablation at {path} was written for another configuration: not cited"
    return saved, f"{path.parent.name}/dev_ablation.csv"


def read_ablation(out_dir: Path, cfg: dict[str, Any]) -> tuple[dict | None, str]:
    """The dev ablation's per-setting metrics when one was written for this configuration (else None, why)."""
    saved, source = saved_ablation(ablation_dir(out_dir), cfg)
    return (saved["settings"] if saved else None), source


def run_ablation(ctx: app.RunContext, cfg: dict[str, Any], study: S.Study) -> None:
    """Train and evaluate each ablation setting's variants on the dev split; write the table and its JSON.

    A setting already in the previous dev ablation of the same configuration (same label, overrides and
    variants) is carried over, not retrained: the table grows one setting at a time (model selection)."""
    settings = S.ablation_settings(cfg)
    study = dataclasses.replace(study, data=dataclasses.replace(study.data, eval_split="dev"))
    target = ablation_dir(ctx.out.out_dir)
    base = as_saved(ablation_base(cfg))
    saved, _ = saved_ablation(target, cfg)
    prev, prev_ok = saved or {}, saved is not None
    results: dict[str, dict] = {}
    spec = {s.label: {"train": s.train, "variants": s.variants} for s in settings}
    cached = {s.label for s in settings if prev_ok and as_saved(spec[s.label]) == prev.get("specs", {}).get(s.label)}
    runs = {k: v for k, v in S.ablation_runs(study, cfg, settings).items() if k.split("|")[0] not in cached}
    same = S.distinct_runs(runs)  # a run equal to an earlier one (contrastive keys of a VAE/GAN) is shared
    runs = {k: v for k, v in runs.items() if same[k] == k}
    print(f"dev ablation: {len(settings)} settings ({len(cached)} carried over from {target}), {len(runs)} trainings")
    for name, tc in runs.items():
        print(f"  {name}: kl_weight {tc.kl_weight:g}, cont_weight {tc.cont_weight:g}, {tc.steps} iterations")
    if ctx.dry_run:
        return
    metrics: dict[str, dict[str, float]] = {
        f"{label}|{v}": m for label in cached for v, m in prev["settings"][label].items()
    }
    label = prev.get("label", "FID, LeNet features") if prev_ok else None
    if runs:
        results = S.launch(study, None, runs=runs)
        if results is None:
            return
        ev = S.evaluate_all(study, results)
        metrics |= {k: ev["metrics"][first] for k, first in same.items()}
        label = S.feature_label(ev["fe"])
    summary = S.dev_ablation_summary(settings, metrics)
    table = S.dev_ablation_table(settings, summary, label)
    ctx.out.out_dir = target  # set before anything is staged: the scale's own results stay as they are
    ctx.out.table(
        "dev_ablation",
        table,
        title=f"Dev ablation ({study.data.name}, dev split of {study.data.dev_size} training images, {label})",
        note="Each setting overrides the run's `train` keys; everything else is the run's configuration. "
        "Evaluated on the dev split (never the test split): model selection, and the evidence a plain run's "
        f"claims cite. Carried over from the previous dev ablation (same configuration): {len(cached)} settings.",
    )
    ctx.out.json(
        "dev_ablation.json",
        {"base": base, "label": label, "specs": spec, "settings": summary},
    )
    if not cfg["train"]["keep_checkpoints"]:
        S.remove_checkpoints(results)


def training_tracking(ctx: app.RunContext, cfg: dict[str, Any], study: S.Study) -> Any:
    """Where the training curves go: `ctx.tracker` (the job's own W&B run) whenever training runs in this process
    (one process, or this process is a rank of a torchrun/SLURM job), since a process holds one W&B run and
    opening a second finishes the first (`reinit="finish_previous"`); for spawned ranks, the keyword arguments
    of the W&B run their rank 0 opens in the same group, in `tracking.dir`, with the run's resolved config."""
    if S.trains_here(study):
        return ctx.tracker
    return dict(
        project=cfg["tracking"]["project"],
        group=f"dcvae/{ctx.scale}",
        name=f"dcvae-{ctx.scale}-train",
        config=cfg,
        mode=str(cfg["tracking"]["mode"]),
        dir=str(app.original_cwd() / cfg["tracking"]["dir"]),  # where the job's own run goes (app.execute)
        tags=["dcvae", ctx.scale],
    )


def run(ctx: app.RunContext) -> None:
    cfg = OmegaConf.to_container(ctx.cfg, resolve=True, enum_to_str=True)
    if ckpt := cfg["train"]["checkpoint_dir"]:  # relative to where the command was run, like results_dir
        cfg["train"]["checkpoint_dir"] = str(app.original_cwd() / ckpt)
    study = S.build(cfg)
    D.check_root(study.data)
    if study.eval.extractor == "inception":
        E.check_inception_weights(study.eval.inception_weights)  # fails early (one line) without weights
    if cfg.get("ablation", {}).get("run"):
        return run_ablation(ctx, cfg, study)
    print(S.plan(study))
    if ctx.dry_run:
        return
    tracking = training_tracking(ctx, cfg, study)
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
    ablation, source = read_ablation(ctx.out.out_dir, cfg)
    if ablation is None:
        out.note(f"Claims: {source}.")
    claims = decide_claims(metrics, label, study.eval.faithful_class_min, ablation, source)
    write_claims(out, claims, "dcvae", ctx.scale)
    out.note("Claims: " + "; ".join(f"{c.key}: {c.verdict}" for c in claims) + ".")
    if not cfg["train"]["keep_checkpoints"]:
        S.remove_checkpoints(results)  # the results are written: a rerun trains and measures again


if __name__ == "__main__":
    os.environ.setdefault("WANDB_MODE", "offline")
    app.main("dcvae", run)
