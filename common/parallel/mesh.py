"""The (pp, dp, tp) process-group grid: one definition of the rank layout, and the groups of each parallelism.

Ranks are laid out tensor-parallel fastest, then data-parallel, then pipeline (Megatron's order):

    rank = (stage * dp + dp_rank) * tp + tp_rank

so a tensor-parallel group is a run of consecutive ranks (one node, the fastest links). `rank_grid` is that
layout as an array; the groups come from torch's `init_device_mesh` with dimensions ("pp", "dp", "tp").
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.distributed as dist

from common.collectives import CountingComm
from common.errors import require
from common.links import Link

MESH_DIMS = ("pp", "dp", "tp")  # slowest-varying first


def rank_grid(pp: int = 1, dp: int = 1, tp: int = 1) -> np.ndarray:
    """Global rank at [stage, dp_rank, tp_rank]: an int array shaped (pp, dp, tp)."""
    require(min(pp, dp, tp) >= 1, f"parallel degrees must be >= 1, got pp={pp}, dp={dp}, tp={tp}")
    return np.arange(pp * dp * tp).reshape(pp, dp, tp)


def coords(rank: int, pp: int = 1, dp: int = 1, tp: int = 1) -> tuple[int, int, int]:
    """(stage, dp_rank, tp_rank) of a global rank."""
    require(0 <= rank < pp * dp * tp, f"rank {rank} is outside pp*dp*tp = {pp * dp * tp}")
    stage, rest = divmod(rank, dp * tp)
    return stage, rest // tp, rest % tp


@dataclass
class Grid:
    """Where this process sits in the grid, and the communicators of its three groups.

    Each communicator is a `CountingComm` (counts bytes and messages; with a link, runs as if over it), or
    None when that degree is 1. `pp_comm` sends to global ranks (`peer`)."""

    tp: int = 1
    pp: int = 1
    tp_rank: int = 0
    stage: int = 0
    tp_comm: CountingComm | None = None
    pp_comm: CountingComm | None = None
    rank: int = 0
    dp: int = 1
    dp_rank: int = 0
    dp_comm: CountingComm | None = None
    mesh: object = None  # the torch DeviceMesh, when one was built

    @property
    def world_size(self) -> int:
        return self.tp * self.dp * self.pp

    @property
    def first(self) -> bool:
        return self.stage == 0

    @property
    def last(self) -> bool:
        return self.stage == self.pp - 1

    def peer(self, stage: int) -> int:
        """The global rank with this process's data- and tensor-parallel indices in `stage`."""
        return int(rank_grid(self.pp, self.dp, self.tp)[stage, self.dp_rank, self.tp_rank])

    def comms(self) -> list[CountingComm]:
        return [c for c in (self.tp_comm, self.pp_comm, self.dp_comm) if c is not None]

    def set_link(self, link: Link | None) -> None:
        for c in self.comms():
            c.link = link


def build_grid(tp: int = 1, pp: int = 1, dp: int = 1, link: Link | None = None) -> Grid:
    """This process's place in a tp x dp x pp layout of the current process group (every rank must call
    this, in the same order). Without a process group, a one-process grid."""
    world = dist.get_world_size() if dist.is_initialized() else 1
    require(
        tp * dp * pp == world,
        f"tp x dp x pp = {tp}x{dp}x{pp} = {tp * dp * pp} must equal the number of processes ({world})",
    )
    rank = dist.get_rank() if dist.is_initialized() else 0
    stage, dp_rank, tp_rank = coords(rank, pp, dp, tp)
    if world == 1:
        return Grid(tp, pp, tp_rank, stage, rank=rank, dp=dp, dp_rank=dp_rank)
    from torch.distributed.device_mesh import init_device_mesh

    device = "cuda" if dist.get_backend() == "nccl" else "cpu"
    mesh = init_device_mesh(device, (pp, dp, tp), mesh_dim_names=MESH_DIMS)

    def comm(dim: str, size: int) -> CountingComm | None:
        return CountingComm(group=mesh[dim].get_group(), link=link) if size > 1 else None

    return Grid(tp, pp, tp_rank, stage, comm("tp", tp), comm("pp", pp), rank, dp, dp_rank, comm("dp", dp), mesh)


def device_of(grid: Grid | None = None) -> torch.device:
    """The device this rank computes on: its GPU under NCCL, else the CPU."""
    if dist.is_initialized() and dist.get_backend() == "nccl":
        return torch.device("cuda", dist.get_rank() % torch.cuda.device_count())
    return torch.device("cpu")
