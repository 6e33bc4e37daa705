"""The link micro-benchmark: ping-pong and all-reduce times by message size, and the latency + bandwidth fit.

On a shared machine noise only adds to a time, so each size reports the best (or median) of `repeats`.
"""

from __future__ import annotations

import statistics
import time
from dataclasses import dataclass

import numpy as np
import torch
import torch.distributed as dist

from common.errors import require
from common.links import Link

STATS = {"min": min, "median": statistics.median}


def _summary(times: list[float], stat: str) -> float:
    require(stat in STATS, f"unknown statistic {stat!r}; choose one of {', '.join(STATS)}")
    return STATS[stat](times)


def ping_pong(
    sizes: list[int],
    a: int = 0,
    b: int = 1,
    repeats: int = 10,
    warmup: int = 3,
    stat: str = "min",
    group=None,
    device: torch.device | str = "cpu",
) -> list[dict]:
    """One-way seconds per message of each byte size between global ranks `a` and `b` (half a round trip).

    Every rank of `group` must call this (it synchronises with barriers); ranks other than `a` and `b` only wait.
    Returns rows {"op": "p2p", "bytes", "seconds"}, the same on every rank."""
    rank = dist.get_rank()
    rows = []
    for size in sizes:
        buf = torch.zeros(max(size // 4, 1), device=device)

        def round_trip(buf=buf):
            if rank == a:
                dist.send(buf, b)
                dist.recv(buf, b)
            elif rank == b:
                dist.recv(buf, a)
                dist.send(buf, a)

        times = []
        for k in range(warmup + repeats):  # the first messages set up gloo's connections
            dist.barrier(group)
            t0 = time.perf_counter()
            round_trip()
            if k >= warmup:
                times.append((time.perf_counter() - t0) / 2)
        rows.append({"op": "p2p", "bytes": buf.numel() * 4, "seconds": _summary(times, stat)})
    return _agree(rows, a, group)


def all_reduce(
    sizes: list[int],
    group=None,
    repeats: int = 10,
    warmup: int = 3,
    stat: str = "min",
    device: torch.device | str = "cpu",
) -> list[dict]:
    """Seconds of one all-reduce of each byte size over `group` (every rank calls this); the slowest rank's
    time of each repeat counts. Rows {"op": "all_reduce", "bytes", "seconds", "ranks"}."""
    n = dist.get_world_size(group)
    rows = []
    for size in sizes:
        t = torch.zeros(max(size // 4, 1), device=device)
        times = []
        for k in range(warmup + repeats):
            dist.barrier(group)
            t0 = time.perf_counter()
            dist.all_reduce(t, group=group)
            if k >= warmup:
                times.append(time.perf_counter() - t0)
        slowest = torch.tensor(times, dtype=torch.float64)
        dist.all_reduce(slowest, op=dist.ReduceOp.MAX, group=group)
        rows.append(
            {"op": "all_reduce", "bytes": t.numel() * 4, "seconds": _summary(slowest.tolist(), stat), "ranks": n}
        )
    return rows


def _agree(rows: list[dict], src: int, group) -> list[dict]:
    """Every rank gets rank `src`'s measurements."""
    out = [rows]
    dist.broadcast_object_list(out, src=src, group=group)
    return out[0]


@dataclass(frozen=True)
class LinkFit:
    """A fitted `Link` (per-message latency and bandwidth) and how well it explains the rows."""

    link: Link
    rows: tuple[dict, ...]
    max_rel_error: float

    def predict(self, nbytes: float) -> float:
        return self.link.time(nbytes)


def fit_link(rows: list[dict], name: str = "") -> LinkFit:
    """Least-squares fit of seconds = latency + bytes / bandwidth (latency >= 0, bandwidth > 0), weighted so
    that small and large messages count alike (relative error)."""
    require(len(rows) >= 2, "fitting a link needs at least two message sizes")
    x = np.array([r["bytes"] for r in rows], dtype=np.float64)
    y = np.array([r["seconds"] for r in rows], dtype=np.float64)
    A = np.stack([np.ones_like(x), x], axis=1) / y[:, None]
    (lat, inv_bw), *_ = np.linalg.lstsq(A, np.ones_like(y), rcond=None)
    if lat < 0:  # bandwidth-bound everywhere
        lat, inv_bw = 0.0, float(np.sum(x * y) / np.sum(x * x))
    if inv_bw <= 0:  # latency-bound everywhere: take the largest message's bandwidth as a bound
        inv_bw = max(float((y[-1] - lat) / x[-1]), 1e-15)
    link = Link(1.0 / inv_bw, float(lat), name)
    err = max(abs(link.time(b) - s) / s for b, s in zip(x, y))
    return LinkFit(link, tuple(rows), float(err))


def default_sizes(largest: int = 8 << 20, count: int = 5) -> list[int]:
    """Message sizes from 4 bytes to `largest`, spaced geometrically."""
    return sorted({int(s) // 4 * 4 or 4 for s in np.geomspace(4, largest, count)})


def _work(iters: int, a: torch.Tensor) -> torch.Tensor:
    for _ in range(iters):
        a = torch.tanh(a @ a)
    return a


def _calibrate(seconds: float, a: torch.Tensor) -> int:
    """Iterations of `_work` that take about `seconds` on this machine as loaded now (median of a few tries)."""
    tries = []
    for _ in range(5):
        t0 = time.perf_counter()
        _work(10, a)
        tries.append((time.perf_counter() - t0) / 10)
    return max(1, round(seconds / statistics.median(tries)))


def latency_under_load(
    op: str = "all_reduce",
    group=None,
    work_s: float = 1e-3,
    messages: int = 40,
    rounds: int = 3,
    a: int = 0,
    b: int = 1,
) -> float:
    """Seconds one small message adds to a rank that computes between messages, as a training step does.

    Each rank runs `messages` bursts of fixed work (about `work_s` on this machine now) with one message after each
    (`op`: a 4-byte all-reduce over `group`, or "p2p": ranks `a` and `b` exchange 4 bytes, both sending before
    receiving, as neighbouring pipeline stages do), and the same bursts without messages; the difference per
    message, median over `rounds`, slowest rank. On a quiet machine this is about the ping-pong latency; on a
    loaded one it also holds the wait for the peer to be scheduled again, which a bare ping-pong (where the
    waiting rank sleeps and is woken first) does not see. Every rank of `group` calls this."""
    require(op in ("all_reduce", "p2p"), f"unknown op {op!r}")
    rank = dist.get_rank()
    x, t = torch.randn(64, 64) / 8, torch.zeros(1)
    iters = torch.tensor([_calibrate(work_s, x)])
    dist.all_reduce(iters, op=dist.ReduceOp.MAX, group=group)  # the same work on every rank
    iters = int(iters)

    def message():
        if op == "all_reduce":
            dist.all_reduce(t, group=group)
        elif rank in (a, b):
            peer, buf = (b if rank == a else a), torch.zeros(1)
            work = dist.isend(t, peer)
            dist.recv(buf, peer)
            work.wait()

    for _ in range(3):
        message()
    per = []
    for _ in range(rounds):
        dist.barrier(group)
        t0 = time.perf_counter()
        for _ in range(messages):
            _work(iters, x)
        alone = time.perf_counter() - t0
        dist.barrier(group)
        t0 = time.perf_counter()
        for _ in range(messages):
            _work(iters, x)
            message()
        per.append(max(time.perf_counter() - t0 - alone, 0.0) / messages)
    out = torch.tensor([statistics.median(per)], dtype=torch.float64)
    dist.all_reduce(out, op=dist.ReduceOp.MAX, group=group)
    return float(out)
