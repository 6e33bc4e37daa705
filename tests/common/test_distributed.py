"""Process groups from torchrun / SLURM / explicit variables; dead ranks fail the job within the timeout."""

import os
import time

import pytest
import torch
import torch.distributed as dist

from common.distributed import (
    ProcessFailed,
    detect_env,
    env_from_slurm,
    expand_nodelist,
    init_process_group,
    run_processes,
)
from common.errors import UserError


def test_expand_nodelist():
    assert expand_nodelist("node1") == ["node1"]
    assert expand_nodelist("gpu[01-03,7],cpu5") == ["gpu01", "gpu02", "gpu03", "gpu7", "cpu5"]
    assert expand_nodelist("a[9-11]-ib") == ["a9-ib", "a10-ib", "a11-ib"]


def test_env_from_slurm_variables():
    env = env_from_slurm(
        {
            "SLURM_PROCID": "5",
            "SLURM_NTASKS": "8",
            "SLURM_LOCALID": "1",
            "SLURM_JOB_NODELIST": "gpu[12-15]",
            "SLURM_JOB_ID": "4242",
        }
    )
    assert (env.rank, env.world_size, env.local_rank, env.master_addr, env.source) == (5, 8, 1, "gpu12", "slurm")
    assert env.master_port == 20000 + 4242


def test_torchrun_variables_win_over_slurm():
    env = detect_env(
        {
            "RANK": "1",
            "WORLD_SIZE": "2",
            "LOCAL_RANK": "1",
            "MASTER_ADDR": "h",
            "MASTER_PORT": "123",
            "SLURM_PROCID": "0",
            "SLURM_NTASKS": "1",
        }
    )
    assert (env.rank, env.world_size, env.master_addr, env.master_port, env.source) == (1, 2, "h", 123, "torchrun")
    assert detect_env({}).source == "single"


def test_bad_explicit_arguments():
    with pytest.raises(UserError, match="outside world size"):
        init_process_group(rank=3, world_size=2)
    with pytest.raises(UserError, match="both rank and world_size"):
        init_process_group(rank=0)


def _all_reduce_rank(rank, world_size):
    t = torch.tensor([float(rank + 1)])
    dist.all_reduce(t)
    return t.item(), dist.get_backend()


@pytest.mark.timeout(120)
def test_run_processes_returns_each_rank_result():
    assert run_processes(_all_reduce_rank, 2, timeout_s=60) == [(3.0, "gloo")] * 2


def _slurm_group(rank, world_size, port):
    """Build the group from SLURM variables alone, as srun would set them."""
    env = {
        "SLURM_PROCID": str(rank),
        "SLURM_NTASKS": str(world_size),
        "SLURM_LOCALID": str(rank),
        "SLURM_JOB_NODELIST": "localhost",
        "MASTER_PORT": str(port),
    }
    for k in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR"):
        os.environ.pop(k, None)
    os.environ.update(env)
    info = init_process_group(timeout_s=30)
    t = torch.tensor([float(rank + 1)])
    dist.all_reduce(t)
    dist.destroy_process_group()
    return info.source, info.rank, t.item()


@pytest.mark.timeout(120)
def test_group_from_slurm_variables():
    from common.distributed import free_port

    port = free_port()
    out = run_processes(_slurm_group, 2, args=(port,), init_group=False, timeout_s=60)
    assert out == [("slurm", 0, 3.0), ("slurm", 1, 3.0)]


def _raise_on_rank1(rank, world_size):
    if rank == 1:
        raise ValueError("bad value on purpose")
    return rank


@pytest.mark.timeout(120)
def test_error_on_a_rank_is_reraised_with_its_rank():
    with pytest.raises(ValueError, match="bad value on purpose") as info:
        run_processes(_raise_on_rank1, 2, timeout_s=60)
    assert any("raised on rank 1 of 2" in n for n in getattr(info.value, "__notes__", []))


def _early_exit(rank, world_size):
    if rank == 1:
        return "left early"
    start = time.monotonic()
    try:
        t = torch.ones(1)
        for _ in range(3):  # the peer is gone: the collective must fail, not hang
            dist.all_reduce(t)
            dist.barrier()
    except Exception as exc:  # noqa: BLE001
        return ("failed", time.monotonic() - start, type(exc).__name__)
    return ("completed", time.monotonic() - start, None)


@pytest.mark.timeout(120)
def test_rank_that_exits_early_fails_the_others_within_timeout():
    group_timeout = 5.0
    start = time.monotonic()
    r0, r1 = run_processes(_early_exit, 2, timeout_s=60, group_timeout_s=group_timeout)
    assert r1 == "left early"
    status, elapsed, _ = r0
    assert status == "failed"
    assert elapsed <= group_timeout + 5
    assert time.monotonic() - start < 45


def _hang(rank, world_size):
    time.sleep(600)


@pytest.mark.timeout(120)
def test_job_past_its_timeout_is_killed_and_reported():
    start = time.monotonic()
    with pytest.raises(ProcessFailed, match="killed while still running"):
        run_processes(_hang, 2, timeout_s=3, init_group=False)
    assert time.monotonic() - start < 20


def _missing_peer(rank, world_size, port):
    return init_process_group(rank=0, world_size=2, master_port=port, timeout_s=3)


@pytest.mark.timeout(120)
def test_missing_rank_at_rendezvous_fails_with_clear_message():
    from common.distributed import free_port

    start = time.monotonic()
    with pytest.raises(RuntimeError, match="could not form the process group"):
        run_processes(_missing_peer, 1, args=(free_port(),), init_group=False, timeout_s=60)
    assert time.monotonic() - start < 30
