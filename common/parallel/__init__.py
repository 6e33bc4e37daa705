"""The parallel runtime: the (pp, dp, tp) process-group grid and one module per parallelism (torchtitan's
layout). Model code knows nothing of parallelism beyond its blocks (which use the tensor-parallel layers).

- `mesh`: the rank layout (`rank_grid`, `coords`) and `build_grid` (groups from torch's DeviceMesh).
- `tensor_parallel`: Megatron regions (`copy_to_tp`, `reduce_from_tp`, `gather_from_tp`) with a hook at each
  communication point, column/row-parallel linears, sharding a one-process state dict.
- `pipeline_parallel`: stage boundaries with hooks, GPipe and 1F1B (`pipeline_step`, `schedule_order`).
- `data_parallel`: the gradient all-reduce (`all_reduce_gradients`, `all_reduce_tensors` for buffers).
- `link_bench`: ping-pong / all-reduce times by size and the latency + bandwidth fit (`fit_link`).
"""

from .data_parallel import all_reduce_gradients, all_reduce_tensors
from .mesh import MESH_DIMS, Grid, build_grid, coords, rank_grid
from .pipeline_parallel import (
    SCHEDULES,
    Boundary,
    in_flight,
    pipeline_step,
    schedule_order,
)
from .tensor_parallel import (
    ColumnParallelLinear,
    RowParallelLinear,
    copy_to_tp,
    gather_from_tp,
    reduce_from_tp,
    shard_state,
)

__all__ = [
    "MESH_DIMS",
    "SCHEDULES",
    "Boundary",
    "ColumnParallelLinear",
    "Grid",
    "RowParallelLinear",
    "all_reduce_gradients",
    "all_reduce_tensors",
    "build_grid",
    "coords",
    "copy_to_tp",
    "gather_from_tp",
    "in_flight",
    "pipeline_step",
    "rank_grid",
    "reduce_from_tp",
    "schedule_order",
    "shard_state",
]
