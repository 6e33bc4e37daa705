"""Reproduce AMP (NeurIPS'22): `python -m reproduce.amp [scale=smoke|mini|paper]`.

For the paper's three setups: the released-mode ranking against the released trial files, the best strategies
of both modes, the Megatron-style baseline and AMP's predicted speedup beside the paper's, predicted vs
measured on every released trial (Spearman, Kendall, a scatter per setup) and how many trials without a time
the memory model marks infeasible; then a handful of strategies run for real on this machine against their
prediction, and search times (the three setups and a 1,024-GPU cluster). `plan.setup=<name or yaml>` plans
your own model and cluster instead.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path

import numpy as np
import pandas as pd
import yaml
from scipy import stats

from amp import baselines, bench, memory, profiles, validate
from amp.cost_model import CostModel
from amp.partition import uniform_partition
from amp.search import SearchResult, search
from amp.specs import Setup, Strategy, check_strategy, load_setup
from common.errors import UserError, require
from reproduce import app

log = logging.getLogger("reproduce.amp")

DATA = Path(__file__).parent / "data"
TRIALS = DATA / "amp_released_trials.csv"
PAPER = DATA / "amp_paper.yaml"


# ------------------------------------------------------------------------------------ released trials
def load_trials() -> pd.DataFrame:
    """Every released trial: setting, released rank, strategy, released partition, predicted and measured s."""
    df = pd.read_csv(TRIALS, comment="#", dtype={"partition": str, "measured_s": str})
    df["ran"] = df["measured_s"].notna()
    df["measured_s"] = [float(x) if isinstance(x, str) else np.nan for x in df["measured_s"]]
    df["timed"] = np.isfinite(df["measured_s"])
    return df


def trial_strategy(setup: Setup, row) -> Strategy:
    """A released trial as a Strategy on the planner's layers (TransGAN partitions are renumbered)."""
    ids = profiles.released_layer_ids(setup.model)
    bounds = [sum(1 for i in ids if i < int(b)) for b in str(row.partition).split()]
    bounds[-1] = setup.model.num_layers
    return Strategy(int(row.tp), int(row.dp), int(row.pp), int(row.mbs), tuple(np.diff(bounds).tolist()))


def key(s: Strategy) -> tuple:
    return (s.mbs, s.tp, s.dp, s.pp)


def ranking_check(setup: Setup, result: SearchResult, trials: pd.DataFrame) -> dict:
    """Compare the released-mode ranking with the released one, position by position. A position counts as
    a tie swap when the two candidates there have equal released predictions."""
    rel = trials.sort_values("rank")
    rel_keys = [(r.mbs, r.tp, r.dp, r.pp) for r in rel.itertuples()]
    rel_cost = {k: float(r.predicted_s) for k, r in zip(rel_keys, rel.itertuples())}
    rel_part = {k: trial_strategy(setup, r).partition for k, r in zip(rel_keys, rel.itertuples())}
    ours = [key(p.strategy) for p in result.ranked]
    same = sum(a == b for a, b in zip(ours, rel_keys))
    ties = sum(a != b and rel_cost.get(a) == rel_cost[b] for a, b in zip(ours, rel_keys))
    part_equal = sum(rel_part.get(key(p.strategy)) == p.strategy.partition for p in result.ranked)
    cost_err = max(abs(round(p.total_s, 4) - rel_cost.get(key(p.strategy), np.nan)) for p in result.ranked)
    return {"candidates": len(ours), "released_candidates": len(rel_keys),
            "same_position": same, "tie_swaps": ties,
            "order_equal": len(ours) == len(rel_keys) and same + ties == len(ours) and set(ours) == set(rel_keys),
            "partitions_equal": part_equal, "max_abs_cost_diff": cost_err}


def trial_predictions(setup: Setup, prof: profiles.Profiles, trials: pd.DataFrame,
                      fitted: profiles.Profiles | None = None) -> pd.DataFrame:
    """Both modes' prediction and the memory model's verdict for every released trial (as it was run);
    with `fitted`, also the improved model on profiles whose micro-batch scaling was fitted."""
    models = {m: CostModel(setup, prof, m) for m in ("released", "improved")}
    if fitted is not None:
        models["improved_fit"] = CostModel(setup, fitted, "improved")
    rows = []
    for r in trials.itertuples():
        s = trial_strategy(setup, r)
        pr = {m: cm.predict(s) for m, cm in models.items()}
        rows.append({"rank": r.rank, "strategy": s.label(), "partition": " ".join(map(str, s.partition)),
                     "released_file_s": r.predicted_s, "released_s": pr["released"].total_s,
                     "improved_s": pr["improved"].total_s,
                     **({"improved_fit_s": pr["improved_fit"].total_s} if fitted is not None else {}),
                     "measured_s": r.measured_s, "ran": r.ran,
                     "timed": r.timed, "peak_memory_gb": pr["improved"].peak_memory_gb,
                     "fits": pr["improved"].feasible})
    return pd.DataFrame(rows)


