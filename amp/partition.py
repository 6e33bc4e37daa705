"""Split layers into pipeline stages.

The pipeline time of a split is

    sum_j stage_j + (B - 1) * max_j stage_j + sum over cuts of the activation transfer,

where stage_j sums the per-layer time of stage j's layers *on stage j's GPUs* (`e[j, l]`), `B` is the number of
micro-batches, and `c[j, l]` is the time to move the activation of layer l across cut j (stage j -> j+1).

* `optimal_partition` minimises that exactly: for a bound t on the slowest stage, a dynamic program finds the
  cheapest split whose stages all fit under t (stages may also be masked out, e.g. when they do not fit in
  memory); the answer is the best (B-1)*t + DP(t) over the stage sums t, visited in increasing order and
  stopped once (B-1)*t alone cannot beat the best. Thresholds are evaluated in vectorised batches.
* `released_partition` is the released AMP dynamic program, kept for `released` mode: its state is (layers,
  cuts, the largest later stage); it compares candidate cuts with their transfer time but stores the cost
  without it, so it is not always optimal for the formula above. Reproducing the released ranking needs it.
* `brute_force_partition` tries every split (for tests).
"""

from __future__ import annotations

import itertools

import numpy as np

from common.errors import require


def pipeline_time(
    e: np.ndarray, c: np.ndarray, partition: list[int] | tuple[int, ...], B: int, blocking: bool = False
) -> float:
    """The pipeline formula above. `e` is (pp, L) or (L,) (the same on every stage); `c` is (pp-1, L-1).
    `blocking`: a stage also waits out the transfers at both its cuts for every micro-batch (blocking
    send/recv), so they count in the slowest stage."""
    pp = len(partition)
    e2 = np.broadcast_to(e, (pp, e.shape[-1]))
    ends = np.cumsum(partition)
    starts = ends - np.asarray(partition)
    stages = np.array([e2[j, starts[j] : ends[j]].sum() for j in range(pp)])
    cut = np.array([float(c[j, ends[j] - 1]) for j in range(pp - 1)])
    busy = stages.copy()
    if blocking and pp > 1:
        busy[:-1] += cut
        busy[1:] += cut
    return float(stages.sum() + (B - 1) * busy.max() + cut.sum())


def uniform_partition(blocks: int, pp: int, pad: tuple[int, int] = (0, 0)) -> list[int]:
    """The released split for one micro-batch: blocks spread evenly (remainder to the first stages), the
    `pad` leading/trailing layers added to the first/last stage."""
    base, rem = divmod(blocks, pp)
    parts = [base + (1 if i < rem else 0) for i in range(pp)]
    parts[0] += pad[0]
    parts[-1] += pad[1]
    return parts


def _stage_sums(e2: np.ndarray) -> np.ndarray:
    """S[j, a, b] = sum of e2[j, a:b] (inf where b <= a)."""
    pp, L = e2.shape
    P = np.concatenate([np.zeros((pp, 1)), np.cumsum(e2, axis=1)], axis=1)
    S = P[:, None, :] - P[:, :, None]
    a, b = np.meshgrid(np.arange(L + 1), np.arange(L + 1), indexing="ij")
    S[:, b <= a] = np.inf
    return S


def optimal_partition(
    e: np.ndarray,
    c: np.ndarray,
    pp: int,
    B: int,
    feasible: np.ndarray | None = None,
    batch: int = 32,
    blocking: bool = False,
) -> tuple[list[int] | None, float]:
    """The split of L layers into `pp` non-empty stages with the least pipeline time.

    `feasible[j, a, b]` (optional) marks whether layers a..b-1 may form stage j (memory). Returns
    (partition, time), or (None, inf) when no split is feasible.
    """
    e2 = np.broadcast_to(np.asarray(e, dtype=np.float64), (pp, np.shape(e)[-1])).copy()
    L = e2.shape[1]
    require(1 <= pp <= L, f"{L} layers cannot fill {pp} pipeline stages")
    c = np.asarray(c, dtype=np.float64).reshape(max(pp - 1, 0), max(L - 1, 0))
    S = _stage_sums(e2)
    if feasible is not None:
        S = np.where(feasible, S, np.inf)
    # comm[j, a] = transfer when stage j+1 starts at layer a (cut after layer a-1)
    comm = np.full((max(pp - 1, 0), L + 1), np.inf)
    if pp > 1:
        comm[:, 1:L] = c
    # Sb[j, a, b]: what stage j costs in the bottleneck (its compute, plus its cut transfers if blocking)
    Sb = S.copy()
    if blocking and pp > 1:
        Sb[1:] += comm[:, :, None]
        Sb[:-1] += comm[:, None, :]
        Sb[np.isnan(Sb)] = np.inf

    def solve(ts: np.ndarray, keep_choice: bool):
        F = np.where(Sb[0, 0][None, :] <= ts[:, None], S[0, 0][None, :], np.inf)  # (T, L+1)
        choices = []
        for j in range(1, pp):
            Sj = S[j][None, :, :]  # (1, a, b)
            ok = Sb[j][None, :, :] <= ts[:, None, None]
            cand = np.where(ok, F[:, :, None] + comm[j - 1][None, :, None] + Sj, np.inf)
            arg = np.argmin(cand, axis=1)  # (T, b)
            F = np.take_along_axis(cand, arg[:, None, :], axis=1)[:, 0, :]
            if keep_choice:
                choices.append(arg)
        return F[:, L], choices

    def backtrack(t: float) -> list[int]:
        _, choices = solve(np.array([t]), True)
        b, bounds = L, [L]
        for j in range(pp - 1, 0, -1):
            b = int(choices[j - 1][0, b])
            bounds.append(b)
        bounds.append(0)
        bounds = bounds[::-1]
        return [bounds[i + 1] - bounds[i] for i in range(pp)]

    f_inf = float(solve(np.array([np.inf]), False)[0][0])
    if not np.isfinite(f_inf):
        return None, float("inf")
    if B == 1 or pp == 1:
        part = backtrack(np.inf)
        return part, pipeline_time(e2, c, part, B, blocking)
    best_t, best = np.inf, np.inf
    part = backtrack(np.inf)
    best = pipeline_time(e2, c, part, B, blocking)
    sums = Sb[np.isfinite(Sb)]
    lower = max(float(np.max(e2.min(axis=0))), float(e2.min(axis=0).sum()) / pp)
    ts = np.unique(sums[sums >= lower - 1e-15])
    for start in range(0, len(ts), batch):
        chunk = ts[start : start + batch]
        if (B - 1) * chunk[0] + f_inf >= best:
            break
        f, _ = solve(chunk, False)
        total = (B - 1) * chunk + f
        i = int(np.argmin(total))
        if total[i] < best:
            best, best_t = float(total[i]), float(chunk[i])
    if np.isfinite(best_t):
        part = backtrack(best_t)
        best = pipeline_time(e2, c, part, B, blocking)
    return part, best


