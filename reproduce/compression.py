"""python -m reproduce.compression: does compressing activations help model-parallel training?

Config -> `compression.study` (fine-tunings under TP2, PP2 and TP2xPP2, the throughput bench, the cost model)
-> tables, a figure and the claims report (`compression.findings`) in results/compression/<scale>/.
"""

from __future__ import annotations

import time
from pathlib import Path

import pandas as pd
import torch
import yaml
from omegaconf import OmegaConf

from common.claims import write_claims
from common.errors import UserError
from common.results import beside_paper
from compression import findings, study
from compression.bench import load_average
from reproduce import app

PAPER = Path(__file__).parent / "data" / "compression_paper.yaml"


def accuracy_note(s: study.StudyConfig) -> str:
    t = s.train
    data = f"GLUE {t.task} (dev)" if t.glue_root else "Rotten Tomatoes (test split)"
    return (
        f"{t.model_path or 'all-MiniLM-L6-v2'} truncated to its first {t.layers} layers, {data}, seq {t.seq_len}, "
        f"batch {t.batch_size}, {t.steps} AdamW steps (lr {t.lr}) per layout, word embeddings frozen="
        f"{t.freeze_word_embeddings}, real processes per layout ({t.micro_batches} GPipe micro-batches on "
        f"pipeline layouts). 'layers' are the compressed layers (forward all-reduces and pipeline cuts in front "
        f"of them); mean and sample std over seeds {s.seeds} (the seed also changes Rotten Tomatoes' split). "
        "fewer_bytes: per compressed message against fp32. group: main (latter layers), early (every layer), "
        "high_ratio (the study's compression ratio, ~20x), ablation (other auto-encoder settings)."
    )


def paths_text(s: study.StudyConfig) -> str:
    t = s.train
    found = {p: Path(p).exists() for p in (t.model_path, t.glue_root) if p}
    listed = ", ".join(f"{p} ({'found' if ok else 'MISSING'})" for p, ok in found.items())
    return "paths: " + (listed or "packaged data")


