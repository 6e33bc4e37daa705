"""W&B offline by default: a reproduction's run reads back with its config, per-step metrics and tables."""

import pandas as pd
import pytest

from common.errors import UserError
from common.tracking import Tracker, read_offline_run
from tests.conftest import run_cli


@pytest.mark.timeout(180)
def test_offline_run_reads_back_equal_to_the_csv(tmp_path):
    proc = run_cli(["tests/fixtures/echo_work.py", "scale=smoke", f"results_dir={tmp_path}", "value=4"])
    assert proc.returncode == 0, proc.stderr
    (run_dir,) = (tmp_path / "wandb" / "wandb").glob("offline-run-*")
    run = read_offline_run(run_dir)
    assert run["group"] == "echo/smoke"
    assert run["config"]["value"] == 4 and run["config"]["scale"]["name"] == "smoke"
    assert [(h["loss"], h["step"]) for h in run["history"] if "loss" in h] == [(1.0, 0)]
    csv = pd.read_csv(tmp_path / "echo" / "smoke" / "echo.csv")
    pd.testing.assert_frame_equal(run["tables"]["echo"], csv, check_dtype=False)


def test_disabled_tracker_writes_nothing(tmp_path):
    t = Tracker(mode="disabled", dir=tmp_path)
    t.log({"x": 1.0}, step=0)
    t.finish()
    assert not any(tmp_path.iterdir())


def test_unknown_mode_is_a_user_error():
    with pytest.raises(UserError, match="unknown tracking mode"):
        Tracker(mode="loud")


def test_table_with_mixed_column_types_is_logged(tmp_path):
    t = Tracker(mode="offline", dir=tmp_path, group="t/smoke")
    t.log_table("mixed", pd.DataFrame({"link": ["loopback", 1.0, 0.1], "x": [1, 2, 3]}))
    run_dir = t.run_dir
    t.finish()
    table = read_offline_run(run_dir)["tables"]["mixed"]
    assert table["link"].tolist() == ["loopback", "1.0", "0.1"] and table["x"].tolist() == [1, 2, 3]


def test_steps_logged_after_tables_are_kept(tmp_path):
    t = Tracker(mode="offline", dir=tmp_path, group="t/smoke")
    for i in range(3):
        t.log_table(f"t{i}", pd.DataFrame({"x": [i]}))
    for step in range(3):  # explicit steps smaller than the number of earlier log calls
        t.log({"loss": float(step)}, step=step)
    run_dir = t.run_dir
    t.finish()
    history = read_offline_run(run_dir)["history"]
    assert [(h["loss"], h["step"]) for h in history if "loss" in h] == [(0.0, 0), (1.0, 1), (2.0, 2)]


EXIT_RIGHT_AFTER_FINISH = """
import os, sys
from common.tracking import Tracker
t = Tracker(mode="offline", dir=sys.argv[1], group="t/smoke")
for step in range(5):
    t.log({"loss": float(step)}, step=step)
print(t.run_dir, flush=True)
t.finish()
os._exit(0)  # no atexit hooks (as in a multiprocessing child or a killed job): finish() alone must suffice
"""


@pytest.mark.timeout(180)
def test_metrics_survive_a_process_that_exits_right_after_finish(tmp_path):
    proc = run_cli(["-c", EXIT_RIGHT_AFTER_FINISH, str(tmp_path)], timeout=170)
    assert proc.returncode == 0, proc.stderr
    run_dir = proc.stdout.strip().splitlines()[-1]
    history = read_offline_run(run_dir)["history"]
    assert [(h["loss"], h["step"]) for h in history if "loss" in h] == [(float(s), s) for s in range(5)]
