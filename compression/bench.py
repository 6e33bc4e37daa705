"""Throughput of compressed tensor and pipeline parallelism: iteration time and bytes on the wire per
compressor, on loopback and over emulated links (`common.links.Link`: every collective and send waits out
the link model's time for its bytes); and encode+decode time per element against a plain copy.

A randomly initialised BERT-style model is enough here (time and bytes do not depend on the weights).
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass, field

import numpy as np
import torch
import torch.distributed as dist

from common.links import Link

from . import compressors as C
from . import fused
from .models import BertConfig, BertModel, Plan
from .parallel import setup
from .train import forward_backward


@dataclass
class BenchConfig:
    model: BertConfig = field(default_factory=lambda: BertConfig(vocab=1000, layers=4, dropout=0.0))
    batch_size: int = 8
    seq_len: int = 64
    micro_batches: int = 2  # pipeline only
    start_layer: int = 0
    backward: bool = True  # also compress activation gradients (not for the auto-encoder)
    compressors: dict[str, C.CompressorSpec] = field(default_factory=lambda: {"none": C.CompressorSpec("none")})
    bandwidths_gbps: list[float | None] = field(default_factory=lambda: [None])  # None: loopback
    layouts: list[str] = field(default_factory=lambda: ["tp", "pp"])
    warmup: int = 0  # untimed iterations before each timed one (plus `warmup_first` once per layout, and one of
    # every setting before the rounds)
    warmup_first: int = 3
    iters: int = 3  # rounds over all settings; a measurement is its best round (noise only adds), its noise the
    # median round's excess over it
    seed: int = 0


def plan_for(cfg: BenchConfig, spec: C.CompressorSpec, layout: str) -> Plan:
    """Compress what the layout communicates: TP all-reduces under TP, pipeline cuts under PP."""
    s = spec
    return Plan(
        s,
        cfg.start_layer,
        cfg.backward and s.name not in ("none", "identity", "autoencoder"),
        cfg.seed,
        tp_sites=layout == "tp",
        pp_cuts=layout == "pp",
    )


def _iteration(model, par, batch, cfg: BenchConfig, opt) -> tuple[float, dict]:
    """One timed training iteration (between barriers) and what its communicators counted."""
    for c in par.comms():
        c.reset()
    dist.barrier()
    start = time.perf_counter()
    opt.zero_grad(set_to_none=True)
    forward_backward(model, par, *batch, cfg.micro_batches if par.pp > 1 else 1)
    opt.step()
    dist.barrier()
    seconds = time.perf_counter() - start
    stats = [s for c in par.comms() for s in c.stats.values()]
    return seconds, {
        "wire_bytes": sum(s.wire_bytes for s in stats),
        "messages": sum(s.calls for s in stats),
        "comm_s": sum(s.seconds for s in stats),
    }


def network_times(par, layout: str, sizes: list[int], repeats: int = 10) -> list[dict]:
    """Loopback seconds of one message per size (best of `repeats`: on a shared machine the noise only
    adds): a tensor-parallel all-reduce, or a one-way send (half a ping-pong between the first two stages),
    from the shared link micro-benchmark. What the cost model's latency and bandwidth are fitted to."""
    from common.parallel import link_bench

    if layout == "tp":
        rows = link_bench.all_reduce(sizes, par.tp_comm.group, repeats=repeats, warmup=1, stat="min")
    else:
        rows = link_bench.ping_pong(sizes, par.peer(0), par.peer(1), repeats=repeats, warmup=1, stat="min")
    return [{"layout": layout, "bytes": r["bytes"], "seconds": r["seconds"]} for r in rows]


