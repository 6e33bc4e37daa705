"""Collectives the works need: a differentiable all-gather, gather-into-queue for contrastive negatives,
and a communicator that counts the bytes of every collective and send/recv (and can emulate a slow link)."""

from __future__ import annotations

import time
from collections import defaultdict
from dataclasses import dataclass, field

import torch
import torch.distributed as dist

from .errors import UserError
from .links import Link


def _world(group=None) -> int:
    return dist.get_world_size(group) if dist.is_available() and dist.is_initialized() else 1


class _AllGatherWithGrad(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x: torch.Tensor, group):
        ctx.group = group
        ctx.rank = dist.get_rank(group)
        ctx.n = x.shape[0]
        parts = [torch.empty_like(x) for _ in range(dist.get_world_size(group))]
        dist.all_gather(parts, x.contiguous(), group=group)
        return torch.cat(parts, dim=0)

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        grad = grad.contiguous().clone()
        dist.all_reduce(grad, op=dist.ReduceOp.SUM, group=ctx.group)
        return grad[ctx.rank * ctx.n : (ctx.rank + 1) * ctx.n], None


def all_gather_with_grad(x: torch.Tensor, group=None) -> torch.Tensor:
    """Concatenate every rank's `x` (same shape on all ranks) along dim 0, keeping the autograd graph.

    The backward sums the incoming gradients over ranks and returns each rank its own slice, so that with
    each rank's loss summed, rank r's gradient equals the single-process gradient of its rows.
    """
    if _world(group) == 1:
        return x
    return _AllGatherWithGrad.apply(x, group)


@torch.no_grad()
def all_gather_no_grad(x: torch.Tensor, group=None) -> torch.Tensor:
    if _world(group) == 1:
        return x.detach()
    parts = [torch.empty_like(x) for _ in range(_world(group))]
    dist.all_gather(parts, x.detach().contiguous(), group=group)
    return torch.cat(parts, dim=0)


@torch.no_grad()
def gather_into_queue(queue: torch.Tensor, ptr: int, keys: torch.Tensor, group=None) -> int:
    """Gather `keys` from every rank (rank order) and write them into the circular `queue` at `ptr`.

    Every rank ends with the same queue. Returns the new pointer. The queue length must be a multiple of
    the global batch so that a batch never wraps around.
    """
    gathered = all_gather_no_grad(keys, group)
    k = queue.shape[0]
    n = gathered.shape[0]
    if k % n:
        raise UserError(f"queue size {k} is not divisible by the global batch {n}")
    queue[ptr : ptr + n] = gathered.to(queue.dtype)
    return (ptr + n) % k


# ---------------------------------------------------------------------------------------------------------
# Byte counting


def nbytes(t: torch.Tensor) -> int:
    return t.numel() * t.element_size()


@dataclass
class OpStats:
    calls: int = 0
    bytes: int = 0  # the bytes of the tensors handed to the op (what the caller asked to move)
    wire_bytes: float = 0.0  # what this rank sends under the ring algorithm (or point to point)
    seconds: float = 0.0


@dataclass
class CountingComm:
    """Collectives and send/recv on a process group that count what they move.

    `bytes` is the size of the tensor the caller passes (for all-gather: the local shard); `wire_bytes` is
    what this rank sends with a ring algorithm: all-reduce 2(n-1)/n S, all-gather (n-1) S, reduce-scatter
    (n-1)/n S, broadcast S (root), send S. With a `link`, each op waits until the link model's time for its
    wire bytes has passed, so a real collective runs as if over that slower link.
    """

    group: object = None
    link: Link | None = None
    stats: dict[str, OpStats] = field(default_factory=lambda: defaultdict(OpStats))
    pending: list = field(default_factory=list)  # (work, tensor) of sends not yet waited for

    @property
    def world_size(self) -> int:
        return _world(self.group)

    def _record(self, op: str, size: int, wire: float, start: float, messages: int = 1) -> None:
        if self.link is not None:
            self.link.wait_until(start, wire, messages)
        s = self.stats[op]
        s.calls += 1
        s.bytes += size
        s.wire_bytes += wire
        s.seconds += time.perf_counter() - start

    def all_reduce(self, t: torch.Tensor, op=dist.ReduceOp.SUM) -> torch.Tensor:
        n = self.world_size
        start = time.perf_counter()
        if n > 1:
            dist.all_reduce(t, op=op, group=self.group)
        self._record("all_reduce", nbytes(t), 2 * (n - 1) / n * nbytes(t), start, 2 * (n - 1))
        return t

    def all_gather(self, t: torch.Tensor) -> torch.Tensor:
        """Concatenation along dim 0 of every rank's `t` (no autograd)."""
        n = self.world_size
        start = time.perf_counter()
        out = all_gather_no_grad(t, self.group)
        self._record("all_gather", nbytes(t), (n - 1) * nbytes(t), start, n - 1)
        return out

    def reduce_scatter(self, t: torch.Tensor) -> torch.Tensor:
        """Sum over ranks of `t`, this rank's 1/n slice along dim 0."""
        n = self.world_size
        start = time.perf_counter()
        if n > 1:
            out = torch.empty((t.shape[0] // n, *t.shape[1:]), dtype=t.dtype, device=t.device)
            dist.reduce_scatter_tensor(out, t.contiguous(), group=self.group)
        else:
            out = t
        self._record("reduce_scatter", nbytes(t), (n - 1) / n * nbytes(t), start, n - 1)
        return out

    def broadcast(self, t: torch.Tensor, src: int = 0) -> torch.Tensor:
        start = time.perf_counter()
        if self.world_size > 1:
            dist.broadcast(t, src=src, group=self.group)
        sent = nbytes(t) if dist.get_rank() == src else 0
        self._record("broadcast", nbytes(t), sent, start)
        return t

    def send(self, t: torch.Tensor, dst: int) -> None:
        start = time.perf_counter()
        dist.send(t.contiguous(), dst=dst, group=self.group)
        self._record("send", nbytes(t), nbytes(t), start)

    def isend(self, t: torch.Tensor, dst: int) -> None:
        """Non-blocking send (pipeline schedules post sends before their peers' receives); `wait_pending`
        completes it. With a link, the sender still waits out the link's time for the bytes."""
        start = time.perf_counter()
        t = t.contiguous()
        self.pending.append((dist.isend(t, dst=dst, group=self.group), t))
        self._record("send", nbytes(t), nbytes(t), start)

    def wait_pending(self) -> None:
        for work, _ in self.pending:
            work.wait()
        self.pending.clear()

    def recv(self, t: torch.Tensor, src: int) -> torch.Tensor:
        start = time.perf_counter()
        dist.recv(t, src=src, group=self.group)
        self._record("recv", nbytes(t), 0.0, start)
        return t

    def total_bytes(self) -> int:
        return sum(s.bytes for s in self.stats.values())

    def total_wire_bytes(self) -> float:
        return sum(s.wire_bytes for s in self.stats.values())

    def reset(self) -> None:
        self.stats.clear()
