"""Atomic checkpoints and exact resume after a real kill."""

import signal

import pytest
import torch

from common.checkpoint import load_checkpoint, save_checkpoint, training_state
from tests.conftest import run_cli


@pytest.mark.timeout(180)
def test_killed_run_resumes_to_the_uninterrupted_state(tmp_path):
    straight, resumed = tmp_path / "straight", tmp_path / "resumed"
    straight.mkdir(), resumed.mkdir()
    assert run_cli(["-m", "tests.common.ckpt_train", str(straight), "30", "10"]).returncode == 0
    killed = run_cli(["-m", "tests.common.ckpt_train", str(resumed), "30", "10", "17"])
    assert killed.returncode == -signal.SIGKILL  # died between the checkpoints of steps 10 and 20
    assert not (resumed / "final.weights").exists()
    assert sorted(p.name for p in resumed.glob("*.pt")) == ["step00010.pt"]
    assert run_cli(["-m", "tests.common.ckpt_train", str(resumed), "30", "10"]).returncode == 0
    a = torch.load(straight / "final.weights", weights_only=True)
    b = torch.load(resumed / "final.weights", weights_only=True)
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), k


def test_checkpoint_loads_with_weights_only_and_keeps_rng(tmp_path):
    model = torch.nn.Linear(3, 2)
    state = training_state(7, {"m": model}, {"o": torch.optim.SGD(model.parameters(), lr=0.1)}, extra={"note": "x"})
    path = save_checkpoint(tmp_path / "c.pt", state)
    loaded = load_checkpoint(path)
    assert loaded["step"] == 7 and loaded["extra"] == {"note": "x"}
    assert torch.equal(loaded["rng"]["torch"], state["rng"]["torch"])
    assert not list(tmp_path.glob(".*tmp"))  # no temporary file left behind


def test_failed_save_keeps_previous_checkpoint(tmp_path):
    path = save_checkpoint(tmp_path / "c.pt", {"step": 1})

    class Unpicklable:
        def __reduce__(self):
            raise RuntimeError("cannot pickle")

    with pytest.raises(RuntimeError):
        save_checkpoint(path, {"step": 2, "bad": Unpicklable()})
    assert load_checkpoint(path)["step"] == 1
    assert [p.name for p in tmp_path.iterdir()] == ["c.pt"]
