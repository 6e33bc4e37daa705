"""The paper's experiments as library calls: typed configs from a plain mapping, training every ablation
variant on N processes, evaluating each (FID/IS of samples and reconstructions, faithfulness, linear probe),
and the tables and figures `python -m reproduce.dcvae` writes (the ablation, Table 2's layout beside the
paper's, faithfulness, feature-network sanity checks, training curves, sample/reconstruction grids).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import shutil
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd
import torch
import torch.distributed as dist

from common.distributed import default_backend, detect_env, init_process_group, run_processes
from common.errors import UserError

from . import data as D
from . import evaluate as E
from .models import DCVAE, ModelConfig
from .train import VARIANTS, TrainConfig, at_least, load_model, train_worker

log = logging.getLogger(__name__)

LABELS = {"vae": "VAE", "vaegan": "VAE/GAN", "vae_contrastive": "VAE + contrastive", "dcvae": "DC-VAE"}
EXTRACTORS = ("lenet", "inception")


@dataclass
class EvalConfig:
    extractor: str = "lenet"  # "lenet" (trained by the run, mini) or "inception" (paper)
    inception_weights: str | None = None
    inception_features: str = "2048"  # the FID layer ("2048" the paper's; "64" keeps the tests' FID fast)
    lenet_epochs: int = 2
    n_samples: int = 50000  # samples for sampling FID/IS
    n_reference: int = 50000  # training images FID is measured against
    n_recon: int | None = None  # test images reconstructed (None: the whole test split)
    grid: int = 64
    faithful_class_min: float = 0.85  # the faithfulness claim's threshold (see vaegan_contrastive.claims)


@dataclass
class Study:
    """Everything one run of the study needs, typed and checked."""

    data: D.DataConfig
    model: ModelConfig
    runs: dict[str, TrainConfig]
    eval: EvalConfig
    processes: int
    throughput_steps: int = 0
    throughput_processes: tuple[int, ...] = (1, 2)
    timeout_s: float = 0.0

    @property
    def world_size(self) -> int:
        env = detect_env()
        return env.world_size if env.source in ("torchrun", "slurm") else self.processes


def build(c: Mapping[str, Any]) -> Study:
    """A `Study` from the resolved config mapping; every problem is a one-line `UserError`."""
    data_cfg = D.DataConfig(**c["data"], seed=int(c["seed"]))
    channels = 1 if data_cfg.name == "mnist5k" else 3
    model_cfg = ModelConfig(resolution=data_cfg.resolution, channels=channels, **c["model"])
    variants = list(c["variants"])
    unknown = [v for v in variants if v not in VARIANTS]
    if unknown or not variants:
        raise UserError(f"unknown variants {unknown}; choose from {', '.join(VARIANTS)}")
    at_least("", {"processes": 1, "timeout_s": 0}, {"processes": c["processes"], "timeout_s": c.get("timeout_s", 0)})
    # mnist5k's test split is stratified: test_size // 10 images of each class (of 500)
    at_least("data", {"test_size": 10 if data_cfg.name == "mnist5k" else 0, "subset": 1, "dev_size": 1}, data_cfg)
    if data_cfg.name == "mnist5k" and data_cfg.test_size >= 5000:
        raise UserError(f"data.test_size must be < 5000 for mnist5k (5,000 images), got {data_cfg.test_size}")
    ev = EvalConfig(**c["eval"])
    if ev.extractor not in EXTRACTORS:
        raise UserError(f"unknown eval.extractor {ev.extractor!r}; choose lenet or inception")
    at_least("eval", {"lenet_epochs": 1, "n_samples": 1, "n_reference": 1, "n_recon": 1, "grid": 2}, ev)
    if not 0 <= ev.faithful_class_min <= 1:
        raise UserError(f"eval.faithful_class_min must be in [0, 1], got {ev.faithful_class_min}")
    thr = c.get("throughput", {})
    at_least("throughput", {"steps": 0}, {"steps": thr.get("steps", 0)})
    if any(int(n) < 1 for n in thr.get("processes", (1, 2))):
        raise UserError(f"throughput.processes must be >= 1 each, got {thr.get('processes')}")
    study = Study(
        data_cfg,
        model_cfg,
        {},
        ev,
        int(c["processes"]),
        int(thr.get("steps", 0)),
        tuple(int(n) for n in thr.get("processes", (1, 2))),
        float(c.get("timeout_s", 0)),
    )
    train_kw = {**c["train"], "betas": tuple(c["train"]["betas"]), "seed": int(c["seed"])}
    for v in variants:
        tc = TrainConfig.for_variant(v, **train_kw)
        tc.check(study.world_size)
        study.runs[v] = tc
    return study


def plan(study: Study) -> str:
    ws = study.world_size
    lines = [f"plan: {study.data.name} at {study.data.resolution} px, {ws} process(es), model {study.model}"]
    for v, tc in study.runs.items():
        lines.append(
            f"  train {LABELS[v]}: {tc.steps} iterations, global batch {tc.batch_size} "
            f"({tc.batch_size // ws}/rank), {tc.steps // tc.n_critic} encoder/decoder updates, "
            f"queue {tc.queue_size if tc.contrastive else '-'}"
        )
    ev = study.eval
    lines.append(
        f"  evaluate: {ev.extractor} features, {ev.n_samples} samples, {ev.n_recon or 'all'} test "
        "reconstructions; faithfulness; linear probe"
    )
    if study.throughput_steps:
        lines.append(
            f"  images/s: {study.throughput_steps} iterations with {list(study.throughput_processes)} processes"
        )
    return "\n".join(lines)


def trains_here(study: Study, processes: int | None = None) -> bool:
    """Whether `launch` trains in this process: one process, or this process is a rank of a torchrun/SLURM job
    (otherwise it spawns the ranks)."""
    return detect_env().source in ("torchrun", "slurm") or (processes or study.processes) == 1


# what a run's checkpoint folder is not keyed on: the number of iterations (a longer run continues a shorter one
# exactly) and what only logs, checkpoints or feeds the data
NOT_FINGERPRINTED = (
    "steps",
    "checkpoint_dir",
    "checkpoint_every",
    "resume",
    "keep_checkpoints",
    "progress",
    "num_workers",
    "log_every",
    "console_every",
    "warmup_steps",
)


def variant_of(tc: TrainConfig) -> str:
    return next(v for v, flags in VARIANTS.items() if all(getattr(tc, k) == f for k, f in flags.items()))


def fingerprint(study: Study, tc: TrainConfig, world_size: int) -> str:
    """A short hash of everything that shapes a run's training: its train keys (but `NOT_FINGERPRINTED`), the
    model, the data and the number of processes."""
    train = {k: v for k, v in dataclasses.asdict(tc).items() if k not in NOT_FINGERPRINTED}
    spec = {"train": train, "model": dataclasses.asdict(study.model), "data": dataclasses.asdict(study.data)}
    blob = json.dumps({**spec, "world_size": world_size}, sort_keys=True, default=str)
    return hashlib.sha256(blob.encode()).hexdigest()[:12]


def run_checkpoint_dir(study: Study, tc: TrainConfig, world_size: int | None = None) -> Path | None:
    """A run's own checkpoint folder, `<train.checkpoint_dir>/<variant>-<fingerprint>` (None: no checkpoints):
    runs never resume from each other's checkpoints, and a changed configuration starts afresh."""
    if not tc.checkpoint_dir:
        return None
    ws = world_size or study.world_size
    return Path(tc.checkpoint_dir) / f"{variant_of(tc)}-{fingerprint(study, tc, ws)}"


