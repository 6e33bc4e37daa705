"""The claims report: verdicts are checked, written beside the tables and read back."""

import json

import pytest

from common.claims import DOES_NOT_HOLD, HOLDS, NOT_MEASURED, Claim, decide, read_claims, summary_table, write_claims
from common.results import ResultWriter


def test_decide_and_bad_verdict():
    assert decide(True) == HOLDS and decide(False) == DOES_NOT_HOLD and decide(None) == NOT_MEASURED
    with pytest.raises(ValueError):
        Claim("k", "c", "p", "m", "probably")


def test_written_committed_and_read_back(tmp_path):
    claims = [
        Claim("a", "A beats B", "paper: 1.5x", "measured 1.2x", decide(1.2 > 1.0)),
        Claim("b", "C is close to D", "paper: 1 point", "measured 4 points", decide(4 <= 3)),
    ]
    out = tmp_path / "w" / "mini"
    with ResultWriter(out) as w:
        write_claims(w, claims, work="w", scale="mini")
        w.commit({})
    md = (out / "claims.md").read_text()
    assert "1 holds, 1 does not hold" in md and "| A beats B |" in md
    assert json.loads((out / "claims.json").read_text())["scale"] == "mini"
    assert read_claims(out) == claims
    table = summary_table([("w", "mini", claims)])
    assert table["verdict"].tolist() == [HOLDS, DOES_NOT_HOLD]


def test_duplicate_keys_refused(tmp_path):
    c = Claim("a", "x", "p", "m", HOLDS)
    with ResultWriter(tmp_path / "w" / "mini") as w, pytest.raises(ValueError):
        write_claims(w, [c, c], work="w", scale="mini")
