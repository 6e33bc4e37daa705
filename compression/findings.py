"""The study's findings decided from the measured tables (never by hand), as `common.claims.Claim`s.

A difference in accuracy counts when it exceeds its spread: the larger of the two settings' standard deviations
over seeds (or `claims.min_gap`, whichever is larger), so that three noisy seeds do not decide a claim. Early
layers compare a compressor with itself on the same seeds (same split and start), so that finding is decided on the
per-seed differences and their standard error (`paired_drop`) where the table lists each seed.
"""

from __future__ import annotations

import math
from collections.abc import Mapping

import pandas as pd
from scipy import stats

from common.claims import DOES_NOT_HOLD, HOLDS, NOT_MEASURED, Claim, decide


def _std(v) -> float:
    return 0.0 if v is None or (isinstance(v, float) and math.isnan(v)) else float(v)


def _row(acc: pd.DataFrame, layout: str, label: str, group: str = "main"):
    r = acc[(acc.layout == layout) & (acc.compressor == label) & (acc.group == group)]
    return None if r.empty else r.iloc[0]


def _fmt(r) -> str:
    return f"{r.compressor} {r.acc_mean:.3f}±{_std(r.acc_std):.3f}"


def _ratio(acc: pd.DataFrame, label: str, group: str) -> str:
    """` at 19.2x fewer bytes` for the learning-based compressor of a comparison (the table's fewer_bytes)."""
    r = acc[(acc.compressor == label) & (acc.group == group)]
    if r.empty or "fewer_bytes" not in r:
        return ""
    return f" at {float(r.fewer_bytes.iloc[0]):.1f}x fewer bytes"


def _bytes_note(rival, learning) -> str:
    """A rival that sends clearly more bytes than the learning-based compressor says so (e.g. int2's 15x vs 19x)."""
    a, b = getattr(rival, "fewer_bytes", None), getattr(learning, "fewer_bytes", None)
    if a is None or b is None or not a < 0.95 * b:
        return ""
    return f" ({a:.1f}x: more bytes)"


def learning_keeps_accuracy(
    acc: pd.DataFrame,
    learning: str,
    rivals: list[str],
    min_gap: float,
    group: str = "main",
    layouts: list[str] | None = None,
    rival_group: str = "main",
) -> tuple[bool | None, str]:
    """Per layout: the learning-based compressor (of `group`) keeps accuracy (its drop from no compression within
    the spread) and beats every pruning and quantization rival (of `rival_group`) at about equal bytes by more than
    the spread."""
    verdicts, evidence = [], []
    for layout in layouts or list(dict.fromkeys(acc.layout)):
        none, ae = _row(acc, layout, "none"), _row(acc, layout, learning, group)
        others = [r for r in (_row(acc, layout, o, rival_group) for o in rivals) if r is not None]
        if none is None or ae is None or not others:
            continue
        keeps = none.acc_mean - ae.acc_mean <= max(_std(none.acc_std), _std(ae.acc_std), min_gap)
        beats = [ae.acc_mean - o.acc_mean > max(_std(ae.acc_std), _std(o.acc_std), min_gap) for o in others]
        verdicts.append(keeps and all(beats))
        evidence.append(
            f"{layout}: none {none.acc_mean:.3f}, {_fmt(ae)} ({'keeps' if keeps else 'loses'}), vs "
            + ", ".join(f"{_fmt(o)}{_bytes_note(o, ae)}{'' if b else ' (not beaten)'}" for o, b in zip(others, beats))
        )
    if not verdicts:
        return None, "no layout measured the learning-based compressor beside its rivals"
    return all(verdicts), f"{sum(verdicts)}/{len(verdicts)} layouts. " + "; ".join(evidence)


def _seeds(r) -> dict[int, float] | None:
    """{seed: accuracy} from a table row's `seed_ids` and `per_seed` columns (None where the table lacks them)."""
    ids, vals = getattr(r, "seed_ids", None), getattr(r, "per_seed", None)
    if not isinstance(ids, str) or not isinstance(vals, str):
        return None
    return dict(zip((int(x) for x in ids.split()), (float(x) for x in vals.split())))


