import os
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
os.environ.setdefault("WANDB_MODE", "offline")
os.environ.setdefault("WANDB_SILENT", "true")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")


@pytest.fixture
def repo_root() -> Path:
    return ROOT


def run_cli(args, cwd=None, timeout=300, env=None):
    """Run `python ARGS` in a subprocess; returns CompletedProcess with text output."""
    import subprocess

    full_env = {**os.environ, **(env or {})}
    return subprocess.run(
        [sys.executable, *args], cwd=cwd or ROOT, capture_output=True, text=True, timeout=timeout, env=full_env
    )


def compose_work(work: str, overrides: list[str]):
    """A work's config composed as the app composes it (its schema as `repro_base`), without running anything."""
    from hydra import compose, initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra

    from reproduce import app

    app.register_schema(work)
    GlobalHydra.instance().clear()
    try:
        with initialize_config_dir(config_dir=str(app.CONF_ROOT / work), version_base="1.3"):
            return compose(config_name="config", overrides=overrides)
    finally:
        GlobalHydra.instance().clear()


def pytest_configure(config):
    config.addinivalue_line("markers", "slurm: needs a real SLURM (started by scripts/slurm_local.sh)")


@pytest.fixture
def one_torch_thread():
    """Small tensors: one torch thread avoids OpenMP spin-waiting on a shared 2-core machine; restored after."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
