"""The shared shape of every `python -m reproduce.<work>`: a Hydra app with `scale=smoke|mini|paper`.

`main(work, run)` checks the command line first (unknown scale or key, bad value: one line on stderr,
exit 2), then hands Hydra the command line (so `--multirun hydra/launcher=submitit_slurm` submits to SLURM),
seeds every generator, opens the tracker and a `ResultWriter` for `results/<work>/<scale>/`, and calls
`run(ctx)`. A `UserError` raised by the work is one line and exit 2; results are committed only when `run`
returns, so a failed run leaves the previous results in place.
"""

from __future__ import annotations

import logging
import random
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch

from common.distributed import DistEnv, detect_env
from common.errors import EXIT_USER_ERROR, UserError, one_line
from common.results import ResultWriter
from common.tracking import Tracker

CONF_ROOT = Path(__file__).parent / "conf"
SCALES = ("smoke", "mini", "paper")

log = logging.getLogger("reproduce")

BASE_CONFIG = {
    "seed": 0,
    "dry_run": False,
    "results_dir": "results",
    "tracking": {"mode": "offline", "project": "mlsys-repro", "dir": "${results_dir}/wandb"},
    # launcher=slurm submits this same command to SLURM through Hydra's submitit launcher
    "launcher": "local",
    "slurm": {"partition": None, "nodes": 1, "tasks_per_node": 1, "gpus_per_node": 0, "cpus_per_task": None,
              "mem_gb": None, "timeout_min": 60, "setup": []},
}
LAUNCHERS = ("local", "slurm")


def _register_base() -> None:
    from hydra.core.config_store import ConfigStore

    ConfigStore.instance().store(name="repro_base", node=BASE_CONFIG)


@dataclass
class RunContext:
    """What a work's `run` receives."""

    work: str
    scale: str
    cfg: Any  # the resolved omegaconf DictConfig
    out: ResultWriter
    tracker: Tracker
    env: DistEnv  # this process's place in a multi-process job (torchrun / SLURM), rank 0 of 1 otherwise
    started: float = field(default_factory=time.time)

    @property
    def dry_run(self) -> bool:
        return bool(self.cfg.dry_run)


def fail(message: str) -> None:
    print(f"error: {' '.join(message.split())}", file=sys.stderr)
    sys.exit(EXIT_USER_ERROR)


def _user_overrides(argv: list[str]) -> list[str]:
    return [a for a in argv if not a.startswith("-") and not a.lstrip("+~").startswith("hydra")]


def check_command_line(work: str, argv: list[str], conf_dir: Path) -> Any:
    """Compose the config once without running anything; any problem is one line and exit 2."""
    from hydra import compose, initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra
    from omegaconf import OmegaConf

    overrides = _user_overrides(argv)
    for o in overrides:
        if o.startswith("scale="):
            value = o.split("=", 1)[1]
            if value not in SCALES:
                fail(f"unknown scale {value!r} for {work}; choose one of {', '.join(SCALES)}")
    try:
        GlobalHydra.instance().clear()
        with initialize_config_dir(config_dir=str(conf_dir), version_base="1.3"):
            cfg = compose(config_name="config", overrides=overrides)
            OmegaConf.resolve(cfg)
            default = compose(config_name="config", overrides=[o for o in overrides if o.startswith("scale=")])
    except Exception as exc:  # noqa: BLE001 - Hydra raises many types; each is a bad command line
        fail(f"bad command line for reproduce.{work}: {one_line(exc)}")
    finally:
        GlobalHydra.instance().clear()
    _check_types(work, overrides, default, cfg)
    if cfg.launcher not in LAUNCHERS:
        fail(f"unknown launcher {cfg.launcher!r}; choose one of {', '.join(LAUNCHERS)}")
    return cfg


