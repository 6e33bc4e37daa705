"""Run a strategy for real and compare its time with the prediction.

A small GPT is trained on `tp * dp * pp` processes (gloo on CPUs; NCCL, one GPU per rank, when there are
enough GPUs): pipeline stages exchange
activations and gradients with send/recv under a GPipe schedule, each transformer block is Megatron
tensor-parallel (column-parallel QKV and first MLP layer, row-parallel projections, all-reduce in the forward
of the row-parallel layers and in the backward of the column-parallel ones, a vocabulary-parallel output
layer), and the gradients of each stage are all-reduced across its data-parallel replicas.

Every rank builds the same full model from one seed and keeps its shard, so a run can be checked against a
single-process reference (`reference_step`). `profile_layers` measures the same layers on one process with
`amp.profiles.measure`, and `local_setup` describes this machine for the cost model.
"""

from __future__ import annotations

import logging
import statistics
import time
from dataclasses import asdict, dataclass

import torch
import torch.distributed as dist
import torch.nn as nn
import torch.nn.functional as F

from amp import memory, profiles
from amp.specs import Cluster, GPUType, Model, Node, Setup, Strategy, register_gpu, transformer
from common.collectives import nbytes
from common.errors import require

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
class _CopyToTP(torch.autograd.Function):
    """Identity forward, all-reduce of the gradient backward (input of a column-parallel layer)."""

    @staticmethod
    def forward(ctx, x, group):
        ctx.group = group
        return x

    @staticmethod
    def backward(ctx, g):
        g = g.contiguous()
        dist.all_reduce(g, group=ctx.group)
        return g, None


class _ReduceFromTP(torch.autograd.Function):
    """All-reduce forward, identity backward (output of a row-parallel layer)."""

    @staticmethod
    def forward(ctx, x, group):
        x = x.contiguous()
        dist.all_reduce(x, group=group)
        return x

    @staticmethod
    def backward(ctx, g):
        return g, None


class _GatherLastDim(torch.autograd.Function):
    """Concatenate the shards of the last dimension; the backward keeps this rank's slice."""

    @staticmethod
    def forward(ctx, x, group):
        ctx.group, ctx.n = group, x.shape[-1]
        ctx.rank = dist.get_rank(group)
        parts = [torch.empty_like(x) for _ in range(dist.get_world_size(group))]
        dist.all_gather(parts, x.contiguous(), group=group)
        return torch.cat(parts, dim=-1)

    @staticmethod
    def backward(ctx, g):
        return g[..., ctx.rank * ctx.n:(ctx.rank + 1) * ctx.n].contiguous(), None


class TPContext:
    def __init__(self, rank: int = 0, size: int = 1, group=None):
        self.rank, self.size, self.group = rank, size, group

    def copy(self, x):
        return _CopyToTP.apply(x, self.group) if self.size > 1 else x

    def reduce(self, x):
        return _ReduceFromTP.apply(x, self.group) if self.size > 1 else x

    def gather(self, x):
        return _GatherLastDim.apply(x, self.group) if self.size > 1 else x


def full_weights(cfg: TinyGPT) -> dict[str, torch.Tensor]:
    """The whole model's weights, the same on every rank (one seed)."""
    g = torch.Generator().manual_seed(cfg.seed)
    h, v, s = cfg.hidden, cfg.vocab, cfg.seq

    def rnd(*shape, std=0.02):
        return torch.randn(*shape, generator=g) * std

    w = {"tok": rnd(v, h), "pos": rnd(s, h), "lnf.w": torch.ones(h), "lnf.b": torch.zeros(h), "head": rnd(v, h)}
    for i in range(cfg.layers):
        w.update({f"{i}.ln1.w": torch.ones(h), f"{i}.ln1.b": torch.zeros(h), f"{i}.qkv.w": rnd(3 * h, h),
                  f"{i}.qkv.b": rnd(3 * h), f"{i}.proj.w": rnd(h, h), f"{i}.proj.b": rnd(h),
                  f"{i}.ln2.w": torch.ones(h), f"{i}.ln2.b": torch.zeros(h), f"{i}.fc1.w": rnd(4 * h, h),
                  f"{i}.fc1.b": rnd(4 * h), f"{i}.fc2.w": rnd(h, 4 * h), f"{i}.fc2.b": rnd(h)})
    return w


def _rows(t, k, n):
    step = t.shape[0] // n
    return t[k * step:(k + 1) * step]


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
        p = lambda t: nn.Parameter(t.clone().contiguous())  # noqa: E731
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
    grads = {"tok": layers[0].tok.grad.clone(), "block0.fc1_w": layers[2].fc1_w.grad.clone(),
             "head": layers[-2].w.grad.clone()}
    return float(loss.detach()), grads


