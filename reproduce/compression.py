"""python -m reproduce.compression: does compressing activations help model-parallel training?

Four parts, each a table in results/compression/<scale>/tables.md:
1. throughput: iteration time and bytes per compressor under TP and PP, at loopback and emulated links;
   encode+decode time per element against a plain copy;
2. accuracy: fine-tuning a truncated all-MiniLM-L6-v2 on Rotten Tomatoes under real TP=2 with each
   compressor on the latter half of the layers (and on every layer for some), mean and spread over seeds;
3. the cost model: predicted against measured iteration times, its held-out error, break-even bandwidths;
4. the study's findings, checked against what was measured here.
"""

from __future__ import annotations

import logging
import math
import time
from pathlib import Path

import pandas as pd
import torch
import yaml

from common.distributed import run_processes
from common.errors import UserError, require
from common.results import beside_paper
from compression import compressors as C
from compression import cost_model as CM
from compression.bench import BenchConfig, bench_worker, codec_times, combine, plan_for
from compression.models import BertConfig, Plan, validate
from compression.train import TrainConfig, run_settings
from reproduce import app

log = logging.getLogger("reproduce.compression")
PAPER = Path(__file__).parent / "data" / "compression_paper.yaml"


# ---------------------------------------------------------------------------------------------------------
# configs


def _spec(cfg, label: str) -> dict:
    require(label in cfg.compressors, f"unknown compressor label {label!r}; defined: {', '.join(cfg.compressors)}")
    return dict(cfg.compressors[label])


def check_compressors(cfg, hidden: int, tokens: int) -> None:
    """Every defined compressor must build for the accuracy model (bits, widths, k against the tensor)."""
    for label, spec in cfg.compressors.items():
        s = C.spec_from_dict(dict(spec))
        if s.k is not None:
            require(s.k <= tokens * hidden, f"compressors.{label}: k={s.k} is larger than the tensor it compresses "
                                            f"({tokens} tokens x {hidden} = {tokens * hidden} elements)")
        try:
            C.build(s, hidden)
        except UserError as exc:
            raise UserError(f"compressors.{label}: {exc}") from None


