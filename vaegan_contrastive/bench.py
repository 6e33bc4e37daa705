"""Training throughput: real images per second of DC-VAE training, on this machine.

    python -m vaegan_contrastive.bench                 # the paper's model: 1 and 2 threads, 1 vs 2 processes
    python -m vaegan_contrastive.bench --quick         # the same, timing one iteration of each kind (~3x faster)
    python -m vaegan_contrastive.bench --profile --batch 16   # where one cycle's time goes (torch.profiler)

Each case runs in a fresh process (so its peak RSS is its own): the released CIFAR-10 architecture at 32 px,
batch 64 (128 samples in a generator step), queue 8,192, timed over the release's 5-iteration cycle (five
discriminator steps, one generator and one contrastive step) after one warm-up iteration. Two processes
train with the same per-rank batch and gather their keys into one queue (cross-rank negatives).
"""

from __future__ import annotations

import argparse
import dataclasses
import logging
import os
import resource
import time
from typing import Any

import pandas as pd
import torch

from common.distributed import run_processes

from .models import ModelConfig
from .train import TrainConfig, Trainer

log = logging.getLogger(__name__)

RELEASED = {"threads=1": 2.54, "threads=2": 4.48, "peak_rss_gib": 3.3}  # the release on this kind of CPU (issue 13)


def paper_setup(per_rank_batch: int = 64, channels_last: bool = True) -> tuple[ModelConfig, TrainConfig]:
    return ModelConfig(), TrainConfig(
        batch_size=per_rank_batch, gen_batch_size=2 * per_rank_batch, progress=False, channels_last=channels_last
    )


