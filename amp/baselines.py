"""The Megatron-style heuristic the paper compares with, as a strategy generator.

Tensor parallelism grows first, inside a node (1, 2, ... up to its GPUs); pipeline parallelism then spans
nodes; the first (smallest) model-parallel size whose uniform layer split fits in memory wins, and data
parallelism takes the remaining GPUs.
"""

from __future__ import annotations

from amp import memory
from amp.partition import uniform_partition
from amp.search import divisors
from amp.specs import Setup, Strategy
from common.errors import UserError


def megatron_options(setup: Setup, mbs: int = 1) -> list[Strategy]:
    """Model-parallel layouts in the order the heuristic tries them."""
    c, L = setup.cluster, setup.model.num_layers
    gpn, n = c.gpus_per_node, c.num_gpus
    shapes = [(tp, 1) for tp in divisors(gpn)]
    shapes += [(gpn, pp) for pp in divisors(len(c.nodes)) if pp > 1]
    out = []
    for tp, pp in shapes:
        dp = n // (tp * pp)
        if n % (tp * pp) or pp > L or setup.global_batch % (dp * mbs):
            continue
        out.append(Strategy(tp, dp, pp, mbs, tuple(uniform_partition(L, pp))))
    return out


def megatron(setup: Setup, mbs: int = 1, schedule: str = "1f1b") -> Strategy:
    """The heuristic's strategy: the smallest model-parallel size that fits in memory."""
    gpus = setup.cluster.gpu_types
    cap = min(memory.capacity_bytes([g]) for g in gpus)
    for s in megatron_options(setup, mbs):
        B = s.micro_batches(setup.global_batch)
        if max(memory.stage_memory(setup.model, s.tp, s.mbs, s.partition, B, schedule)) <= cap:
            return s
    raise UserError(f"no Megatron-style layout of {setup.model.name} fits on {setup.name or 'the cluster'}")