def paired_drop(late, early) -> tuple[float, float, int] | None:
    """Mean accuracy drop (latter layers minus every layer) over the seeds both rows ran, its standard error and
    the number of seeds; None with fewer than two common seeds."""
    a, b = _seeds(late), _seeds(early)
    if a is None or b is None:
        return None
    common = sorted(set(a) & set(b))
    if len(common) < 2:
        return None
    d = [a[s] - b[s] for s in common]
    mean = sum(d) / len(d)
    se = math.sqrt(sum((x - mean) ** 2 for x in d) / (len(d) - 1) / len(d))
    return mean, se, len(d)


def early_layers_hurt(acc: pd.DataFrame, min_gap: float) -> tuple[bool | None, str]:
    """Per layout and compressor run both ways: accuracy compressing every layer is below that compressing only
    the latter layers. An ablation setting run on every layer is paired with its later-layer run in the ablation
    group (same layout and seeds). Where the table lists each seed (`seed_ids`, `per_seed`), decided on the per-seed
    drops: it hurts when their mean exceeds both `min_gap` and its one-sided 95% bound (t quantile x standard
    error); there is no drop when the mean plus that bound stays below `min_gap`; else unresolved. Without per-seed
    values: the drop against the larger standard deviation over seeds."""
    checks, evidence, unresolved, no_drop = [], [], [], []
    for e in acc[acc.group == "early"].itertuples():
        # its later-layer twin: a main setting, else a study-ratio or ablation one (run in that group)
        twins = (_row(acc, e.layout, e.compressor, group) for group in ("main", "high_ratio", "ablation"))
        late = next((r for r in twins if r is not None), None)
        if late is None:
            continue
        paired = paired_drop(late, e)
        if paired is not None:
            drop, se, n = paired
            bound = float(stats.t.ppf(0.95, n - 1)) * se  # one-sided 95% bound, Student's t with n - 1 dof
            hurt = drop > max(bound, min_gap)
            absent = drop + bound < min_gap
            note = f" (drop {drop:+.3f}, SE {se:.3f} over {n} paired seeds" + (
                ")" if hurt else f": {'no drop' if absent else 'unresolved'})"
            )
        else:
            drop, spread = late.acc_mean - e.acc_mean, max(_std(late.acc_std), _std(e.acc_std), min_gap)
            hurt, absent = drop > spread, drop <= 0
            note = "" if hurt else f" (drop {drop:+.3f} within spread {spread:.3f})"
        checks.append(hurt)
        if not hurt:
            (no_drop if absent else unresolved).append(e.compressor)
        evidence.append(
            f"{e.layout} {e.compressor}: layers {e.layers} {e.acc_mean:.3f}±{_std(e.acc_std):.3f} vs "
            f"{late.layers} {late.acc_mean:.3f}±{_std(late.acc_std):.3f}{note}"
        )
    if not checks:
        return None, "no compressor was run on every layer"
    why = ""
    if unresolved or no_drop:  # the every-layer runs are the same code with start_layer 0: what decides is the setup
        why = ". Setup vs implementation: the every-layer runs are the same code from layer 0."
        if unresolved:
            why += f" {', '.join(unresolved)}: lower in the mean, within its seeds' spread (unresolved at this budget)."
        if no_drop:
            why += f" {', '.join(no_drop)}: no drop (this model's layers tolerate its error at this scale)."
    return all(checks), f"{sum(checks)}/{len(checks)} hurt. " + "; ".join(evidence) + why


def _measured(meas: pd.DataFrame | None, compressor: str, emulated: list[float]) -> str:
    """A compressor's measured speedups on loopback and the slowest emulated link (evidence beside the model)."""
    if meas is None or not emulated:
        return ""
    sp = meas[meas.compressor == compressor].set_index("gbps").speedup
    slow = emulated[0]
    return f" (measured {sp.get(0.0, float('nan')):.2f}x loopback, {sp.get(slow, float('nan')):.2f}x at {slow:g} Gbps)"


