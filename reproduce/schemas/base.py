"""The keys every reproduction shares (`repro_base`): seed, dry run, results folder, tracking, launcher, SLURM.

A work's schema subclasses `BaseConfig` and adds its own keys; Hydra merges the work's YAML files onto it,
so a key the schema lacks or a value of the wrong type fails when the config is composed.
"""

from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any

from omegaconf import MISSING


class TrackingMode(StrEnum):
    offline = "offline"  # W&B on disk, `wandb sync` later
    online = "online"
    disabled = "disabled"  # the console only


class Launcher(StrEnum):
    local = "local"
    slurm = "slurm"  # the same command submitted through Hydra's submitit launcher


@dataclass
class TrackingConfig:
    mode: TrackingMode = TrackingMode.offline
    project: str = "mlsys-repro"
    dir: str = "${results_dir}/wandb"


@dataclass
class SlurmConfig:
    """Settings of `launcher=slurm` (turned into `hydra.launcher.*` of the submitit SLURM launcher)."""

    partition: str | None = None
    nodes: int = 1
    tasks_per_node: int = 1
    gpus_per_node: int = 0
    cpus_per_task: int | None = None
    mem_gb: int | None = None
    timeout_min: int = 60
    setup: list[str] = field(default_factory=list)  # shell lines run before the job (module load ...)


@dataclass
class ScaleName:
    """A scale file that only names itself (the works whose scale files are `@package _global_`)."""

    name: str = MISSING


@dataclass
class BaseConfig:
    seed: int = 0
    dry_run: bool = False  # print the resolved config and the plan; nothing is trained or written
    results_dir: str = "results"  # relative paths start where the command was run
    # null: a folder per job under a --multirun sweep, results/<work>/<scale>/ otherwise (launcher=slurm
    # without a sweep sets false, so its results land where a local run's would)
    per_job_results: bool | None = None
    tracking: TrackingConfig = field(default_factory=TrackingConfig)
    launcher: Launcher = Launcher.local
    slurm: SlurmConfig = field(default_factory=SlurmConfig)
    scale: Any = field(default_factory=ScaleName)