def remove_checkpoints(results: dict[str, dict]) -> None:
    """Remove finished runs' checkpoint folders (called once their results are written: a rerun then trains
    and measures again, with the code of its day); the parent folder too when that leaves it empty."""
    for r in results.values():
        if r.get("checkpoint_dir"):
            d = Path(r["checkpoint_dir"])
            shutil.rmtree(d, ignore_errors=True)
            try:
                d.parent.rmdir()  # only when empty
            except OSError:
                pass


def launch(
    study: Study, tracking: Any = None, runs: dict[str, TrainConfig] | None = None, processes: int | None = None
) -> dict[str, dict]:
    """Train each run (one after the other, one spawn for all) on `processes` spawned ranks, in this process
    when it is 1, and on the job's ranks under torchrun/SLURM. Returns rank 0's results (None elsewhere).

    `tracking`: a `Tracker` (used when training runs in this process) or its keyword arguments (a spawned
    rank 0 opens its own W&B run in the same group), so the curves stream while training runs."""
    runs = runs or study.runs
    n = processes or study.processes
    env = detect_env()
    world = env.world_size if env.source in ("torchrun", "slurm") else n
    runs = {
        k: dataclasses.replace(tc, checkpoint_dir=str(d)) if (d := run_checkpoint_dir(study, tc, world)) else tc
        for k, tc in runs.items()
    }
    if env.source in ("torchrun", "slurm"):
        if not (dist.is_available() and dist.is_initialized()):
            init_process_group()
        out = train_worker(env.rank, env.world_size, study.model, runs, study.data, tracking)
        return out if env.rank == 0 else None
    if n == 1:
        return train_worker(0, 1, study.model, runs, study.data, tracking)
    kwargs = tracking if isinstance(tracking, dict) else None
    return run_processes(
        train_worker,
        n,
        args=(study.model, runs, study.data, kwargs),
        timeout_s=study.timeout_s or 10**9,
        backend=default_backend(),
    )[0]