# which single-GPU-type setup measures each GPU type's micro-batch scaling
FIT_ON = {"T4": "homogeneous", "V100": "het_model"}


def fit_mbs_exponents(trials: pd.DataFrame, grid=np.round(np.arange(0.4, 1.001, 0.05), 2)) -> dict[str, float]:
    """Per GPU type, the exponent a in time(mbs) = time(1) * mbs**a that minimises the mean |log(predicted /
    measured)| of the improved model over the timed trials of the setup that uses only that GPU type. The
    mixed-cluster setup is left out, so its correlation with fitted profiles is out of sample."""
    out = {}
    for gpu, name in FIT_ON.items():
        setup = load_setup(name)
        prof = profiles.released(setup.model)
        tr = trials[(trials.setting == name) & trials.timed]
        strategies = [trial_strategy(setup, r) for r in tr.itertuples()]
        errs = []
        for a in grid:
            cm = CostModel(setup, prof.with_mbs_exponent({gpu: float(a)}), "improved")
            pred = np.array([cm.predict(s).total_s for s in strategies])
            errs.append(float(np.mean(np.abs(np.log(pred / tr.measured_s.to_numpy())))))
        out[gpu] = float(grid[int(np.argmin(errs))])
        log.info("micro-batch scaling of %s fitted on %s: exponent %.2f", gpu, name, out[gpu])
    return out


def correlations(df: pd.DataFrame, mode: str) -> dict:
    t = df[df.timed]
    return {"timed_trials": len(t), "spearman": stats.spearmanr(t[f"{mode}_s"], t.measured_s).statistic,
            "kendall": stats.kendalltau(t[f"{mode}_s"], t.measured_s).statistic,
            "mean_abs_log_error": float(np.mean(np.abs(np.log(t[f"{mode}_s"] / t.measured_s))))}


def scatter(name: str, df: pd.DataFrame):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    t = df[df.timed]
    fig, ax = plt.subplots(figsize=(4.5, 4))
    modes = [m for m in ("released", "improved", "improved_fit") if f"{m}_s" in t]
    for mode, marker in zip(modes, "ox+"):
        ax.scatter(t.measured_s, t[f"{mode}_s"], marker=marker, label=mode, alpha=0.7)
    lim = [0, max(t.measured_s.max(), t[[f"{m}_s" for m in modes]].max().max()) * 1.05]
    ax.plot(lim, lim, "k:", lw=1)
    ax.set(xlabel="measured s/iter (released trials)", ylabel="predicted s/iter", title=name)
    ax.legend()
    fig.tight_layout()
    return fig