# --------------------------------------------------------------------------------------- the run
def _groups(tp: int, dp: int, pp: int, rank: int):
    """Create every tensor- and data-parallel group (all ranks, same order) and return this rank's."""
    tp_group = dp_group = None
    for p in range(pp):
        for d in range(dp):
            ranks = [p * dp * tp + d * tp + t for t in range(tp)]
            g = dist.new_group(ranks) if tp > 1 else None
            if rank in ranks:
                tp_group = g
        for t in range(tp):
            ranks = [p * dp * tp + d * tp + t for d in range(dp)]
            g = dist.new_group(ranks) if dp > 1 else None
            if rank in ranks:
                dp_group = g
    return tp_group, dp_group


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


def train_worker(rank: int, world: int, cfg_dict: dict, strategy: tuple, steps: int, warmup: int) -> dict:
    """One rank of a tp x dp x pp run: returns its step times, losses, gradients and memory counts."""
    cfg = TinyGPT(**cfg_dict)
    tp, dp, pp, mbs, partition = strategy
    require(tp * dp * pp == world, f"tp*dp*pp = {tp * dp * pp} but {world} processes")
    t_rank, d_rank, p_rank = rank % tp, (rank // tp) % dp, rank // (tp * dp)
    tp_group, dp_group = _groups(tp, dp, pp, rank)
    tpc = TPContext(t_rank, tp, tp_group)
    dev = (torch.device("cuda", rank % torch.cuda.device_count()) if dist.get_backend() == "nccl"
           else torch.device("cpu"))
    all_layers = build_layers(cfg, tpc)
    start = sum(partition[:p_rank])
    stage = nn.ModuleList(all_layers[start:start + partition[p_rank]]).to(dev)
    first, last = p_rank == 0, p_rank == pp - 1
    prev_rank, next_rank = rank - tp * dp, rank + tp * dp
    opt = torch.optim.Adam(stage.parameters(), lr=1e-3)
    per_replica = cfg.global_batch // dp
    n_micro = per_replica // mbs
    act_shape = (mbs, cfg.seq, cfg.hidden)

    def run_stage(x):
        for layer in stage:
            x = layer(x)
        return x

    def step(i: int, count: bool = False):
        x_all, y_all = (t[d_rank * per_replica:(d_rank + 1) * per_replica].to(dev) for t in batch(cfg, i))
        inputs, outputs, saved, loss_sum = [], [], 0, 0.0
        for m in range(n_micro):  # GPipe: all forwards ...
            sl = slice(m * mbs, (m + 1) * mbs)
            if first:
                inp = x_all[sl]
            else:
                inp = torch.empty(act_shape, device=dev)
                dist.recv(inp, prev_rank)
                inp.requires_grad_(True)
            if count:
                out, nbytes = _count_saved_bytes(lambda: run_stage(inp), list(stage.parameters()))
                saved += nbytes
            else:
                out = run_stage(inp)
            if last:
                out = F.cross_entropy(out.flatten(0, 1), y_all[sl].flatten()) / n_micro
                loss_sum += float(out.detach())
            else:
                dist.send(out.detach().contiguous(), next_rank)
            inputs.append(inp)
            outputs.append(out)
        for m in reversed(range(n_micro)):  # ... then all backwards
            if last:
                outputs[m].backward()
            else:
                g = torch.empty(act_shape, device=dev)
                dist.recv(g, next_rank)
                outputs[m].backward(g)
            if not first:
                dist.send(inputs[m].grad.contiguous(), prev_rank)
        if dp > 1:  # data-parallel all-reduce of this stage's gradients, one flat buffer
            grads = [p.grad for p in stage.parameters()]
            flat = torch.cat([g.flatten() for g in grads]) / dp
            dist.all_reduce(flat, group=dp_group)
            off = 0
            for g in grads:
                g.copy_(flat[off:off + g.numel()].view_as(g))
                off += g.numel()
        return loss_sum, saved

    loss0, saved = step(0, count=True)
    grads = {}
    if first:
        grads["tok"] = stage[0].tok.grad.cpu().clone()
    for layer in stage:
        if layer is all_layers[2]:
            grads["block0.fc1_w"] = layer.fc1_w.grad.cpu().clone()
        if isinstance(layer, Head):
            grads["head"] = layer.w.grad.cpu().clone()
    opt.step()
    opt.zero_grad(set_to_none=True)
    times = []
    for i in range(1, steps + warmup + 1):
        dist.barrier()
        t0 = time.perf_counter()
        step(i)
        opt.step()
        opt.zero_grad(set_to_none=True)
        if dev.type == "cuda":
            torch.cuda.synchronize(dev)
        dist.barrier()
        if i > warmup:
            times.append(time.perf_counter() - t0)
    n_param = sum(p.numel() for p in stage.parameters())
    state_bytes = sum(nbytes(t) for st in opt.state.values() for t in st.values()
                      if torch.is_tensor(t) and t.dim() > 0)
    return {"rank": rank, "stage": p_rank, "tp_rank": t_rank, "dp_rank": d_rank, "loss0": loss0,
            "times": times, "grads": grads, "param_elems": n_param,
            "param_bytes": n_param * 4, "grad_bytes": n_param * 4, "optimizer_bytes": state_bytes,
            "saved_activation_bytes": saved}


def _session_worker(rank: int, world: int, cfg_dict: dict, strategies: list[tuple], steps: int, warmup: int,
                    measure: bool, mbs_list: tuple[int, ...]) -> dict:
    """One process of a session: optionally time the link and profile the layers (all ranks at once, so the
    CPU is shared as in the runs), then run each strategy in turn."""
    out: dict = {}
    dev = (torch.device("cuda", rank % torch.cuda.device_count()) if dist.get_backend() == "nccl"
           else torch.device("cpu"))
    if measure:
        if world >= 2:
            small, big = _pingpong(rank, world, (4, 8 << 20), 20, dev) if rank < 2 else (0.0, 0.0)
            out["link"] = (small, big)
        dist.barrier()
        out["profile"] = profile_layers(TinyGPT(**cfg_dict), mbs_list, device=dev).times
        dist.barrier()
    out["runs"] = [train_worker(rank, world, cfg_dict, st, steps, warmup) for st in strategies]
    return out


def run_session(cfg: TinyGPT, strategies: list[Strategy], steps: int = 5, warmup: int = 2, measure: bool = False,
                timeout_s: float = 120.0) -> list[dict]:
    """Run strategies of one process count on a single set of spawned processes (one result per rank)."""
    from common.distributed import run_processes

    worlds = {s.tp * s.dp * s.pp for s in strategies}
    require(len(worlds) == 1, f"a session runs strategies of one process count, got {sorted(worlds)}")
    for s in strategies:
        require(len(s.partition) == s.pp, f"strategy {s.label()} needs a partition of {s.pp} stages")
    packed = [(s.tp, s.dp, s.pp, s.mbs, tuple(s.partition)) for s in strategies]
    world = worlds.pop()
    backend = "nccl" if torch.cuda.is_available() and torch.cuda.device_count() >= world else "gloo"
    return run_processes(_session_worker, world, args=(asdict(cfg), packed, steps, warmup, measure,
                                                       tuple(sorted({s.mbs for s in strategies}))),
                         timeout_s=timeout_s, backend=backend)


def run_strategy(cfg: TinyGPT, s: Strategy, steps: int = 5, warmup: int = 2, timeout_s: float = 120.0) -> list[dict]:
    """Train `steps` timed iterations of `s` on tp*dp*pp local processes; one result per rank."""
    return [r["runs"][0] for r in run_session(cfg, [s], steps, warmup, False, timeout_s)]


def measured_time(results: list[dict]) -> float:
    """Median over steps of the slowest rank's step time."""
    steps = zip(*[r["times"] for r in results])
    return statistics.median(max(t) for t in steps)


# ----------------------------------------------------------------------- this machine for the planner
def _pingpong(rank: int, world: int, sizes: tuple[int, ...], reps: int, device="cpu") -> list[float]:
    """One-way seconds per message of each size between ranks 0 and 1 (median round trip / 2: robust to the
    stalls of a shared machine)."""
    out = []
    for nbytes in sizes:
        buf = torch.zeros(max(nbytes // 4, 1), device=device)

        def round_trip():
            if rank == 0:
                dist.send(buf, 1)
                dist.recv(buf, 1)
            else:
                dist.recv(buf, 0)
                dist.send(buf, 0)

        for _ in range(3):  # gloo connects lazily
            round_trip()
        dist.barrier()
        trips = []
        for _ in range(reps):
            t0 = time.perf_counter()
            round_trip()
            trips.append(time.perf_counter() - t0)
        out.append(statistics.median(trips) / 2)
    return out


def measure_link(timeout_s: float = 60.0) -> tuple[float, float]:
    """(bandwidth in Gbps, latency in microseconds) of gloo send/recv between two local processes."""
    from common.distributed import run_processes

    big_bytes = 8 << 20
    small, big = run_processes(_pingpong, 2, args=((4, big_bytes), 20), timeout_s=timeout_s)[0]
    gbps = big_bytes * 8 / max(big - small, 1e-9) / 1e9
    return gbps, small * 1e6


def profile_layers(cfg: TinyGPT, mbs_list=(1, 2, 4), repeats: int = 5,
                   device: torch.device | str = "cpu") -> profiles.Profiles:
    """Forward+backward time of each layer of the tiny GPT on `device` (one thread on a CPU)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        layers = [layer.to(device) for layer in build_layers(cfg)]
        return profiles.measure(layers, lambda m: batch(cfg)[0][:m].to(device),
                                mbs_list=mbs_list, gpu="local", repeats=repeats)
    finally:
        torch.set_num_threads(threads)


def local_setup(cfg: TinyGPT, world: int, gbps: float, latency_us: float, memory_gb: float = 8.0) -> Setup:
    """This machine as a one-node cluster of `world` devices (single-thread CPU processes or GPUs)."""
    register_gpu(GPUType("local", memory_gb))
    node = Node("local", world, intra_gbps=gbps, inter_gbps=gbps, latency_us=latency_us)
    return Setup("local", cfg.spec(), Cluster((node,), name="local"), cfg.global_batch)


def predicted_memory(cfg: TinyGPT, s: Strategy) -> list[dict]:
    """Per stage: the memory model's parameter/gradient/optimizer bytes (fp32 Adam: 16 per parameter) and
    activation bytes (fp32: twice the fp16 figures) under GPipe."""
    model = cfg.spec()
    B = s.micro_batches(cfg.global_batch)
    out, a = [], 0
    for j, n in enumerate(s.partition):
        params = memory.stage_params(model, a, a + n) / s.tp
        acts = sum(l.act_bytes(s.tp) for l in model.layers[a:a + n]) * 2 * s.mbs * memory.in_flight(s.pp, j, B, "gpipe")
        out.append({"stage": j, "param_elems": params, "state_bytes": 16 * params, "activation_bytes": acts})
        a += n
    return out


def compare(cfg: TinyGPT, strategies: list[Strategy], steps: int = 5, warmup: int = 2,
            timeout_s: float = 120.0) -> list[dict]:
    """For each process count: time the link and profile the layers on that many processes, run its
    strategies, and set each measured time beside the improved model's prediction (GPipe, fp32 activations
    and Adam state, as the run does)."""
    from amp.cost_model import CostModel

    rows = []
    by_world: dict[int, list[Strategy]] = {}
    for s in strategies:
        by_world.setdefault(s.tp * s.dp * s.pp, []).append(s)
    for world, group in by_world.items():
        ranks = run_session(cfg, group, steps, warmup, measure=True, timeout_s=timeout_s)
        small, big = ranks[0].get("link", (0.0, 0.0))
        gbps = (8 << 20) * 8 / max(big - small, 1e-9) / 1e9 if world > 1 else 1e3
        lat_us = small * 1e6
        log.info("local link: %.2f Gbps, %.0f us per message", gbps, lat_us)
        times = {k: sum(r["profile"][k] for r in ranks) / world for k in ranks[0]["profile"]}
        prof = profiles.Profiles(times, tp_comm_included=False,
                                 source=f"measured on this machine, {world} processes at once")
        cm = CostModel(local_setup(cfg, world, gbps, lat_us), prof, "improved", schedule="gpipe", act_bits=32,
                       bytes_per_param=16, act_scale=2)
        for i, s in enumerate(group):
            pred = cm.predict(s)
            results = [r["runs"][i] for r in ranks]
            measured = measured_time(results)
            mem = predicted_memory(cfg, s)
            rows.append({"strategy": s.label(), "partition": " ".join(map(str, s.partition)), "processes": world,
                         "predicted_s": float(pred.total_s), "measured_s": float(measured),
                         "error": (pred.total_s - measured) / measured,
                         "within_bound": max(pred.total_s / measured, measured / pred.total_s) <= TOLERANCE_RATIO,
                         "state_bytes_real": max(r["param_bytes"] + r["grad_bytes"] + r["optimizer_bytes"]
                                                 for r in results),
                         "state_bytes_model": max(m["state_bytes"] for m in mem),
                         "activation_bytes_real": max(r["saved_activation_bytes"] for r in results),
                         "activation_bytes_model": max(m["activation_bytes"] for m in mem),
                         "link_gbps": gbps, "latency_us": lat_us})
            log.info("%s: predicted %.4fs, measured %.4fs", s.label(), pred.total_s, measured)
    return rows
