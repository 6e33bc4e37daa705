"""The study as library calls: its config parsed once into typed objects (`StudyConfig.parse`), the fine-tunings
under every layout (`run_accuracy`), the throughput benchmark (`run_bench`), the cost model fitted and checked
on held-out runs (`cost_model_report`), and the tables and figure `python -m reproduce.compression` writes.
The findings are decided from these tables in `compression.findings`.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import pandas as pd
import torch

from common.distributed import run_processes
from common.errors import require

from . import cost_model as CM
from .bench import BenchConfig, bench_worker, combine, load_average, plan_for
from .compressors import CompressorSpec, parse_specs
from .models import BertConfig, validate
from .train import TrainConfig, run_settings

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Layout:
    """A tensor x pipeline parallel layout (tp * pp processes)."""

    tp: int = 1
    pp: int = 1

    @property
    def world(self) -> int:
        return self.tp * self.pp

    @property
    def name(self) -> str:
        parts = [f"TP{self.tp}" if self.tp > 1 else "", f"PP{self.pp}" if self.pp > 1 else ""]
        return "x".join(p for p in parts if p) or "1 process"

    @classmethod
    def parse(cls, d: Mapping) -> Layout:
        require(set(d) <= {"tp", "pp"}, f"a layout has keys tp and pp, got {sorted(d)}")
        out = cls(int(d.get("tp", 1)), int(d.get("pp", 1)))
        require(out.tp >= 1 and out.pp >= 1, f"tp and pp must be >= 1, got {dict(d)}")
        return out


@dataclass(frozen=True)
class Setting:
    """One fine-tuning: a layout, a compressor (its label), the layers it compresses, a seed."""

    layout: Layout
    label: str
    layers: str  # "2-3", or "-" for no compression
    group: str  # main (latter layers), early (every layer), high_ratio (the study's ratio) or ablation
    cfg: TrainConfig


@dataclass
class StudyConfig:
    """Everything a run of the study needs, checked before any work starts."""

    specs: dict[str, CompressorSpec]
    train: TrainConfig  # the shared fine-tuning settings (layout, compressor and seed set per setting)
    layouts: list[Layout]
    compressors: list[str]
    early: list[str]
    early_layouts: list[Layout]
    high_ratio: list[str]
    high_ratio_layouts: list[Layout]
    seeds: list[int]
    ablation: list[str]
    ablation_layout: Layout | None
    ablation_when: str
    bench: BenchConfig
    bench_world: int
    codec_repeats: int
    message: dict[str, Any]
    claims: dict[str, float]
    extra: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def parse(cls, cfg: Mapping) -> StudyConfig:
        specs = parse_specs(cfg["compressors"])
        a = dict(cfg["accuracy"])

        def labels(names, where) -> list[str]:
            names = [str(n) for n in names]
            unknown = [n for n in names if n not in specs]
            require(not unknown, f"{where}: unknown compressor label(s) {unknown}; defined: {', '.join(specs)}")
            return names

        keys = {f for f in TrainConfig.__dataclass_fields__} - {"tp", "pp", "seed", "compressor", "start_layer"}
        train = TrainConfig(**{k: v for k, v in a.items() if k in keys})
        train = replace(train, max_eval=train.max_eval or None)
        layouts = [Layout.parse(d) for d in a["layouts"]]
        require(layouts, "accuracy.layouts must name at least one layout")
        require(
            0 <= int(a["start_layer"]) < train.layers,
            f"accuracy.start_layer={a['start_layer']} is out of range "
            f"for a {train.layers}-layer model (0..{train.layers - 1})",
        )
        ab = dict(cfg.get("ablation") or {})
        require(ab.get("when", "never") in ("failed", "always", "never"), "ablation.when: failed, always or never")
        b = dict(cfg["bench"])
        model = BertConfig(
            vocab=1000,
            hidden=int(b["hidden"]),
            heads=int(b["heads"]),
            ffn=int(b["ffn"]),
            layers=int(b["layers"]),
            max_positions=max(512, int(b["seq_len"])),
            dropout=0.0,
        )
        bc = BenchConfig(
            model=model,
            batch_size=int(b["batch_size"]),
            seq_len=int(b["seq_len"]),
            micro_batches=int(b["micro_batches"]),
            start_layer=int(b["start_layer"]),
            backward=bool(b["backward"]),
            compressors={lbl: specs[lbl] for lbl in labels(b["compressors"], "bench.compressors")},
            bandwidths_gbps=[float(g) or None for g in b["bandwidths_gbps"]],
            layouts=list(b["layouts"]),
            warmup=int(b["warmup"]),
            warmup_first=int(b["warmup_first"]),
            iters=int(b["iters"]),
            seed=int(cfg.get("seed", 0)),
        )
        require(all(g is None or g > 0 for g in bc.bandwidths_gbps), "bench.bandwidths_gbps must be >= 0 (0: loopback)")
        require(set(bc.layouts) <= {"tp", "pp"}, f"bench.layouts must be tp and/or pp, got {list(bc.layouts)}")
        require("none" in bc.compressors, "bench.compressors must include none (the baseline of every speedup)")
        out = cls(
            specs=specs,
            train=train,
            layouts=layouts,
            compressors=labels(a["compressors"], "accuracy.compressors"),
            early=labels(a["early"], "accuracy.early"),
            early_layouts=[Layout.parse(d) for d in a.get("early_layouts") or a["layouts"]],
            high_ratio=labels(a.get("high_ratio") or [], "accuracy.high_ratio"),
            high_ratio_layouts=[Layout.parse(d) for d in a.get("high_ratio_layouts") or a["layouts"]],
            seeds=[int(s) for s in a["seeds"]],
            ablation=labels(ab.get("compressors", []), "ablation.compressors"),
            ablation_layout=Layout.parse(ab["layout"]) if ab.get("layout") else None,
            ablation_when=str(ab.get("when", "never")),
            bench=bc,
            bench_world=int(b["world"]),
            codec_repeats=int(b["codec_repeats"]),
            message=dict(cfg["message"]),
            claims=dict(cfg["claims"]),
            extra={"start_layer": int(a["start_layer"])},
        )
        out.check()
        return out

    @property
    def start_layer(self) -> int:
        return self.extra["start_layer"]

    def check(self) -> None:
        """Every setting and bench plan builds (widths, k against the tensor, layers): UserErrors before any work."""
        t = self.train
        require(self.codec_repeats >= 1, f"bench.codec_repeats must be >= 1, got {self.codec_repeats}")
        if t.model_path is None or Path(t.model_path).exists():
            hidden = t.model_config().hidden
            for label in dict.fromkeys(self.compressors + self.early + self.high_ratio + self.ablation):  # all used
                self.specs[label].check(hidden, t.batch_size // t.micro_batches * t.seq_len, label)
        self.settings("main")
        self.settings("early")
        self.settings("high_ratio")
        self.settings("ablation")
        for spec in self.bench.compressors.values():
            for layout in self.bench.layouts:
                tokens = self.bench.batch_size * self.bench.seq_len
                validate(self.bench.model, plan_for(self.bench, spec, layout), tokens)

    def settings(self, group: str) -> list[Setting]:
        """The fine-tunings of a group: main (every compressor from `start_layer` under every layout), early
        (from layer 0, under `early_layouts`), high_ratio (the study-ratio compressors from `start_layer` under
        `high_ratio_layouts`) or ablation (the ablation compressors from `start_layer` under the ablation layout)."""
        n = self.train.layers
        path = self.train.model_path
        model = self.train.model_config() if path is None or Path(path).exists() else None
        if group == "main":
            runs = [(lay, lbl, self.start_layer) for lay in self.layouts for lbl in self.compressors]
        elif group == "early":
            runs = [(lay, lbl, 0) for lay in self.early_layouts for lbl in self.early]
        elif group == "high_ratio":
            runs = [(lay, lbl, self.start_layer) for lay in self.high_ratio_layouts for lbl in self.high_ratio]
        else:
            runs = [(self.ablation_layout or self.layouts[0], lbl, self.start_layer) for lbl in self.ablation]
        out = []
        for seed in self.seeds:
            for layout, label, start in runs:
                spec = self.specs[label]
                tc = replace(
                    self.train,
                    tp=layout.tp,
                    pp=layout.pp,
                    seed=seed,
                    compressor=spec,
                    start_layer=start,
                    micro_batches=self.train.micro_batches if layout.pp > 1 else 1,
                )
                tc.check()
                if model is not None:
                    require(
                        model.heads % layout.tp == 0 and model.ffn % layout.tp == 0,
                        f"{layout.name}: {model.heads} heads do not split over tp={layout.tp}",
                    )
                    require(
                        layout.pp <= model.layers,
                        f"{layout.name}: {layout.pp} stages need at least as many layers (have {model.layers})",
                    )
                out.append(Setting(layout, label, f"{start}-{n - 1}" if spec.active else "-", group, tc))
        return out


def run_accuracy(settings: list[Setting], tracker=None, timeout_s: float = 3600) -> pd.DataFrame:
    """Run every fine-tuning on real processes (one process group per layout, its settings and seeds in turn: a
    group's start-up, imports and data loading are paid once); one row per run. Each run's training loss goes to
    `tracker`."""
    rows = []
    for layout in dict.fromkeys(s.layout for s in settings):
        batch = [s for s in settings if s.layout == layout]
        configs = [s.cfg for s in batch]
        start = time.time()
        if layout.world == 1:
            per_rank = [run_settings(0, 1, configs)]
        else:
            per_rank = run_processes(run_settings, layout.world, args=(configs,), timeout_s=timeout_s)
        results = [next(r[i] for r in per_rank if r[i] is not None) for i in range(len(batch))]
        log.info("accuracy %s: %d settings in %.0fs", layout.name, len(batch), time.time() - start)
        for s, res in zip(batch, results):
            seed = s.cfg.seed
            tag = f"{layout.name}/{s.label}@{s.layers}/seed{seed}"
            if tracker is not None:
                for i, loss in enumerate(res["losses"]):
                    tracker.log({f"loss/{tag}": loss, "train_step": i})
                tracker.log({f"acc/{tag}": res["eval_acc"]})
            tail = res["losses"][-10:]
            rows.append(
                {
                    "layout": layout.name,
                    "compressor": s.label,
                    "layers": s.layers,
                    "group": s.group,
                    "seed": seed,
                    "acc": res["eval_acc"],
                    "final_loss": sum(tail) / len(tail),
                    "MB_per_step": res["bytes"] / 1e6 / s.cfg.steps,
                    **({"dev_acc": res["dev_acc"]} if "dev_acc" in res else {}),  # `TrainConfig.eval_dev` (dev_select)
                }
            )
    return pd.DataFrame(rows)


def accuracy_table(runs: pd.DataFrame, specs: dict[str, CompressorSpec], shape: tuple[int, int, int]) -> pd.DataFrame:
    """Mean and sample std over seeds per (layout, compressor, compressed layers), each seed's accuracy (per_seed,
    in the order of seed_ids: the early-layers finding pairs them); fewer_bytes per message."""
    g = runs.groupby(["layout", "compressor", "layers", "group"], sort=False)
    out = g.agg(
        acc_mean=("acc", "mean"),
        acc_std=("acc", "std"),
        seeds=("seed", "count"),
        loss=("final_loss", "mean"),
        MB_per_step=("MB_per_step", "mean"),
    ).reset_index()
    out["per_seed"] = g["acc"].apply(lambda s: " ".join(f"{v:.4f}" for v in s)).values
    out["seed_ids"] = g["seed"].apply(lambda s: " ".join(str(int(v)) for v in s)).values  # per_seed's seeds
    out["family"] = [specs[c].family for c in out.compressor]
    out["fewer_bytes"] = [specs[c].fewer_bytes(shape) for c in out.compressor]
    return out[
        [
            "layout",
            "compressor",
            "family",
            "layers",
            "group",
            "fewer_bytes",
            "acc_mean",
            "acc_std",
            "seeds",
            "per_seed",
            "seed_ids",
            "loss",
            "MB_per_step",
        ]
    ]


def run_bench(bc: BenchConfig, world: int, codec_repeats: int) -> tuple[pd.DataFrame, pd.DataFrame, pd.DataFrame]:
    """Iteration time and bytes per (layout, compressor, link) on `world` processes, the loopback network
    micro-benchmark, and the codec micro-benchmark (one thread, in the first bench process after its runs: its
    allocator set to reuse freed memory there, never in this process, whose later work keeps glibc as started)."""
    load = load_average()
    per_rank = run_processes(bench_worker, world, args=(bc, codec_repeats), timeout_s=1800)
    net = pd.DataFrame(per_rank[0]["net"])
    bench = pd.DataFrame(combine(per_rank))
    bench["layout_key"] = bench["layout"].str[:2].str.lower()
    codec = pd.DataFrame(per_rank[0]["codec"])
    codec.attrs["allocator"] = per_rank[0]["allocator"]
    if load is not None:  # the mean of the 1-minute load average before and after the bench (other processes)
        bench.attrs["load_average"] = (load + load_average()) / 2
    return bench, codec, net


def throughput_table(bench: pd.DataFrame) -> pd.DataFrame:
    base = bench[bench.compressor == "none"].set_index(["layout", "gbps"])["iter_s"]
    df = bench.assign(
        link=bench.gbps.map(lambda g: "loopback" if g == 0 else f"{g:g} Gbps"),
        MB_per_iter=bench.wire_bytes / 1e6,
        speedup=[base[(r.layout, r.gbps)] / r.iter_s for r in bench.itertuples()],
    )
    return df[["layout", "link", "gbps", "compressor", "iter_s", "MB_per_iter", "speedup"]]


@dataclass
class CostModelReport:
    model: CM.CostModel
    msgs: dict
    predicted: pd.DataFrame  # predicted vs measured, every bench row
    break_even: pd.DataFrame
    fitted: dict


def cost_model_report(
    bc: BenchConfig, bench: pd.DataFrame, codec: pd.DataFrame, net: pd.DataFrame, world: int
) -> CostModelReport:
    """Fit the cost model (uncompressed loopback run, network and codec micro-benchmarks) and predict every other
    bench row (held out); the break-even bandwidth per compressor."""
    msgs = {
        (layout, label): CM.messages(
            bc.model, plan_for(bc, spec, layout), layout, world, bc.batch_size, bc.seq_len, bc.micro_batches
        )
        for layout in bc.layouts
        for label, spec in bc.compressors.items()
    }
    model = CM.fit(bench, codec, net, world, msgs)
    pvm = CM.predicted_vs_measured(model, bench, msgs)
    held = pvm[~pvm.used_for_fit]
    rows = []
    for layout in bc.layouts:
        none_msgs = msgs[(layout, "none")][0]
        for label in bc.compressors:
            if label == "none":
                continue
            m, coded = msgs[(layout, label)]
            b = model.break_even_Bps(none_msgs, m, coded, label)
            rows.append(
                {
                    "layout": f"{layout.upper()}={world}",
                    "compressor": label,
                    "MB_saved_per_iter": (sum(x.wire for x in none_msgs) - sum(x.wire for x in m)) / 1e6,
                    "codec_ms_per_iter": 1e3 * coded * model.codec_s_per_elem[label],
                    "break_even_Gbps": b * 8 / 1e9 if math.isfinite(b) else math.inf,
                }
            )
    from scipy.stats import spearmanr

    fitted = {
        "compute_s": model.compute_s,
        "loopback_latency_us": {k: v * 1e6 for k, v in model.latency_s.items()},
        "loopback_GBps": {k: v / 1e9 for k, v in model.bandwidth_Bps.items()},
        "codec_ns_per_elem": {k: v * 1e9 for k, v in model.codec_s_per_elem.items()},
        "held_out_mean_abs_error_pct": float(held["error_%"].abs().mean()),
        "held_out_max_abs_error_pct": float(held["error_%"].abs().max()),
        "held_out_n": int(len(held)),
        "held_out_spearman": float(spearmanr(held.predicted_s, held.measured_s).statistic)
        if len(held) > 2
        else float("nan"),
    }
    order = CM.order_agreement(held)
    fitted.update(
        held_out_order_agreement=order["agreement"],
        held_out_pairs=order["pairs"],
        held_out_pairs_resolved=order["resolved"],
        noise_floor_pct=order["noise_floor_pct"],
        held_out_median_noise_pct=float((100 * held.noise_s / held.measured_s).median()) if len(held) else 0.0,
    )
    if "load_average" in bench.attrs:
        fitted["load_average"] = float(bench.attrs["load_average"])
    return CostModelReport(model, msgs, pvm, pd.DataFrame(rows), fitted)


def break_even_figure(report: CostModelReport, bench: pd.DataFrame, bc: BenchConfig, world: int):
    """Predicted speedup over no compression against link bandwidth (lines), measured speedups (dots)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    fig, axes = plt.subplots(1, len(bc.layouts), figsize=(5.5 * len(bc.layouts), 4), squeeze=False)
    gbps = np.logspace(-2, 2, 60)
    model, msgs = report.model, report.msgs
    for ax, layout in zip(axes[0], bc.layouts):
        none_m, none_c = msgs[(layout, "none")]
        meas = bench[(bench.layout_key == layout) & (bench.gbps > 0)]
        for label in (lbl for lbl in bc.compressors if lbl != "none"):
            m, coded = msgs[(layout, label)]
            sp = [
                model.predict(layout, "none", none_m, none_c, g * 1e9 / 8)
                / model.predict(layout, label, m, coded, g * 1e9 / 8)
                for g in gbps
            ]
            (line,) = ax.plot(gbps, sp, label=label)
            for g in sorted(meas.gbps.unique()):
                t_none = meas[(meas.gbps == g) & (meas.compressor == "none")].iter_s.iloc[0]
                t_c = meas[(meas.gbps == g) & (meas.compressor == label)].iter_s.iloc[0]
                ax.plot([g], [t_none / t_c], "o", color=line.get_color())
        ax.axhline(1.0, color="k", lw=0.8)
        ax.set_xscale("log")
        ax.set_xlabel("link bandwidth (Gbps)")
        ax.set_ylabel("speedup over no compression")
        ax.set_title(f"{layout.upper()}={world}: cost model (lines), measured (dots)")
        ax.legend(fontsize=7)
    return fig


