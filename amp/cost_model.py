"""The AMP cost model: predicted iteration time of a data/tensor/pipeline-parallel strategy.

    time = pipeline(stage compute, micro-batches, activation transfers at the cuts) + data-parallel all-reduce

Ranks are laid out tensor-parallel fastest, then data, then pipeline, over the GPUs of the nodes in placement
order. Bandwidths are given in Gbps; the released model turns them into elements per second assuming 32 bits
per element, which is what both modes use (fp16 activations sent forward and their gradients sent back move
the same bits as one fp32 transfer; the gradient all-reduce is in fp32, as in the paper's DeepSpeed runs).

Two modes:
* `released` reproduces the released model's numbers, simplifications included: compute linear in the
  micro-batch size (3 x the forward time at micro-batch 1), one GPU-share-weighted profile for a mixed cluster,
  every stage priced the same, cut transfers averaged over the data-parallel replicas, the data-parallel
  ring priced on one of its links only, the released partitioner, no memory model.
* `improved` prices each stage on the GPUs it runs on (the slowest type in it), uses measured micro-batch
  sizes when the profile has them, takes the slowest replica's transfers and the slowest link of each
  all-reduce ring, adds tensor-parallel all-reduces when the profile lacks them, counts a stage's blocking
  send/recv in the slowest stage, shares each node's NIC among the data-parallel rings that cross it at
  the end of the step (one ring per tensor-parallel rank and stage), optionally a fixed cost per layer and
  micro-batch (`Profiles.fixed_s`, fitted on measured runs; each type's per-sample cost then comes from the
  type with the least memory bandwidth, scaled by the bandwidth ratio), adds a per-message latency where the nodes give
  one (`Node.latency_us`, default 0),
  partitions optimally, and leaves out stages that do not fit in memory.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from functools import lru_cache

import numpy as np

from amp import memory
from amp.partition import optimal_partition, pipeline_time, released_partition, uniform_partition
from amp.profiles import Profiles
from amp.specs import Setup, Strategy, check_strategy
from common.errors import require
from common.parallel.mesh import rank_grid

MODES = ("released", "improved")
BITS_PER_ELEM = 32.0


def transfer_s(elems, gbps):
    """Seconds to move `elems` elements at `gbps` (32 bits per element, as the released model)."""
    return elems * BITS_PER_ELEM / (gbps * 1e9)


@dataclass
class Prediction:
    strategy: Strategy
    total_s: float
    pipeline_s: float
    dp_allreduce_s: float
    stage_s: list[float] = field(default_factory=list)
    memory_gb: list[float] = field(default_factory=list)
    capacity_gb: float = 0.0
    feasible: bool = True

    @property
    def peak_memory_gb(self) -> float:
        return max(self.memory_gb) if self.memory_gb else 0.0


class CostModel:
    def __init__(
        self,
        setup: Setup,
        profiles: Profiles,
        mode: str = "improved",
        schedule: str = "1f1b",
        act_bits: float = 16.0,
        bytes_per_param: float = memory.BYTES_PER_PARAM,
        act_scale: float = 1.0,
    ):
        require(mode in MODES, f"unknown cost-model mode {mode!r}; choose one of {', '.join(MODES)}")
        require(schedule in ("1f1b", "gpipe"), f"unknown pipeline schedule {schedule!r}")
        self.setup, self.profiles, self.mode, self.schedule = setup, profiles, mode, schedule
        self.act_bits, self.bytes_per_param, self.act_scale = act_bits, bytes_per_param, act_scale
        self.model, self.cluster = setup.model, setup.cluster
        profiles.check(self.model)
        for g in self.cluster.gpu_types:
            require(g in profiles.gpus(), f"no profile for GPU type {g!r}; profiled: {', '.join(profiles.gpus())}")
        nodes = self.cluster.nodes
        n = len(nodes)
        inter = np.array([nd.inter_gbps for nd in nodes])
        self.bw = np.minimum(inter[:, None], inter[None, :])
        self.bw[np.arange(n), np.arange(n)] = [nd.intra_gbps for nd in nodes]
        lat = np.array([nd.latency_us for nd in nodes]) * 1e-6
        self.lat = np.zeros((n, n)) if mode == "released" else np.maximum(lat[:, None], lat[None, :])
        self.node_gpu = [nd.gpu for nd in nodes]
        self.nic = inter.astype(np.float64)
        self.node_gpus = np.array([nd.gpus for nd in nodes])
        self.params = memory.param_matrix(self.model)
        self.released = mode == "released"
        self._times = lru_cache(maxsize=None)(self._layer_times)

    # ------------------------------------------------------------------------------------------ layout
    def grid(self, s: Strategy) -> np.ndarray:
        """Node index of every rank, shaped (pp, dp, tp)."""
        order = np.asarray(s.placement if s.placement is not None else range(len(self.cluster.nodes)))
        gpu_nodes = np.repeat(order, self.node_gpus[order])
        return gpu_nodes[rank_grid(s.pp, s.dp, s.tp)]

    def stage_gpu_types(self, s: Strategy, grid: np.ndarray | None = None) -> list[list[str]]:
        g = self.grid(s) if grid is None else grid
        return [sorted({self.node_gpu[i] for i in np.unique(g[j])}) for j in range(s.pp)]

    # ----------------------------------------------------------------------------------------- compute
    def _layer_times(self, gpu: str, tp: int, mbs: int) -> np.ndarray:
        return self.profiles.layer_times(gpu, tp, mbs, linear=self.released)

    def compute(self, s: Strategy, grid: np.ndarray | None = None) -> np.ndarray:
        """(pp, L) forward+backward seconds of each layer on each stage's GPUs for one micro-batch."""
        L = self.model.num_layers
        if self.released:
            share = self.cluster.gpu_share()
            e = sum(w * self._times(g, s.tp, s.mbs) for g, w in share.items())
            return np.broadcast_to(e, (s.pp, L))
        grid = self.grid(s) if grid is None else grid
        e = np.empty((s.pp, L))
        for j, types in enumerate(self.stage_gpu_types(s, grid)):
            e[j] = np.max([self._times(g, s.tp, s.mbs) for g in types], axis=0)
            if s.tp > 1 and not self.profiles.tp_comm_included:
                e[j] += self.tp_allreduce(s, grid, j)
        return e

    def tp_allreduce(self, s: Strategy, grid: np.ndarray, j: int) -> np.ndarray:
        """Per layer: the 4 all-reduces (2 forward, 2 backward) of a Megatron transformer block over the
        slowest link of its tensor-parallel ring."""
        ring, nxt = grid[j], np.roll(grid[j], -1, axis=1)
        gbps, lat = float(np.min(self.bw[ring, nxt])), float(np.max(self.lat[ring, nxt]))
        factor = 2.0 * (s.tp - 1) / s.tp
        steps = np.ceil(np.log2(s.tp))  # small all-reduces are latency-bound: recursive doubling
        one = [
            factor * transfer_s(s.mbs * l.out_elems, gbps) * self.act_bits / BITS_PER_ELEM + steps * lat
            if l.kind == "transformer"
            else 0.0
            for l in self.model.layers
        ]
        return 4 * np.array(one)

    # ------------------------------------------------------------------------------------ communication
    def shared_gbps(self, src: np.ndarray, dst: np.ndarray) -> np.ndarray:
        """Bandwidth of each of the concurrent transfers src[i] -> dst[i] (node indices): a transfer between two
        nodes gets its share of the busier of the two NICs; one inside a node runs at the intra-node rate."""
        src, dst = np.asarray(src).ravel(), np.asarray(dst).ravel()
        n = len(self.nic)
        cross = src != dst
        out_flows = np.bincount(src[cross], minlength=n)
        in_flows = np.bincount(dst[cross], minlength=n)
        bw = self.bw[src, dst].astype(np.float64)
        bw[cross] = np.minimum(
            self.nic[src[cross]] / out_flows[src[cross]], self.nic[dst[cross]] / in_flows[dst[cross]]
        )
        return bw

    def cuts(self, s: Strategy, grid: np.ndarray | None = None) -> np.ndarray:
        """(pp-1, L-1): seconds to move the activation of layer l across cut j (stage j -> j+1)."""
        grid = self.grid(s) if grid is None else grid
        layers = self.model.layers
        vol = (
            np.array(
                [
                    (l.released_out_elems if (self.released and l.released_out_elems is not None) else l.out_elems)
                    / (s.tp if l.out_split else 1)
                    for l in layers[:-1]
                ]
            )
            * s.mbs
        )
        c = np.zeros((max(s.pp - 1, 0), len(layers) - 1))
        for j in range(s.pp - 1):
            # slowest tensor-parallel pair, per replica (sharing the NICs among the cut's concurrent sends was
            # tried and lowered the rank correlation on the released trials: the sends are spread in time)
            gbps = self.bw[grid[j], grid[j + 1]].min(axis=1)
            lat = self.lat[grid[j], grid[j + 1]].max(axis=1)
            bits = 1.0 if self.released else 2 * self.act_bits / BITS_PER_ELEM  # activation forward, gradient back
            per_replica = bits * transfer_s(vol[None, :], gbps[:, None]) + 2 * lat[:, None]
            c[j] = per_replica.mean(axis=0) if self.released else per_replica.max(axis=0)
        return c

    def dp_allreduce(self, s: Strategy, partition, grid: np.ndarray | None = None) -> float:
        """Slowest stage's ring all-reduce of its gradients: 2 (d-1)/d x bytes / slowest ring link."""
        if s.dp == 1:
            return 0.0
        grid = self.grid(s) if grid is None else grid
        bounds = np.concatenate([[0], np.cumsum(partition)])
        worst = 0.0
        # every stage and tensor-parallel rank runs its ring at the end of the step, sharing the NICs
        shared = None if self.released else self.shared_gbps(grid, np.roll(grid, -1, axis=1)).reshape(grid.shape)
        for j in range(s.pp):
            ring = grid[j]  # (dp, tp)
            if self.released:  # the released loop keeps only the link from the last replica to the first
                gbps, lat = float(np.min(self.bw[ring[-1], ring[0]])), 0.0
            else:
                nxt = np.roll(ring, -1, axis=0)
                gbps, lat = float(np.min(shared[j])), float(np.max(self.lat[ring, nxt]))
            params = self.params[bounds[j], bounds[j + 1]] / s.tp
            worst = max(worst, 2.0 * (s.dp - 1) / s.dp * transfer_s(params, gbps) + 2 * (s.dp - 1) * lat)
        return worst

    # ------------------------------------------------------------------------------------------ memory
    def memory_gb(self, s: Strategy, partition, B: int) -> tuple[list[float], float, bool]:
        mem = memory.stage_memory(
            self.model, s.tp, s.mbs, partition, B, self.schedule, self.bytes_per_param, self.act_scale
        )
        caps = [memory.capacity_bytes(t) for t in self.stage_gpu_types(s)]
        return [m / memory.GB for m in mem], min(caps) / memory.GB, all(m <= c for m, c in zip(mem, caps))

    def feasible_stages(self, s: Strategy, B: int, grid: np.ndarray) -> np.ndarray:
        M = memory.stage_memory_matrix(
            self.model, s.tp, s.mbs, s.pp, B, self.schedule, self.params, self.bytes_per_param, self.act_scale
        )
        caps = np.array([memory.capacity_bytes(t) for t in self.stage_gpu_types(s, grid)])
        return M <= caps[:, None, None]

    # --------------------------------------------------------------------------------------- prediction
    def partition(self, s: Strategy, B: int, e: np.ndarray, c: np.ndarray, grid: np.ndarray):
        m = self.model
        if self.released:
            if B == 1:
                if s.pp <= m.blocks:
                    return uniform_partition(m.blocks, s.pp, m.uniform_pad)
                return uniform_partition(m.num_layers, s.pp)
            return released_partition(e[0], c, s.pp, B)
        part, _ = optimal_partition(e, c, s.pp, B, feasible=self.feasible_stages(s, B, grid), blocking=True)
        return part

    def predict(self, s: Strategy) -> Prediction:
        """Predicted time of `s`; partitions it first when `s.partition` is empty."""
        gbs = self.setup.global_batch
        check_strategy(self.model, self.cluster, s, gbs)
        B = s.micro_batches(gbs)
        grid = self.grid(s)
        e, c = self.compute(s, grid), self.cuts(s, grid)
        part = list(s.partition) or self.partition(s, B, e, c, grid)
        if part is None:  # no split fits in memory
            mem, cap, _ = self.memory_gb(s, uniform_partition(self.model.num_layers, s.pp), B)
            return Prediction(s, float("inf"), float("inf"), float("inf"), [], mem, cap, False)
        s = Strategy(s.tp, s.dp, s.pp, s.mbs, tuple(part), s.placement)
        pipe = pipeline_time(e, c, part, B, blocking=not self.released)
        dp = self.dp_allreduce(s, part, grid)
        stages = [float(e[j, a : a + n].sum()) for j, (a, n) in enumerate(zip(np.cumsum([0, *part[:-1]]), part))]
        mem, cap, ok = self.memory_gb(s, part, B)
        return Prediction(s, pipe + dp, pipe, dp, stages, mem, cap, ok)
