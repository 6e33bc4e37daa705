"""When does compression pay? Iteration time = compute + sum over the messages on the critical path of
(latency + bytes / bandwidth) + encode/decode time.

The messages come from the model's shape and the compression plan (`messages`, checked against the bytes
a real run counts); compute is fitted from one uncompressed loopback run; the loopback network's latency
and bandwidth from the loopback runs' communication time; encode/decode cost per element from the codec
micro-benchmark. Everything else is a prediction. The break-even bandwidth of a compressor is where its
saved transfer time equals its encode/decode time: below it, compression pays.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import pandas as pd
import torch

from . import compressors as C
from .models import BertConfig, Plan
from .parallel import split_layers


@dataclass(frozen=True)
class Message:
    """One transfer: `wire` bytes this rank sends in `steps` ring steps. Pipeline sends carry their cut (0: between
    stages 0 and 1) and direction (`op` send_fwd / send_bwd); the pipeline schedule decides which are exposed."""

    op: str
    wire: float
    steps: int
    cut: int = -1


def _collective(kind: str, nbytes: float, n: int) -> Message:
    if kind == "all_reduce":
        return Message(kind, 2 * (n - 1) / n * nbytes, 2 * (n - 1))
    return Message(kind, (n - 1) * nbytes, n - 1)


def tensor_bytes(shape, dtype) -> int:
    """Bytes of a dense tensor of this shape and dtype."""
    return math.prod(shape) * torch.empty((), dtype=dtype).element_size()


def site_messages(comp: C.Compressor | None, shape, n: int, dtype) -> list[Message]:
    """The transfers of one tensor-parallel sum over `n` ranks of a `shape` tensor, through `comp` (None: plain)."""
    if comp is None:
        return [_collective("all_reduce", tensor_bytes(shape, dtype), n)]
    return [_collective(comp.collective, tensor_bytes(s, d), n) for s, d in comp.payload_spec(shape, dtype)]


def messages(
    cfg: BertConfig,
    plan: Plan,
    layout: str,
    n: int,
    batch: int,
    seq: int,
    micro: int = 1,
    dtype: torch.dtype = torch.float32,
) -> tuple[list[Message], int]:
    """The transfers of one training iteration and the number of elements that go through a codec.

    TP (n ranks): per layer two forward all-reduces and two backward ones, each through the plan's
    compressor where active (a shared auto-encoder: plus its encoder-gradient all-reduce). PP (n stages, GPipe):
    per cut and micro-batch one activation send and one gradient send, both on the critical path.
    """
    shape = (batch, seq, cfg.hidden)
    out: list[Message] = []
    coded = 0
    if layout == "tp":
        for layer in range(cfg.layers):
            on = plan.active(layer) and plan.tp_sites
            for j in range(2):
                fwd = plan.build(cfg.hidden, 4 * layer + j) if on else None
                bwd = plan.build(cfg.hidden, 4 * layer + j, True) if on and plan.backward else None
                out += site_messages(fwd, shape, n, dtype) + site_messages(bwd, shape, n, dtype)
                coded += math.prod(shape) * ((fwd is not None) + (bwd is not None))
                if fwd is not None and fwd.trainable and fwd.shared_across_tp:  # one encoder for all ranks
                    out.append(_collective("all_reduce", fwd.sync_bytes(dtype), n))
        return out, coded
    mb = (batch // micro, seq, cfg.hidden)
    for cut, first in enumerate(ids[0] for ids in split_layers(cfg.layers, n)[1:]):
        on = plan.active(first) and plan.pp_cuts
        fwd = plan.build(cfg.hidden, 10_000 + first) if on else None
        bwd = plan.build(cfg.hidden, 10_000 + first, True) if on and plan.backward else None
        for _ in range(micro):
            sent = fwd.payload_spec(mb, dtype) if fwd is not None else [(mb, dtype)]
            back = (
                fwd.payload_spec(mb, dtype)[:1]
                if fwd is not None and fwd.trainable
                else (bwd.payload_spec(mb, dtype) if bwd is not None else [(mb, dtype)])
            )
            out.append(Message("send_fwd", sum(tensor_bytes(s, d) for s, d in sent), len(sent), cut))
            out.append(Message("send_bwd", sum(tensor_bytes(s, d) for s, d in back), len(back), cut))
            coded += math.prod(mb) * ((fwd is not None) + (bwd is not None))
    return out, coded


def gpipe_seconds(stages: int, micro: int, fwd_s: float, bwd_s: float, t_fwd: list[float], t_bwd: list[float]) -> float:
    """Iteration time of a GPipe schedule (every forward, then every backward, in micro-batch order) with balanced
    stages: `fwd_s` / `bwd_s` per micro-batch and stage, `t_fwd[c]` / `t_bwd[c]` the transfer of one micro-batch's
    activation / gradient over cut c. A transfer occupies its sender (a blocking send, as the emulated link does) and
    its data is usable by the receiver when the transfer starts, so a transfer overlaps the receiver's compute of the
    micro-batch before it: only about one transfer per cut and direction is exposed when transfers are shorter than
    a micro-batch's compute (all of them when longer)."""
    ready = [0.0] * micro  # when micro-batch i's input is available to the current stage
    free = [0.0] * stages
    for s in range(stages):
        t, nxt = 0.0, [0.0] * micro
        for i in range(micro):
            end = max(t, ready[i]) + fwd_s
            nxt[i] = end
            t = end + (t_fwd[s] if s < stages - 1 else 0.0)
        free[s], ready = t, nxt
    ready = [0.0] * micro
    for s in reversed(range(stages)):
        t, nxt = free[s], [0.0] * micro
        for i in range(micro):
            end = max(t, ready[i]) + bwd_s
            nxt[i] = end
            t = end + (t_bwd[s - 1] if s > 0 else 0.0)
        free[s], ready = t, nxt
    return max(free)


