"""Tables, provenance and atomic result directories: complete or absent after a crash, never partial."""

import json
import signal

import pandas as pd
import pytest

from common.results import ResultWriter, atomic_write_text, beside_paper, to_latex, to_markdown
from tests.conftest import run_cli

ECHO = "tests/fixtures/echo_work.py"


def test_markdown_latex_and_paper_column():
    measured = pd.DataFrame({"method": ["VAE", "DC-VAE", "ours-only"], "FID": [120.5, 30.25, 9.0]})
    paper = pd.DataFrame({"method": ["VAE", "DC-VAE"], "FID": [115.8, 17.9], "IS": [3.8, 8.2]})
    table = beside_paper(measured, paper, on="method")
    assert list(table.columns) == ["method", "FID", "FID (paper)", "IS (paper)"]
    assert table["FID (paper)"].tolist()[:2] == [115.8, 17.9] and pd.isna(table["FID (paper)"][2])
    md = to_markdown(table)
    assert md.splitlines()[0] == "| method | FID | FID (paper) | IS (paper) |"
    assert "| ours-only | 9 | - | - |" in md
    tex = to_latex(table, caption="FID_50k & IS")
    assert r"\caption{FID\_50k \& IS}" in tex and r"DC-VAE & 30.25 & 17.9 & 8.2 \\" in tex


def test_writer_commits_everything_with_provenance(tmp_path):
    out = tmp_path / "work" / "mini"
    with ResultWriter(out) as w:
        w.table("t1", pd.DataFrame({"a": [1], "b": [2.5]}), title="Table one")
        w.commit({"scale": {"name": "mini"}, "seed": 3}, title="demo")
    assert sorted(p.name for p in out.iterdir()) == ["provenance.json", "t1.csv", "t1.tex", "tables.md"]
    prov = json.loads((out / "provenance.json").read_text())
    assert prov["config"]["seed"] == 3 and prov["packages"]["torch"] and prov["host"] and prov["wall_time_s"] >= 0
    assert "git_commit" in prov
    assert pd.read_csv(out / "t1.csv").to_dict("list") == {"a": [1], "b": [2.5]}
    assert list(tmp_path.joinpath("work").iterdir()) == [out]  # no staging directory left


def test_atomic_write_replaces_whole_file(tmp_path):
    p = atomic_write_text(tmp_path / "x.txt", "old")
    atomic_write_text(p, "new")
    assert p.read_text() == "new" and [q.name for q in tmp_path.iterdir()] == ["x.txt"]


@pytest.mark.timeout(120)
def test_crash_mid_run_leaves_previous_results(tmp_path):
    args = [ECHO, "scale=smoke", f"results_dir={tmp_path}", "tracking.mode=disabled"]
    first = run_cli([*args, "value=3"])
    assert first.returncode == 0, first.stderr
    out = tmp_path / "echo" / "smoke"
    before = {p.name: p.read_bytes() for p in out.iterdir()}
    crashed = run_cli([*args, "value=5", "crash_after_table=true"])
    assert crashed.returncode != 0
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before
    assert pd.read_csv(out / "echo.csv")["y"].tolist() == [3, 6]
    assert [p.name for p in (tmp_path / "echo").iterdir()] == ["smoke"]


KILL_MID_WRITE = """
import os, signal, sys
import pandas as pd
from common.results import ResultWriter
w = ResultWriter(sys.argv[1])
w.table("big", pd.DataFrame({"x": range(1000)}))
os.kill(os.getpid(), signal.SIGKILL)
"""


@pytest.mark.timeout(120)
def test_killed_writer_leaves_nothing_at_the_result_path(tmp_path):
    out = tmp_path / "w" / "smoke"
    proc = run_cli(["-c", KILL_MID_WRITE, str(out)])
    assert proc.returncode == -signal.SIGKILL
    assert not out.exists()  # absent, not partial (the staging directory has a hidden temporary name)


def test_failed_first_run_leaves_no_folder(tmp_path):
    with pytest.raises(RuntimeError):
        with ResultWriter(tmp_path / "work" / "mini") as w:
            w.table("t", pd.DataFrame({"a": [1]}))
            raise RuntimeError("boom")
    assert not any(tmp_path.iterdir())


def test_a_concurrent_abort_that_removes_the_work_folder_does_not_fail_staging(tmp_path, monkeypatch):
    """The race of a two-task SLURM job: the other task's `abort` removes the empty work folder between this
    writer's mkdir and its mkdtemp (replayed deterministically: the first mkdtemp finds the folder gone)."""
    import tempfile

    real, calls = tempfile.mkdtemp, []

    def racing_mkdtemp(*args, **kwargs):
        calls.append(kwargs.get("dir"))
        if len(calls) == 1:
            other = ResultWriter(tmp_path / "work" / "other")
            other.table("t", pd.DataFrame({"a": [1]}))
            other.abort()  # removes its stage, then the (now empty) work folder
            assert not (tmp_path / "work").exists()
        return real(*args, **kwargs)

    monkeypatch.setattr(tempfile, "mkdtemp", racing_mkdtemp)
    with ResultWriter(tmp_path / "work" / "mini") as w:
        w.table("t", pd.DataFrame({"a": [1]}))
        monkeypatch.setattr(tempfile, "mkdtemp", real)
        w.commit({})
    assert pd.read_csv(tmp_path / "work" / "mini" / "t.csv")["a"].tolist() == [1]


def test_a_discarding_writer_never_touches_the_results_folder(tmp_path):
    """Ranks other than 0 stage outside the results folder, and their clean-up cannot remove rank 0's folder."""
    (tmp_path / "work").mkdir()
    with ResultWriter(tmp_path / "work" / "mini", discard=True) as w:
        w.table("t", pd.DataFrame({"a": [1]}))
        assert tmp_path not in w.stage.parents
        with pytest.raises(RuntimeError):
            w.commit({})
    assert [p.name for p in tmp_path.iterdir()] == ["work"] and not any((tmp_path / "work").iterdir())
