"""Per-GPU memory of a strategy, so that plans that cannot run are reported as such instead of ranked.

A GPU of pipeline stage j holds
  * its share of the stage's parameters (tied layers once) at BYTES_PER_PARAM bytes each: fp16 weights and
    gradients, fp32 master weights and gradients, Adam's two fp32 moments (DeepSpeed's fp16 optimizer
    without ZeRO, as in the paper's runs);
  * the activations of every micro-batch in flight: min(pp - j, B) under 1F1B, B under GPipe; per layer
    and sample as `Layer.act_bytes(tp)` gives (Korthikanti et al. 2022 for transformer blocks);
  * at the backward of the output layer, the gradient of the logits in fp32 and fp16 (6 bytes a logit per
    sample: Megatron's cross-entropy upcasts the fp16 logits), on top of what is stored;
  * RESERVED_BYTES of runtime (CUDA context, communication buffers, allocator slack).
"""

from __future__ import annotations

import numpy as np

from amp.specs import GPU_TYPES, Model

BYTES_PER_PARAM = 20.0
RESERVED_BYTES = 1.0e9
GB = 1e9


def stage_params(model: Model, a: int, b: int) -> float:
    """Parameters of layers a..b-1, counting each shared group once."""
    seen, total = set(), 0.0
    for layer in model.layers[a:b]:
        if layer.shared:
            if layer.shared in seen:
                continue
            seen.add(layer.shared)
        total += layer.params
    return total


def param_matrix(model: Model) -> np.ndarray:
    """P[a, b] = parameters of a stage holding layers a..b-1."""
    L = model.num_layers
    P = np.zeros((L + 1, L + 1))
    for a in range(L):
        for b in range(a + 1, L + 1):
            P[a, b] = stage_params(model, a, b)
    return P


LOGIT_GRAD_BYTES = 6.0


def transient_bytes(model: Model, tp: int) -> np.ndarray:
    """Per layer and sample: memory its backward allocates beyond what is stored (the logits' gradient)."""
    return np.array(
        [LOGIT_GRAD_BYTES * l.out_elems / (tp if l.out_split else 1) if l.kind == "head" else 0.0 for l in model.layers]
    )


def in_flight(pp: int, stage: int, micro_batches: int, schedule: str = "1f1b") -> int:
    if schedule == "gpipe":
        return micro_batches
    return min(pp - stage, micro_batches)


def stage_memory_matrix(
    model: Model,
    tp: int,
    mbs: int,
    pp: int,
    micro_batches: int,
    schedule: str = "1f1b",
    params: np.ndarray | None = None,
    bytes_per_param: float = BYTES_PER_PARAM,
    act_scale: float = 1.0,
    reserved: float = RESERVED_BYTES,
) -> np.ndarray:
    """M[j, a, b] = bytes per GPU if layers a..b-1 form stage j."""
    L = model.num_layers
    P = param_matrix(model) if params is None else params
    act = np.concatenate([[0.0], np.cumsum([l.act_bytes(tp) for l in model.layers])])
    A = act[None, :] - act[:, None]  # A[a, b] = activation bytes per sample of layers a..b-1
    flights = np.array([in_flight(pp, j, micro_batches, schedule) for j in range(pp)], dtype=np.float64)
    a, b = np.meshgrid(np.arange(L + 1), np.arange(L + 1), indexing="ij")
    T = np.zeros((L + 1, L + 1))
    for h, t in enumerate(transient_bytes(model, tp)):
        if t > 0:
            T = np.where((a <= h) & (h < b), np.maximum(T, t), T)
    M = bytes_per_param * P[None] / tp + act_scale * mbs * (flights[:, None, None] * A[None] + T[None]) + reserved
    M[:, b <= a] = np.inf
    return M


def stage_memory(
    model: Model,
    tp: int,
    mbs: int,
    partition: list[int] | tuple[int, ...],
    micro_batches: int,
    schedule: str = "1f1b",
    bytes_per_param: float = BYTES_PER_PARAM,
    act_scale: float = 1.0,
    reserved: float = RESERVED_BYTES,
) -> list[float]:
    """Bytes per GPU of each stage of a given partition (`act_scale` = 2 for fp32 activations)."""
    pp = len(partition)
    transient = transient_bytes(model, tp)
    out, a = [], 0
    for j, n in enumerate(partition):
        b = a + n
        acts = sum(l.act_bytes(tp) for l in model.layers[a:b])
        peak = float(max(transient[a:b], default=0.0))
        out.append(
            bytes_per_param * stage_params(model, a, b) / tp
            + act_scale * mbs * (in_flight(pp, j, micro_batches, schedule) * acts + peak)
            + reserved
        )
        a = b
    return out


def capacity_bytes(gpu_types: list[str]) -> float:
    """A stage spread over several GPU types is bounded by the smallest."""
    return min(GPU_TYPES[g].memory_gb for g in gpu_types) * GB
