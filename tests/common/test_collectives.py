"""Differentiable all-gather, gather-into-queue and byte counting, on real processes."""

import time

import pytest
import torch

from common.collectives import CountingComm, all_gather_with_grad, gather_into_queue
from common.distributed import run_processes
from common.errors import UserError
from common.links import Link

ROWS, DIM = 3, 5


def _batch(world_size: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(0)
    return torch.randn(world_size * ROWS, DIM, generator=g, dtype=torch.float64)


def _loss(full: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
    """A loss that mixes rows (like InfoNCE over gathered keys): every row's gradient depends on all rows."""
    logits = full @ w @ full.T
    return torch.logsumexp(logits, dim=1).sum()


def _gather_grad(rank, world_size):
    x_all = _batch(world_size)
    w = torch.linspace(-1, 1, DIM * DIM, dtype=torch.float64).reshape(DIM, DIM)
    x = x_all[rank * ROWS : (rank + 1) * ROWS].clone().requires_grad_()
    full = all_gather_with_grad(x)
    # each rank computes the loss of its own rows against everything; summed over ranks = the full loss
    logits = full[rank * ROWS : (rank + 1) * ROWS] @ w @ full.T
    torch.logsumexp(logits, dim=1).sum().backward()
    return full.detach(), x.grad


@pytest.mark.timeout(120)
@pytest.mark.parametrize("world_size", [2, 4])
def test_all_gather_gradient_equals_single_process(world_size):
    results = run_processes(_gather_grad, world_size, timeout_s=90)
    x_all = _batch(world_size).requires_grad_()
    w = torch.linspace(-1, 1, DIM * DIM, dtype=torch.float64).reshape(DIM, DIM)
    _loss(x_all, w).backward()
    for rank, (full, grad) in enumerate(results):
        assert torch.equal(full, x_all.detach())
        torch.testing.assert_close(grad, x_all.grad[rank * ROWS : (rank + 1) * ROWS], rtol=1e-12, atol=1e-12)


def _queue(rank, world_size):
    queue = torch.zeros(4 * world_size * 2, 3)
    ptr = 0
    history = []
    for step in range(3):
        keys = torch.full((2, 3), float(100 * step + rank))
        ptr = gather_into_queue(queue, ptr, keys)
        history.append(ptr)
    try:
        gather_into_queue(torch.zeros(5, 3), 0, torch.zeros(2, 3))
        bad = None
    except UserError as exc:
        bad = str(exc)
    return queue, history, bad


@pytest.mark.timeout(120)
def test_gather_into_queue_same_on_every_rank():
    (q0, h0, bad), (q1, h1, _) = run_processes(_queue, 2, timeout_s=90)
    assert torch.equal(q0, q1)
    assert h0 == h1 == [4, 8, 12]
    # step 1 wrote rank 0's keys then rank 1's at rows 4..7
    assert q0[4:6].eq(100).all() and q0[6:8].eq(101).all()
    assert "not divisible" in bad


def _counted(rank, world_size):
    comm = CountingComm()
    t = torch.ones(10, 4, dtype=torch.float32)  # 160 bytes
    comm.all_reduce(t)
    gathered = comm.all_gather(torch.full((3,), float(rank), dtype=torch.float64))  # 24 bytes each
    comm.broadcast(torch.zeros(7, dtype=torch.int64), src=0)  # 56 bytes
    if rank == 0:
        comm.send(torch.arange(5, dtype=torch.int32), dst=1)  # 20 bytes
    elif rank == 1:
        comm.recv(torch.empty(5, dtype=torch.int32), src=0)
    return {op: (s.calls, s.bytes, s.wire_bytes) for op, s in comm.stats.items()}, t, gathered


@pytest.mark.timeout(120)
def test_byte_counters_equal_tensor_sizes():
    r0, r1 = run_processes(_counted, 2, timeout_s=90)
    stats0, t0, g0 = r0
    stats1, _, _ = r1
    assert torch.equal(t0, torch.full((10, 4), 2.0))
    assert torch.equal(g0, torch.tensor([0.0, 0.0, 0.0, 1.0, 1.0, 1.0], dtype=torch.float64))
    assert stats0["all_reduce"] == (1, 160, 160.0)  # ring: 2 (n-1)/n x 160 = 160 for n = 2
    assert stats0["all_gather"] == (1, 24, 24.0)
    assert stats0["broadcast"] == (1, 56, 56.0) and stats1["broadcast"] == (1, 56, 0.0)
    assert stats0["send"] == (1, 20, 20.0) and stats1["recv"] == (1, 20, 0.0)
    assert "send" not in stats1


def _slow_link(rank, world_size, bandwidth):
    comm = CountingComm(link=Link(bandwidth, latency_s=0.01))
    t = torch.ones(25_000)  # 100 kB; ring all-reduce on 2 ranks sends 100 kB per rank
    start = time.perf_counter()
    comm.all_reduce(t)
    return time.perf_counter() - start


@pytest.mark.timeout(120)
def test_emulated_link_waits_out_the_model_time():
    bandwidth = 1e6  # 1 MB/s: 100 kB + 2 messages x 10 ms = 0.12 s
    times = run_processes(_slow_link, 2, args=(bandwidth,), timeout_s=90)
    expected = Link(bandwidth, 0.01).time(100_000, messages=2)
    assert expected == pytest.approx(0.12)
    assert all(t >= expected for t in times)


def test_link_model_and_bad_bandwidth():
    link = Link.from_gbps(8.0, latency_s=1e-3)  # 1 GB/s
    assert link.time(1e9) == pytest.approx(1.001)
    assert link.all_reduce_time(4e9, 4) == pytest.approx(6e-3 + 6.0)
    with pytest.raises(UserError, match="bandwidth must be > 0"):
        Link.from_gbps(0)
    with pytest.raises(UserError):
        Link(-1.0)
