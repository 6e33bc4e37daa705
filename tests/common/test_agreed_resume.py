"""Multi-rank resume: ranks agree on one step; a rank killed between saves or a torn file makes all fall back."""

import os
from pathlib import Path

import pytest
import torch
import torch.distributed as dist

from common.checkpoint import (
    agreed_resume,
    load_checkpoint,
    loadable_steps,
    restore_training_state,
    save_checkpoint,
    training_state,
)
from common.distributed import ProcessFailed, run_processes
from common.parallel import all_reduce_gradients


def _train(rank, world, out: str, steps: int, every: int, die_at: int | None):
    """Data-parallel training of a tiny model; checkpoints every `every` steps, rank 0 first. Rank 1 dies
    (os._exit) at step `die_at`, after rank 0 saved it and before it saves it itself."""
    out = Path(out)
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.Tanh(), torch.nn.Linear(8, 1))
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    start, path = agreed_resume(out, f"rank{rank}-*.pt")
    if path is not None:
        assert restore_training_state(load_checkpoint(path), {"model": model}, {"opt": opt}) == start
    torch.manual_seed(1000 + start * world + rank)  # this rank's data stream, a function of the step
    for step in range(start, steps):
        x = torch.randn(8, 4)
        loss = ((model(x) - x.sum(1, keepdim=True)) ** 2).mean()
        opt.zero_grad()
        loss.backward()
        all_reduce_gradients(model.parameters(), dist.group.WORLD)
        opt.step()
        torch.manual_seed(1000 + (step + 1) * world + rank)
        if (step + 1) % every == 0:
            state = training_state(step + 1, {"model": model}, {"opt": opt})
            if rank == 0:
                save_checkpoint(out / f"rank0-step{step + 1:04d}.pt", state)
            dist.barrier()
            if rank == 1:
                if step + 1 == die_at:
                    os._exit(3)
                save_checkpoint(out / f"rank1-step{step + 1:04d}.pt", state)
    return start, {k: v.clone() for k, v in model.state_dict().items()}


@pytest.mark.timeout(150)
def test_rank_killed_between_saves_resumes_all_ranks_at_one_step(tmp_path):
    with pytest.raises((ProcessFailed, RuntimeError)):  # rank 1 gone; rank 0 may see the reset first
        run_processes(_train, 2, args=(str(tmp_path), 6, 2, 4), timeout_s=70, grace_s=3)
    assert sorted(loadable_steps(tmp_path, "rank0-*.pt")) == [2, 4]  # rank 0 saved step 4, rank 1 did not
    assert sorted(loadable_steps(tmp_path, "rank1-*.pt")) == [2]
    got = run_processes(_train, 2, args=(str(tmp_path), 6, 2, None), timeout_s=70)
    assert [start for start, _ in got] == [2, 2]  # both from step 2, not rank 0 from its newest (4)
    (_, a), (_, b) = got
    for k in a:  # data-parallel replicas that resumed at one step stay identical
        assert torch.equal(a[k], b[k]), k
    assert sorted(loadable_steps(tmp_path, "rank1-*.pt")) == [2, 4, 6]


def _agree(rank, world, out: str):
    return agreed_resume(Path(out) / f"r{rank}")


@pytest.mark.timeout(60)
def test_torn_file_on_one_rank_makes_all_fall_back(tmp_path):
    for r in range(2):
        (tmp_path / f"r{r}").mkdir()
        for step in (2, 4, 6):
            save_checkpoint(tmp_path / f"r{r}" / f"step{step}.pt", {"step": step, "w": torch.ones(64)})
    newest = tmp_path / "r1" / "step6.pt"
    newest.write_bytes(newest.read_bytes()[:-200])  # torn: a write cut short
    (tmp_path / "r0" / "notes.pt").write_text("not a checkpoint")
    got = run_processes(_agree, 2, args=(str(tmp_path),), timeout_s=50)
    assert [step for step, _ in got] == [4, 4]
    assert [p.name for _, p in got] == ["step4.pt", "step4.pt"]
    # on one process, its own newest loadable one; an empty directory starts at 0
    assert agreed_resume(tmp_path / "r1")[0] == 4
    assert agreed_resume(tmp_path / "nothing") == (0, None)
