"""Run a strategy for real and compare its time with the prediction.

A small GPT is trained on `tp * dp * pp` processes (gloo on CPUs; NCCL, one GPU per rank, when there are
enough GPUs) on the shared runtime, `common.parallel`: pipeline stages exchange activations and gradients
under a GPipe or 1F1B schedule, each transformer block is Megatron tensor-parallel (column-parallel QKV and
first MLP layer, row-parallel projections, a vocabulary-parallel output layer), and each stage's gradients are
all-reduced across its data-parallel replicas.

Every rank builds the same full model from one seed and keeps its shard, so a run can be checked against a
single-process reference (`reference_step`). `compare` prices each run with the improved cost model (layers
profiled by `profile_layers`, this machine described by `local_setup`) plus the per-message latency the model
leaves out (`message_latency`, messages counted by `message_counts`, latencies from the link micro-benchmark).
"""

from __future__ import annotations

import logging
import statistics
import time
from dataclasses import asdict, dataclass

import numpy as np
import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn

from amp import memory, profiles
from amp.specs import (
    Cluster,
    GPUType,
    Model,
    Node,
    Setup,
    Strategy,
    register_gpu,
    transformer,
)
from common.collectives import CountingComm, nbytes
from common.errors import require
from common.parallel import (
    SCHEDULES,
    all_reduce_gradients,
    build_grid,
    link_bench,
    pipeline_step,
    schedule_order,
)
from common.parallel import tensor_parallel as tpl
from common.parallel.mesh import device_of

log = logging.getLogger(__name__)

# the bound this module reports on predicted / measured (either way) for the tiny model on a shared CPU
TOLERANCE_RATIO = 3.0


@dataclass(frozen=True)
class TinyGPT:
    vocab: int = 64
    hidden: int = 64
    heads: int = 4
    seq: int = 32
    layers: int = 4
    global_batch: int = 8
    seed: int = 0

    def spec(self) -> Model:
        return transformer("tiny-gpt", self.hidden, self.layers, self.heads, self.seq, self.vocab, tie_embeddings=False)


# ----------------------------------------------------------------------------------- tensor parallel
class TPContext:
    """This rank's tensor-parallel index, degree and communicator (None: one rank; the regions are then
    identities), for the blocks below; the regions themselves are `common.parallel.tensor_parallel`."""

    def __init__(self, rank: int = 0, size: int = 1, comm: CountingComm | None = None):
        self.rank, self.size, self.comm = rank, size, comm

    def copy(self, x):
        return tpl.copy_to_tp(x, self.comm)

    def reduce(self, x):
        return tpl.reduce_from_tp(x, self.comm)

    def gather(self, x):
        return tpl.gather_from_tp(x, self.comm)


def full_weights(cfg: TinyGPT) -> dict[str, torch.Tensor]:
    """The whole model's weights, the same on every rank (one seed)."""
    g = torch.Generator().manual_seed(cfg.seed)
    h, v, s = cfg.hidden, cfg.vocab, cfg.seq

    def rnd(*shape, std=0.02):
        return torch.randn(*shape, generator=g) * std

    w = {"tok": rnd(v, h), "pos": rnd(s, h), "lnf.w": torch.ones(h), "lnf.b": torch.zeros(h), "head": rnd(v, h)}
    for i in range(cfg.layers):
        w.update(
            {
                f"{i}.ln1.w": torch.ones(h),
                f"{i}.ln1.b": torch.zeros(h),
                f"{i}.qkv.w": rnd(3 * h, h),
                f"{i}.qkv.b": rnd(3 * h),
                f"{i}.proj.w": rnd(h, h),
                f"{i}.proj.b": rnd(h),
                f"{i}.ln2.w": torch.ones(h),
                f"{i}.ln2.b": torch.zeros(h),
                f"{i}.fc1.w": rnd(4 * h, h),
                f"{i}.fc1.b": rnd(4 * h),
                f"{i}.fc2.w": rnd(h, 4 * h),
                f"{i}.fc2.b": rnd(h),
            }
        )
    return w


def _rows(t, k, n):
    step = t.shape[0] // n
    return t[k * step : (k + 1) * step]


