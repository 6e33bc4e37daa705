"""Training throughput: real images per second of DC-VAE training, on this machine.

    python -m vaegan_contrastive.bench                 # the paper's model: 1 and 2 threads, 1 vs 2 processes

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


def paper_setup(per_rank_batch: int = 64, channels_last: bool = False) -> tuple[ModelConfig, TrainConfig]:
    return ModelConfig(), TrainConfig(
        batch_size=per_rank_batch, gen_batch_size=2 * per_rank_batch, progress=False, channels_last=channels_last
    )


def _worker(
    rank: int, world: int, model_cfg: ModelConfig, cfg: TrainConfig, iterations: int, warmup: int
) -> dict[str, float]:
    """Train on random images (speed does not depend on the content); time `iterations` after `warmup`."""
    cfg = dataclasses.replace(cfg, batch_size=cfg.batch_size * world, gen_batch_size=cfg.gen_batch_size * world)
    trainer = Trainer(model_cfg, cfg)
    local = cfg.batch_size // world
    g = torch.Generator().manual_seed(rank)
    x = torch.rand(local, model_cfg.channels, model_cfg.resolution, model_cfg.resolution, generator=g) * 2 - 1
    for it in range(warmup):
        trainer.step(it, x)
    t0 = time.perf_counter()
    for it in range(warmup, warmup + iterations):
        trainer.step(it, x)
    dt = time.perf_counter() - t0
    return {
        "images_per_s": iterations * cfg.batch_size / dt,
        "s_per_iteration": dt / iterations,
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
) -> dict[str, Any]:
    """images/s (global, all ranks) and the largest peak RSS of one rank, each rank a fresh process."""
    t0 = time.time()
    res = run_processes(
        _worker,
        processes,
        args=(model_cfg, cfg, iterations, warmup),
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
        "peak RSS GiB": max(r["peak_rss_gib"] for r in res),
        "timed iterations": iterations,
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


def main(argv: list[str] | None = None) -> pd.DataFrame:
    ap = argparse.ArgumentParser(prog="python -m vaegan_contrastive.bench", description=__doc__.split("\n")[0])
    ap.add_argument("--threads", type=int, nargs="+", default=[1, 2], help="torch threads (one process)")
    ap.add_argument("--processes", type=int, nargs="*", default=[2], help="also these process counts (1 thread each)")
    ap.add_argument("--iterations", type=int, default=5, help="timed iterations (5 = one release cycle)")
    ap.add_argument("--warmup", type=int, default=1)
    ap.add_argument("--batch", type=int, default=64, help="per-rank batch of real images")
    ap.add_argument("--channels-last", action="store_true")
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    model_cfg, cfg = paper_setup(args.batch, args.channels_last)
    rows = []
    cases = [(1, t) for t in args.threads] + [(n, 1) for n in args.processes if n > 1]
    if args.processes and 1 not in args.threads:
        cases.insert(0, (1, 1))
    for n, t in cases:
        log.info("case: %d process(es) x %d thread(s), load average %.1f", n, t, os.getloadavg()[0])
        rows.append(measure(model_cfg, cfg, n, t, args.iterations, args.warmup))
        log.info("  %.2f images/s, peak RSS %.2f GiB", rows[-1]["images/s"], rows[-1]["peak RSS GiB"])
    df = pd.DataFrame(rows)
    df["released images/s"] = [
        RELEASED.get(f"threads={t}") if n == 1 else None for n, t in zip(df["processes"], df["threads/process"])
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
