"""One of the paper's setups studied end to end: both modes' searches, the released-ranking check, every
released trial priced by each model, rank correlation, the heuristics and AMP's picks by measured time.

`study_setup` returns plain tables (`SetupStudy`); `reproduce.amp` lays them out and `amp.claims` decides the
paper's claims from them.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import pandas as pd

from amp import comparison, profiles, trials
from amp.search import SearchResult, search
from amp.specs import load_setup


@dataclass
class SetupStudy:
    name: str
    results: dict[str, SearchResult]
    ranking: dict | None
    trials: pd.DataFrame  # every released trial priced by each mode
    correlation: list[dict]
    heuristics: list[dict]
    speedup: list[dict]
    best: list[dict] = field(default_factory=list)


def study_setup(
    name: str,
    released_trials: pd.DataFrame,
    paper: dict,
    modes=("released", "improved"),
    fixed_s: dict[int, float] | None = None,
    top: int = 5,
    k: int = comparison.PAPER_TOP_K,
) -> SetupStudy:
    """`paper`: the setup's published figures (reproduce/data/amp_paper.yaml), which fill the "(paper)"
    columns and nothing else. `fixed_s`: the fixed cost per layer and micro-batch fitted without this setup
    (adds `improved_fit`)."""
    setup = load_setup(name)
    prof = profiles.released(setup.model)
    fitted = prof.with_fixed_cost(fixed_s) if fixed_s else None
    results = {m: search(setup, prof, m) for m in modes}
    if fitted is not None:
        results["improved_fit"] = search(setup, fitted, "improved")
    tr = released_trials[released_trials.setting == name]
    ranking = trials.ranking_check(setup, results["released"], tr) if "released" in results else None
    preds = trials.trial_predictions(setup, prof, tr, fitted)
    no_time = preds[preds.ran & ~preds.timed]
    released_spearman = trials.correlations(preds, "released")["spearman"]
    corr = []
    for mode in results:
        c = trials.correlations(preds, mode)
        corr.append(
            {
                "setup": name,
                "mode": mode,
                "fit": "leave-one-setup-out: " + ", ".join(f"tp{t} {v * 1e3:.0f} ms" for t, v in fixed_s.items())
                if mode == "improved_fit"
                else "",
                **c,
                "spearman (paper)": paper["spearman_figure"],
                "spearman (released model, recomputed)": released_spearman,
                "no_time_trials": len(no_time),
                "no_time_marked_infeasible": int((~no_time.fits).sum()),
                "timed_marked_infeasible": int((~preds[preds.timed].fits).sum()),
            }
        )
    heur = comparison.heuristic_rows(setup, tr, paper["baseline_s"])
    speed = comparison.speedup_rows(setup, tr, preds, results, pd.DataFrame(heur), paper, k)
    measured = {(r.strategy, r.partition): r.measured_s for r in preds.itertuples()}
    best = []
    for mode, res in results.items():
        for i, p in enumerate(res.ranked[:top]):
            part = " ".join(map(str, p.strategy.partition))
            best.append(
                {
                    "setup": name,
                    "mode": mode,
                    "rank": i,
                    "strategy": p.strategy.label(),
                    "partition": part,
                    "placement": "default"
                    if p.strategy.placement is None
                    else " ".join(map(str, p.strategy.placement)),
                    "predicted_s": p.total_s,
                    "peak_memory_gb": p.peak_memory_gb,
                    "released_measured_s": measured.get((p.strategy.label(), part), np.nan),
                }
            )
    return SetupStudy(name, results, ranking, preds, corr, heur, speed, best)


def scatter(name: str, df: pd.DataFrame):
    """Predicted against measured time of every timed released trial, one marker per mode."""
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


def plan_table(setup, prof, mode: str, strategy: dict | None = None, top: int = 5) -> pd.DataFrame:
    """The best `top` strategies for a user's setup (or the one `strategy` given, priced), one row each."""
    from amp.cost_model import CostModel
    from amp.specs import Strategy, check_strategy

    if strategy:
        s = Strategy.from_dict(strategy)
        check_strategy(setup.model, setup.cluster, s, setup.global_batch)
        preds = [CostModel(setup, prof, mode).predict(s)]
    else:
        preds = search(setup, prof, mode).ranked[:top]
    return pd.DataFrame(
        [
            {
                "strategy": x.strategy.label(),
                "partition": " ".join(map(str, x.strategy.partition)),
                "placement": "default" if x.strategy.placement is None else " ".join(map(str, x.strategy.placement)),
                "predicted_s": x.total_s,
                "peak_memory_gb": x.peak_memory_gb,
                "fits": x.feasible,
            }
            for x in preds
        ]
    )
