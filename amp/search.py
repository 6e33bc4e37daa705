"""Enumerate strategies, partition and price each, rank them by predicted iteration time.

Candidates are every (tensor-parallel degree up to the GPUs of a node, data-parallel degree, pipeline degree
up to the number of layers, micro-batch size dividing the per-replica batch), enumerated in the released
code's order (micro-batch size first) so that equal predictions keep the released order under a stable sort.
In `improved` mode each candidate is also tried on every distinct node order (placement) of a mixed cluster,
and candidates that do not fit in memory are reported apart instead of ranked.
"""

from __future__ import annotations

import itertools
import logging
import time
from collections.abc import Iterator
from dataclasses import dataclass, field

from tqdm import tqdm

from amp.cost_model import CostModel, Prediction
from amp.profiles import Profiles
from amp.specs import Setup, Strategy
from common.errors import require

log = logging.getLogger(__name__)

MAX_PLACEMENTS = 24
PROGRESS_GPUS = 512


def divisors(n: int) -> list[int]:
    return [d for d in range(1, n + 1) if n % d == 0]


def candidates(setup: Setup) -> list[Strategy]:
    """All (tp, dp, pp, mbs), micro-batch size outermost as in the released search."""
    n, gbs, L = setup.cluster.num_gpus, setup.global_batch, setup.model.num_layers
    out: dict[int, list[Strategy]] = {}
    for tp in divisors(setup.cluster.gpus_per_node):
        if n % tp:
            continue
        for dp in divisors(n // tp):
            pp = n // (tp * dp)
            if gbs % dp or pp > L:
                continue
            for mbs in divisors(gbs // dp):
                out.setdefault(mbs, []).append(Strategy(tp, dp, pp, mbs))
    return [s for mbs in sorted(out) for s in out[mbs]]


def distinct_permutations(counts: list[int]) -> Iterator[tuple[int, ...]]:
    """Every distinct sequence holding `counts[k]` copies of k, in lexicographic order, each visited once
    (11 nodes of one kind and 1 of another give 12 sequences, not 12! permutations)."""
    total = sum(counts)

    def rec(prefix: tuple[int, ...]) -> Iterator[tuple[int, ...]]:
        if len(prefix) == total:
            yield prefix
            return
        for k, c in enumerate(counts):
            if c:
                counts[k] -= 1
                yield from rec((*prefix, k))
                counts[k] += 1

    return rec(())


def placements(setup: Setup) -> list[tuple[int, ...] | None]:
    """Distinct node orders by node kind (all of them for small clusters, contiguous blocks of each kind in
    every order of the kinds for large ones). A homogeneous cluster has one."""
    nodes = setup.cluster.nodes
    kinds: dict[object, list[int]] = {}
    for i, nd in enumerate(nodes):
        kinds.setdefault(nd, []).append(i)
    if len(kinds) == 1:
        return [None]
    labels = [list(kinds).index(nd) for nd in nodes]
    orders: list[tuple[int, ...]] = []
    if len(nodes) <= 12:
        counts = [len(v) for v in kinds.values()]
        perms = itertools.chain([tuple(labels)], (p for p in distinct_permutations(counts) if p != tuple(labels)))
        for perm in itertools.islice(perms, MAX_PLACEMENTS):
            pools = {k: list(v) for k, v in enumerate(kinds.values())}
            orders.append(tuple(pools[k].pop(0) for k in perm))
    if not orders or len(nodes) > 12:
        orders = [tuple(i for k in perm for i in kinds[k]) for perm in itertools.permutations(list(kinds))]
    return orders


@dataclass
class SearchResult:
    mode: str
    ranked: list[Prediction]
    infeasible: list[Prediction] = field(default_factory=list)
    seconds: float = 0.0
    evaluated: int = 0

    @property
    def best(self) -> Prediction:
        require(bool(self.ranked), "no strategy fits in memory")
        return self.ranked[0]


def search(
    setup: Setup, profiles: Profiles, mode: str = "improved", schedule: str = "1f1b", progress: bool | None = None
) -> SearchResult:
    """Rank every candidate by predicted iteration time (released mode: the released model, one placement,
    no memory filter). `progress`: a progress bar on stderr (default: clusters of PROGRESS_GPUS GPUs or more)."""
    t0 = time.perf_counter()
    cm = CostModel(setup, profiles, mode, schedule)
    places = [None] if mode == "released" else placements(setup)
    cands = candidates(setup)
    if progress is None:
        progress = setup.cluster.num_gpus >= PROGRESS_GPUS
    log.info(
        "%s search of %s: %d candidates x %d placements on %d GPUs",
        mode,
        setup.name or "setup",
        len(cands),
        len(places),
        setup.cluster.num_gpus,
    )
    preds = []
    for s in tqdm(cands, desc=f"search {setup.name}", unit="strategy", disable=not progress):
        best = None
        for place in places:
            p = cm.predict(Strategy(s.tp, s.dp, s.pp, s.mbs, placement=place))
            if best is None or p.total_s < best.total_s:
                best = p
        preds.append(best)
    if mode == "released":
        ranked, infeasible = sorted(preds, key=lambda p: p.total_s), []
    else:
        ranked = sorted((p for p in preds if p.feasible), key=lambda p: p.total_s)
        infeasible = [p for p in preds if not p.feasible]
    seconds = time.perf_counter() - t0
    log.info(
        "%s search of %s: %d candidates x %d placements in %.2fs", mode, setup.name, len(preds), len(places), seconds
    )
    return SearchResult(mode, ranked, infeasible, seconds, len(preds) * len(places))
