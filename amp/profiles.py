"""Per-layer time profiles: the published ones, ones estimated from FLOPs, and ones measured here.

A profile gives, for a GPU type, a tensor-parallel degree and a micro-batch size, the forward+backward time of
every layer of a model. The released AMP profiles hold forward times at micro-batch 1 (tensor-parallel
communication inside a node included); like the released code we take backward = 2 x forward.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from amp.specs import DATA_DIR, GPU_TYPES, PROFILE_KEY, Model
from common.errors import UserError, require

if TYPE_CHECKING:  # torch is imported where profiles are measured, not to read released ones
    import torch

log = logging.getLogger(__name__)

RELEASED_PROFILES = DATA_DIR / "released_profiles.json"


@dataclass
class Profiles:
    """`times[(gpu, tp, mbs)]` = forward+backward seconds per layer. Missing micro-batch sizes are
    interpolated (or scaled linearly from micro-batch 1); `tp_comm_included` says whether the figures for
    tp > 1 already contain the tensor-parallel all-reduces."""

    times: dict[tuple[str, int, int], np.ndarray]
    tp_comm_included: bool = True
    source: str = ""
    notes: dict[str, str] = field(default_factory=dict)
    # time(mbs) = time(m0) * (mbs / m0) ** exponent beyond the measured sizes (1 = linear), per GPU type
    mbs_exponent: dict[str, float] = field(default_factory=dict)
    # seconds per layer and micro-batch that do not grow with its size (kernel launches, the latency of the
    # tensor-parallel all-reduces), per tensor-parallel degree: time(mbs) = c + (time(1) - c) * mbs, the
    # per-sample part (time(1) - c) taken from the slower-memory type where there is one (`slope_reference`)
    fixed_s: dict[int, float] = field(default_factory=dict)

    def gpus(self) -> list[str]:
        return sorted({k[0] for k in self.times})

    def check(self, model: Model) -> None:
        for key, arr in self.times.items():
            require(
                len(arr) == model.num_layers,
                f"profile {key} has {len(arr)} layers but model {model.name} has {model.num_layers}",
            )

    def layer_times(self, gpu: str, tp: int, mbs: int, linear: bool = True) -> np.ndarray:
        """Seconds per layer for one micro-batch of `mbs` samples. `linear`: scale the micro-batch-1 figure
        (the released simplification); otherwise use measured sizes, interpolating between them."""
        have = sorted(m for (g, t, m) in self.times if g == gpu and t == tp)
        if not have:
            base = sorted(m for (g, t, m) in self.times if g == gpu and t == 1)
            if not base:
                raise UserError(f"no profile for GPU type {gpu!r}; profiled: {', '.join(self.gpus()) or 'none'}")
            # no figure for this degree: split the tp=1 time (the cost model adds the all-reduces)
            return self.layer_times(gpu, 1, mbs, linear) / tp
        if mbs in have and (not linear or mbs == 1):
            return self.times[(gpu, tp, mbs)]
        if linear:
            return self.times[(gpu, tp, have[0])] * (mbs / have[0])
        if len(have) == 1:
            m0 = have[0]
            if m0 == 1 and tp in self.fixed_s:
                t1 = self.times[(gpu, tp, 1)]
                ref = self.slope_reference(gpu, tp)
                if ref is None:
                    c = np.minimum(self.fixed_s[tp], t1)
                    return c + (t1 - c) * mbs
                # the per-sample part measured on the slower-memory type, scaled by the bandwidth ratio
                r1 = self.times[(ref, tp, 1)]
                slope = (r1 - np.minimum(self.fixed_s[tp], r1)) * GPU_TYPES[ref].mem_gbs / GPU_TYPES[gpu].mem_gbs
                return t1 + (mbs - 1) * np.minimum(slope, t1)
            return self.times[(gpu, tp, m0)] * (mbs / m0) ** self.mbs_exponent.get(gpu, 1.0)
        stack = np.stack([self.times[(gpu, tp, m)] for m in have])  # (M, L)
        xs = np.asarray(have, dtype=np.float64)
        if mbs > xs[-1]:  # extrapolate from the largest measured size
            return stack[-1] * (mbs / xs[-1]) ** self.mbs_exponent.get(gpu, 1.0)
        return np.array([np.interp(mbs, xs, stack[:, l]) for l in range(stack.shape[1])])

    def slope_reference(self, gpu: str, tp: int) -> str | None:
        """The profiled type whose micro-batch-1 figures give `gpu`'s per-sample cost under a fixed cost: the
        one with the least memory bandwidth, when it is not `gpu` and both bandwidths are known.

        Why: at micro-batch 1 a fast GPU is far from busy, so its figure is mostly fixed cost and says little
        about what one more sample costs; the slowest type is the busiest. The per-sample cost is taken to
        scale with memory bandwidth (a data-sheet ratio, nothing fitted). With one fixed cost for both types
        instead, the V100 stages were priced as if one more sample cost them nearly what it costs a T4, and
        the heterogeneous cluster's large micro-batches came out 1.4-1.5x too slow. Leave-one-setup-out
        Spearman with it 0.958 / 0.858 / 0.967, without 0.928 / 0.789 / 0.967; with the peak-FLOPs ratio
        (0.52 for T4/V100 rather than 0.36) 0.930 / 0.827 / 0.970."""
        bw = GPU_TYPES[gpu].mem_gbs if gpu in GPU_TYPES else 0.0
        if bw <= 0:
            return None
        cands = [
            g for (g, t, m) in self.times if t == tp and m == 1 and g in GPU_TYPES and 0 < GPU_TYPES[g].mem_gbs < bw
        ]
        return min(cands, key=lambda g: GPU_TYPES[g].mem_gbs) if cands else None

    def with_mbs_exponent(self, exponents: dict[str, float]) -> Profiles:
        """A copy whose unmeasured micro-batch sizes scale as mbs ** exponent (per GPU type)."""
        return Profiles(
            self.times,
            self.tp_comm_included,
            self.source,
            dict(self.notes),
            {**self.mbs_exponent, **exponents},
            dict(self.fixed_s),
        )

    def with_fixed_cost(self, fixed_s: dict[int, float]) -> Profiles:
        """A copy whose unmeasured micro-batch sizes cost c + (time(1) - c) * mbs per layer, c = fixed_s[tp]
        (fitted on measured runs: `amp.trials.fit_fixed_costs`)."""
        return Profiles(
            self.times,
            self.tp_comm_included,
            self.source,
            dict(self.notes),
            dict(self.mbs_exponent),
            {**self.fixed_s, **{int(k): float(v) for k, v in fixed_s.items()}},
        )

    def with_tp_comm_once(self) -> Profiles:
        """A copy whose tensor-parallel figures at micro-batch 1 count the forward's communication once more,
        not twice: the released figures are 3 x the forward time, but Megatron's backward all-reduces as
        often as its forward (2 per block each way: `_CopyToModelParallelRegion.backward`,
        `_ReduceFromModelParallelRegion.forward`), each wrapped in the released timers' two device syncs.
        The forward's communication is taken as forward(tp) - forward(1) / tp, an upper bound (it also holds
        what the smaller matrix products lose in efficiency)."""
        times = dict(self.times)
        for (g, tp, m), t in self.times.items():
            if tp > 1 and m == 1 and (g, 1, 1) in self.times:
                comm = np.clip(t / 3.0 - self.times[(g, 1, 1)] / (3.0 * tp), 0.0, None)
                times[(g, tp, m)] = t - comm
        notes = {**self.notes, "tp_comm_once": "backward counts the forward's tensor-parallel communication once"}
        return Profiles(times, self.tp_comm_included, self.source, notes, dict(self.mbs_exponent), dict(self.fixed_s))

    def blended(self, share: dict[str, float], tp: int, mbs: int, linear: bool = True) -> np.ndarray:
        """One profile for a mixed cluster, weighted by each GPU type's share (the released model's
        0.75 x V100 + 0.25 x T4)."""
        return sum(w * self.layer_times(g, tp, mbs, linear) for g, w in share.items())


def released_layer_ids(model: Model, length: int | None = None) -> list[int]:
    """Which entries of a released profile (and of the released partitions' layer numbering) belong to the
    planner's layers."""
    length = (32 + model.blocks if model.profile_name == "transgan" else model.num_layers) if length is None else length
    if model.profile_name == "transgan":
        d_low = _low_depth(model)
        d_high = model.blocks - d_low
        ids = [0, *range(3, 3 + d_low), *range(29 + d_low, 29 + d_low + d_high)]
        require(
            length == 32 + model.blocks and len(ids) == model.num_layers,
            f"the released TransGAN profile ({length} entries) does not match a TransGAN of {model.blocks} blocks",
        )
        return ids
    require(
        length == model.num_layers,
        f"the released {model.profile_name} profile has {length} layers but model {model.name} has {model.num_layers}",
    )
    return list(range(length))


def _low_depth(model: Model) -> int:
    return sum(1 for l in model.layers if l.kind == "transformer" and l.params == 12.0 * model.hidden**2)


def released(model: Model) -> Profiles:
    """The AMP authors' published profiles for GPT-2 or TransGAN (carried in amp/data, with the source)."""
    data = json.loads(RELEASED_PROFILES.read_text())
    table = data["profiles"].get(model.profile_name)
    if table is None:
        raise UserError(f"no released profile for model {model.name!r} (released: {', '.join(data['profiles'])})")
    times = {}
    back = {v: k for k, v in PROFILE_KEY.items()}
    for key, per_tp in table.items():
        for tp, arr in per_tp.items():
            arr = np.asarray(arr, dtype=np.float64)
            ids = released_layer_ids(model, len(arr))
            times[(back[key], int(tp), 1)] = 3.0 * arr[ids]
    return Profiles(times, tp_comm_included=True, source=data["source"])


def from_flops(
    model: Model, gpus: Sequence[str], tps: Sequence[int] = (1, 2, 4, 8), efficiency: float = 0.4, mbs: int = 1
) -> Profiles:
    """Estimated profiles from FLOPs (forward+backward = 3 x forward) at `efficiency` of each GPU's peak:
    enough to plan on hardware nobody has profiled yet."""
    require(0 < efficiency <= 1, f"efficiency must be in (0, 1], got {efficiency}")
    flops = np.array([l.flops for l in model.layers], dtype=np.float64)
    times = {}
    for g in gpus:
        require(g in GPU_TYPES and GPU_TYPES[g].tflops > 0, f"no peak throughput known for GPU type {g!r}")
        per = 3.0 * flops / (GPU_TYPES[g].tflops * 1e12 * efficiency)
        for t in tps:
            times[(g, t, mbs)] = per * mbs / t
    return Profiles(times, tp_comm_included=False, source=f"FLOPs at {efficiency:.0%} of peak")


def load_json(path, model: Model, mbs: int = 1) -> Profiles:
    """Profiles from a `python -m amp.profile` file (measured forward and backward per micro-batch size), or
    from a plain `{gpu: {tp: [forward seconds per layer at micro-batch mbs]}}` (backward taken as 2 x forward,
    as in the released model)."""
    from pathlib import Path

    p = Path(path)
    require(p.is_file(), f"no profile file {p}")
    tp_comm = True
    try:
        table = json.loads(p.read_text())
        if table.get("format") == "amp-profile/1":  # python -m amp.profile: measured forward and backward
            from amp.specs import from_profile

            from_profile(p)  # makes its GPU types known
            times = {
                (g, int(t), int(m)): np.asarray(v["forward"], dtype=np.float64)
                + np.asarray(v["backward"], dtype=np.float64)
                for g, entry in table["gpus"].items()
                for t, per in entry["times"].items()
                for m, v in per.items()
            }
            tp_comm = bool(table.get("tp_comm_included", False))
        else:
            times = {
                (g, int(t), mbs): 3.0 * np.asarray(v, dtype=np.float64)
                for g, per in table.items()
                for t, v in per.items()
            }
    except (ValueError, AttributeError, TypeError, KeyError) as exc:
        raise UserError(f"bad profile file {p}: {exc}") from None
    for g, _, _ in times:
        require(g in GPU_TYPES, f"profile file {p}: unknown GPU type {g!r}; known: {', '.join(GPU_TYPES)}")
    prof = Profiles(times, tp_comm_included=tp_comm, source=str(p))
    prof.check(model)
    return prof


def time_fn(
    fn: Callable[[], None], repeats: int = 5, warmup: int = 2, sync: Callable[[], None] = lambda: None
) -> float:
    """Median wall time of fn() in seconds (`sync` waits for an accelerator)."""
    for _ in range(warmup):
        fn()
    ts = []
    for _ in range(repeats):
        sync()
        t0 = time.perf_counter()
        fn()
        sync()
        ts.append(time.perf_counter() - t0)
    return float(np.median(ts))


def measure(
    layers: Sequence[torch.nn.Module],
    make_input: Callable[[int], torch.Tensor],
    mbs_list: Sequence[int] = (1,),
    gpu: str = "local",
    tp: int = 1,
    repeats: int = 5,
) -> Profiles:
    """Profile `layers` on this machine: forward+backward time of each layer for each micro-batch size.

    `make_input(mbs)` gives the first layer's input; each layer's output feeds the next (detached, so the
    backward covers that layer alone)."""
    import torch

    times = {}
    for mbs in mbs_list:
        x = make_input(mbs)
        sync = torch.cuda.synchronize if x.is_cuda else (lambda: None)
        per = []
        for layer in layers:
            inp = x.detach().requires_grad_(x.is_floating_point())
            out = layer(inp)
            grad = torch.ones_like(out)

            def step(layer=layer, inp=inp, grad=grad):
                y = layer(inp)
                y.backward(grad)

            per.append(time_fn(step, repeats=repeats, sync=sync))
            x = out.detach()
            layer.zero_grad(set_to_none=True)
        times[(gpu, tp, mbs)] = np.asarray(per)
        log.info("profiled %d layers at micro-batch %d: %.4f s in all", len(per), mbs, sum(per))
    return Profiles(times, tp_comm_included=False, source=f"measured on this machine ({gpu})")


def for_setup(setup, path=None) -> Profiles:
    """The profile a plan of `setup` uses: the file at `path` (`python -m amp.profile` output or the plain
    {gpu: {tp: [forward s per layer]}} form), else the released one when it covers the cluster's GPU types,
    else one estimated from FLOPs."""
    if not path and Path(setup.model.profile_name).suffix == ".json":  # a model read from a profile file
        path = setup.model.profile_name
    if path:
        return load_json(path, setup.model)
    try:
        prof = released(setup.model)
        if all(g in prof.gpus() for g in setup.cluster.gpu_types):
            return prof
    except UserError:
        if setup.model.profile_name == "transgan":
            raise
    return from_flops(setup.model, setup.cluster.gpu_types)