def pays_only_below_break_even(
    throughput: pd.DataFrame, break_even: pd.DataFrame, links_gbps: tuple[float, float] = (0.1, 100.0)
) -> tuple[bool | None, str]:
    """Per bench layout: most compressors pay on the slow link and not on the fast one of `links_gbps`, i.e. the
    cost model's break-even bandwidth (bytes saved per iteration / measured encode+decode time per iteration, on a
    modelled link with no loopback in it) lies between the two. Decided on the model, not on loopback gloo, whose
    speed on a shared CPU flips a measured loopback speedup from run to run; the break-even moves with the codec
    time only (a few tens of percent between runs), while the two links are three orders of magnitude apart. The
    measured speedups on loopback and the slowest emulated link are listed beside it, as evidence only."""
    slow, fast = sorted(float(g) for g in links_gbps)
    if break_even is None or break_even.empty:
        return None, "no break-even bandwidths (no bench)"
    verdicts, evidence = [], []
    for layout, part in break_even.groupby("layout", sort=False):
        be = part.set_index("compressor").break_even_Gbps
        inside = [c for c in be.index if slow < be[c] < fast]
        verdicts.append(len(inside) * 2 > len(be))
        meas = (
            throughput[(throughput.layout == layout) & (throughput.compressor != "none")]
            if throughput is not None
            else None
        )
        emulated = sorted(g for g in meas.gbps.unique() if g > 0) if meas is not None and not meas.empty else []

        each = ", ".join(f"{c} {be[c]:.3g} Gbps{_measured(meas, c, emulated)}" for c in be.index)
        evidence.append(f"{layout}: {len(inside)}/{len(be)} break even between {slow:g} and {fast:g} Gbps: {each}")
    return all(verdicts), "; ".join(evidence)


def cost_model_predicts(
    fitted: Mapping, max_error_pct: float, min_order: float, max_noise_pct: float = math.inf
) -> tuple[bool | None, str]:
    """Held out: mean |error| at most `max_error_pct` and at least `min_order` of the pairs of runs that the timing
    noise tells apart ordered as measured (`cost_model.order_agreement`; Spearman over every pair, near-ties
    included, is reported beside it but flips with the load of a shared machine). Not decided (NOT_MEASURED) when
    the bench's timing noise (its runs' median round above their best, median over runs) exceeds `max_noise_pct`:
    a loaded machine then adds a per-message cost (each collective waits for a descheduled peer) that no quiet
    micro-benchmark sees, and the verdict would follow the load rather than the model."""
    n = int(fitted.get("held_out_n", 0))
    resolved = int(fitted.get("held_out_pairs_resolved", 0))
    if n < 3 or resolved < 3:
        return None, f"{n} held-out runs, {resolved} pairs told apart by the timing noise"
    err, order = fitted["held_out_mean_abs_error_pct"], fitted["held_out_order_agreement"]
    noise = float(fitted.get("held_out_median_noise_pct", 0.0))
    load = fitted.get("load_average")
    evidence = (
        f"held-out mean |error| {err:.1f}% (max {fitted['held_out_max_abs_error_pct']:.1f}%); ordered "
        f"{100 * order:.0f}% of the {resolved} of {fitted['held_out_pairs']} pairs of runs whose times differ by more "
        f"than their noise (median round {noise:.1f}% above the best, floor {fitted.get('noise_floor_pct', 0):.1f}%"
        + (f", load average {load:.1f} during the bench" if load is not None else "")
        + f"); Spearman over all {n} runs {fitted['held_out_spearman']:.2f} (not decided on); thresholds "
        f"{max_error_pct:g}% and {100 * min_order:g}%"
    )
    if noise > max_noise_pct:
        return (
            None,
            f"timing noise {noise:.1f}% > {max_noise_pct:g}%: not decided, rerun the bench on a quiet machine; "
            + evidence,
        )
    return err <= max_error_pct and order >= min_order, evidence