# -------------------------------------------------------------------------------------------- parts
def paper_setups(ctx, cfg, trials: pd.DataFrame, paper: dict) -> list[dict]:
    ranking, best_rows, speed_rows, corr_rows, times = [], [], [], [], []
    per_trial: dict[str, pd.DataFrame] = {}
    exponents = fit_mbs_exponents(trials) if cfg.fit_mbs_scaling else {}
    for name in cfg.setups:
        setup = load_setup(name)
        prof = profiles.released(setup.model)
        results = {m: search(setup, prof, m) for m in cfg.modes}
        fitted = prof.with_mbs_exponent(exponents) if exponents else None
        if fitted is not None:
            results["improved_fit"] = search(setup, fitted, "improved")
        tr = trials[trials.setting == name]
        pub = paper["setups"][name]
        if "released" in results:
            ranking.append({"setup": name, **ranking_check(setup, results["released"], tr)})
        preds = trial_predictions(setup, prof, tr, fitted)
        per_trial[name] = preds
        ctx.out.figure(f"scatter_{name}", scatter(name, preds))
        no_time = preds[preds.ran & ~preds.timed]
        for mode in [*cfg.modes, *(["improved_fit"] if exponents else [])]:
            c = correlations(preds, mode)
            fit = ("in sample" if name in FIT_ON.values() else "out of sample") if mode == "improved_fit" else ""
            corr_rows.append({"setup": name, "mode": mode, "fitted": fit, **c,
                              "spearman (paper, released files)": pub["spearman_released"],
                              "spearman (paper, figure)": pub["spearman_figure"],
                              "no_time_trials": len(no_time), "no_time_marked_infeasible": int((~no_time.fits).sum()),
                              "timed_marked_infeasible": int((~preds[preds.timed].fits).sum())})
        measured = {(r.strategy, r.partition): r.measured_s for r in preds.itertuples()}
        cm = {m: CostModel(setup, prof, m) for m in cfg.modes}
        if fitted is not None:
            cm["improved_fit"] = CostModel(setup, fitted, "improved")
        base = baselines.megatron(setup)
        for mode, res in results.items():
            times.append({"setup": name, "mode": mode, "candidates": res.evaluated, "infeasible": len(res.infeasible),
                          "search_s": res.seconds, "target_s": bench.TARGET_S[name],
                          "released code s (paper)": pub["released_search_s"]})
            for i, p in enumerate(res.ranked[: cfg.top]):
                part = " ".join(map(str, p.strategy.partition))
                best_rows.append({"setup": name, "mode": mode, "rank": i, "strategy": p.strategy.label(),
                                  "partition": part, "placement": "default" if p.strategy.placement is None
                                  else " ".join(map(str, p.strategy.placement)),
                                  "predicted_s": p.total_s, "peak_memory_gb": p.peak_memory_gb, "fits": p.feasible,
                                  "released_measured_s": measured.get((p.strategy.label(), part), np.nan)})
            bp = cm[mode].predict(base)
            amp_best = res.ranked[0]
            speed_rows.append({"setup": name, "mode": mode, "baseline": base.label(),
                               "baseline_predicted_s": bp.total_s, "amp": amp_best.strategy.label(),
                               "amp_predicted_s": amp_best.total_s,
                               "speedup_predicted": bp.total_s / amp_best.total_s,
                               "baseline_s (paper)": pub["baseline_s"], "amp_s (paper)": pub["amp_s"],
                               "speedup (paper)": pub["speedup_claim"]})
    if ranking:
        ctx.out.table("ranking", pd.DataFrame(ranking), title="Released-mode ranking vs the released trial files",
                      note="order_equal: every position holds the released candidate or one of equal released "
                           "prediction; partitions_equal: candidates whose partition equals the released one.")
    ctx.out.table("best", pd.DataFrame(best_rows), title="Best strategies per setup and mode",
                  note="released_measured_s: the released measured time of the same strategy and partition, "
                       "where one was run.")
    ctx.out.table("speedup", pd.DataFrame(speed_rows), title="AMP vs the Megatron-style heuristic (predicted)",
                  note="Predicted times from this cost model; the paper's columns are measured on AWS.")
    ctx.out.table("correlation", pd.DataFrame(corr_rows), title="Predicted vs measured on the released trials",
                  note="Spearman/Kendall over the trials with a measured time; infeasible = the memory model "
                       f"({memory.BYTES_PER_PARAM:.0f} B/param, fp16 activations, 1F1B, "
                       f"{memory.RESERVED_BYTES / 1e9:.0f} GB reserved) says it does not fit. improved_fit: the "
                       "improved model with compute scaling as mbs**a instead of linearly, a fitted per GPU type "
                       "on the single-type setup's trials (" + ", ".join(f"{g}: a={a:.2f} on {FIT_ON[g]}"
                                                                        for g, a in exponents.items())
                       + "); het_cluster is out of sample." if exponents else "")
    return times, per_trial


def local_validation(ctx, cfg) -> None:
    v = cfg.validate
    tiny = validate.TinyGPT(**{k: int(x) for k, x in v.model.items()})
    L = tiny.spec().num_layers
    strategies = []
    for s in v.strategies:
        pp = int(s.pp)
        part = tuple(s.partition) if s.get("partition") else tuple(uniform_partition(L, pp))
        strat = Strategy(int(s.tp), int(s.dp), pp, int(s.mbs), part)
        require(strat.tp * strat.dp * strat.pp <= int(v.max_processes),
                f"validation strategy {strat.label()} needs more than {v.max_processes} processes")
        strategies.append(strat)
    rows = validate.compare(tiny, strategies, steps=int(v.steps), warmup=int(v.warmup),
                            timeout_s=float(v.timeout_s))
    df = pd.DataFrame(rows)
    ctx.out.table("local", df, title="Predicted vs measured for strategies run on this machine",
                  note=f"Tiny GPT {dict(v.model)}; gloo on CPU processes; times are medians of {v.steps} steps "
                       "on a shared, loaded machine (noisy). error = (predicted - measured) / measured; "
                       "*_bytes_model come from the memory model (fp32 Adam, GPipe).")
    for i, r in enumerate(rows):
        ctx.tracker.log({"local/predicted_s": r["predicted_s"], "local/measured_s": r["measured_s"]}, step=i)


