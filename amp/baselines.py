"""The heuristics the paper compares with, as strategy generators.

* `megatron` ("smallest model-parallel size that fits"): tensor parallelism grows first, inside a node (1, 2,
  ... up to its GPUs); pipeline parallelism then spans nodes; the first (smallest) model-parallel size whose
  uniform layer split fits in memory wins, and data parallelism takes the remaining GPUs.
* `megatron_tp_node` (Megatron-LM's recommendation, Narayanan et al. 2021): tensor parallelism across all the
  GPUs of a node, the fewest pipeline stages across nodes that fit in memory, data parallelism for the rest.

`amp.comparison` prices both by the released measured times and says which one the paper's figure matches.
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


def _fits(setup: Setup, s: Strategy, schedule: str) -> bool:
    cap = min(memory.capacity_bytes([g]) for g in setup.cluster.gpu_types)
    B = s.micro_batches(setup.global_batch)
    return max(memory.stage_memory(setup.model, s.tp, s.mbs, s.partition, B, schedule)) <= cap


def megatron(setup: Setup, mbs: int = 1, schedule: str = "1f1b") -> Strategy:
    """The heuristic's strategy: the smallest model-parallel size that fits in memory."""
    for s in megatron_options(setup, mbs):
        if _fits(setup, s, schedule):
            return s
    raise UserError(f"no Megatron-style layout of {setup.model.name} fits on {setup.name or 'the cluster'}")


def megatron_tp_node(setup: Setup, mbs: int = 1, schedule: str = "1f1b") -> Strategy:
    """Megatron-LM's rule: tensor parallelism within a node, pipelines across nodes, data parallelism for
    the rest (the fewest stages that fit)."""
    c, L = setup.cluster, setup.model.num_layers
    tp, n = c.gpus_per_node, c.num_gpus
    for pp in divisors(len(c.nodes)):
        dp = n // (tp * pp)
        if pp > L or setup.global_batch % (dp * mbs):
            continue
        s = Strategy(tp, dp, pp, mbs, tuple(uniform_partition(L, pp)))
        if _fits(setup, s, schedule):
            return s
    raise UserError(f"no tensor-parallel-in-a-node layout of {setup.model.name} fits on {setup.name or 'the cluster'}")


HEURISTICS = {
    "smallest model-parallel size that fits": megatron,
    "TP within a node, PP across nodes, DP for the rest": megatron_tp_node,
}
