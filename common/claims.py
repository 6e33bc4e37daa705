"""The claims report: one row per qualitative claim of a paper, decided by code from measured tables.

Each work builds its `Claim`s in its own package (from its measured tables, never by hand) and writes them
with `write_claims`, which puts `claims.md` and `claims.json` beside the run's tables. `read_claims` and
`summary_table` let `python -m reproduce` print one table of every work's claims.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import pandas as pd

HOLDS = "holds"
DOES_NOT_HOLD = "does not hold"
NOT_MEASURED = "not measured at this scale"
VERDICTS = (HOLDS, DOES_NOT_HOLD, NOT_MEASURED)


@dataclass(frozen=True)
class Claim:
    """A paper's claim in short, the paper's evidence, what this run measured and the verdict."""

    key: str  # a short stable id, e.g. "dcvae_best_sampling_fid"
    claim: str  # the paper's words in short
    paper_evidence: str  # what the paper shows (its numbers, its table or figure)
    measured_evidence: str  # what this run measured (numbers from the tables)
    verdict: str  # one of VERDICTS

    def __post_init__(self) -> None:
        if self.verdict not in VERDICTS:
            raise ValueError(f"verdict must be one of {VERDICTS}, got {self.verdict!r}")


def decide(condition: bool | None) -> str:
    """The verdict for a measured condition; None means the run did not measure it."""
    if condition is None:
        return NOT_MEASURED
    return HOLDS if condition else DOES_NOT_HOLD


def claims_frame(claims: Sequence[Claim]) -> pd.DataFrame:
    return pd.DataFrame(
        [
            {
                "claim": c.claim,
                "paper's evidence": c.paper_evidence,
                "measured evidence": c.measured_evidence,
                "verdict": c.verdict,
            }
            for c in claims
        ]
    )


def claims_markdown(claims: Sequence[Claim], title: str = "Claims") -> str:
    from common.results import to_markdown

    counts = {v: sum(c.verdict == v for c in claims) for v in VERDICTS}
    summary = ", ".join(f"{n} {v}" for v, n in counts.items() if n)
    return f"# {title}\n\n{summary}.\n\n" + to_markdown(claims_frame(claims))


def write_claims(out: Any, claims: Sequence[Claim], work: str, scale: str) -> None:
    """Write claims.md and claims.json through a `common.results.ResultWriter` (staged, committed atomically)."""
    claims = list(claims)
    keys = [c.key for c in claims]
    if len(set(keys)) != len(keys):
        raise ValueError(f"duplicate claim keys: {keys}")
    out.text("claims.md", claims_markdown(claims, title=f"Claims of {work} at scale={scale}"))
    out.json("claims.json", {"work": work, "scale": scale, "claims": [asdict(c) for c in claims]})
    if getattr(out, "tracker", None) is not None:
        out.tracker.log_table("claims", claims_frame(claims))


def read_claims(path: str | os.PathLike) -> list[Claim]:
    """Claims from a claims.json (or the results folder holding it)."""
    path = Path(path)
    if path.is_dir():
        path = path / "claims.json"
    data = json.loads(path.read_text())
    return [Claim(**c) for c in data["claims"]]


def summary_table(results: Iterable[tuple[str, str, Sequence[Claim]]]) -> pd.DataFrame:
    """One row per claim of every (work, scale) given."""
    rows = [{"work": w, "scale": s, "claim": c.claim, "verdict": c.verdict} for w, s, cs in results for c in cs]
    return pd.DataFrame(rows, columns=["work", "scale", "claim", "verdict"])
