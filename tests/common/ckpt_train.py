"""A small training run for the resume test: dropout, shuffled data and Adam, so every RNG state matters.

python -m tests.common.ckpt_train OUT_DIR STEPS EVERY [KILL_AT]  (KILL_AT: SIGKILL itself after that step)
"""

import os
import signal
import sys
from pathlib import Path

import numpy as np
import torch

from common.checkpoint import (
    latest_checkpoint,
    load_checkpoint,
    restore_training_state,
    save_checkpoint,
    training_state,
)


def main(out: Path, steps: int, every: int, kill_at: int | None) -> None:
    torch.manual_seed(0)
    np.random.seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(8, 16), torch.nn.Dropout(0.3), torch.nn.ReLU(), torch.nn.Linear(16, 1))
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    data = torch.randn(64, 8)
    target = data.sum(dim=1, keepdim=True)
    step = 0
    ckpt = latest_checkpoint(out)
    if ckpt is not None:
        step = restore_training_state(load_checkpoint(ckpt), {"model": model}, {"opt": opt})
    while step < steps:
        idx = torch.randperm(64)[:16]
        noise = torch.from_numpy(np.random.normal(size=(16, 1))).float() * 0.01
        loss = ((model(data[idx]) - target[idx] - noise) ** 2).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
        step += 1
        if step % every == 0:
            save_checkpoint(out / f"step{step:05d}.pt", training_state(step, {"model": model}, {"opt": opt}))
        if kill_at is not None and step == kill_at:
            os.kill(os.getpid(), signal.SIGKILL)
    torch.save({k: v.clone() for k, v in model.state_dict().items()}, out / "final.weights")


if __name__ == "__main__":
    a = sys.argv[1:]
    main(Path(a[0]), int(a[1]), int(a[2]), int(a[3]) if len(a) > 3 else None)
