"""Tensor and pipeline parallelism whose communication goes through a compressor.

Tensor parallelism (Megatron-LM): a column-parallel linear splits its output features over the ranks and a
row-parallel linear splits its input features, so an attention or MLP block needs one all-reduce in the
forward pass (after the row-parallel linear, `reduce_from_tp`) and one in the backward pass (of the input
gradient, `copy_to_tp`). Either can go through a compressor.

Pipeline parallelism: stages hold consecutive layers; at each cut the sender encodes the activation and the
receiver decodes it; in the backward pass the activation gradient travels back, compressed too when asked.
The schedule is GPipe (all micro-batch forwards, then all backwards).

Ranks are laid out stage-major: rank = stage * tp + tp_rank, as Megatron does for TP x PP.
"""

from __future__ import annotations

import copy
import math
from dataclasses import dataclass, field
from typing import Callable

import torch
import torch.distributed as dist
import torch.nn as nn
import torch.nn.functional as F

from common.collectives import CountingComm
from common.errors import require
from common.links import Link

from .compressors import Compressor


@dataclass
class Parallel:
    """Where this process sits: its tensor-parallel group and pipeline stage, and the communicators that
    count (and, with a link, slow down) what moves between ranks."""

    tp: int = 1
    pp: int = 1
    tp_rank: int = 0
    stage: int = 0
    tp_comm: CountingComm | None = None  # None when tp == 1
    pp_comm: CountingComm | None = None  # on the default group (global ranks); None when pp == 1
    rank: int = 0

    @property
    def first(self) -> bool:
        return self.stage == 0

    @property
    def last(self) -> bool:
        return self.stage == self.pp - 1

    def peer(self, stage: int) -> int:
        """The global rank with this process's tensor-parallel index in `stage`."""
        return stage * self.tp + self.tp_rank

    def comms(self) -> list[CountingComm]:
        return [c for c in (self.tp_comm, self.pp_comm) if c is not None]


def setup(tp: int = 1, pp: int = 1, link: Link | None = None) -> Parallel:
    """Build the groups of a TP x PP layout on the current process group (every rank must call this)."""
    require(tp >= 1 and pp >= 1, f"tp and pp must be >= 1, got tp={tp}, pp={pp}")
    world = dist.get_world_size() if dist.is_initialized() else 1
    require(world == tp * pp, f"tp x pp = {tp * pp} must equal the number of processes ({world})")
    rank = dist.get_rank() if dist.is_initialized() else 0
    stage, tp_rank = divmod(rank, tp)
    tp_comm = pp_comm = None
    if tp > 1:
        groups = [dist.new_group(list(range(s * tp, (s + 1) * tp))) for s in range(pp)]  # same order everywhere
        tp_comm = CountingComm(group=groups[stage], link=link)
    if pp > 1:
        pp_comm = CountingComm(group=None, link=link)
    return Parallel(tp, pp, tp_rank, stage, tp_comm, pp_comm, rank)


# ---------------------------------------------------------------------------------------------------------
# Tensor parallelism


def _world(comm: CountingComm | None) -> int:
    return 1 if comm is None else comm.world_size


class _CopyToTP(torch.autograd.Function):
    """Identity forward; backward sums the input gradient over the group (optionally compressed)."""

    @staticmethod
    def forward(ctx, x, comm, compressor):
        ctx.comm, ctx.compressor = comm, compressor
        return x.view_as(x)

    @staticmethod
    def backward(ctx, grad):
        if ctx.compressor is not None:
            return ctx.compressor.reduce(grad.contiguous(), ctx.comm), None, None
        if _world(ctx.comm) > 1:
            grad = ctx.comm.all_reduce(grad.contiguous().clone())
        return grad, None, None


class _ReduceFromTP(torch.autograd.Function):
    """Forward sums over the group through a fixed (non-trainable) compressor; backward is the identity
    (straight through the compressor, as every rank holds the same downstream graph)."""

    @staticmethod
    def forward(ctx, x, comm, compressor):
        if compressor is not None:
            return compressor.reduce(x.contiguous(), comm)
        return comm.all_reduce(x.contiguous().clone()) if _world(comm) > 1 else x.clone()

    @staticmethod
    def backward(ctx, grad):
        return grad, None, None


class _AllReduceIdentityBackward(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, comm):
        return comm.all_reduce(x.contiguous().clone()) if _world(comm) > 1 else x.clone()

    @staticmethod
    def backward(ctx, grad):
        return grad, None