class Embedding(nn.Module):
    def __init__(self, w):
        super().__init__()
        self.tok, self.pos = nn.Parameter(w["tok"].clone()), nn.Parameter(w["pos"].clone())

    def forward(self, idx):
        return self.tok[idx] + self.pos[: idx.shape[1]]


class Block(nn.Module):
    """A pre-LN transformer block holding its tensor-parallel shard (heads and MLP columns)."""

    def __init__(self, w, i: int, cfg: TinyGPT, tp: TPContext):
        super().__init__()
        h, k, n = cfg.hidden, tp.rank, tp.size
        require(cfg.heads % n == 0, f"{cfg.heads} heads cannot be split over tensor-parallel degree {n}")
        self.tp, self.heads, self.hd = tp, cfg.heads // n, h // cfg.heads

        def p(t):
            return nn.Parameter(t.clone().contiguous())

        self.ln1 = nn.LayerNorm(h)
        self.ln2 = nn.LayerNorm(h)
        with torch.no_grad():
            self.ln1.weight.copy_(w[f"{i}.ln1.w"]), self.ln1.bias.copy_(w[f"{i}.ln1.b"])
            self.ln2.weight.copy_(w[f"{i}.ln2.w"]), self.ln2.bias.copy_(w[f"{i}.ln2.b"])
        q, kk, v = w[f"{i}.qkv.w"].chunk(3)
        qb, kb, vb = w[f"{i}.qkv.b"].chunk(3)
        self.qkv_w = p(torch.cat([_rows(q, k, n), _rows(kk, k, n), _rows(v, k, n)]))
        self.qkv_b = p(torch.cat([_rows(qb, k, n), _rows(kb, k, n), _rows(vb, k, n)]))
        self.proj_w = p(_rows(w[f"{i}.proj.w"].T, k, n).T)
        self.proj_b = p(w[f"{i}.proj.b"])
        self.fc1_w, self.fc1_b = p(_rows(w[f"{i}.fc1.w"], k, n)), p(_rows(w[f"{i}.fc1.b"], k, n))
        self.fc2_w = p(_rows(w[f"{i}.fc2.w"].T, k, n).T)
        self.fc2_b = p(w[f"{i}.fc2.b"])

    def forward(self, x):
        B, T, _ = x.shape
        a = F.linear(self.tp.copy(self.ln1(x)), self.qkv_w, self.qkv_b)
        q, k, v = (t.view(B, T, self.heads, self.hd).transpose(1, 2) for t in a.chunk(3, dim=-1))
        y = F.scaled_dot_product_attention(q, k, v, is_causal=True).transpose(1, 2).reshape(B, T, -1)
        x = x + self.tp.reduce(F.linear(y, self.proj_w)) + self.proj_b
        m = F.gelu(F.linear(self.tp.copy(self.ln2(x)), self.fc1_w, self.fc1_b))
        return x + self.tp.reduce(F.linear(m, self.fc2_w)) + self.fc2_b


class Head(nn.Module):
    """Final layer norm and the vocabulary-parallel output layer; returns the full logits."""

    def __init__(self, w, cfg: TinyGPT, tp: TPContext):
        super().__init__()
        self.tp = tp
        self.ln = nn.LayerNorm(cfg.hidden)
        with torch.no_grad():
            self.ln.weight.copy_(w["lnf.w"]), self.ln.bias.copy_(w["lnf.b"])
        self.w = nn.Parameter(_rows(w["head"], tp.rank, tp.size).clone())

    def forward(self, x):
        return self.tp.gather(F.linear(self.tp.copy(self.ln(x)), self.w))


def build_layers(cfg: TinyGPT, tp: TPContext | None = None) -> list[nn.Module]:
    """The model as the planner's layer list (embedding, no-op, blocks, two no-ops, head, no-op)."""
    tp = tp or TPContext()
    w = full_weights(cfg)
    blocks = [Block(w, i, cfg, tp) for i in range(cfg.layers)]
    return [Embedding(w), nn.Identity(), *blocks, nn.Identity(), nn.Identity(), Head(w, cfg, tp), nn.Identity()]