@dataclass
class CostModel:
    """Fitted parameters per layout: compute seconds and the loopback network's latency (s per message or
    ring step) and bandwidth (bytes/s); encode+decode seconds per element per compressor."""

    compute_s: dict[str, float]
    latency_s: dict[str, float]
    bandwidth_Bps: dict[str, float]
    codec_s_per_elem: dict[str, float]

    def comm_time(self, layout: str, msgs: list[Message], link_Bps: float | None) -> float:
        """Each message takes the longer of the loopback time and the emulated link's time."""
        t = 0.0
        for m in msgs:
            loop = m.steps * self.latency_s[layout] + m.wire / self.bandwidth_Bps[layout]
            t += max(loop, m.wire / link_Bps) if link_Bps else loop
        return t

    def predict(self, layout: str, compressor: str, msgs: list[Message], coded: int, link_Bps: float | None) -> float:
        codec = coded * self.codec_s_per_elem[compressor]
        if not any(m.op.startswith("send_") for m in msgs):
            return self.compute_s[layout] + self.comm_time(layout, msgs, link_Bps) + codec
        return self.pipeline_seconds(layout, msgs, link_Bps, self.compute_s[layout]) + codec

    def pipeline_seconds(self, layout: str, msgs: list[Message], link_Bps: float | None, compute_s: float) -> float:
        """GPipe time of one iteration whose compute alone takes `compute_s` (spread over (micro + stages - 1) slots
        of one forward and one backward, the backward twice the forward) with these pipeline sends."""
        cuts = 1 + max(m.cut for m in msgs)
        micro = sum(1 for m in msgs if m.op == "send_fwd" and m.cut == 0)
        stages = cuts + 1
        slot = compute_s / (micro + stages - 1)
        t_fwd = [
            self.comm_time(layout, [next(m for m in msgs if m.op == "send_fwd" and m.cut == c)], link_Bps)
            for c in range(cuts)
        ]
        t_bwd = [
            self.comm_time(layout, [next(m for m in msgs if m.op == "send_bwd" and m.cut == c)], link_Bps)
            for c in range(cuts)
        ]
        return gpipe_seconds(stages, micro, slot / 3, 2 * slot / 3, t_fwd, t_bwd)

    def break_even_Bps(self, msgs_none: list[Message], msgs_c: list[Message], coded: int, compressor: str) -> float:
        """Bandwidth below which the compressor is faster than sending uncompressed (inf: always, 0: never)."""
        saved = sum(m.wire for m in msgs_none) - sum(m.wire for m in msgs_c)
        cost = coded * self.codec_s_per_elem[compressor]
        if saved <= 0:
            return 0.0
        return math.inf if cost <= 0 else saved / cost