def bench_worker(rank: int, world: int, cfg: BenchConfig, codec_repeats: int = 0) -> dict:
    """Every (layout, compressor, bandwidth) on `world` processes; this rank's rows (its bytes, its time)
    and the loopback network micro-benchmark. With `codec_repeats`, the first rank then times the codecs too
    (`codec_times`, best of that many, on one (batch, seq, hidden) activation): in this process, which ends after it,
    with freed memory reused (`reuse_freed_memory`), as the codec bench command times them, and with the quantizer's
    kernels already compiled by the runs."""
    rows, net = [], []
    g = torch.Generator().manual_seed(cfg.seed)
    ids = torch.randint(0, cfg.model.vocab, (cfg.batch_size, cfg.seq_len), generator=g)
    batch = (ids, torch.ones_like(ids), torch.randint(0, cfg.model.classes, (cfg.batch_size,), generator=g))
    for layout in cfg.layouts:
        par = setup(world, 1) if layout == "tp" else setup(1, world)
        act = cfg.batch_size * cfg.seq_len * cfg.model.hidden * 4
        net += network_times(par, layout, sorted({act // 64, act // 8, act, 4 * act}))
        runs = {}
        for label, spec in cfg.compressors.items():
            torch.manual_seed(cfg.seed)
            model = BertModel(cfg.model, par, plan_for(cfg, spec, layout))
            runs[label] = (model, torch.optim.SGD(model.parameters(), lr=1e-4))
        first_model, first_opt = next(iter(runs.values()))
        for _ in range(cfg.warmup_first):  # first use of this layout's groups and buffers
            _iteration(first_model, par, batch, cfg, first_opt)
        for model, opt in list(runs.values())[1:]:  # every other setting's first call (allocation, compilation)
            _iteration(model, par, batch, cfg, opt)
        best: dict = {}
        # rounds interleave the settings so that load from other processes spreads over all of them
        for _ in range(cfg.iters):
            for gbps in cfg.bandwidths_gbps:
                link = Link.from_gbps(gbps) if gbps else None
                for c in par.comms():
                    c.link = link
                for label, (model, opt) in runs.items():
                    for _ in range(cfg.warmup):
                        _iteration(model, par, batch, cfg, opt)
                    seconds, counted = _iteration(model, par, batch, cfg, opt)
                    key = (label, gbps)
                    if key not in best:
                        best[key] = {"layout": f"{layout.upper()}={world}", "compressor": label, "gbps": gbps or 0.0}
                        best[key]["rounds_s"] = []
                    best[key]["rounds_s"].append(seconds)
                    if seconds <= min(best[key]["rounds_s"]):
                        best[key].update(iter_s=seconds, **counted)
        rows += [best[(label, gbps)] for label in runs for gbps in cfg.bandwidths_gbps]
    out = {"rows": rows, "net": net}
    if rank == 0 and codec_repeats > 0:  # the others are done (each timed iteration ends in a barrier)
        out["allocator"] = reuse_freed_memory()
        out["codec"] = codec_times(cfg.compressors, (cfg.batch_size, cfg.seq_len, cfg.model.hidden), codec_repeats)
    return out


def codec_times(
    specs: dict[str, C.CompressorSpec], shape: tuple[int, ...], repeats: int = 5, backward: bool = True
) -> list[dict]:
    """Encode+decode seconds per element of a `shape` float32 tensor for each compressor (a trainable one with its
    backward when `backward`: it runs every training step too) beside a plain copy of the same tensor, timed in
    turn in the same loop, each the best of `repeats`. Timed in this thread's CPU time (`time.thread_time`), so that
    other processes preempting a long codec on a shared machine do not count against it; one thread."""
    x = torch.randn(shape, generator=torch.Generator().manual_seed(0))
    xg = x.clone().requires_grad_()
    rows = []

    def timed(fn) -> tuple[float, int]:
        """(this thread's CPU seconds, its minor page faults) of one call."""
        f = _minor_faults()
        t = time.thread_time()
        fn()
        dt = time.thread_time() - t
        return dt, _minor_faults() - f

    for label, spec in specs.items():
        comp = spec.build(shape[-1])

        def run(comp=comp, grad=comp.trainable and backward):
            if grad:  # it trains: its backward (both matmuls' gradients) runs every step too
                comp.decode(comp.encode(xg), x.shape, x.dtype).sum().backward()
                return
            with torch.no_grad():
                comp.decode(comp.encode(x), x.shape, x.dtype)

        run()
        x.clone()
        copies, codecs = [], []
        for _ in range(repeats):
            copies.append(timed(x.clone)[0])
            codecs.append(timed(run) if spec.active else (0.0, 0))
        copy_s = min(copies)
        codec_s, codec_faults = min(codecs, key=lambda c: c[0])  # the best call, and its faults
        rows.append(
            {
                "compressor": label,
                "threads": torch.get_num_threads(),
                "shape": "x".join(map(str, shape)),
                "codec_ns_per_elem": 1e9 * codec_s / x.numel(),
                "copy_ns_per_elem": 1e9 * copy_s / x.numel(),
                "vs_copy": codec_s / copy_s,
                "page_faults": codec_faults,  # in the codec call timed (its best)
                "fewer_bytes": comp.ratio(shape),
            }
        )
    return rows


def combine(per_rank: list[list[dict]]) -> list[dict]:
    """One row per measurement: the slowest rank's time; the bytes on the critical path (TP: the most any rank sent,
    as ring collectives run in parallel; PP: every send, as GPipe's transfers follow one another).

    `iter_s` is the best round (noise on a shared machine only adds); `noise_s` how much a typical round took longer
    (the median round minus the best), what tells two settings apart (`compression.cost_model.order_agreement`)."""
    rows = []
    for parts in zip(*[r["rows"] for r in per_rank]):
        row = dict(parts[0])
        wires = [p["wire_bytes"] for p in parts]
        row["wire_bytes"] = max(wires) if row["layout"].startswith("TP") else sum(wires)
        rounds = np.max([p["rounds_s"] for p in parts], axis=0)  # each round: its slowest rank
        row["iter_s"] = float(rounds.min())
        row["noise_s"] = float(np.median(rounds) - rounds.min())
        row["rounds_s"] = [float(v) for v in rounds]
        rows.append(row)
    return rows


CODEC_SPECS = {
    "int8": C.CompressorSpec("quantize", bits=8),
    "int4": C.CompressorSpec("quantize", bits=4),
    "int2": C.CompressorSpec("quantize", bits=2),
    "topk": C.CompressorSpec("topk", ratio=0.125),
    "randk": C.CompressorSpec("randk", ratio=0.125),
    "ae100": C.CompressorSpec("autoencoder", d=100, matmul_dtype="bfloat16"),  # as the configs run it
    "ae100 fp32": C.CompressorSpec("autoencoder", d=100),
    "powersgd": C.CompressorSpec("powersgd", rank=4),
}
LIMITS = {"quantization": 5.0, "pruning": 20.0, "learning": 20.0}  # the bounds, x a plain copy


def verdict(label: str, vs_copy: float) -> tuple[float, str]:
    """(the bound, 'yes' or 'no') for a codec row of `main`'s table; (nan, '-') where no bound applies: the bounds are
    on encode + decode, so a '+backward' row (a training step's cost) gets none, and neither does PowerSGD."""
    if label.endswith(" +backward"):
        return float("nan"), "-"
    limit = LIMITS.get(CODEC_SPECS[label].family, float("nan"))
    return (limit, "-") if limit != limit else (limit, "yes" if vs_copy <= limit else "no")


def _minor_faults() -> int:
    """This thread's minor page faults so far (0 where the OS does not count them per thread)."""
    import resource

    who = getattr(resource, "RUSAGE_THREAD", None)
    return 0 if who is None else resource.getrusage(who).ru_minflt


def reuse_freed_memory() -> str:
    """Keep freed memory in this process for the next allocation (glibc: blocks up to 32 MB from the heap, never
    trimmed), and say what the allocator does. As started, glibc's dynamic thresholds decide per process whether a
    codec's fresh 12.6 MB output reuses a freed block or is a new mapping whose 3,072 pages fault in on every call
    (counted in thread CPU time) while the copy's block is reused: that was the codecs' between-process spread."""
    import ctypes

    try:
        libc = ctypes.CDLL("libc.so.6")
    except OSError:
        return "as started (no glibc)"
    m_trim_threshold, m_mmap_threshold = -1, -3
    ok = libc.mallopt(m_mmap_threshold, 32 << 20) == 1 and libc.mallopt(m_trim_threshold, 1 << 30) == 1
    return (
        "freed memory reused (glibc mallopt: mmap threshold 32 MB, no trim)" if ok else "as started (mallopt refused)"
    )


def load_average() -> float | None:
    """The 1-minute load average (other processes share this machine's cores), or None where the OS has none."""
    try:
        return os.getloadavg()[0]
    except (AttributeError, OSError):
        return None


def _load() -> str:
    load = load_average()
    return "?" if load is None else f"{load:.2f} on {os.cpu_count()} cores"


def main(argv: list[str] | None = None) -> None:
    """`python -m compression.bench codecs [--shape 128,32,768] [--threads 1] [--repeats 7] [--allocator reuse]`:
    encode+decode time of every compressor against a plain copy of the same tensor, in one run (CPU time of this
    thread; the auto-encoder also with its backward, what a training step pays); prints a table. `--allocator reuse`
    (the default) keeps freed memory in the process for the copy and the codecs alike (`reuse_freed_memory`);
    `as-started` leaves glibc as the process started."""
    import argparse

    import pandas as pd

    p = argparse.ArgumentParser(prog="python -m compression.bench")
    p.add_argument("what", choices=["codecs"])
    p.add_argument("--shape", default="128,32,768")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--repeats", type=int, default=7)
    p.add_argument("--allocator", choices=["reuse", "as-started"], default="reuse")
    a = p.parse_args(argv)
    allocator = reuse_freed_memory() if a.allocator == "reuse" else "as started"
    torch.set_num_threads(a.threads)
    shape = tuple(int(v) for v in a.shape.split(","))
    df = pd.DataFrame(codec_times(CODEC_SPECS, shape, a.repeats, backward=False))
    ae = {"ae100 +backward": CODEC_SPECS["ae100"], "ae100 fp32 +backward": CODEC_SPECS["ae100 fp32"]}
    df = pd.concat([df, pd.DataFrame(codec_times(ae, shape, a.repeats, backward=True))], ignore_index=True)
    df["limit"], df["within"] = zip(*(verdict(c, v) for c, v in zip(df.compressor, df.vs_copy, strict=True)))
    print(
        f"threads {a.threads}, shape {a.shape}, quantizer path: {fused.backend()}, allocator: {allocator}, "
        f"load average {_load()}"
    )
    print(df.to_string(index=False, float_format=lambda v: f"{v:.2f}"))
    print(
        "limit: the issue's bound on encode + decode, x a plain copy ('-': none applies; PowerSGD has none, and the "
        "'+backward' rows add the auto-encoder's backward, what a training step pays, to encode + decode)"
    )


if __name__ == "__main__":
    main()