def int8_saves_nothing(message: pd.DataFrame, dtype: str) -> tuple[bool | None, str]:
    r = message[message.compressor == "int8"]
    if r.empty:
        return None, "int8 not in the message table"
    r = r.iloc[0]
    return bool(r.vs_ring_all_reduce <= 1.0 + 1e-3), (
        f"{dtype}: the int8 all-gather sends {r.wire_MB_per_rank:.1f} MB per rank vs "
        f"{r.wire_MB_per_rank * r.vs_ring_all_reduce:.1f} MB for a ring all-reduce ({r.vs_ring_all_reduce:.2f}x fewer)"
    )


def ablation_note(acc: pd.DataFrame, learning: str, rivals: list[str], min_gap: float) -> str:
    """What the ablation (other auto-encoder settings, same layout and seeds) says. A setting that keeps accuracy
    and beats the rivals: the default setup (d, lr, sharing) decided the finding, not the implementation. One that
    keeps accuracy while a rival keeps it too: the auto-encoder works once set up, and it is the rivals not losing
    accuracy at this scale that fails the finding. None that keeps accuracy: not a matter of these settings."""
    ab = acc[acc.group == "ablation"]
    if ab.empty:
        return ""
    layout = ab.layout.iloc[0]
    none = _row(acc, layout, "none")
    parts, fixed, keeps = [], [], []
    for r in ab.itertuples():
        ok, _ = learning_keeps_accuracy(acc, r.compressor, rivals, min_gap, group="ablation", layouts=[layout])
        parts.append(f"{r.compressor} {r.acc_mean:.3f}±{_std(r.acc_std):.3f}")
        if ok:
            fixed.append(r.compressor)
        elif none is not None and none.acc_mean - r.acc_mean <= max(_std(none.acc_std), _std(r.acc_std), min_gap):
            keeps.append(r.compressor)
    kept = [
        o
        for o in rivals
        if (x := _row(acc, layout, o)) is not None
        and none is not None
        and none.acc_mean - x.acc_mean <= max(_std(none.acc_std), _std(x.acc_std), min_gap)
    ]
    base = _row(acc, layout, learning)
    head = (
        f" Ablation under {layout} (same seeds; {learning} {base.acc_mean:.3f}"
        if base is not None
        else f" Ablation under {layout} ("
    )
    head += f", none {none.acc_mean:.3f}): " if none is not None else "): "
    if fixed:
        tail = f"the finding holds with {', '.join(fixed)}: the default setup, not the implementation, decides it"
    elif keeps:
        base_keeps = (
            base is not None
            and none is not None
            and none.acc_mean - base.acc_mean <= max(_std(none.acc_std), _std(base.acc_std), min_gap)
        )
        why = "within the seeds' spread" if base_keeps else "the default setup, not the implementation, lost it"
        tail = (
            f"with {', '.join(keeps)} the auto-encoder keeps accuracy ({why}), but {', '.join(kept) or 'no rival'} "
            f"keep{'s' if len(kept) == 1 else ''} it too at about equal bytes: the rivals not losing accuracy at "
            "this scale is what fails the finding"
        )
    else:
        tail = "no auto-encoder setting tried keeps accuracy: not a matter of d, lr or sharing at this scale"
    return head + ", ".join(parts) + "; " + tail + "."


def learning_verdicts(acc: pd.DataFrame, settings: Mapping) -> dict[str, tuple[bool | None, str]]:
    """The learning-based finding at each ratio measured: main (`learning` vs `rivals`, the main runs; with the
    ablation's note where it fails) and high_ratio (`high_ratio.learning` vs `high_ratio.rivals`, the high_ratio
    runs)."""
    gap = float(settings["min_gap"])
    learning, rivals = str(settings["learning"]), [str(r) for r in settings["rivals"]]
    ok, ev = learning_keeps_accuracy(acc, learning, rivals, gap)
    if ok is False:
        ev += ablation_note(acc, learning, rivals, gap)
    out = {"main": (ok, ev)}
    hr = settings.get("high_ratio") or {}
    if hr and not acc[acc.group == "high_ratio"].empty:
        hl, hrv = str(hr["learning"]), [str(r) for r in hr["rivals"]]
        out["high_ratio"] = learning_keeps_accuracy(acc, hl, hrv, gap, group="high_ratio", rival_group="high_ratio")
    return out


