"""Search-time benchmark: `python -m amp.bench` prints how long each search takes on this machine.

The paper's three setups are searched in both modes with the released profiles (target: at most 1 s each;
the released search took about 300, 307 and 140 s on this kind of machine); the 1,024-GPU two-generation
cluster and the 16,384-GPU three-generation cluster are searched in improved mode with FLOP-estimated
profiles (target: at most 60 s each), with a progress bar.
"""

from __future__ import annotations

import argparse
import logging
import time

from amp import profiles
from amp.search import search
from amp.specs import PAPER_SETUPS, load_setup

TARGET_S = {"homogeneous": 1.0, "het_cluster": 1.0, "het_model": 1.0, "big_two_gen": 60.0, "big_three_gen": 60.0}
BIG = "big_three_gen"
BIG_SETUPS = ("big_two_gen", BIG)


def bench(setups=PAPER_SETUPS, big: bool = True, repeats: int = 1) -> list[dict]:
    rows = []
    for name in (*setups, *(BIG_SETUPS if big else ())):
        setup = load_setup(name)
        large = name in BIG_SETUPS
        prof = profiles.from_flops(setup.model, setup.cluster.gpu_types) if large else profiles.released(setup.model)
        for mode in ("improved",) if large else ("released", "improved"):
            best_s, result = float("inf"), None
            for _ in range(repeats):
                t0 = time.perf_counter()
                result = search(setup, prof, mode)
                best_s = min(best_s, time.perf_counter() - t0)
            rows.append(
                {
                    "setup": name,
                    "gpus": setup.cluster.num_gpus,
                    "mode": mode,
                    "candidates": result.evaluated,
                    "infeasible": len(result.infeasible),
                    "search_s": best_s,
                    "target_s": TARGET_S[name],
                    "best": result.best.strategy.label(),
                    "predicted_s": result.best.total_s,
                }
            )
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--no-big", action="store_true", help="skip the 1,024- and 16,384-GPU clusters")
    ap.add_argument("--repeats", type=int, default=1)
    args = ap.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    print(f"{'setup':<13} {'gpus':>5} {'mode':<9} {'cands':>6} {'search s':>9} {'target s':>9}  best")
    for r in bench(big=not args.no_big, repeats=args.repeats):
        print(
            f"{r['setup']:<13} {r['gpus']:>5} {r['mode']:<9} {r['candidates']:>6} {r['search_s']:>9.3f} "
            f"{r['target_s']:>9.0f}  {r['best']} ({r['predicted_s']:.3f} s predicted)"
        )


if __name__ == "__main__":
    main()
