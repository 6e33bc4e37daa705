"""`python -m reproduce` and the per-work Hydra apps: bad input is one line on stderr and exit code 2; Hydra's
own command line (--help, --cfg, --info, --multirun) works; Hydra's folders go under the results folder."""

import json

import pytest

from tests.conftest import ROOT, run_cli

ECHO = str(ROOT / "tests" / "fixtures" / "echo_work.py")


@pytest.mark.timeout(300)
@pytest.mark.parametrize(
    "args, message",
    [
        (["-m", "reproduce", "nosuchwork"], "unknown work 'nosuchwork'"),
        ([ECHO, "scale=huge"], "unknown scale 'huge'"),
        ([ECHO, "--multirun", "scale=smoke,huge"], "unknown scale 'huge'"),
        ([ECHO, "nokey=1"], "Key 'nokey' not in 'EchoConfig'"),
        ([ECHO, "+nokey=1"], "unknown key nokey"),
        ([ECHO, "value=abc"], "value: Value 'abc' of type 'str' could not be converted to Integer"),
        ([ECHO, "--multirun", "value=1,abc"], "Value 'abc' of type 'str' could not be converted to Integer"),
        ([ECHO, "dry_run=maybe"], "dry_run: Value 'maybe' is not a valid bool"),
        ([ECHO, "value=-1", "tracking.mode=disabled"], "value must be >= 0, got -1"),
        ([ECHO, "tracking.mode=sometimes"], "tracking.mode: Invalid value 'sometimes'"),
        ([ECHO, "launcher=cloud"], "launcher: Invalid value 'cloud'"),
        ([ECHO, "seed=0,1"], "Ambiguous value for argument 'seed=0,1'"),
        ([ECHO, "scale=smoke", "--multirun", "value=1,abc"], "Value 'abc' of type 'str' could not be converted"),
    ],
)
def test_bad_input_is_one_line_and_exit_2(args, message, tmp_path):
    proc = run_cli([*args, f"results_dir={tmp_path}"] if args[0] == ECHO else args)
    assert proc.returncode == 2, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1, proc.stderr
    assert lines[0].startswith("error: ") and message in lines[0]
    assert "Traceback" not in proc.stdout + proc.stderr


@pytest.mark.timeout(120)
@pytest.mark.parametrize("key", ["results_dir", "tracking.dir"])
def test_an_unwritable_folder_is_one_line_and_exit_2_and_creates_nothing(key, tmp_path):
    blocker = tmp_path / "a_file"
    blocker.write_text("kept")
    results = tmp_path / "results"
    proc = run_cli([ECHO, "scale=smoke", f"results_dir={results}", f"{key}={blocker}/sub"], cwd=tmp_path)
    assert proc.returncode == 2, proc.stderr
    assert proc.stderr.strip().splitlines() == [f"error: {key}: cannot write {blocker}/sub (Not a directory)"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a_file"] and blocker.read_text() == "kept"


def test_list_works():
    proc = run_cli(["-m", "reproduce", "--list"])
    assert proc.returncode == 0
    assert {line.split()[0] for line in proc.stdout.splitlines()} == {"dcvae", "amp", "compression", "mpcformer"}


@pytest.mark.timeout(120)
def test_dry_run_prints_plan_and_writes_nothing(tmp_path):
    proc = run_cli([ECHO, "scale=paper", "dry_run=true", f"results_dir={tmp_path}"])
    assert proc.returncode == 0, proc.stderr
    assert "plan: one table" in proc.stdout and "name: paper" in proc.stdout
    assert not any(tmp_path.iterdir())


@pytest.mark.timeout(120)
def test_hydra_flags_print_and_write_nothing(tmp_path):
    cfg = run_cli([ECHO, "--cfg", "job", "value=7", f"results_dir={tmp_path}"], cwd=tmp_path)
    assert cfg.returncode == 0, cfg.stderr
    assert "value: 7" in cfg.stdout and "scale:\n  name: mini" in cfg.stdout
    helped = run_cli([ECHO, "--help"], cwd=tmp_path)
    assert (
        helped.returncode == 0
        and "echo is powered by Hydra" in helped.stdout
        and "scale: mini, paper, smoke" in helped.stdout
    )
    info = run_cli([ECHO, "--info", "defaults"], cwd=tmp_path)
    assert info.returncode == 0 and "repro_base" in info.stdout
    assert not any(tmp_path.iterdir())


@pytest.mark.timeout(180)
def test_run_and_sweep_folders_are_under_the_results_folder(tmp_path):
    cwd = tmp_path / "cwd"
    cwd.mkdir()
    results = tmp_path / "results"
    proc = run_cli([ECHO, "scale=smoke", "tracking.mode=disabled", f"results_dir={results}"], cwd=cwd)
    assert proc.returncode == 0, proc.stderr
    (log,) = (results / "runs" / "echo").glob("*/echo.log")  # named after the work, not app.log
    assert "results written to" in log.read_text()
    assert (results / "echo" / "smoke" / "echo.csv").exists()

    proc = run_cli(
        [ECHO, "--multirun", "scale=smoke", "value=1,2,3", "tracking.mode=disabled", f"results_dir={results}"], cwd=cwd
    )
    assert proc.returncode == 0, proc.stderr
    (sweep,) = (results / "multirun" / "echo").iterdir()
    jobs = sorted(p.name for p in sweep.iterdir() if p.is_dir())
    assert jobs == ["0", "1", "2"]
    for job, value in zip(jobs, (1, 2, 3)):
        table = (sweep / job / "smoke" / "echo.csv").read_text().splitlines()
        assert table[1] == f"1,{value}", table  # each job's own results, none overwritten
        prov = json.loads((sweep / job / "smoke" / "provenance.json").read_text())
        assert prov["config"]["value"] == value
        assert (sweep / job / "echo.log").exists() and (sweep / job / ".hydra" / "overrides.yaml").exists()
    # the sweep left the single run's results alone, and nothing in the working directory
    assert (results / "echo" / "smoke" / "echo.csv").read_text().splitlines()[1] == "1,3"
    assert not any(cwd.iterdir())