def accuracy_settings(cfg) -> list[tuple[str, str, TrainConfig]]:
    """(label, which layers, config) for every seed; bad settings raise UserError here, before any work."""
    a = cfg.accuracy
    n_layers = int(a.layers)
    check_compressors(cfg, 384, int(a.batch_size) // int(a.micro_batches) * int(a.seq_len))
    require(0 <= int(a.start_layer) < n_layers,
            f"accuracy.start_layer={a.start_layer} is out of range for a {n_layers}-layer model (0..{n_layers - 1})")
    out = []
    runs = [(lbl, int(a.start_layer)) for lbl in a.compressors] + [(lbl, 0) for lbl in a.early]
    for seed in a.seeds:
        for label, start in runs:
            tc = TrainConfig(tp=int(a.tp), pp=int(a.pp), micro_batches=int(a.micro_batches), layers=n_layers,
                             seq_len=int(a.seq_len), batch_size=int(a.batch_size), steps=int(a.get("steps") or 0),
                             lr=float(a.lr), weight_decay=float(a.weight_decay), dropout=float(a.dropout),
                             freeze_word_embeddings=bool(a.freeze_word_embeddings),
                             max_eval=int(a.get("max_eval") or 0) or None, seed=int(seed),
                             compressor=_spec(cfg, label), start_layer=start, backward=bool(a.backward))
            tc.check()
            which = f"{start}-{n_layers - 1}" if label != "none" else "-"
            out.append((label, which, tc))
    return out


def bench_config(cfg) -> BenchConfig:
    b = cfg.bench
    model = BertConfig(vocab=1000, hidden=int(b.hidden), heads=int(b.heads), ffn=int(b.ffn), layers=int(b.layers),
                       max_positions=max(512, int(b.seq_len)), dropout=0.0)
    bc = BenchConfig(model=model, batch_size=int(b.batch_size), seq_len=int(b.seq_len),
                     micro_batches=int(b.micro_batches), start_layer=int(b.start_layer), backward=bool(b.backward),
                     compressors={lbl: _spec(cfg, lbl) for lbl in b.compressors},
                     bandwidths_gbps=[float(g) or None for g in b.bandwidths_gbps], layouts=list(b.layouts),
                     warmup=int(b.warmup), warmup_first=int(b.get("warmup_first", 3)), iters=int(b.iters),
                     seed=int(cfg.seed))
    require(all(g is None or g > 0 for g in bc.bandwidths_gbps), "bench.bandwidths_gbps must be >= 0 (0: loopback)")
    require(set(bc.layouts) <= {"tp", "pp"}, f"bench.layouts must be tp and/or pp, got {list(bc.layouts)}")
    require("none" in bc.compressors, "bench.compressors must include none (the baseline of every speedup)")
    for label, spec in bc.compressors.items():
        for layout in bc.layouts:
            validate(model, plan_for(bc, spec, layout), bc.batch_size * bc.seq_len)
    return bc


# ---------------------------------------------------------------------------------------------------------
# the four parts


def run_bench(cfg, bc: BenchConfig) -> tuple[pd.DataFrame, pd.DataFrame, pd.DataFrame]:
    world = int(cfg.bench.world)
    per_rank = run_processes(bench_worker, world, args=(bc,), timeout_s=900)
    net = pd.DataFrame(per_rank[0]["net"])
    bench = pd.DataFrame(combine(per_rank))
    bench["layout_key"] = bench["layout"].str[:2].str.lower()
    torch.set_num_threads(1)  # as in the bench processes
    codec = pd.DataFrame(codec_times(bc.compressors, (bc.batch_size, bc.seq_len, bc.model.hidden), bc.model.hidden,
                                     int(cfg.bench.codec_repeats)))
    return bench, codec, net


def throughput_table(bench: pd.DataFrame) -> pd.DataFrame:
    base = bench[bench.compressor == "none"].set_index(["layout", "gbps"])["iter_s"]
    df = bench.assign(
        link=bench.gbps.map(lambda g: "loopback" if g == 0 else f"{g:g} Gbps"),
        MB_per_iter=bench.wire_bytes / 1e6,
        speedup=[base[(r.layout, r.gbps)] / r.iter_s for r in bench.itertuples()])
    return df[["layout", "link", "compressor", "iter_s", "MB_per_iter", "speedup"]]


def run_accuracy(cfg, settings, tracker=None) -> pd.DataFrame:
    """Fine-tune every setting (real TP x PP processes); each run's training loss goes to `tracker` per step."""
    rows = []
    seeds = list(cfg.accuracy.seeds)
    world = int(cfg.accuracy.tp) * int(cfg.accuracy.pp)
    for seed in seeds:
        batch = [s for s in settings if s[2].seed == seed]
        start = time.time()
        configs = [tc for _, _, tc in batch]
        if world == 1:
            per_rank = [run_settings(0, 1, configs)]
        else:
            per_rank = run_processes(run_settings, world, args=(configs,), timeout_s=3600)
        results = [next(r[i] for r in per_rank if r[i] is not None) for i in range(len(batch))]
        log.info("accuracy seed %s: %d settings in %.0fs", seed, len(batch), time.time() - start)
        for (label, which, tc), res in zip(batch, results):
            if tracker is not None:
                for i, loss in enumerate(l for l in res["losses"] if l is not None):
                    tracker.log({f"loss/{label}@{which}/seed{seed}": loss, "train_step": i})
            rows.append({"compressor": label, "layers": which, "seed": seed, "test_acc": res["test_acc"],
                         "final_loss": sum(res["losses"][-10:]) / len(res["losses"][-10:]),
                         "MB_per_step": res["bytes"] / 1e6 / tc.steps})
    return pd.DataFrame(rows)


def accuracy_table(runs: pd.DataFrame, cfg) -> pd.DataFrame:
    shape = (int(cfg.accuracy.batch_size), int(cfg.accuracy.seq_len), 384)
    g = runs.groupby(["compressor", "layers"], sort=False)
    out = g.agg(acc_mean=("test_acc", "mean"), acc_std=("test_acc", "std"), seeds=("seed", "count"),
                loss=("final_loss", "mean"), MB_per_step=("MB_per_step", "mean")).reset_index()
    out["per_seed"] = g["test_acc"].apply(lambda s: " ".join(f"{v:.3f}" for v in s)).values
    out["fewer_bytes"] = [C.build(C.spec_from_dict(_spec(cfg, c)), 384).ratio(shape) for c in out.compressor]
    return out[["compressor", "layers", "fewer_bytes", "acc_mean", "acc_std", "seeds", "per_seed", "loss", "MB_per_step"]]


def cost_model_tables(bc: BenchConfig, bench: pd.DataFrame, codec: pd.DataFrame, net: pd.DataFrame, world: int):
    msgs = {(layout, label): CM.messages(bc.model, plan_for(bc, spec, layout), layout, world, bc.batch_size,
                                         bc.seq_len, bc.micro_batches)
            for layout in bc.layouts for label, spec in bc.compressors.items()}
    model = CM.fit(bench, codec, net, world, msgs)
    pvm = CM.predicted_vs_measured(model, bench, msgs)
    held = pvm[~pvm.used_for_fit]
    rows = []
    for layout in bc.layouts:
        for label in bc.compressors:
            if label == "none":
                continue
            m, coded = msgs[(layout, label)]
            b = model.break_even_Bps(msgs[(layout, "none")][0], m, coded, label)
            rows.append({"layout": f"{layout.upper()}={world}", "compressor": label,
                         "MB_saved_per_iter": (sum(x.wire for x in msgs[(layout, 'none')][0]) - sum(x.wire for x in m)) / 1e6,
                         "codec_ms_per_iter": 1e3 * coded * model.codec_s_per_elem[label],
                         "break_even_Gbps": b * 8 / 1e9 if math.isfinite(b) else math.inf})
    fitted = {"compute_s": model.compute_s, "loopback_latency_us": {k: v * 1e6 for k, v in model.latency_s.items()},
              "loopback_GBps": {k: v / 1e9 for k, v in model.bandwidth_Bps.items()},
              "codec_ns_per_elem": {k: v * 1e9 for k, v in model.codec_s_per_elem.items()},
              "held_out_mean_abs_error_pct": float(held["error_%"].abs().mean()),
              "held_out_max_abs_error_pct": float(held["error_%"].abs().max()), "held_out_n": int(len(held))}
    return model, msgs, pvm, pd.DataFrame(rows), fitted


def break_even_figure(model, msgs, bench, bc, world):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    fig, axes = plt.subplots(1, len(bc.layouts), figsize=(5.5 * len(bc.layouts), 4), squeeze=False)
    gbps = np.logspace(-2, 2, 60)
    for ax, layout in zip(axes[0], bc.layouts):
        none_m, none_c = msgs[(layout, "none")]
        for i, label in enumerate(l for l in bc.compressors if l != "none"):
            m, coded = msgs[(layout, label)]
            sp = [model.predict(layout, "none", none_m, none_c, g * 1e9 / 8) / model.predict(layout, label, m, coded, g * 1e9 / 8)
                  for g in gbps]
            line, = ax.plot(gbps, sp, label=label)
            meas = bench[(bench.layout_key == layout) & (bench.gbps > 0)]
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


def message_table(cfg) -> pd.DataFrame:
    """Bytes one rank sends per tensor-parallel message in the study's setting, from the compressors'
    own payload sizes (the same code whose byte counts the tests check against the real collectives)."""
    m = cfg.message
    dtype = getattr(torch, m.dtype)
    shape, n = (int(m.batch_size), int(m.seq_len), int(m.hidden)), int(m.tp)
    full = CM._bytes(shape, dtype)
    rows = []
    for label, spec in m.compressors.items():
        comp = C.build(C.spec_from_dict(dict(spec)), int(m.hidden))
        msgs = CM._site(None if label == "none" else comp, shape, n, dtype)
        wire = sum(x.wire for x in msgs)
        rows.append({"compressor": label, "collective": "all_reduce" if label == "none" else comp.collective,
                     "payload_MB": sum(CM._bytes(s, d) for s, d in comp.payload_spec(shape, dtype)) / 1e6,
                     "wire_MB_per_rank": wire / 1e6, "fewer_bytes": full / sum(CM._bytes(s, d) for s, d in comp.payload_spec(shape, dtype)),
                     "vs_ring_all_reduce": 2 * (n - 1) / n * full / wire})
    return pd.DataFrame(rows)


def _verdict(diffs: list[tuple[str, float, float]]) -> str:
    """'holds' when every difference exceeds its spread, 'does not hold' when none does, else 'partly'."""
    sig = [d > spread for _, d, spread in diffs]
    return "holds" if all(sig) else "does not hold" if not any(sig) else "partly"


def findings(acc: pd.DataFrame | None, message: pd.DataFrame, cfg) -> pd.DataFrame:
    """The study's three findings against this run; an accuracy difference counts when it exceeds the
    larger of the two settings' standard deviations over seeds."""
    rows = []
    if acc is not None and len(acc):
        every = f"0-{int(cfg.accuracy.layers) - 1}"
        late = acc[(acc.layers != "-") & ((acc.layers != every) | (int(cfg.accuracy.start_layer) == 0))]
        std = lambda *r: max(float(x.acc_std) if pd.notna(x.acc_std) else 0.0 for x in r)  # noqa: E731
        ae = late[late.compressor.str.startswith("ae")]
        others = late[~late.compressor.str.startswith("ae")]
        if len(ae) and len(others):
            a = ae.loc[ae.acc_mean.idxmax()]
            diffs = [(o.compressor, a.acc_mean - o.acc_mean, std(a, o)) for o in others.itertuples()]
            rows.append({"finding": "the auto-encoder keeps accuracy best at equal bytes", "here": _verdict(diffs),
                         "evidence": f"{a.compressor} {a.acc_mean:.3f} +- {a.acc_std:.3f} vs " + ", ".join(
                             f"{o.compressor} {o.acc_mean:.3f} +- {o.acc_std:.3f}" for o in others.itertuples())
                         + f" (none {acc[acc.compressor == 'none'].acc_mean.max():.3f})"})
        early = acc[acc.layers == every] if int(cfg.accuracy.start_layer) > 0 else acc.iloc[0:0]
        diffs = []
        for e in early.itertuples():
            l = late[late.compressor == e.compressor]
            if len(l):
                diffs.append((e.compressor, l.acc_mean.iloc[0] - e.acc_mean, std(e, l.iloc[0]), e.acc_mean, l.acc_mean.iloc[0]))
        if diffs:
            rows.append({"finding": "compressing early layers hurts accuracy", "here": _verdict([d[:3] for d in diffs]),
                         "evidence": "; ".join(f"{c}: every layer {e:.3f} vs latter half {l:.3f} (spread {s:.3f})"
                                               for c, _, s, e, l in diffs)})
    int8 = message[message.compressor == "int8"]
    if len(int8):
        r = int8.iloc[0]
        rows.append({"finding": "int8 all-gather saves nothing against a ring all-reduce at TP=4",
                     "here": "holds" if r.vs_ring_all_reduce <= 1.0 + 1e-3 else "does not hold",
                     "evidence": f"{cfg.message.dtype}: int8 all-gather sends {r.wire_MB_per_rank:.1f} MB per rank vs "
                                 f"{r.wire_MB_per_rank * r.vs_ring_all_reduce:.1f} MB for the ring all-reduce "
                                 f"({r.vs_ring_all_reduce:.2f}x fewer); at fp32 int8 is 4x smaller and the all-gather "
                                 f"sends {2 * (int(cfg.message.tp) - 1) / int(cfg.message.tp) * 4 / (int(cfg.message.tp) - 1):.1f}x fewer"})
    return pd.DataFrame(rows)


def plan_text(cfg, settings, bc) -> str:
    a = cfg.accuracy
    lines = [f"accuracy: {len(settings)} fine-tunings ({len(a.compressors)} compressors from layer {a.start_layer}, "
             f"{len(a.early)} from layer 0, seeds {list(a.seeds)}), TP={a.tp} PP={a.pp}, {a.layers}-layer BERT, "
             f"seq {a.seq_len}, batch {a.batch_size}",
             f"bench: {len(bc.compressors)} compressors x layouts {bc.layouts} x links "
             f"{['loopback' if g is None else f'{g:g} Gbps' for g in bc.bandwidths_gbps]} on {cfg.bench.world} processes"]
    return "\n".join(lines)


# ---------------------------------------------------------------------------------------------------------


def run(ctx: app.RunContext) -> None:
    cfg = ctx.cfg
    paper = yaml.safe_load(PAPER.read_text())
    message = message_table(cfg)
    if ctx.scale == "paper":
        bc = bench_config(cfg)
        print(f"plan (scale=paper): {cfg.model.name} on GLUE {list(cfg.tasks)}, layouts {list(cfg.layouts)}, "
              f"{cfg.gpus} GPUs\n{plan_text(cfg, [None] * (len(cfg.accuracy.compressors) + len(cfg.accuracy.early)) * len(cfg.accuracy.seeds), bc)}")
        if not ctx.dry_run:
            raise UserError(f"scale=paper needs {cfg.gpus} GPUs, GLUE and bert-large-uncased weights (found "
                            f"{torch.cuda.device_count()} GPUs); this release runs it as a dry run only")
        return
    settings = accuracy_settings(cfg)
    bc = bench_config(cfg)
    print(plan_text(cfg, settings, bc))
    if ctx.dry_run:
        return
    world = int(cfg.bench.world)

    bench, codec, net = run_bench(cfg, bc)
    ctx.out.table("throughput", throughput_table(bench), title="Throughput per compressor (TP and PP, emulated links)",
                  note=f"Best of {bc.iters} rounds (each round times every setting once, interleaved) of one training "
                       "iteration (forward, backward, SGD step) of a "
                       f"{bc.model.layers}-layer BERT (hidden {bc.model.hidden}), batch {bc.batch_size} x seq "
                       f"{bc.seq_len}, layers >= {bc.start_layer} compressed (activation gradients too, except the "
                       "auto-encoder). MB_per_iter: bytes on the critical path per iteration (TP: per rank; PP: both "
                       "directions). Speedup over none at the same link. Times are noisy: the 2-core CPU is shared.")
    ctx.out.table("codec", codec, title="Encode + decode time per element vs a plain copy",
                  note=f"A ({bc.batch_size}, {bc.seq_len}, {bc.model.hidden}) fp32 tensor, one thread, best of "
                       f"{cfg.bench.codec_repeats}.")
    model, msgs, pvm, breakeven, fitted = cost_model_tables(bc, bench, codec, net, world)
    ctx.out.table("cost_model", pvm, title="Cost model: predicted vs measured iteration time",
                  note=f"Fitted on the uncompressed loopback run (compute), the loopback network micro-benchmark "
                       f"(latency, bandwidth) and the codec micro-benchmark; every other row is held out. Held-out mean |error| "
                       f"{fitted['held_out_mean_abs_error_pct']:.1f}% (max {fitted['held_out_max_abs_error_pct']:.1f}%, "
                       f"n={fitted['held_out_n']}).")
    ctx.out.table("break_even", breakeven, title="Break-even bandwidth per compressor (compression pays below it)",
                  note="inf: compression pays at any bandwidth (no codec cost measured); 0: it never pays "
                       "(no bytes saved).")
    ctx.out.json("cost_model_fit.json", fitted)
    ctx.out.table("network", net, title="Loopback network micro-benchmark (what latency and bandwidth are fitted to)")
    ctx.out.figure("break_even", break_even_figure(model, msgs, bench, bc, world))

    runs = run_accuracy(cfg, settings, ctx.tracker)
    for r in runs.itertuples():
        ctx.tracker.log({f"acc/{r.compressor}@{r.layers}/seed{r.seed}": r.test_acc})
    acc = accuracy_table(runs, cfg)
    ctx.out.table("accuracy_runs", runs, title="Accuracy: every run")
    ctx.out.table("accuracy", acc, title="Accuracy of fine-tuning with each compressor (Rotten Tomatoes test split)",
                  note=f"all-MiniLM-L6-v2 truncated to its first {cfg.accuracy.layers} layers, seq {cfg.accuracy.seq_len}, "
                       f"batch {cfg.accuracy.batch_size}, {cfg.accuracy.steps} AdamW steps (lr {cfg.accuracy.lr}), "
                       f"word embeddings frozen={cfg.accuracy.freeze_word_embeddings}, real TP={cfg.accuracy.tp} "
                       f"process(es); 'layers' are the compressed layers (forward all-reduces); mean and sample std "
                       f"over seeds {list(cfg.accuracy.seeds)} (the seed also changes the train/dev/test split). "
                       "fewer_bytes: per compressed message against fp32.")
    paper_msg = pd.DataFrame(paper["message"])
    ctx.out.table("message_bytes", beside_paper(message, paper_msg, on="compressor", columns=["fewer_bytes"]),
                  title=f"Bytes per tensor-parallel message at BERT-large (s={cfg.message.seq_len}, "
                        f"b={cfg.message.batch_size}, {cfg.message.dtype}, TP={cfg.message.tp})")
    found = findings(acc, message, cfg)
    paper_find = pd.DataFrame(paper["findings"])
    ctx.out.table("findings", found.merge(paper_find.rename(columns={"paper": "paper (paper)"}), on="finding", how="left"),
                  title="Do the study's findings hold here?", note=f"Paper column: {paper['source']}.")
    ctx.tracker.summary({"cost_model_held_out_mean_abs_error_pct": fitted["held_out_mean_abs_error_pct"]})


if __name__ == "__main__":
    app.main("compression", run)