def learning_claim(acc: pd.DataFrame, settings: Mapping) -> tuple[bool | None, str]:
    """The learning-based finding decided at the ratio `settings["decide_at"]` names (main or high_ratio; the main
    ratio when the other was not run); the other ratio's comparison is reported beside it."""
    by = learning_verdicts(acc, settings)
    at = str(settings.get("decide_at", "main"))
    at = at if at in by else "main"
    hr = settings.get("high_ratio") or {}
    label = {"main": str(settings["learning"]), "high_ratio": str(hr.get("learning", ""))}
    parts = []
    for key in [at] + [k for k in by if k != at]:
        ok, ev = by[key]
        role = "decides" if key == at else "reported"
        parts.append(f"[{label[key]}{_ratio(acc, label[key], key)} ({role})] {ev}")
    return by[at][0], " ".join(parts)


def study_claims(
    acc: pd.DataFrame | None,
    throughput: pd.DataFrame | None,
    break_even: pd.DataFrame | None,
    fitted: Mapping | None,
    message: pd.DataFrame,
    settings: Mapping,
    paper: Mapping[str, str],
) -> list[Claim]:
    """The study's claims from this run's tables. `settings`: learning (label), rivals (labels at about equal
    bytes), min_gap, cost_model_error_pct, cost_model_order, timing_noise_pct, break_even_links_gbps (slow, fast),
    dtype (of the message table); high_ratio ({learning, rivals} at the study's ratio) and decide_at (main or
    high_ratio: the ratio that decides the learning-based finding)."""
    gap = float(settings["min_gap"])
    out = []
    ok, ev = learning_claim(acc, settings) if acc is not None else (None, "not run")
    out.append(
        Claim(
            "learning_keeps_accuracy",
            "learning-based compression keeps accuracy where pruning and quantization at equal bytes lose it",
            paper["learning_keeps_accuracy"],
            ev,
            decide(ok),
        )
    )
    ok, ev = early_layers_hurt(acc, gap) if acc is not None else (None, "not run")
    out.append(
        Claim(
            "early_layers_hurt", "compressing early layers hurts accuracy", paper["early_layers_hurt"], ev, decide(ok)
        )
    )
    links = tuple(settings.get("break_even_links_gbps", (0.1, 100.0)))
    ok, ev = pays_only_below_break_even(throughput, break_even, links) if break_even is not None else (None, "not run")
    out.append(
        Claim(
            "break_even_bandwidth",
            "compression pays only below a break-even bandwidth",
            paper["break_even_bandwidth"],
            ev,
            decide(ok),
        )
    )
    limits = (
        float(settings["cost_model_error_pct"]),
        float(settings["cost_model_order"]),
        float(settings.get("timing_noise_pct", math.inf)),
    )
    ok, ev = cost_model_predicts(fitted, *limits) if fitted is not None else (None, "not run")
    out.append(
        Claim(
            "cost_model_predicts",
            "the cost model predicts held-out throughput",
            paper["cost_model_predicts"],
            ev,
            decide(ok),
        )
    )
    ok, ev = int8_saves_nothing(message, str(settings["dtype"]))
    out.append(
        Claim(
            "int8_all_gather_saves_nothing",
            "int8 all-gather saves nothing against a ring all-reduce at TP=4 (fp16)",
            paper["int8_all_gather_saves_nothing"],
            ev,
            decide(ok),
        )
    )
    return out


__all__ = [
    "DOES_NOT_HOLD",
    "HOLDS",
    "NOT_MEASURED",
    "ablation_note",
    "cost_model_predicts",
    "early_layers_hurt",
    "int8_saves_nothing",
    "learning_claim",
    "learning_keeps_accuracy",
    "learning_verdicts",
    "paired_drop",
    "pays_only_below_break_even",
    "study_claims",
]
