"""`python -m reproduce` and the per-work Hydra apps: bad input is one line on stderr and exit code 2."""

import pytest

from tests.conftest import run_cli

ECHO = "tests/fixtures/echo_work.py"


@pytest.mark.timeout(300)
@pytest.mark.parametrize(
    "args, message",
    [
        (["-m", "reproduce", "nosuchwork"], "unknown work 'nosuchwork'"),
        ([ECHO, "scale=huge"], "unknown scale 'huge'"),
        ([ECHO, "nokey=1"], "Could not override 'nokey'"),
        ([ECHO, "value=abc"], "value must be int, got 'abc'"),
        ([ECHO, "value=-1", "tracking.mode=disabled"], "value must be >= 0, got -1"),
        ([ECHO, "tracking.mode=sometimes"], "unknown tracking mode 'sometimes'"),
    ],
)
def test_bad_input_is_one_line_and_exit_2(args, message, tmp_path):
    proc = run_cli([*args, f"results_dir={tmp_path}"] if args[0] == ECHO else args)
    assert proc.returncode == 2, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1, proc.stderr
    assert lines[0].startswith("error: ") and message in lines[0]
    assert "Traceback" not in proc.stdout + proc.stderr


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