def copy_to_tp(x: torch.Tensor, comm: CountingComm | None, compressor: Compressor | None = None) -> torch.Tensor:
    if _world(comm) == 1 and compressor is None:
        return x
    return _CopyToTP.apply(x, comm, compressor)


def reduce_from_tp(x: torch.Tensor, comm: CountingComm | None, compressor: Compressor | None = None) -> torch.Tensor:
    """Sum of the ranks' partial results, through `compressor` if given. A trainable compressor stays in
    the autograd graph: its codes are all-reduced (the encoder is linear) and decoded on every rank."""
    if compressor is not None and compressor.trainable:
        codes = [_AllReduceIdentityBackward.apply(c, comm) for c in compressor.encode(x)]
        return compressor.decode(codes, x.shape, x.dtype)
    if _world(comm) == 1 and compressor is None:
        return x
    return _ReduceFromTP.apply(x, comm, compressor)


class ColumnParallelLinear(nn.Module):
    """y_local = x W_local^T + b_local, with this rank's 1/tp of the output features."""

    def __init__(self, d_in: int, d_out: int, tp: int = 1):
        super().__init__()
        require(d_out % tp == 0, f"{d_out} output features do not split over tp={tp}")
        self.weight = nn.Parameter(torch.empty(d_out // tp, d_in))
        self.bias = nn.Parameter(torch.zeros(d_out // tp))
        nn.init.normal_(self.weight, std=0.02)

    def forward(self, x):
        return F.linear(x, self.weight, self.bias)


class RowParallelLinear(nn.Module):
    """y = sum over ranks of x_local W_local^T (through the compressor), + b; this rank holds 1/tp of the
    input features."""

    def __init__(self, d_in: int, d_out: int, tp: int = 1, comm: CountingComm | None = None,
                 compressor: Compressor | None = None):
        super().__init__()
        require(d_in % tp == 0, f"{d_in} input features do not split over tp={tp}")
        self.weight = nn.Parameter(torch.empty(d_out, d_in // tp))
        self.bias = nn.Parameter(torch.zeros(d_out))
        nn.init.normal_(self.weight, std=0.02)
        self.comm = comm
        self.compressor = compressor

    def forward(self, x):
        return reduce_from_tp(F.linear(x, self.weight), self.comm, self.compressor) + self.bias


def shard(model: nn.Module, full: dict[str, torch.Tensor], tp: int, tp_rank: int) -> dict[str, torch.Tensor]:
    """This rank's slices of a one-process state dict (or of its gradients), for the keys both have."""
    kinds = {}
    for name, m in model.named_modules():
        prefix = f"{name}." if name else ""
        if isinstance(m, ColumnParallelLinear):
            kinds[prefix + "weight"] = kinds[prefix + "bias"] = 0
        elif isinstance(m, RowParallelLinear):
            kinds[prefix + "weight"] = 1
    out = {}
    for key in model.state_dict():
        if key not in full:
            continue
        t = full[key]
        if not isinstance(t, torch.Tensor):
            out[key] = copy.deepcopy(t)  # a compressor's extra state (counters, residual)
        else:
            out[key] = t.chunk(tp, dim=kinds[key])[tp_rank].clone() if key in kinds and tp > 1 else t.clone()
    return out


@torch.no_grad()
def sync_partial_grads(model: nn.Module, comm: CountingComm | None) -> None:
    """Sum over the tensor-parallel group the gradients of shared weights that see only this rank's partial
    input (the auto-encoder's encoder); every other replicated weight already has the full gradient."""
    if _world(comm) == 1:
        return
    for p in model.parameters():
        if getattr(p, "tp_partial", False) and p.grad is not None:
            comm.all_reduce(p.grad)


# ---------------------------------------------------------------------------------------------------------
# Pipeline parallelism


@dataclass
class Cut:
    """The compressors at one pipeline cut: activations forward, activation gradients backward (None:
    sent uncompressed). The sender and the receiver each hold a copy built from the same seed."""

    forward: Compressor | None = None
    backward: Compressor | None = None


def _send(tensors: list[torch.Tensor], comm: CountingComm, dst: int) -> None:
    for t in tensors:
        comm.send(t.detach().contiguous(), dst)


def _recv(spec, comm: CountingComm, src: int) -> list[torch.Tensor]:
    return [comm.recv(torch.empty(shape, dtype=dtype), src) for shape, dtype in spec]


def send_activation(x: torch.Tensor, cut: Cut, comm: CountingComm, dst: int) -> list[torch.Tensor]:
    """Encode and send; returns what the backward pass must differentiate (codes, or x itself)."""
    if cut.forward is None:
        _send([x], comm, dst)
        return [x]
    payload = cut.forward.encode(x)
    _send(payload, comm, dst)
    return payload[:1] if cut.forward.trainable else [x]


def recv_activation(shape: tuple[int, ...], cut: Cut, comm: CountingComm, src: int
                    ) -> tuple[torch.Tensor, list[torch.Tensor]]:
    """Receive and decode; returns the activation and the leaves whose gradients go back to the sender."""
    dtype = torch.get_default_dtype()
    if cut.forward is None:
        (x,) = _recv([(shape, dtype)], comm, src)
        x.requires_grad_()
        return x, [x]
    payload = _recv(cut.forward.payload_spec(shape, dtype), comm, src)
    if cut.forward.trainable:
        payload[0].requires_grad_()
        return cut.forward.decode(payload, torch.Size(shape), dtype), payload[:1]
    x = cut.forward.decode(payload, torch.Size(shape), dtype).detach().requires_grad_()
    return x, [x]


def send_gradient(leaves: list[torch.Tensor], cut: Cut, comm: CountingComm, dst: int) -> None:
    grads = [leaf.grad if leaf.grad is not None else torch.zeros_like(leaf) for leaf in leaves]
    if cut.backward is not None and not (cut.forward is not None and cut.forward.trainable):
        grads = cut.backward.encode(grads[0])
    _send(grads, comm, dst)


def recv_gradient(outputs: list[torch.Tensor], cut: Cut, comm: CountingComm, src: int) -> list[torch.Tensor]:
    if cut.backward is not None and not (cut.forward is not None and cut.forward.trainable):
        shape = tuple(outputs[0].shape)
        payload = _recv(cut.backward.payload_spec(shape, outputs[0].dtype), comm, src)
        return [cut.backward.decode(payload, torch.Size(shape), outputs[0].dtype)]
    return _recv([(tuple(o.shape), o.dtype) for o in outputs], comm, src)


def gpipe_step(stage_fn: Callable[[torch.Tensor | None, int], torch.Tensor], loss_fn: Callable[[torch.Tensor, int], torch.Tensor],
               par: Parallel, n_micro: int, act_shape: tuple[int, ...], cut_in: Cut | None, cut_out: Cut | None
               ) -> torch.Tensor | None:
    """One GPipe forward/backward over `n_micro` micro-batches.

    `stage_fn(x, i)` runs this stage on micro-batch i (x is None on the first stage, which reads its own
    input); `loss_fn(out, i)` is the last stage's loss for micro-batch i, already divided by `n_micro`.
    Gradients accumulate in the stage's parameters. Returns the summed loss on the last stage, else None.
    """
    comm = par.pp_comm
    saved = []
    total = None
    for i in range(n_micro):
        x, leaves = (None, [])
        if not par.first:
            x, leaves = recv_activation(act_shape, cut_in, comm, par.peer(par.stage - 1))
        out = stage_fn(x, i)
        if par.last:
            loss = loss_fn(out, i)
            total = loss.detach() if total is None else total + loss.detach()
            saved.append((leaves, [loss], None))
        else:
            saved.append((leaves, send_activation(out, cut_out, comm, par.peer(par.stage + 1)), out))
    for leaves, outputs, _ in saved:
        if par.last:
            torch.autograd.backward(outputs)
        else:
            grads = recv_gradient(outputs, cut_out, comm, par.peer(par.stage + 1))
            torch.autograd.backward(outputs, grads)
        if not par.first:
            send_gradient(leaves, cut_in, comm, par.peer(par.stage - 1))
    return total


def split_layers(n_layers: int, pp: int) -> list[list[int]]:
    """Consecutive, near-equal blocks of layer indices, one per stage."""
    require(1 <= pp <= n_layers, f"pp={pp} stages need at least as many layers (have {n_layers})")
    bounds = [math.floor(s * n_layers / pp) for s in range(pp + 1)]
    return [list(range(bounds[s], bounds[s + 1])) for s in range(pp)]