def brute_force_partition(
    e: np.ndarray, c: np.ndarray, pp: int, B: int, feasible: np.ndarray | None = None, blocking: bool = False
) -> tuple[list[int] | None, float]:
    """Every split, for checking `optimal_partition` on small instances."""
    L = np.shape(e)[-1]
    best, best_part = float("inf"), None
    for cuts in itertools.combinations(range(1, L), pp - 1):
        bounds = (0, *cuts, L)
        part = [bounds[i + 1] - bounds[i] for i in range(pp)]
        if feasible is not None and not all(feasible[j, bounds[j], bounds[j + 1]] for j in range(pp)):
            continue
        t = pipeline_time(np.asarray(e), np.asarray(c).reshape(pp - 1, L - 1), part, B, blocking)
        if t < best:
            best, best_part = t, part
    return best_part, best


def released_partition(e: np.ndarray, c: np.ndarray, pp: int, B: int) -> list[int]:
    """The released AMP pipeline dynamic program (same decisions, vectorised over its max-stage state).

    `e` is (L,), `c` is (pp-1, L-1). State (i, j, m): layers 0..i in j+1 stages while the largest later stage
    is the m-th smallest stage sum; value = (B-1) * how much the stages here exceed it. Cuts are compared
    with their transfer time added, which the stored value then leaves out.
    """
    e = np.asarray(e, dtype=np.float64)
    L = len(e)
    if pp == 1:
        return [L]
    # stage sums as the released code forms them (left-to-right from each start)
    run = np.full((L + 1, L + 1), np.nan)
    for a in range(L):
        s = 0.0
        for b in range(a, L):
            s = s + e[b]
            run[a, b + 1] = s
    possible = np.unique(np.concatenate([[0.0], run[np.isfinite(run)]]))
    idx = {v: k for k, v in enumerate(possible.tolist())}
    run_idx = np.full((L + 1, L + 1), -1, dtype=np.int64)
    for a in range(L):
        for b in range(a + 1, L + 1):
            run_idx[a, b] = idx[run[a, b]]
    M = len(possible)
    ms = np.arange(M)
    cost = np.full((L, pp, M), np.inf)
    choice = np.full((L, pp, M), -1, dtype=np.int64)
    for i in range(L):
        cost[i, 0] = (B - 1) * np.maximum(0.0, run[0, i + 1] - possible)
    for j in range(1, pp):
        best = np.full((L, M), np.inf)  # the stored (transfer-free) value of the cut accepted so far
        for cut in range(j - 1, L - 1):
            ii = np.arange(cut + 1, L)
            cur = run[cut + 1, ii + 1]
            look = np.maximum(run_idx[cut + 1, ii + 1][:, None], ms[None, :])
            value = cost[cut, j - 1][look] + (B - 1) * np.maximum(0.0, cur[:, None] - possible[None, :])
            # the released scan: a later cut wins when its value *plus* its transfer beats the kept value
            take = value + c[j - 1, cut] < best[ii]
            best[ii] = np.where(take, value, best[ii])
            choice[ii, j] = np.where(take, cut, choice[ii, j])
        cost[j:, j] = best[j:]
    # follow the choices back from (L-1, pp-1, m=0)
    parts, i, m = [], L - 1, 0
    for j in range(pp - 1, 0, -1):
        cut = int(choice[i, j, m])
        parts.append(i - cut)
        m = max(int(run_idx[cut + 1, i + 1]), m)
        i = cut
    parts.append(i + 1)
    return parts[::-1]
