"""Against a real one-node SLURM (scripts/slurm_local.sh installs and starts it where it can; otherwise the
tests are skipped with the reason): a reproduction submitted through Hydra's submitit launcher, and a 2-task
job whose processes build a gloo group from the SLURM variables and all-reduce."""

import os
import shutil
import subprocess

import pandas as pd
import pytest

from tests.conftest import ROOT, run_cli

pytestmark = pytest.mark.slurm


def _unavailable(reason: str):
    """Skip with the reason; in CI (MLSYS_REQUIRE_SLURM=1, set by .ci/run) a missing SLURM is a failure."""
    if os.environ.get("MLSYS_REQUIRE_SLURM") == "1":
        pytest.fail(f"SLURM is required here but {reason}")
    pytest.skip(reason)


@pytest.fixture(scope="module")
def slurm_conf():
    script = ROOT / "scripts" / "slurm_local.sh"
    try:
        proc = subprocess.run(["bash", str(script), "start"], capture_output=True, text=True, timeout=600)
    except (OSError, subprocess.TimeoutExpired) as exc:
        _unavailable(f"SLURM could not be started: {exc}")
    if proc.returncode != 0:
        _unavailable(f"SLURM could not be started: {' '.join((proc.stderr or proc.stdout).split()[-30:])}")
    conf = proc.stdout.strip().splitlines()[-1].split("=", 1)[1]
    old = os.environ.get("SLURM_CONF")
    os.environ["SLURM_CONF"] = conf
    yield conf
    if old is None:
        os.environ.pop("SLURM_CONF", None)
    else:
        os.environ["SLURM_CONF"] = old


@pytest.mark.timeout(300)
def test_amp_smoke_submitted_through_the_launcher(slurm_conf, tmp_path):
    proc = run_cli(
        [
            "-m",
            "reproduce.amp",
            "scale=smoke",
            "launcher=slurm",
            "slurm.timeout_min=5",
            f"results_dir={tmp_path}",
            f"hydra.sweep.dir={tmp_path}/multirun",
        ],
        timeout=280,
    )
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    assert "Submitit 'slurm' sweep" in proc.stdout + proc.stderr
    out = tmp_path / "amp" / "smoke"
    ranking = pd.read_csv(out / "ranking.csv")
    assert len(ranking) == 3 and ranking["order_equal"].all()
    prov = (out / "provenance.json").read_text()
    assert '"launcher": "slurm"' in prov
    (log,) = (tmp_path / "multirun").rglob("*_0_log.out")
    assert "results written to" in log.read_text() + log.with_name(log.name.replace(".out", ".err")).read_text()


@pytest.mark.timeout(300)
def test_two_task_job_through_the_launcher_all_reduces(slurm_conf, tmp_path):
    proc = run_cli(
        [
            "tests/fixtures/echo_work.py",
            "scale=smoke",
            "launcher=slurm",
            "slurm.timeout_min=5",
            "slurm.tasks_per_node=2",
            "all_reduce=true",
            f"results_dir={tmp_path}",
            f"hydra.sweep.dir={tmp_path}/multirun",
        ],
        timeout=280,
    )
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    assert "Submitit 'slurm' sweep" in proc.stdout + proc.stderr
    out = tmp_path / "echo" / "smoke"
    table = pd.read_csv(out / "echo.csv")
    # two SLURM tasks formed one gloo group from SLURM_PROCID/SLURM_NTASKS and summed 1 + 2
    assert table["world_size"].tolist() == [2, 2] and table["source"].tolist() == ["slurm", "slurm"]
    assert table["all_reduced"].tolist() == [3.0, 3.0]
    assert (out / "provenance.json").exists() and (out / "tables.md").exists()
    assert list((tmp_path / "multirun").rglob("*_log.out")), "submitit left no job logs"


ALL_REDUCE = (
    "import torch, torch.distributed as dist\n"
    "from common.distributed import init_process_group\n"
    "env = init_process_group(backend='gloo', timeout_s=60)\n"
    "t = torch.tensor([float(env.rank + 1)])\n"
    "dist.all_reduce(t)\n"
    "print(f'rank {env.rank}/{env.world_size} from {env.source}: {t.item():.0f}', flush=True)\n"
    "dist.destroy_process_group()\n"
)


@pytest.mark.timeout(300)
def test_two_task_job_all_reduces_over_a_group_from_slurm_variables(slurm_conf, tmp_path):
    import sys

    env = {k: v for k, v in os.environ.items() if not k.startswith(("RANK", "WORLD_SIZE", "MASTER_", "LOCAL_RANK"))}
    proc = subprocess.run(
        [shutil.which("srun") or "srun", "--ntasks=2", "--time=5", sys.executable, "-c", ALL_REDUCE],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=240,
        env=env,
    )
    assert proc.returncode == 0, proc.stderr
    assert sorted(proc.stdout.split("\n")[:2]) == ["rank 0/2 from slurm: 3", "rank 1/2 from slurm: 3"]