def feature_network(
    study: Study, train_xy: tuple[torch.Tensor, torch.Tensor], test_xy: tuple[torch.Tensor, torch.Tensor]
) -> E.FeatureExtractor:
    if study.eval.extractor == "inception":
        return E.InceptionFeatures(study.eval.inception_weights, features=study.eval.inception_features)
    return E.train_lenet(*train_xy, *test_xy, epochs=study.eval.lenet_epochs, seed=study.data.seed)


def evaluate_model(
    model: DCVAE, fe: E.FeatureExtractor, ref: E.Reference, test_xy, train_xy, n_samples: int, seed: int
) -> dict[str, float]:
    """Sampling and reconstruction FID/IS (the release's paths), faithfulness, MSE and the linear probe."""
    x_test, y_test = test_xy
    samples = model.sample(n_samples, generator=torch.Generator().manual_seed(seed))
    recon = model.reconstruct(x_test, generator=torch.Generator().manual_seed(seed + 1))
    s, r = E.fid_is(fe, samples, ref), E.fid_is(fe, recon, ref)
    out = {f"sample {k}": v for k, v in s.items()} | {f"recon {k}": v for k, v in r.items()}
    out |= E.faithfulness(fe, x_test, recon, y_test)
    out["recon MSE"] = E.reconstruction_mse(x_test, recon)
    if y_test is not None and train_xy[1] is not None:
        out["probe acc"] = E.linear_probe(
            model.encode_mean(train_xy[0]), train_xy[1], model.encode_mean(x_test), y_test, seed
        )
    return out


def evaluate_all(study: Study, results: dict[str, dict]) -> dict[str, Any]:
    """Load the data, the feature network and the reference once; evaluate every trained variant."""
    data = D.load(study.data)
    train_xy = D.stack(data.train, limit=study.eval.n_reference)
    test_xy = D.stack(data.test, limit=study.eval.n_recon)
    fe = feature_network(study, train_xy, test_xy)
    ref = E.Reference.of(fe, train_xy[0])
    models = {v: load_model(study.model, r["state"]) for v, r in results.items()}
    metrics = {}
    for v, m in models.items():
        log.info("evaluating %s", LABELS.get(v, v))
        metrics[v] = evaluate_model(m, fe, ref, test_xy, train_xy, study.eval.n_samples, study.data.seed)
    return {"fe": fe, "ref": ref, "train": train_xy, "test": test_xy, "models": models, "metrics": metrics}


# the dev ablation ---------------------------------------------------------------------------------------
@dataclass
class AblationSetting:
    """One configuration of the dev ablation: TrainConfig overrides on top of the run's own `train`."""

    label: str
    train: dict[str, Any]
    variants: list[str]


def ablation_settings(c: Mapping[str, Any]) -> list[AblationSetting]:
    """The `ablation` node's settings, checked (unknown train keys or variants, duplicate labels: `UserError`)."""
    node = c.get("ablation") or {}
    fields = {f.name for f in dataclasses.fields(TrainConfig)} - set(VARIANTS["dcvae"])
    out: list[AblationSetting] = []
    for s in node.get("settings") or []:
        train = dict(s.get("train") or {})
        variants = list(s.get("variants") or node.get("variants") or ["vaegan", "dcvae"])
        if bad := sorted(set(train) - fields):
            raise UserError(f"ablation setting {s.get('label')!r}: unknown train keys {bad}")
        if bad := [v for v in variants if v not in VARIANTS]:
            raise UserError(f"ablation setting {s.get('label')!r}: unknown variants {bad}")
        label = str(s.get("label") or ", ".join(f"{k}={v}" for k, v in train.items()) or "as configured")
        if any(a.label == label for a in out):
            raise UserError(f"two ablation settings are labelled {label!r}")
        out.append(AblationSetting(label, train, variants))
    if not out:
        raise UserError("ablation.run=true needs ablation.settings (a list of {label, train: {key: value}})")
    return out