def _worker(
    rank: int,
    world: int,
    model_cfg: ModelConfig,
    cfg: TrainConfig,
    iterations: int,
    warmup: int,
    quick: bool = False,
) -> dict[str, float]:
    """Train on random images (speed does not depend on the content) and time each iteration after `warmup`.

    The cycle's time is (n_critic - 1) x the mean discriminator-only iteration + the mean full iteration
    (discriminator, generator and contrastive steps): over the 5 iterations of one release cycle that is
    exactly their total. `quick` times one iteration of each kind instead of `iterations`.
    """
    cfg = dataclasses.replace(cfg, batch_size=cfg.batch_size * world, gen_batch_size=cfg.gen_batch_size * world)
    trainer = Trainer(model_cfg, cfg)
    local = cfg.batch_size // world
    g = torch.Generator().manual_seed(rank)
    x = torch.rand(local, model_cfg.channels, model_cfg.resolution, model_cfg.resolution, generator=g) * 2 - 1
    for it in range(warmup):
        trainer.step(it, x)
    n = cfg.n_critic
    full_it = -(-warmup // n) * n  # the first generator + contrastive iteration from `warmup` on
    disc_it = next(it for it in range(warmup, warmup + n + 1) if it % n or n == 1)
    timed = sorted({disc_it, full_it}) if quick else range(warmup, warmup + iterations)
    times: dict[bool, list[float]] = {True: [], False: []}  # full iteration? -> seconds
    for it in timed:
        t0 = time.perf_counter()
        trainer.step(it, x)
        times[it % cfg.n_critic == 0].append(time.perf_counter() - t0)
    mean = {k: sum(v) / len(v) for k, v in times.items() if v}
    t_d = mean.get(False, mean.get(True))
    t_full = mean.get(True, t_d)
    cycle = (cfg.n_critic - 1) * t_d + t_full
    return {
        "images_per_s": cfg.n_critic * cfg.batch_size / cycle,
        "s_per_iteration": cycle / cfg.n_critic,
        "s_disc_iteration": t_d,
        "s_full_iteration": t_full,
        "peak_rss_gib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20,
    }


def measure(
    model_cfg: ModelConfig,
    cfg: TrainConfig,
    processes: int = 1,
    threads: int = 1,
    iterations: int = 5,
    warmup: int = 1,
    timeout_s: float = 3600,
    quick: bool = False,
) -> dict[str, Any]:
    """images/s (global, all ranks) and the largest peak RSS of one rank, each rank a fresh process."""
    t0 = time.time()
    res = run_processes(
        _worker,
        processes,
        args=(model_cfg, cfg, iterations, warmup, quick),
        timeout_s=timeout_s,
        threads_per_process=threads,
        init_group=processes > 1,
    )
    return {
        "processes": processes,
        "threads/process": threads,
        "per-rank batch": cfg.batch_size,
        "images/s": min(r["images_per_s"] for r in res),
        "s/iteration": max(r["s_per_iteration"] for r in res),
        "s/D-only it": max(r["s_disc_iteration"] for r in res),
        "s/full it": max(r["s_full_iteration"] for r in res),
        "peak RSS GiB": max(r["peak_rss_gib"] for r in res),
        "timed iterations": 2 if quick else iterations,
        "wall s": time.time() - t0,
        "load avg": os.getloadavg()[0],
    }


def process_scaling(study: Any, iterations: int, processes: tuple[int, ...] = (1, 2)) -> pd.DataFrame:
    """A study's DC-VAE (its model and training config) on 1 and 2 processes at the same per-rank batch."""
    tc = study.runs.get("dcvae", next(iter(study.runs.values())))
    per_rank = tc.batch_size // study.world_size
    cfg = dataclasses.replace(
        tc,
        batch_size=per_rank,
        gen_batch_size=max(tc.gen_batch_size // study.world_size, 1),
        queue_size=per_rank * max(processes) * 4,
        progress=False,
    )
    rows = [measure(study.model, cfg, n, 1, iterations, warmup=1) for n in processes]
    for r in rows:
        log.info("throughput: %d process(es): %.1f images/s", r["processes"], r["images/s"])
    df = pd.DataFrame(rows)
    df["speedup"] = df["images/s"] / df["images/s"].iloc[0]
    return df


def profile_cycle(model_cfg: ModelConfig, cfg: TrainConfig, warmup: int = 1, rows: int = 25) -> str:
    """One release cycle (n_critic iterations) in this process under torch.profiler: the operators by self
    CPU time (where the time goes; run it with 1 thread to see the single-core cost)."""
    from torch.profiler import ProfilerActivity, profile

    trainer = Trainer(model_cfg, cfg)
    x = torch.rand(cfg.batch_size, model_cfg.channels, model_cfg.resolution, model_cfg.resolution) * 2 - 1
    for it in range(warmup):
        trainer.step(it, x)
    start = -(-warmup // cfg.n_critic) * cfg.n_critic + 1  # ends on a full iteration
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        for it in range(start, start + cfg.n_critic):
            trainer.step(it, x)
    return prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=rows)


def main(argv: list[str] | None = None) -> pd.DataFrame:
    ap = argparse.ArgumentParser(prog="python -m vaegan_contrastive.bench", description=__doc__.split("\n")[0])
    ap.add_argument("--threads", type=int, nargs="+", default=[1, 2], help="torch threads (one process)")
    ap.add_argument("--processes", type=int, nargs="*", default=[2], help="also these process counts (1 thread each)")
    ap.add_argument("--iterations", type=int, default=5, help="timed iterations (5 = one release cycle)")
    ap.add_argument("--warmup", type=int, default=1)
    ap.add_argument("--batch", type=int, default=64, help="per-rank batch of real images")
    ap.add_argument(
        "--no-channels-last", dest="channels_last", action="store_false", help="NCHW activations (default: NHWC)"
    )
    ap.add_argument(
        "--quick", action="store_true", help="time one discriminator-only and one full iteration per case (the cycle)"
    )
    ap.add_argument("--profile", action="store_true", help="profile one cycle in this process (1 thread) and exit")
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    model_cfg, cfg = paper_setup(args.batch, args.channels_last)
    if args.profile:
        torch.set_num_threads(1)
        print(profile_cycle(model_cfg, cfg, args.warmup))
        return pd.DataFrame()
    rows = []
    cases = [(1, t) for t in args.threads] + [(n, 1) for n in args.processes if n > 1]
    if args.processes and 1 not in args.threads:
        cases.insert(0, (1, 1))
    for n, t in cases:
        log.info("case: %d process(es) x %d thread(s), load average %.1f", n, t, os.getloadavg()[0])
        rows.append(measure(model_cfg, cfg, n, t, args.iterations, args.warmup, quick=args.quick))
        log.info("  %.2f images/s, peak RSS %.2f GiB", rows[-1]["images/s"], rows[-1]["peak RSS GiB"])
    df = pd.DataFrame(rows)
    df["released images/s"] = [
        RELEASED.get(f"threads={t}") if n == 1 and args.batch == 64 else None
        for n, t in zip(df["processes"], df["threads/process"])
    ]
    pd.set_option("display.width", 200)
    print(df.to_string(index=False))
    one = df[(df["processes"] == 1) & (df["threads/process"] == 1)]["images/s"]
    for n in args.processes:
        many = df[df["processes"] == n]["images/s"]
        if len(one) and len(many) and n > 1:
            print(f"{n} processes vs 1 (1 thread each, same per-rank batch): {many.iloc[0] / one.iloc[0]:.2f}x")
    print(
        f"released code (quiet machine): {RELEASED['threads=1']} images/s with 1 thread, {RELEASED['threads=2']} "
        f"with 2, peak RSS {RELEASED['peak_rss_gib']} GiB; load average now {os.getloadavg()[0]:.1f}"
    )
    return df


if __name__ == "__main__":
    main()
