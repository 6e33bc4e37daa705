"""The data-parallel gradient all-reduce: one flat buffer per call.

Hand-written rather than DistributedDataParallel: DDP all-reduces during every backward, so under a pipeline
schedule it fires once per micro-batch unless each is wrapped in `no_sync`, and its buckets hide the one message
per step that a cost model counts. Here the caller says when: once, after the last micro-batch's backward.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import torch
import torch.distributed as dist
from torch._utils import _flatten_dense_tensors, _unflatten_dense_tensors

from common.collectives import CountingComm


@torch.no_grad()
def all_reduce_tensors(tensors: list[torch.Tensor], over: CountingComm | Any, average: bool = True) -> None:
    """Sum (or average) `tensors` in place over the ranks of `over` with one flat all-reduce.

    `over`: a `CountingComm` (counts the message, can emulate a link), a process group (`dist.group.WORLD` for
    every rank), or None: no data parallelism, nothing to do (a grid's `dp_comm` when dp = 1).
    """
    if over is None:
        return
    if isinstance(over, CountingComm):
        world = over.world_size
    else:
        world = dist.get_world_size(over) if dist.is_available() and dist.is_initialized() else 1
    if world == 1 or not tensors:
        return
    flat = _flatten_dense_tensors(tensors)
    if isinstance(over, CountingComm):
        over.all_reduce(flat)
    else:
        dist.all_reduce(flat, group=over)
    if average:
        flat /= world
    for t, synced in zip(tensors, _unflatten_dense_tensors(flat, tensors)):
        t.copy_(synced)


def all_reduce_gradients(params: Iterable[torch.nn.Parameter], over: CountingComm | Any, average: bool = True) -> None:
    """Sum (or average) the gradients of `params` over the data-parallel ranks with one flat all-reduce;
    parameters without a gradient are left out."""
    all_reduce_tensors([p.grad for p in params if p.grad is not None], over, average)