def ablation_runs(study: Study, c: Mapping[str, Any], settings: list[AblationSetting]) -> dict[str, TrainConfig]:
    """One TrainConfig per (setting, variant), named "<label>|<variant>", checked like the run's own."""
    runs = {}
    for s in settings:
        train_kw = {**c["train"], **s.train, "seed": int(c["seed"])}
        train_kw["betas"] = tuple(train_kw["betas"])
        for v in s.variants:
            tc = TrainConfig.for_variant(v, **train_kw)
            tc.check(study.world_size)
            runs[f"{s.label}|{v}"] = tc
    return runs


CONTRASTIVE_ONLY = ("cont_weight", "queue_size", "temperature", "key_momentum", "in_batch_negatives")


def distinct_runs(runs: dict[str, TrainConfig]) -> dict[str, str]:
    """Each run's name -> the first run that trains the same model: a variant without the contrastive loss
    ignores the contrastive keys, so e.g. VAE/GAN under two contrastive weights is trained once."""
    first: dict[str, str] = {}
    out = {}
    for name, tc in runs.items():
        d = dataclasses.asdict(tc)
        if not tc.contrastive:
            for k in CONTRASTIVE_ONLY:
                d.pop(k)
        out[name] = first.setdefault(repr(sorted(d.items())), name)
    return out


def dev_ablation_summary(settings: list[AblationSetting], metrics: dict[str, dict]) -> dict[str, dict[str, dict]]:
    """{setting: {variant key: {"sample FID", "recon FID", "same class"}}} from the per-run metrics (keyed
    "<label>|<variant>"): what the dev ablation's table shows and `claims.ablation_evidence` reads."""
    return {
        s.label: {
            v: {
                "sample FID": float(m["sample FID"]),
                "recon FID": float(m["recon FID"]),
                "same class": float(m.get("same class", float("nan"))),
            }
            for v in s.variants
            for m in [metrics[f"{s.label}|{v}"]]
        }
        for s in settings
    }


def dev_ablation_table(
    settings: list[AblationSetting], summary: dict[str, dict[str, dict]], label: str
) -> pd.DataFrame:
    """One row per (setting, variant) of `dev_ablation_summary`: its overrides, sample and reconstruction FID and
    class retention."""
    rows = []
    for s in settings:
        for v, m in summary[s.label].items():
            rows.append(
                {
                    "setting": s.label,
                    "overrides": " ".join(f"train.{k}={val}" for k, val in s.train.items()) or "-",
                    "variant": LABELS[v],
                    f"sample {label}": m["sample FID"],
                    f"recon {label}": m["recon FID"],
                    "recon given its input's class": m["same class"],
                }
            )
    return pd.DataFrame(rows)


def feature_label(fe: E.FeatureExtractor) -> str:
    return f"FID, {fe.name}"


def sanity_table(fe: E.FeatureExtractor, ref: E.Reference, test_x: torch.Tensor, seed: int) -> pd.DataFrame:
    """The feature network's floor (real test images) and ceiling (uniform noise) against the reference."""
    noise = torch.rand(test_x.shape, generator=torch.Generator().manual_seed(seed)) * 2 - 1
    rows = []
    for check, x in (("real test images vs training images", test_x), ("uniform noise vs training images", noise)):
        m = E.fid_is(fe, x, ref)
        rows.append({"check": check, feature_label(fe): m["FID"], "IS": m["IS"], "IS std": m["IS std"]})
    return pd.DataFrame(rows)


def ablation_table(study: Study, metrics: dict[str, dict], results: dict[str, dict], label: str) -> pd.DataFrame:
    rows = []
    for v, m in metrics.items():
        tc = results[v]
        rows.append(
            {
                "variant": LABELS[v],
                f"sample {label}": m["sample FID"],
                "sample IS": m["sample IS"],
                f"recon {label}": m["recon FID"],
                "recon IS": m["recon IS"],
                "recon MSE": m["recon MSE"],
                "probe acc": m.get("probe acc", float("nan")),
                "iterations": study.runs[v].steps,
                "enc/dec updates": study.runs[v].steps // study.runs[v].n_critic,
                "train s": tc["wall_s"],
            }
        )
    return pd.DataFrame(rows)


