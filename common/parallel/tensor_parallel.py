"""Megatron-LM tensor parallelism with a hook at each communication point.

A column-parallel linear splits its output features over the tensor-parallel ranks and a row-parallel linear
its input features, so an attention or MLP block communicates twice: `copy_to_tp` at the block's input
(identity forward, all-reduce of the input gradient backward) and `reduce_from_tp` at its output (all-reduce
forward, identity backward). `gather_from_tp` concatenates a vocabulary-parallel output's shards.

Hooks. Each communication point takes an optional `hook` that replaces the plain collective (compression plugs
its compressors in here, forward and backward):
* `hook.reduce(x, comm) -> Tensor`: the (approximate) sum of `x` over `comm`'s ranks, outside autograd;
* a hook with `trainable = True` stays in the autograd graph instead: `hook.encode(x) -> codes`, the codes are
  summed over the ranks (so its encoder must be linear), and `hook.decode(codes, shape, dtype)`;
* `hook.gather(x, comm) -> Tensor` (gather points): every rank's `x` concatenated along dim 0.
`comm` is a `common.collectives.CountingComm` (which counts what moves and can emulate a slower link), or
None for one rank. Hand-written rather than torch's DTensor `ColwiseParallel`/`RowwiseParallel`: DTensor runs
its collectives inside `redistribute`, where neither a compressor nor a counting communicator can step in.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from common.collectives import CountingComm
from common.errors import require


def comm_size(comm: CountingComm | None) -> int:
    return 1 if comm is None else comm.world_size


def comm_rank(comm: CountingComm | None) -> int:
    import torch.distributed as dist

    return 0 if comm_size(comm) == 1 else dist.get_rank(comm.group)


def _sum(x: torch.Tensor, comm: CountingComm | None, hook: Any) -> torch.Tensor:
    if hook is not None:
        return hook.reduce(x.contiguous(), comm)
    return comm.all_reduce(x.contiguous().clone()) if comm_size(comm) > 1 else x.clone()


class _CopyToTP(torch.autograd.Function):
    """Identity forward; the backward sums the input gradient over the group (through the hook)."""

    @staticmethod
    def forward(ctx, x, comm, hook):
        ctx.comm, ctx.hook = comm, hook
        return x.view_as(x)

    @staticmethod
    def backward(ctx, grad):
        return _sum(grad, ctx.comm, ctx.hook), None, None


class _ReduceFromTP(torch.autograd.Function):
    """Forward sums over the group (through a fixed hook); the backward is the identity: every rank holds
    the same downstream graph, so its output gradient is already the full one (straight through the hook)."""

    @staticmethod
    def forward(ctx, x, comm, hook):
        return _sum(x, comm, hook)

    @staticmethod
    def backward(ctx, grad):
        return grad, None, None


class _GatherFromTP(torch.autograd.Function):
    """Concatenate the ranks' shards along the last dimension; the backward keeps this rank's slice."""

    @staticmethod
    def forward(ctx, x, comm, hook):
        ctx.n, ctx.rank = x.shape[-1], comm_rank(comm)
        parts = x.contiguous().unsqueeze(0)
        parts = hook.gather(parts, comm) if hook is not None else comm.all_gather(parts)
        return torch.cat(list(parts), dim=-1)

    @staticmethod
    def backward(ctx, grad):
        return grad[..., ctx.rank * ctx.n : (ctx.rank + 1) * ctx.n].contiguous(), None, None


def copy_to_tp(x: torch.Tensor, comm: CountingComm | None, hook: Any = None) -> torch.Tensor:
    """Enter a tensor-parallel region: identity forward, gradient all-reduced backward (through `hook`)."""
    if comm_size(comm) == 1 and hook is None:
        return x
    return _CopyToTP.apply(x, comm, hook)


def reduce_from_tp(x: torch.Tensor, comm: CountingComm | None, hook: Any = None) -> torch.Tensor:
    """Leave a tensor-parallel region: the sum of the ranks' partial results (through `hook`); a trainable
    hook's codes are summed inside the autograd graph and decoded on every rank."""
    if hook is not None and getattr(hook, "trainable", False):
        codes = [reduce_from_tp(c, comm) for c in hook.encode(x)]
        return hook.decode(codes, x.shape, x.dtype)
    if comm_size(comm) == 1 and hook is None:
        return x
    return _ReduceFromTP.apply(x, comm, hook)


def gather_from_tp(x: torch.Tensor, comm: CountingComm | None, hook: Any = None) -> torch.Tensor:
    """The full last dimension from every rank's shard of it (a vocabulary-parallel output layer)."""
    if comm_size(comm) == 1 and hook is None:
        return x
    return _GatherFromTP.apply(x, comm, hook)


class ColumnParallelLinear(nn.Module):
    """y_local = x W_local^T + b_local: this rank's 1/tp of the output features."""

    def __init__(self, d_in: int, d_out: int, tp: int = 1, bias: bool = True):
        super().__init__()
        require(d_out % tp == 0, f"{d_out} output features do not split over tp={tp}")
        self.weight = nn.Parameter(torch.empty(d_out // tp, d_in))
        self.bias = nn.Parameter(torch.zeros(d_out // tp)) if bias else None
        nn.init.normal_(self.weight, std=0.02)

    def forward(self, x):
        return F.linear(x, self.weight, self.bias)


class RowParallelLinear(nn.Module):
    """y = (sum over ranks of x_local W_local^T, through `hook`) + b: this rank holds 1/tp of the input
    features; the bias is added once, after the sum."""

    def __init__(
        self, d_in: int, d_out: int, tp: int = 1, comm: CountingComm | None = None, hook: Any = None, bias: bool = True
    ):
        super().__init__()
        require(d_in % tp == 0, f"{d_in} input features do not split over tp={tp}")
        self.weight = nn.Parameter(torch.empty(d_out, d_in // tp))
        self.bias = nn.Parameter(torch.zeros(d_out)) if bias else None
        nn.init.normal_(self.weight, std=0.02)
        self.comm, self.hook = comm, hook

    def forward(self, x):
        y = reduce_from_tp(F.linear(x, self.weight), self.comm, self.hook)
        return y if self.bias is None else y + self.bias


def shard_dims(model: nn.Module) -> dict[str, int]:
    """The state-dict keys of `model`'s tensor-parallel weights and the dimension each is split along."""
    dims = {}
    for name, m in model.named_modules():
        prefix = f"{name}." if name else ""
        if isinstance(m, ColumnParallelLinear):
            dims[prefix + "weight"] = 0
            if m.bias is not None:
                dims[prefix + "bias"] = 0
        elif isinstance(m, RowParallelLinear):
            dims[prefix + "weight"] = 1
    return dims


def shard_state(model: nn.Module, full: dict[str, Any], tp: int, tp_rank: int) -> dict[str, Any]:
    """This rank's slices of a one-process state dict (or of its gradients), for the keys both have."""
    import copy

    dims = shard_dims(model)
    out = {}
    for key in model.state_dict():
        if key not in full:
            continue
        t = full[key]
        if not isinstance(t, torch.Tensor):
            out[key] = copy.deepcopy(t)  # extra state (counters, residuals)
        else:
            out[key] = t.chunk(tp, dim=dims[key])[tp_rank].clone() if key in dims and tp > 1 else t.clone()
    return out
