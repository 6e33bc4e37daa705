"""Tensor and pipeline parallelism whose communication goes through a compressor: the shared runtime in
`common.parallel` with this work's compressors plugged into its hooks.

Tensor parallelism (Megatron-LM): an attention or MLP block needs one all-reduce in the forward pass (after the
row-parallel linear, `reduce_from_tp`) and one in the backward pass (of the input gradient, `copy_to_tp`);
either can go through a compressor (`Compressor.reduce`, or, for a trainable one, its codes summed in the
graph). Pipeline parallelism: at each cut (`Cut`, a `common.parallel.Boundary`) the sender encodes the
activation and the receiver decodes it; the activation gradient travels back, compressed too when asked.
Schedules: GPipe or 1F1B. Ranks are laid out as `common.parallel.mesh.rank_grid` says (stage-major here, as
dp = 1: rank = stage * tp + tp_rank).
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
from torch import nn

from common.collectives import CountingComm
from common.errors import require
from common.links import Link
from common.parallel import mesh
from common.parallel import pipeline_parallel as pp_
from common.parallel import tensor_parallel as tp_
from common.parallel.tensor_parallel import (
    ColumnParallelLinear,
    copy_to_tp,
    reduce_from_tp,
)

from .compressors import Compressor

__all__ = [
    "ColumnParallelLinear",
    "Cut",
    "Parallel",
    "RowParallelLinear",
    "copy_to_tp",
    "gpipe_step",
    "pipeline_step",
    "recv_activation",
    "recv_gradient",
    "reduce_from_tp",
    "send_activation",
    "send_gradient",
    "setup",
    "shard",
    "split_layers",
    "sync_partial_grads",
]

Parallel = mesh.Grid  # where this process sits: tp/pp degrees and ranks, counting communicators
Cut = pp_.Boundary  # the compressors at one pipeline cut: Cut(forward, backward)


def setup(tp: int = 1, pp: int = 1, link: Link | None = None) -> Parallel:
    """Build the groups of a TP x PP layout on the current process group (every rank must call this)."""
    require(tp >= 1 and pp >= 1, f"tp and pp must be >= 1, got tp={tp}, pp={pp}")
    return mesh.build_grid(tp=tp, pp=pp, dp=1, link=link)


class RowParallelLinear(tp_.RowParallelLinear):
    """Megatron's row-parallel linear whose forward all-reduce goes through `compressor`."""

    def __init__(
        self, d_in: int, d_out: int, tp: int = 1, comm: CountingComm | None = None, compressor: Compressor | None = None
    ):
        super().__init__(d_in, d_out, tp, comm, compressor)

    @property
    def compressor(self) -> Compressor | None:
        return self.hook


def shard(model: nn.Module, full: dict[str, torch.Tensor], tp: int, tp_rank: int) -> dict[str, torch.Tensor]:
    """This rank's slices of a one-process state dict (or of its gradients), for the keys both have."""
    return tp_.shard_state(model, full, tp, tp_rank)


@torch.no_grad()
def sync_partial_grads(model: nn.Module, comm: CountingComm | None) -> None:
    """Sum over the tensor-parallel group the gradients of weights that see only this rank's partial input
    (`tp_partial`, e.g. the auto-encoder's encoder), for compressors shared across the tensor-parallel ranks
    (`shared_across_tp`, default True); a compressor private to each rank keeps its own gradient."""
    if tp_.comm_size(comm) == 1:
        return
    private = {
        id(p)
        for m in model.modules()
        if isinstance(m, Compressor) and not getattr(m, "shared_across_tp", True)
        for p in m.parameters()
    }
    for p in model.parameters():
        if getattr(p, "tp_partial", False) and p.grad is not None and id(p) not in private:
            comm.all_reduce(p.grad)


def send_activation(x: torch.Tensor, cut: Cut, comm: CountingComm, dst: int) -> list[torch.Tensor]:
    """Encode and send (completed before returning); returns what the backward pass must differentiate."""
    out = cut.send_forward(x, comm, dst)
    comm.wait_pending()
    return out


def recv_activation(
    shape: tuple[int, ...], cut: Cut, comm: CountingComm, src: int
) -> tuple[torch.Tensor, list[torch.Tensor]]:
    """Receive and decode; returns the activation and the leaves whose gradients go back to the sender."""
    return cut.recv_forward(shape, comm, src)


def send_gradient(leaves: list[torch.Tensor], cut: Cut, comm: CountingComm, dst: int) -> None:
    cut.send_backward(leaves, comm, dst)
    comm.wait_pending()


def recv_gradient(outputs: list[torch.Tensor], cut: Cut, comm: CountingComm, src: int) -> list[torch.Tensor]:
    return cut.recv_backward(outputs, comm, src)


def pipeline_step(
    stage_fn: Callable[[torch.Tensor | None, int], torch.Tensor],
    loss_fn: Callable[[torch.Tensor, int], torch.Tensor],
    par: Parallel,
    n_micro: int,
    act_shape: tuple[int, ...],
    cut_in: Cut | None,
    cut_out: Cut | None,
    schedule: str = "gpipe",
) -> torch.Tensor | None:
    """One forward/backward over `n_micro` micro-batches under `schedule` ("gpipe" or "1f1b").

    `stage_fn(x, i)` runs this stage on micro-batch i (x is None on the first stage, which reads its own
    input); `loss_fn(out, i)` is the last stage's loss for micro-batch i, already divided by `n_micro`.
    Gradients accumulate in the stage's parameters. Returns the summed loss on the last stage, else None.
    """
    return pp_.pipeline_step(
        stage_fn,
        loss_fn,
        par.pp_comm,
        par.stage,
        par.pp,
        n_micro,
        act_shape,
        None if par.first else par.peer(par.stage - 1),
        None if par.last else par.peer(par.stage + 1),
        cut_in,
        cut_out,
        schedule,
    )


gpipe_step = pipeline_step  # the name compression's callers use; GPipe is its default schedule


def split_layers(n_layers: int, pp: int) -> list[list[int]]:
    """Consecutive, near-equal blocks of layer indices, one per stage."""
    require(1 <= pp <= n_layers, f"pp={pp} stages need at least as many layers (have {n_layers})")
    bounds = [math.floor(s * n_layers / pp) for s in range(pp + 1)]
    return [list(range(bounds[s], bounds[s + 1])) for s in range(pp)]
