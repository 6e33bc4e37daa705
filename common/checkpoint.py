"""Atomic checkpoints and exact resume: model and optimizer states, every RNG state and the step.

Checkpoints hold only tensors and plain Python values, so they load with `weights_only=True`.
"""

from __future__ import annotations

import logging
import os
import random
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch

from .results import atomic_path

log = logging.getLogger(__name__)


def rng_state() -> dict[str, Any]:
    """Python, NumPy, torch CPU (and CUDA) generator states as weights_only-loadable values."""
    py_version, py_state, py_gauss = random.getstate()
    np_name, np_keys, np_pos, np_has_gauss, np_gauss = np.random.get_state()
    state = {
        "python": [py_version, list(py_state), py_gauss],
        "numpy": [
            np_name,
            torch.from_numpy(np.asarray(np_keys, dtype=np.int64)),
            int(np_pos),
            int(np_has_gauss),
            float(np_gauss),
        ],
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: Mapping[str, Any]) -> None:
    py_version, py_state, py_gauss = state["python"]
    random.setstate((py_version, tuple(py_state), py_gauss))
    name, keys, pos, has_gauss, gauss = state["numpy"]
    np.random.set_state((name, keys.numpy().astype(np.uint32), pos, has_gauss, gauss))
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def save_checkpoint(path: str | os.PathLike, state: Mapping[str, Any]) -> Path:
    """Write `state` to `path` atomically: a crash leaves the previous checkpoint, never a torn one."""
    path = Path(path)
    with atomic_path(path) as tmp:
        torch.save(dict(state), tmp)
    return path


def load_checkpoint(path: str | os.PathLike, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    return torch.load(Path(path), map_location=map_location, weights_only=True)


def training_state(
    step: int,
    modules: Mapping[str, torch.nn.Module] = {},
    optimizers: Mapping[str, Any] = {},
    extra: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """Everything exact resume needs: state dicts, RNG states and the step (plus `extra` values)."""
    return {
        "step": int(step),
        "modules": {k: m.state_dict() for k, m in modules.items()},
        "optimizers": {k: o.state_dict() for k, o in optimizers.items()},
        "rng": rng_state(),
        "extra": dict(extra or {}),
    }


def restore_training_state(
    state: Mapping[str, Any], modules: Mapping[str, torch.nn.Module] = {}, optimizers: Mapping[str, Any] = {}
) -> int:
    """Load what `training_state` saved into the live objects; returns the step to continue from."""
    for k, m in modules.items():
        m.load_state_dict(state["modules"][k])
    for k, o in optimizers.items():
        o.load_state_dict(state["optimizers"][k])
    set_rng_state(state["rng"])
    return int(state["step"])


def latest_checkpoint(directory: str | os.PathLike, pattern: str = "*.pt") -> Path | None:
    """The most recently written checkpoint in `directory`, or None."""
    d = Path(directory)
    found = sorted(d.glob(pattern), key=lambda p: p.stat().st_mtime) if d.is_dir() else []
    return found[-1] if found else None


def loadable_steps(directory: str | os.PathLike, pattern: str = "*.pt") -> dict[int, Path]:
    """The training states in `directory` that load (a torn or foreign file is skipped), by step."""
    d = Path(directory)
    found: dict[int, Path] = {}
    for path in sorted(d.glob(pattern), key=lambda p: p.stat().st_mtime) if d.is_dir() else []:
        try:  # mmap: reads the archive's index and metadata, not every tensor
            state = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
            step = int(state["step"])
        except Exception as exc:  # noqa: BLE001 - torn, truncated or not a training state: not a resume point
            log.warning("skipping %s as a resume point: %s", path, str(exc).splitlines()[0] if str(exc) else exc)
            continue
        found[step] = path
    return found


def agreed_resume(directory: str | os.PathLike, pattern: str = "*.pt", group=None) -> tuple[int, Path | None]:
    """The step every rank resumes from, and this rank's checkpoint of it (None: start from step 0).

    Each rank lists the steps of its complete, loadable checkpoints; all resume from the newest step that every
    rank has, so a rank that died between two ranks' saves, or a torn file, makes all fall back together.
    Every rank of `group` must call this (one all-gather); without a process group it is this rank's newest.
    """
    import torch.distributed as dist

    mine = loadable_steps(directory, pattern)
    if dist.is_available() and dist.is_initialized():
        everyone: list = [None] * dist.get_world_size(group)
        dist.all_gather_object(everyone, sorted(mine), group=group)
        common = set.intersection(*(set(s) for s in everyone))
    else:
        common = set(mine)
    if not common:
        return 0, None
    step = max(common)
    return step, mine[step]