def message_table(message: Mapping) -> pd.DataFrame:
    """Bytes one rank sends per tensor-parallel message in the study's setting (`message:` block: hidden,
    seq_len, batch_size, tp, dtype, compressors), from the compressors' own payload sizes."""
    dtype = getattr(torch, str(message["dtype"]))
    shape, n = (int(message["batch_size"]), int(message["seq_len"]), int(message["hidden"])), int(message["tp"])
    full = CM.tensor_bytes(shape, dtype)
    rows = []
    for label, spec in parse_specs(message["compressors"]).items():
        comp = spec.build(shape[-1])
        msgs = CM.site_messages(comp if spec.active else None, shape, n, dtype)
        wire = sum(x.wire for x in msgs)
        payload = sum(CM.tensor_bytes(s, d) for s, d in comp.payload_spec(shape, dtype))
        rows.append(
            {
                "compressor": label,
                "collective": comp.collective if spec.active else "all_reduce",
                "payload_MB": payload / 1e6,
                "wire_MB_per_rank": wire / 1e6,
                "fewer_bytes": full / payload,
                "vs_ring_all_reduce": 2 * (n - 1) / n * full / wire,
            }
        )
    return pd.DataFrame(rows)


def plan_text(study: StudyConfig, scale: str) -> str:
    t = study.train
    n = {g: len(study.settings(g)) for g in ("main", "early", "high_ratio", "ablation")}
    data = f"GLUE {t.task} at {t.glue_root}" if t.glue_root else "Rotten Tomatoes"
    model = t.model_path or "all-MiniLM-L6-v2"
    return "\n".join(
        [
            f"accuracy ({scale}): {n['main'] + n['early'] + n['high_ratio']} fine-tunings ({len(study.compressors)} "
            f"compressors from layer {study.start_layer} under {[lay.name for lay in study.layouts]}, "
            f"{len(study.early)} from layer 0 under {[lay.name for lay in study.early_layouts]}, "
            f"{len(study.high_ratio)} at the study's ratio under {[lay.name for lay in study.high_ratio_layouts]}), "
            f"seeds {study.seeds}; {t.layers}-layer BERT "
            f"({model}), "
            f"seq {t.seq_len}, batch {t.batch_size}, {t.steps} steps; data: {data}",
            f"ablation ({study.ablation_when}): {n['ablation']} fine-tunings of {study.ablation} under "
            f"{(study.ablation_layout or study.layouts[0]).name}",
            f"bench: {len(study.bench.compressors)} compressors x layouts {study.bench.layouts} x links "
            f"{['loopback' if g is None else f'{g:g} Gbps' for g in study.bench.bandwidths_gbps]} on "
            f"{study.bench_world} processes",
        ]
    )