def batch(cfg: TinyGPT, step: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(cfg.seed * 1000 + step + 1)
    idx = torch.randint(cfg.vocab, (cfg.global_batch, cfg.seq + 1), generator=g)
    return idx[:, :-1], idx[:, 1:]


def reference_step(cfg: TinyGPT) -> tuple[float, dict[str, torch.Tensor]]:
    """Single-process loss and gradients of the first batch (what a parallel run must reproduce)."""
    layers = nn.Sequential(*build_layers(cfg))
    x, y = batch(cfg)
    loss = F.cross_entropy(layers(x).flatten(0, 1), y.flatten())
    loss.backward()
    grads = {
        "tok": layers[0].tok.grad.clone(),
        "block0.fc1_w": layers[2].fc1_w.grad.clone(),
        "head": layers[-2].w.grad.clone(),
    }
    return float(loss.detach()), grads


# --------------------------------------------------------------------------------------- the run
def _count_saved_bytes(fn, params):
    """Run fn() and sum the bytes autograd keeps for backward (each storage once, parameters excluded)."""
    seen, total = {p.untyped_storage().data_ptr() for p in params}, [0]

    def pack(t):
        key = t.untyped_storage().data_ptr()
        if key not in seen:
            seen.add(key)
            total[0] += t.untyped_storage().nbytes()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        out = fn()
    return out, total[0]


class Runner:
    """One rank's part of a tp x dp x pp run of the tiny GPT: the grid, its stage of the model, Adam.

    `strategy` is (tp, dp, pp, mbs, partition[, schedule]); the schedule is "gpipe" (default) or "1f1b".
    Every rank of the process group builds its runners in the same order (they create process groups)."""

    def __init__(self, cfg: TinyGPT, strategy: tuple):
        self.cfg = cfg
        tp, dp, pp, self.mbs, partition, self.schedule = (*strategy, "gpipe")[:6]
        self.partition = tuple(partition)
        world = dist.get_world_size() if dist.is_initialized() else 1
        require(tp * dp * pp == world, f"tp*dp*pp = {tp * dp * pp} but {world} processes")
        self.grid = g = build_grid(tp=tp, pp=pp, dp=dp)
        self.dev = device_of(g)
        self.all_layers = build_layers(cfg, TPContext(g.tp_rank, tp, g.tp_comm))
        start = sum(partition[: g.stage])
        self.stage = nn.ModuleList(self.all_layers[start : start + partition[g.stage]]).to(self.dev)
        self.params = list(self.stage.parameters())
        self.opt = torch.optim.Adam(self.params, lr=1e-3)
        self.per_replica = cfg.global_batch // dp
        self.n_micro = self.per_replica // self.mbs
        self.times: list[float] = []
        self.steps_run = 0

    def forward_backward(self, i: int, count: bool = False) -> tuple[float, int]:
        """Loss (last stage; else 0) of batch i and the most activation bytes held at once (with `count`)."""
        g, mbs, n_micro = self.grid, self.mbs, self.n_micro
        x_all, y_all = (
            t[g.dp_rank * self.per_replica : (g.dp_rank + 1) * self.per_replica].to(self.dev)
            for t in batch(self.cfg, i)
        )
        saved = [0] * n_micro

        def stage_fn(x, m):
            x = x_all[m * mbs : (m + 1) * mbs] if x is None else x

            def run():
                y = x
                for layer in self.stage:
                    y = layer(y)
                return y

            if not count:
                return run()
            out, saved[m] = _count_saved_bytes(run, self.params)
            return out

        def loss_fn(out, m):
            return F.cross_entropy(out.flatten(0, 1), y_all[m * mbs : (m + 1) * mbs].flatten()) / n_micro

        total = pipeline_step(
            stage_fn,
            loss_fn,
            g.pp_comm,
            g.stage,
            g.pp,
            n_micro,
            (mbs, self.cfg.seq, self.cfg.hidden),
            None if g.first else g.peer(g.stage - 1),
            None if g.last else g.peer(g.stage + 1),
            schedule=self.schedule,
            device=self.dev,
        )
        all_reduce_gradients(self.params, g.dp_comm)
        alive = peak = 0  # activations held at once, in the order the schedule ran the micro-batches
        for kind, m in schedule_order(self.schedule, g.pp, g.stage, n_micro):
            alive += saved[m] if kind == "F" else -saved[m]
            peak = max(peak, alive)
        return 0.0 if total is None else float(total), peak

    def compute_between_tp_messages(self, prof: dict) -> float:
        """Seconds this rank computes between two tensor-parallel messages: its stage's profiled time per
        micro-batch over the messages it sends per micro-batch."""
        g = self.grid
        strategy = Strategy(g.tp, g.dp, g.pp, self.mbs, self.partition)
        per_micro = message_counts(self.cfg, strategy)["tp_per_micro_batch"][g.stage]
        start = sum(self.partition[: g.stage])
        stage_s = float(prof[("local", g.tp, self.mbs)][start : start + self.partition[g.stage]].sum())
        return stage_s / max(per_micro, 1)

    def first_step(self) -> dict:
        """Step 0, checked: loss, a few gradients, memory, and the messages of one step by group."""
        loss0, saved = self.forward_backward(0, count=True)
        grads = {}
        if self.grid.first:
            grads["tok"] = self.stage[0].tok.grad.cpu().clone()
        for layer in self.stage:
            if layer is self.all_layers[2]:
                grads["block0.fc1_w"] = layer.fc1_w.grad.cpu().clone()
            if isinstance(layer, Head):
                grads["head"] = layer.w.grad.cpu().clone()
        self.opt.step()
        self.opt.zero_grad(set_to_none=True)
        self.steps_run = 1

        def calls(comm, ops=None):
            return 0 if comm is None else sum(v.calls for k, v in comm.stats.items() if ops is None or k in ops)

        g = self.grid
        return {
            "loss0": loss0,
            "grads": grads,
            "saved_activation_bytes": saved,
            "messages": {"tp": calls(g.tp_comm), "pp_send": calls(g.pp_comm, ("send",)), "dp": calls(g.dp_comm)},
        }

    def timed_steps(self, n: int, warmup: int = 0) -> None:
        """`warmup` untimed then `n` timed training steps (between barriers; the slowest rank's time counts)."""
        for k in range(warmup + n):
            dist.barrier()
            t0 = time.perf_counter()
            self.forward_backward(self.steps_run)
            self.opt.step()
            self.opt.zero_grad(set_to_none=True)
            if self.dev.type == "cuda":
                torch.cuda.synchronize(self.dev)
            dist.barrier()
            self.steps_run += 1
            if k >= warmup:
                self.times.append(time.perf_counter() - t0)

    def summary(self, first: dict) -> dict:
        g = self.grid
        n_param = sum(p.numel() for p in self.params)
        state_bytes = sum(
            nbytes(t) for st in self.opt.state.values() for t in st.values() if torch.is_tensor(t) and t.dim() > 0
        )
        return {
            "rank": g.rank,
            "stage": g.stage,
            "tp_rank": g.tp_rank,
            "dp_rank": g.dp_rank,
            "schedule": self.schedule,
            "times": self.times,
            "param_elems": n_param,
            "param_bytes": n_param * 4,
            "grad_bytes": n_param * 4,
            "optimizer_bytes": state_bytes,
            **first,
        }


def train_worker(rank: int, world: int, cfg_dict: dict, strategy: tuple, steps: int, warmup: int) -> dict:
    """One rank of a tp x dp x pp run: returns its step times, losses, gradients, memory and message counts."""
    runner = Runner(TinyGPT(**cfg_dict), strategy)
    first = runner.first_step()
    runner.timed_steps(steps, warmup)
    return runner.summary(first)


def _link_rows(world: int, dev) -> list[dict]:
    """The link micro-benchmark's ping-pong between ranks 0 and 1 (best of repeats: noise only adds)."""
    return link_bench.ping_pong(link_bench.default_sizes(8 << 20, 6), 0, 1, repeats=15, stat="min", device=dev)


def _session_worker(
    rank: int,
    world: int,
    cfg_dict: dict,
    strategies: list[tuple],
    steps: int,
    warmup: int,
    measure: bool,
    rounds: int = 1,
) -> dict:
    """One process of a session: every strategy's runner, their first (checked) steps, then `rounds` rounds in
    which each strategy in turn runs its share of the timed steps, so that the load of a shared machine spreads
    over all of them. With `measure`, each round also profiles, right before a strategy's steps, the layers it
    uses, and times the all-reduce latency of each group size (all ranks at once, as in the runs); the link's
    ping-pong is timed once."""
    cfg = TinyGPT(**cfg_dict)
    dev = device_of()
    out: dict = {"link": _link_rows(world, dev) if measure and world >= 2 else [], "profile": [], "busy": []}
    runners = [Runner(cfg, st) for st in strategies]
    firsts = [r.first_step() for r in runners]
    for r in runners:
        r.timed_steps(0, warmup)
    dp_sizes = sorted({st[1] for st in strategies if st[1] > 1})
    per_round = [steps // rounds + (k < steps % rounds) for k in range(rounds)]
    for k in range(rounds):
        if measure:
            generic = {
                n: link_bench.latency_under_load("all_reduce", build_grid(tp=n, pp=world // n).tp_comm.group)
                for n in dp_sizes
            }
            out["profile"].append([])
            out["busy"].append([])
        for st, r in zip(strategies, runners):
            if measure:
                dist.barrier()
                prof = profile_layers(cfg, (st[3],), repeats=7, device=dev, tp=st[0]).times
                out["profile"][-1].append(prof)
                busy = {"dp": generic.get(st[1], 0.0), "tp": 0.0}
                if r.grid.tp_comm is not None:  # the all-reduce after as much compute as the run does between two
                    busy["tp"] = link_bench.latency_under_load(
                        "all_reduce", r.grid.tp_comm.group, work_s=r.compute_between_tp_messages(prof), messages=20
                    )
                out["busy"][-1].append(busy)
            r.timed_steps(per_round[k])
    out["runs"] = [r.summary(f) for r, f in zip(runners, firsts)]
    return out


def _pack(s: Strategy, schedule: str) -> tuple:
    require(schedule in SCHEDULES, f"unknown pipeline schedule {schedule!r}; choose one of {', '.join(SCHEDULES)}")
    return (s.tp, s.dp, s.pp, s.mbs, tuple(s.partition), schedule)


def run_session(
    cfg: TinyGPT,
    strategies: list[Strategy],
    steps: int = 5,
    warmup: int = 2,
    measure: bool = False,
    timeout_s: float = 120.0,
    schedules: str | list[str] = "gpipe",
    rounds: int = 1,
) -> list[dict]:
    """Run strategies of one process count on a single set of spawned processes (one result per rank).
    `schedules`: one pipeline schedule for all, or one per strategy; `rounds`: interleave them that often."""
    from common.distributed import run_processes

    worlds = {s.tp * s.dp * s.pp for s in strategies}
    require(len(worlds) == 1, f"a session runs strategies of one process count, got {sorted(worlds)}")
    for s in strategies:
        require(len(s.partition) == s.pp, f"strategy {s.label()} needs a partition of {s.pp} stages")
    schedules = [schedules] * len(strategies) if isinstance(schedules, str) else list(schedules)
    require(len(schedules) == len(strategies), "give one schedule, or one per strategy")
    packed = [_pack(s, sch) for s, sch in zip(strategies, schedules)]
    world = worlds.pop()
    backend = "nccl" if torch.cuda.is_available() and torch.cuda.device_count() >= world else "gloo"
    return run_processes(
        _session_worker,
        world,
        args=(asdict(cfg), packed, steps, warmup, measure, rounds),
        timeout_s=timeout_s,
        backend=backend,
    )


def run_strategy(
    cfg: TinyGPT, s: Strategy, steps: int = 5, warmup: int = 2, timeout_s: float = 120.0, schedule: str = "gpipe"
) -> list[dict]:
    """Train `steps` timed iterations of `s` on tp*dp*pp local processes; one result per rank."""
    return [r["runs"][0] for r in run_session(cfg, [s], steps, warmup, False, timeout_s, schedule)]


def measured_time(results: list[dict]) -> float:
    """Median over steps of the slowest rank's step time."""
    steps = zip(*[r["times"] for r in results])
    return statistics.median(max(t) for t in steps)


# ----------------------------------------------------------------------- this machine for the planner
def _link_worker(rank: int, world: int) -> list[dict]:
    return link_bench.ping_pong(link_bench.default_sizes(8 << 20, 6), 0, 1, repeats=15, stat="min")


def measure_link(timeout_s: float = 60.0) -> tuple[float, float]:
    """(bandwidth in Gbps, latency in microseconds) of send/recv between two local processes, fitted to the
    link micro-benchmark's ping-pong times."""
    from common.distributed import run_processes

    link = link_bench.fit_link(run_processes(_link_worker, 2, timeout_s=timeout_s)[0]).link
    return link.gbps, link.latency_s * 1e6


def profile_layers(
    cfg: TinyGPT, mbs_list=(1, 2, 4), repeats: int = 5, device: torch.device | str = "cpu", tp: int = 1
) -> profiles.Profiles:
    """Forward+backward time of each layer of the tiny GPT on `device` (one thread on a CPU); with tp > 1,
    of one tensor-parallel shard of each layer (no communication: the cost model adds it)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        layers = [layer.to(device) for layer in build_layers(cfg, TPContext(0, tp, None))]
        return profiles.measure(
            layers, lambda m: batch(cfg)[0][:m].to(device), mbs_list=mbs_list, gpu="local", tp=tp, repeats=repeats
        )
    finally:
        torch.set_num_threads(threads)


def local_setup(cfg: TinyGPT, world: int, gbps: float, latency_us: float, memory_gb: float = 8.0) -> Setup:
    """This machine as a one-node cluster of `world` devices (single-thread CPU processes or GPUs)."""
    register_gpu(GPUType("local", memory_gb))
    node = Node("local", world, intra_gbps=gbps, inter_gbps=gbps, latency_us=latency_us)
    return Setup("local", cfg.spec(), Cluster((node,), name="local"), cfg.global_batch)


def predicted_memory(cfg: TinyGPT, s: Strategy, schedule: str = "gpipe") -> list[dict]:
    """Per stage: the memory model's parameter/gradient/optimizer bytes (fp32 Adam: 16 per parameter) and
    activation bytes (fp32: twice the fp16 figures) of the micro-batches in flight under `schedule`."""
    model = cfg.spec()
    B = s.micro_batches(cfg.global_batch)
    out, a = [], 0
    for j, n in enumerate(s.partition):
        params = memory.stage_params(model, a, a + n) / s.tp
        acts = (
            sum(l.act_bytes(s.tp) for l in model.layers[a : a + n]) * 2 * s.mbs * memory.in_flight(s.pp, j, B, schedule)
        )
        out.append({"stage": j, "param_elems": params, "state_bytes": 16 * params, "activation_bytes": acts})
        a += n
    return out


# ------------------------------------------------------------------------------- per-message latency
@dataclass(frozen=True)
class Latencies:
    """Seconds per message, from the link micro-benchmark: a point-to-point send (the ping-pong fit's latency),
    and one all-reduce call in the tensor- and in the data-parallel group, as a computing rank sees it
    (`latency_under_load`)."""

    p2p_s: float
    tp_all_reduce_s: float = 0.0
    dp_all_reduce_s: float = 0.0


def message_counts(cfg: TinyGPT, s: Strategy) -> dict[str, object]:
    """The messages of one training step of the tiny GPT under `s`, as the runtime sends them.

    Per micro-batch and stage: each transformer block all-reduces twice forward (`reduce_from_tp` after the
    attention and MLP projections) and twice backward (`copy_to_tp` before QKV and the first MLP layer); the
    head all-gathers its vocabulary shards forward and all-reduces its input gradient backward. Each
    micro-batch crosses each pipeline cut twice (activation forward, its gradient back). Each stage all-reduces
    its gradients across the data-parallel replicas once per step, in one flat buffer."""
    B = s.micro_batches(cfg.global_batch)
    layers = cfg.spec().layers
    tp_per_micro, a = [], 0
    for n in s.partition:
        kinds = [l.kind for l in layers[a : a + n]]
        blocks = sum(k == "transformer" for k in kinds)
        head = int("head" in kinds)
        tp_per_micro.append(4 * blocks + 2 * head if s.tp > 1 else 0)
        a += n
    return {
        "micro_batches": B,
        "tp_per_micro_batch": tp_per_micro,
        "tp_per_step": B * sum(tp_per_micro),
        "p2p_per_step": 2 * B * (s.pp - 1),
        "dp_per_step": (1 if s.dp > 1 else 0) * s.pp,
    }


def message_latency(cfg: TinyGPT, s: Strategy, lat: Latencies) -> float:
    """Seconds of per-message latency on a step's critical path, added to the cost model's prediction (which
    here gets latency 0 and prices only bytes / bandwidth).

    With M micro-batches and pp stages the schedule's critical path holds M + pp - 1 forward-backward slots of
    the busiest stage (GPipe and 1F1B alike): each pays that stage's tensor-parallel all-reduce latencies, and
    the bottleneck stage waits for an activation and a gradient per micro-batch (2 (M + pp - 2) sends, the fill
    and drain crossing the other cuts). The data-parallel all-reduce adds one call.

    How `amp.cost_model` could take this over: `tp_allreduce` would charge `4 x tp_all_reduce_s` per block
    (plus 2 for a vocabulary-parallel head) instead of `ceil(log2 tp) x` the node's p2p latency, `cuts` 1 p2p
    latency each way per micro-batch, `dp_allreduce` one call's latency; `Node` would carry the measured
    all-reduce latency beside `latency_us`."""
    c = message_counts(cfg, s)
    M, slots = c["micro_batches"], c["micro_batches"] + s.pp - 1
    t = slots * max(c["tp_per_micro_batch"]) * lat.tp_all_reduce_s
    if s.pp > 1:
        t += 2 * (M + s.pp - 2) * lat.p2p_s
    return t + c["dp_per_step"] / s.pp * lat.dp_all_reduce_s


def _latencies(quiet: link_bench.LinkFit | None, busy_rounds: list[dict], s: Strategy) -> Latencies:
    """Per-message latencies for the prediction of strategy `s`. A pipeline send is posted without waiting
    (`isend`) and its receiver mostly finds it there, so it costs the wire latency of the ping-pong fit; an
    all-reduce is a rendezvous of its whole group every time, so it costs what `latency_under_load` measured in
    the rounds (median), at least 2(n-1) wire latencies."""
    q = quiet.link.latency_s if quiet is not None else 0.0

    def busy(key: str, n: int) -> float:
        return max(statistics.median(b[key] for b in busy_rounds), 2 * (n - 1) * q) if n > 1 else 0.0

    return Latencies(q, busy("tp", s.tp), busy("dp", s.dp))


def _profile(ranks: list[dict], i: int, world: int) -> profiles.Profiles:
    """Strategy i's layer times: the mean over ranks (they shared the CPU) of the median over rounds."""
    per_round = [
        {k: sum(r["profile"][k_round][i][k] for r in ranks) / world for k in ranks[0]["profile"][0][i]}
        for k_round in range(len(ranks[0]["profile"]))
    ]
    times = {k: np.median(np.stack([p[k] for p in per_round]), axis=0) for k in per_round[0]}
    return profiles.Profiles(
        times,
        tp_comm_included=False,
        source=f"measured on this machine, {world} processes at once, {len(per_round)} rounds",
    )


def compare(
    cfg: TinyGPT,
    strategies: list[Strategy],
    steps: int = 5,
    warmup: int = 2,
    timeout_s: float = 120.0,
    schedules: tuple[str, ...] = SCHEDULES,
    rounds: int = 5,
) -> list[dict]:
    """For each process count: run every strategy (each pipeline under every schedule in `schedules`) on that
    many processes, interleaved over `rounds` rounds, with the link micro-benchmark and the layer profile
    measured on the same processes in the same rounds; set each measured time beside the improved model's
    prediction for that schedule (fp32 activations and Adam state, as the run does) plus the per-message latency
    the model leaves out (`message_latency`)."""
    from amp.cost_model import CostModel

    rows = []
    by_world: dict[int, list[tuple[Strategy, str]]] = {}
    for s in strategies:
        for sch in schedules if s.pp > 1 else schedules[:1]:
            by_world.setdefault(s.tp * s.dp * s.pp, []).append((s, sch))
    for world, group in by_world.items():
        log.info("running %d strategies on %d processes", len(group), world)
        ranks = run_session(
            cfg,
            [s for s, _ in group],
            steps,
            warmup,
            measure=True,
            timeout_s=timeout_s,
            schedules=[sch for _, sch in group],
            rounds=max(1, min(rounds, steps)),
        )
        fit = link_bench.fit_link(ranks[0]["link"], "p2p") if world > 1 else None
        gbps = fit.link.gbps if fit else 1e3
        log.info("link: %.2f Gbps, %.0f us per send", gbps, fit.link.latency_s * 1e6 if fit else 0.0)
        for i, (s, sch) in enumerate(group):
            lat = _latencies(fit, [b[i] for b in ranks[0]["busy"]], s)
            cm = CostModel(
                local_setup(cfg, world, gbps, 0.0),
                _profile(ranks, i, world),
                "improved",
                schedule=sch,
                act_bits=32,
                bytes_per_param=16,
                act_scale=2,
            )
            base = float(cm.predict(s).total_s)
            latency = message_latency(cfg, s, lat)
            pred = base + latency
            results = [r["runs"][i] for r in ranks]
            measured = measured_time(results)
            mem = predicted_memory(cfg, s, sch)
            counts = message_counts(cfg, s)
            counted = {
                "tp": max(r["messages"]["tp"] for r in results),
                "p2p": sum(r["messages"]["pp_send"] for r in results if r["dp_rank"] == r["tp_rank"] == 0),
                "dp": max(r["messages"]["dp"] for r in results),
            }
            ratio = max(pred / measured, measured / pred)
            rows.append(
                {
                    "strategy": s.label(),
                    "schedule": sch if s.pp > 1 else "-",
                    "partition": " ".join(map(str, s.partition)),
                    "processes": world,
                    "predicted_s": pred,
                    "bandwidth_compute_s": base,
                    "latency_s": latency,
                    "measured_s": float(measured),
                    "error": (pred - measured) / measured,
                    "ratio": ratio,
                    "within_bound": ratio <= TOLERANCE_RATIO,
                    "tp_messages_model": counts["micro_batches"] * max(counts["tp_per_micro_batch"]),
                    "tp_messages_counted": counted["tp"],
                    "p2p_messages_model": counts["p2p_per_step"],
                    "p2p_messages_counted": counted["p2p"],
                    "dp_messages_model": counts["dp_per_step"] // s.pp,
                    "dp_messages_counted": counted["dp"],
                    "state_bytes_real": max(r["param_bytes"] + r["grad_bytes"] + r["optimizer_bytes"] for r in results),
                    "state_bytes_model": max(m["state_bytes"] for m in mem),
                    "activation_bytes_real": max(r["saved_activation_bytes"] for r in results),
                    "activation_bytes_model": max(m["activation_bytes"] for m in mem),
                    "link_gbps": gbps,
                    "latency_us": lat.p2p_s * 1e6,
                    "tp_all_reduce_us": lat.tp_all_reduce_s * 1e6,
                    "dp_all_reduce_us": lat.dp_all_reduce_s * 1e6,
                    "link_fit_max_error": fit.max_rel_error if fit else 0.0,
                }
            )
            log.info("%s %s: predicted %.4fs (latency %.4fs), measured %.4fs", s.label(), sch, pred, latency, measured)
    return rows


def strategies_from_config(entries, num_layers: int, max_processes: int) -> list[Strategy]:
    """Strategies from `{tp, dp, pp, mbs[, partition]}` entries (uniform partition by default), each checked to
    fit in `max_processes` processes."""
    from amp.partition import uniform_partition

    out = []
    for e in entries:
        part = tuple(e["partition"]) if e.get("partition") else tuple(uniform_partition(num_layers, int(e["pp"])))
        s = Strategy(int(e["tp"]), int(e["dp"]), int(e["pp"]), int(e["mbs"]), part)
        require(
            s.tp * s.dp * s.pp <= max_processes,
            f"validation strategy {s.label()} needs more than {max_processes} processes",
        )
        out.append(s)
    return out