def plan(ctx, cfg) -> None:
    """Plan a user's own setup (a name or YAML file), or price one strategy on it."""
    p = cfg.plan
    setup = load_setup(p.setup)
    prof = profiles.load_json(p.profile, setup.model) if p.get("profile") else None
    if prof is None:
        try:
            prof = profiles.released(setup.model)
            missing = [g for g in setup.cluster.gpu_types if g not in prof.gpus()]
            if missing:
                prof = None
        except UserError:
            if setup.model.profile_name == "transgan":
                raise
            prof = None
    if prof is None:
        prof = profiles.from_flops(setup.model, setup.cluster.gpu_types)
    if p.get("strategy"):
        from omegaconf import OmegaConf

        s = Strategy.from_dict(OmegaConf.to_container(p.strategy, resolve=True))
        check_strategy(setup.model, setup.cluster, s, setup.global_batch)
        preds = [CostModel(setup, prof, p.mode).predict(s)]
    else:
        preds = search(setup, prof, p.mode).ranked[: cfg.top]
    rows = [{"strategy": x.strategy.label(), "partition": " ".join(map(str, x.strategy.partition)),
             "predicted_s": x.total_s, "peak_memory_gb": x.peak_memory_gb, "fits": x.feasible} for x in preds]
    ctx.out.table("plan", pd.DataFrame(rows), title=f"Plan for {setup.name} ({p.mode} mode, {prof.source})")
    print(pd.DataFrame(rows).to_string(index=False))


def run(ctx: app.RunContext) -> None:
    cfg = ctx.cfg
    for m in cfg.modes:
        require(m in ("released", "improved"), f"unknown mode {m!r}; choose released or improved")
    if cfg.plan.setup:
        setup = load_setup(cfg.plan.setup)  # checks the file before anything runs
        if ctx.dry_run:
            print(f"plan: search {setup.name} ({setup.cluster.num_gpus} GPUs, {setup.model.name}) in "
                  f"{cfg.plan.mode} mode")
            return
        plan(ctx, cfg)
        return
    setups = [load_setup(n) for n in cfg.setups]
    require(TRIALS.is_file() and PAPER.is_file(), f"missing carried-in data under {DATA}")
    if ctx.dry_run:
        print("plan:")
        for s in setups:
            print(f"  search {s.name}: {s.model.name} on {s.cluster.num_gpus} GPUs ({', '.join(s.cluster.gpu_types)})"
                  f", modes {list(cfg.modes)}; compare with {TRIALS.name}")
        if cfg.big_cluster:
            print("  search big_two_gen: 1,024 GPUs of two generations (improved mode)")
        if cfg.validate.enabled:
            print(f"  run {len(cfg.validate.strategies)} strategies of a tiny GPT for real "
                  f"(<= {cfg.validate.max_processes} processes, {cfg.validate.steps} steps)")
        return
    t0 = time.time()
    trials = load_trials()
    paper = yaml.safe_load(PAPER.read_text())
    times, per_trial = paper_setups(ctx, cfg, trials, paper)
    if cfg.big_cluster:
        for r in bench.bench(setups=(), big=True):
            times.append({"setup": r["setup"], "mode": r["mode"], "candidates": r["candidates"],
                          "infeasible": r["infeasible"], "search_s": r["search_s"], "target_s": r["target_s"], "released code s (paper)": np.nan})
    ctx.out.table("search_time", pd.DataFrame(times), title="Search time on this machine",
                  note="Wall time of one search on this shared 2-core machine (other jobs running: noisy). "
                       "candidates counts (strategy, placement) pairs priced.")
    if cfg.validate.enabled:
        local_validation(ctx, cfg)
    for name, preds in per_trial.items():
        ctx.out.table(f"trials_{name}", preds, title=f"{name}: every released trial, both modes' prediction",
                      note="measured_s: the released measured time (inf: no time; NaN: not run). fits: the "
                           "memory model's verdict.")
    ctx.out.note(f"Total wall time {time.time() - t0:.0f} s. Source of the paper's figures: {paper['source']}.")


if __name__ == "__main__":
    app.main("amp", run)