def run(ctx: app.RunContext) -> None:
    raw = OmegaConf.to_container(ctx.cfg, resolve=True)
    s = study.StudyConfig.parse(raw)
    paper = yaml.safe_load(PAPER.read_text())
    print(study.plan_text(s, ctx.scale) + "\n" + paths_text(s))
    if ctx.dry_run:
        return
    if s.train.missing_paths():
        raise UserError(
            f"not found: {', '.join(s.train.missing_paths())} (accuracy.model_path: a Hugging Face BERT "
            "directory; accuracy.glue_root: GLUE's task folders)"
        )
    out, started = ctx.out, time.time()
    stage_s: dict[str, float] = {}

    def stage(name: str, t0: float) -> None:
        stage_s[name] = round(time.time() - t0, 1)
        print(f"stage {name}: {stage_s[name]:.0f}s (total {time.time() - started:.0f}s)", flush=True)

    t0 = time.time()
    bench, codec, net = study.run_bench(s.bench, s.bench_world, s.codec_repeats)
    stage("bench", t0)
    thr = study.throughput_table(bench)
    bc = s.bench
    out.table(
        "throughput",
        thr,
        title="Throughput per compressor (TP and PP, emulated links)",
        note=f"Best of {bc.iters} rounds (each times every setting once, interleaved) of one training iteration "
        f"(forward, backward, SGD step) of a {bc.model.layers}-layer BERT (hidden {bc.model.hidden}), batch "
        f"{bc.batch_size} x seq {bc.seq_len}, layers >= {bc.start_layer} compressed (activation gradients "
        "too, except the auto-encoder). MB_per_iter: bytes on the critical path per iteration (TP: per "
        "rank, with a shared auto-encoder's gradient all-reduce; PP: both directions). Speedup over none at "
        "the same link. Times are noisy: the 2-core CPU is shared.",
    )
    out.table(
        "codec",
        codec,
        title="Encode + decode time per element vs a plain copy",
        note="One thread, the copy timed in turn with each codec in the same loop, best of "
        f"{s.codec_repeats}, in the first bench process after its runs (allocator: {codec.attrs['allocator']}). "
        "`python -m compression.bench codecs` prints the same at (128, 32, 768).",
    )
    cm = study.cost_model_report(bc, bench, codec, net, s.bench_world)
    f = cm.fitted
    out.table(
        "cost_model",
        cm.predicted,
        title="Cost model: predicted vs measured iteration time",
        note="Fitted on the uncompressed runs (compute: their median after modelled communication), the loopback "
        "network micro-benchmark (latency, bandwidth) and the codec micro-benchmark; every compressed row is held "
        "out. Pipeline rows follow the GPipe schedule (a send overlaps the other stage's compute). Held-out "
        "mean |error| "
        f"{f['held_out_mean_abs_error_pct']:.1f}% (max {f['held_out_max_abs_error_pct']:.1f}%, Spearman "
        f"{f['held_out_spearman']:.2f}, n={f['held_out_n']}); ordered as measured: "
        f"{100 * f['held_out_order_agreement']:.0f}% of the {f['held_out_pairs_resolved']} pairs whose measured "
        "times differ by more than their noise_s (each run's median round minus its best, floored at "
        f"{f['noise_floor_pct']:.1f}% of its time).",
    )
    out.table(
        "break_even",
        cm.break_even,
        title="Break-even bandwidth per compressor (compression pays below it)",
        note="inf: pays at any bandwidth (no codec cost measured); 0: never (no bytes saved).",
    )
    out.json("cost_model_fit.json", f)
    out.table("network", net, title="Loopback network micro-benchmark (what latency and bandwidth are fitted to)")
    out.figure("break_even", study.break_even_figure(cm, bench, bc, s.bench_world))

    shape = (s.train.batch_size, s.train.seq_len, s.train.model_config().hidden)
    t0 = time.time()
    runs = study.run_accuracy(s.settings("main") + s.settings("early") + s.settings("high_ratio"), ctx.tracker)
    stage("accuracy", t0)
    message = study.message_table(s.message)
    rules = {**s.claims, "dtype": s.message["dtype"]}

    def decide(acc):
        return findings.study_claims(acc, thr, cm.break_even, f, message, rules, paper["claims"])

    acc = study.accuracy_table(runs, s.specs, shape)

    def failed() -> bool:  # the learning-based finding fails at some ratio (decided again, with the ablation, after)
        return any(ok is False for ok, _ in findings.learning_verdicts(acc, rules).values())

    # the ablation varies the main-ratio auto-encoder: run when that finding fails (decided only if one is configured)
    if s.ablation and (s.ablation_when == "always" or (s.ablation_when == "failed" and failed())):
        t0 = time.time()
        runs = pd.concat([runs, study.run_accuracy(s.settings("ablation"), ctx.tracker)], ignore_index=True)
        stage("ablation", t0)
        acc = study.accuracy_table(runs, s.specs, shape)
    out.table("accuracy_runs", runs, title="Accuracy: every run")
    out.table("accuracy", acc, title="Accuracy of fine-tuning with each compressor, per layout", note=accuracy_note(s))
    out.table(
        "message_bytes",
        beside_paper(message, pd.DataFrame(paper["message"]), on="compressor", columns=["fewer_bytes"]),
        title=f"Bytes per tensor-parallel message at BERT-large (s={s.message['seq_len']}, "
        f"b={s.message['batch_size']}, {s.message['dtype']}, TP={s.message['tp']})",
    )
    claims = decide(acc)
    write_claims(out, claims, "compression", ctx.scale)
    out.note(f"Claims: {', '.join(f'{c.key} {c.verdict}' for c in claims)} (claims.md). Paper: {paper['source']}.")
    stage_s["total"] = round(time.time() - started, 1)
    out.json("timing.json", {"stage_s": stage_s, "threads": torch.get_num_threads(), "load_average": load_average()})
    ctx.tracker.summary(
        {"cost_model_held_out_mean_abs_error_pct": f["held_out_mean_abs_error_pct"], "wall_s": stage_s["total"]}
    )


if __name__ == "__main__":
    app.main("compression", run)