def fit(
    bench: pd.DataFrame,
    codec: pd.DataFrame,
    net: pd.DataFrame,
    world: int,
    msgs: dict[tuple[str, str], tuple[list[Message], int]],
) -> CostModel:
    """Fit latency and bandwidth per layout to the loopback network micro-benchmark (least squares on
    ring steps and wire bytes), codec costs to the codec micro-benchmark, and compute per layout to the
    uncompressed runs (every link: the median of what each leaves after its modelled communication, so that one
    noisy run on a shared machine does not set it); `msgs[(layout, compressor)]` from `messages`. The compressed
    runs are never used: they are the held-out cases."""
    model = CostModel({}, {}, {}, {r.compressor: r.codec_ns_per_elem * 1e-9 for r in codec.itertuples()})
    for layout, part in net.groupby("layout"):
        m = [_collective("all_reduce", b, world) if layout == "tp" else Message("send", b, 1) for b in part.bytes]
        a = np.array([[x.steps, x.wire] for x in m], dtype=float)
        coef, *_ = np.linalg.lstsq(a, part.seconds.to_numpy(), rcond=None)
        if coef[1] <= 0:  # bandwidth not resolved by the sizes: latency only is not a model; use the largest
            coef = np.array([0.0, part.seconds.max() / a[:, 1].max()])
        model.latency_s[layout] = max(float(coef[0]), 0.0)
        model.bandwidth_Bps[layout] = 1.0 / float(coef[1])
    for layout, part in bench[bench.compressor == "none"].groupby("layout_key"):
        m = msgs[(layout, "none")][0]
        left = [
            _compute_left(model, layout, m, r.iter_s, r.gbps * 1e9 / 8 if r.gbps else None) for r in part.itertuples()
        ]
        model.compute_s[layout] = float(np.median(left))
    return model


def _compute_left(model: CostModel, layout: str, msgs: list[Message], iter_s: float, link_Bps: float | None) -> float:
    """The compute time that makes the model reproduce `iter_s` (bisection: pipeline time grows with compute)."""
    if not any(m.op.startswith("send_") for m in msgs):
        return max(iter_s - model.comm_time(layout, msgs, link_Bps), 0.0)
    lo, hi = 0.0, iter_s
    for _ in range(50):
        mid = (lo + hi) / 2
        lo, hi = (mid, hi) if model.pipeline_seconds(layout, msgs, link_Bps, mid) < iter_s else (lo, mid)
    return lo


def predicted_vs_measured(model: CostModel, bench: pd.DataFrame, msgs) -> pd.DataFrame:
    rows = []
    for r in bench.itertuples():
        m, coded = msgs[(r.layout_key, r.compressor)]
        pred = model.predict(r.layout_key, r.compressor, m, coded, r.gbps * 1e9 / 8 if r.gbps else None)
        rows.append(
            {
                "layout": r.layout,
                "compressor": r.compressor,
                "link": f"{r.gbps:g} Gbps" if r.gbps else "loopback",
                "measured_s": r.iter_s,
                "noise_s": getattr(r, "noise_s", 0.0),
                "predicted_s": pred,
                "error_%": 100 * (pred - r.iter_s) / r.iter_s,
                "used_for_fit": r.compressor == "none",
            }
        )
    return pd.DataFrame(rows)


def order_agreement(rows: pd.DataFrame) -> dict:
    """How often the model orders two runs as measured, over the pairs the measurement tells apart.

    On a shared machine two settings whose true times differ by less than the timing noise come out in either order
    from run to run, so a rank correlation over every pair (Spearman) flips with the load. Here a pair counts only
    when its measured times differ by more than the sum of the two runs' noise (each run's `noise_s`: its median
    round's excess over its best round, at least the median relative noise of all the runs times its time, so that a
    run whose few rounds happened to agree does not claim more precision than the machine gives). Returns the
    fraction of those pairs ordered right (`agreement`), how many pairs there were (`pairs`, `resolved`) and the
    noise floor used (`noise_floor_pct`)."""
    m = rows.measured_s.to_numpy(float)
    p = rows.predicted_s.to_numpy(float)
    own = rows.noise_s.to_numpy(float) if "noise_s" in rows else np.zeros_like(m)
    floor = float(np.median(own / m)) if len(m) else 0.0
    noise = np.maximum(own, floor * m)
    i, j = np.triu_indices(len(m), 1)
    resolved = np.abs(m[i] - m[j]) > noise[i] + noise[j]
    right = np.sign(p[i] - p[j]) == np.sign(m[i] - m[j])
    n = int(resolved.sum())
    return {
        "agreement": float(right[resolved].mean()) if n else float("nan"),
        "pairs": int(len(i)),
        "resolved": n,
        "noise_floor_pct": 100 * floor,
    }