def _check_types(work: str, overrides: list[str], default: Any, cfg: Any) -> None:
    """A value given on the command line keeps the type of the config's default (an int stays a number)."""
    from omegaconf import OmegaConf

    for o in overrides:
        if "=" not in o or o.startswith(("+", "~")):
            continue
        key = o.split("=", 1)[0]
        old, new = OmegaConf.select(default, key), OmegaConf.select(cfg, key)
        if old is None or new is None or isinstance(old, str):
            continue
        ok = isinstance(new, type(old)) or (isinstance(old, float) and isinstance(new, int))
        if isinstance(old, bool) != isinstance(new, bool):
            ok = False
        if not ok:
            fail(f"bad command line for reproduce.{work}: {key} must be {type(old).__name__}, got {new!r}")


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def execute(work: str, cfg: Any, run: Callable[[RunContext], None]) -> Path | None:
    """Run one work on a composed config (what the Hydra task does; callable directly too)."""
    from omegaconf import OmegaConf

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    scale = str(cfg.scale.name)
    resolved = OmegaConf.to_container(cfg, resolve=True)
    seed_everything(int(cfg.seed))
    env = detect_env()
    root = _original_cwd()
    out_dir = root / Path(cfg.results_dir) / work / scale
    if cfg.dry_run:
        print(f"# dry run of reproduce.{work} at scale={scale}: nothing is trained or written")
        print(OmegaConf.to_yaml(cfg, resolve=True))
        tracker = Tracker(mode="disabled")
    else:
        tracker = Tracker(project=cfg.tracking.project, group=f"{work}/{scale}", name=f"{work}-{scale}",
                          config=resolved, mode=cfg.tracking.mode, dir=root / cfg.tracking.dir,
                          tags=[work, scale], rank=env.rank)
    with ResultWriter(out_dir, tracker=tracker) as out:
        ctx = RunContext(work=work, scale=scale, cfg=cfg, out=out, tracker=tracker, env=env)
        try:
            run(ctx)
            if cfg.dry_run or env.rank != 0:
                return None
            path = out.commit(resolved, title=f"reproduce.{work} at scale={scale}", work=work, scale=scale)
            log.info("results written to %s", path)
            return path
        finally:
            tracker.finish()


def _original_cwd() -> Path:
    """Where the command was started (a SLURM job may run elsewhere); relative result paths start there."""
    try:
        from hydra.core.hydra_config import HydraConfig

        return Path(HydraConfig.get().runtime.cwd)
    except Exception:  # noqa: BLE001 - not inside a Hydra app
        return Path.cwd()


def slurm_argv(cfg: Any, argv: list[str]) -> list[str]:
    """The Hydra command line that submits this run through the submitit SLURM launcher."""
    import importlib.util

    if importlib.util.find_spec("hydra_plugins.hydra_submitit_launcher") is None:
        fail("launcher=slurm needs the slurm extra: pip install -e '.[slurm]'")
    s = cfg.slurm
    settings = {"nodes": s.nodes, "tasks_per_node": s.tasks_per_node, "timeout_min": s.timeout_min,
                "partition": s.partition, "gpus_per_node": s.gpus_per_node or None,
                "cpus_per_task": s.cpus_per_task, "mem_gb": s.mem_gb}
    extra = [f"hydra.launcher.{k}={v}" for k, v in settings.items() if v is not None]
    if s.setup:
        extra.append("hydra.launcher.setup=[" + ",".join(f"'{c}'" for c in s.setup) + "]")
    rest = [a for a in argv if a not in ("-m", "--multirun")]
    return ["--multirun", "hydra/launcher=submitit_slurm", *extra, *rest]


def main(work: str, run: Callable[[RunContext], None], conf_dir: Path | None = None) -> None:
    """Entry point of `python -m reproduce.<work>`."""
    import hydra

    conf_dir = Path(conf_dir or CONF_ROOT / work).resolve()
    _register_base()
    cfg = check_command_line(work, sys.argv[1:], conf_dir)
    if cfg.launcher == "slurm":
        sys.argv = [sys.argv[0], *slurm_argv(cfg, sys.argv[1:])]

    @hydra.main(version_base="1.3", config_path=str(conf_dir), config_name="config")
    def _task(cfg) -> None:
        try:
            execute(work, cfg, run)
        except UserError as exc:
            fail(one_line(exc))

    _task()