def faithfulness_table(metrics: dict[str, dict]) -> pd.DataFrame:
    cols = {
        "same class": "recon given its input's class",
        "label acc": "recon classified as input's label",
        "real label acc": "real inputs classified correctly",
        "nearest own": "recon nearest its own input",
    }
    return pd.DataFrame(
        [{"variant": LABELS[v], **{c: m[k] for k, c in cols.items() if k in m}} for v, m in metrics.items()]
    )


def paper_table2(paper_file: Path) -> pd.DataFrame:
    import yaml

    rows = yaml.safe_load(Path(paper_file).read_text())["table2"]
    return pd.DataFrame(rows).rename(
        columns={
            "cifar10_is": "CIFAR-10 IS",
            "cifar10_fid": "CIFAR-10 FID",
            "stl10_is": "STL-10 IS",
            "stl10_fid": "STL-10 FID",
        }
    )


def table2(metrics: dict[str, dict], dataset: str, label: str) -> pd.DataFrame:
    """Table 2's rows (VAE, VAE/GAN, DC-VAE sampling and reconstruction) from the measured metrics."""
    names = {"vae": ["VAE"], "vaegan": ["VAE/GAN"], "dcvae": ["DC-VAE sampling", "DC-VAE reconstruction"]}
    rows = []
    for v, m in metrics.items():
        for name in names.get(v, []):
            kind = "recon" if name.endswith("reconstruction") else "sample"
            rows.append(
                {
                    "method": name,
                    f"{dataset} IS": m[f"{kind} IS"],
                    f"{dataset} IS std": m[f"{kind} IS std"],
                    f"{dataset} {label}": m[f"{kind} FID"],
                }
            )
    return pd.DataFrame(rows)


def curves_figure(histories: dict[str, list[dict]]):
    """Training curves per variant: losses, the InfoNCE top-1/top-5 accuracy of the positive, and the
    reconstructions' spread across images beside the real images' spread."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    panels = [
        ("d_loss", "discriminator hinge"),
        ("g_loss", "generator hinge"),
        ("cont_loss", "InfoNCE"),
        ("nce_top1_final", "InfoNCE top-1 acc (final)"),
        ("nce_top5_final", "InfoNCE top-5 acc (final)"),
        ("nce_top1_b1", "InfoNCE top-1 acc (b1)"),
        ("recon_spread", "reconstruction spread"),
        ("recon_mse", "reconstruction MSE"),
    ]
    colors = dict(zip(LABELS, plt.rcParams["axes.prop_cycle"].by_key()["color"]))
    fig, axes = plt.subplots(2, 4, figsize=(16, 6.5))
    for ax, (k, title) in zip(axes.flat, panels):
        for v, hist in histories.items():
            pts = [(h["step"], h[k]) for h in hist if k in h]
            if pts:
                ax.plot(*zip(*pts), label=LABELS[v], color=colors[v])
            if k == "recon_spread":
                real = [(h["step"], h["real_spread"]) for h in hist if "real_spread" in h]
                if real and v == next(iter(histories)):
                    ax.plot(*zip(*real), "k--", lw=0.8, label="real images")
        ax.set_title(title, fontsize=9)
        ax.set_xlabel("iteration", fontsize=8)
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize=6)
    fig.tight_layout()
    return fig


def grids(out: Any, models: dict[str, DCVAE], x_test: torch.Tensor, n: int, seed: int) -> None:
    """One PNG per variant: samples (top half), then test images over their reconstructions."""
    from torchvision.utils import save_image

    for v, model in models.items():
        samples = model.sample(n, generator=torch.Generator().manual_seed(seed))
        half = n // 2
        recon = model.reconstruct(x_test[:half], generator=torch.Generator().manual_seed(seed))
        pairs = torch.stack([x_test[:half], recon], dim=1).flatten(0, 1)
        save_image(
            torch.cat([samples, pairs]) * 0.5 + 0.5,
            out.path(f"figures/{v}_samples_recon.png"),
            nrow=int(n**0.5) if int(n**0.5) % 2 == 0 else 8,
        )


def untrained_probe(study: Study, train_xy, test_xy) -> float:
    torch.manual_seed(study.data.seed)
    m = DCVAE(study.model).eval()
    return E.linear_probe(
        m.encode_mean(train_xy[0]), train_xy[1], m.encode_mean(test_xy[0]), test_xy[1], study.data.seed
    )
