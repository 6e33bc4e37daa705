"""`reproduce/conf/amp/`: the paper's setups and modes, planning your own cluster, and the real-run validation.

AMP's scale files are `@package _global_` like every work's: they set `scale.name`, `big_cluster` and
`validate`.
"""

from dataclasses import dataclass, field
from typing import Any

from omegaconf import MISSING

from .base import BaseConfig


@dataclass
class TinyGPTConfig:
    vocab: int = 64
    hidden: int = 128
    heads: int = 4
    seq: int = 64
    layers: int = 4
    global_batch: int = 8


@dataclass
class ValidateConfig:
    enabled: bool = False
    model: TinyGPTConfig = field(default_factory=TinyGPTConfig)
    strategies: list[dict[str, Any]] = field(default_factory=list)  # {tp, dp, pp, mbs[, partition]} each
    steps: int = 20
    warmup: int = 3
    max_processes: int = 2
    timeout_s: int = 300


@dataclass
class AmpScale:
    name: str = MISSING


@dataclass
class PlanConfig:
    setup: str | None = None  # a setup name (amp/data/setups) or a YAML file
    mode: str = "improved"
    profile: str | None = None  # JSON {gpu: {tp: [forward s per layer]}}
    # {tp:, dp:, pp:, mbs:[, partition:, placement:]}; Any, since OmegaConf 2.3 cannot merge a dict onto a None
    # typed `dict | None`
    strategy: Any = None


@dataclass
class AmpConfig(BaseConfig):
    scale: AmpScale = field(default_factory=AmpScale)
    setups: list[str] = field(default_factory=lambda: ["homogeneous", "het_cluster", "het_model"])
    modes: list[str] = field(default_factory=lambda: ["released", "improved"])
    top: int = 5
    top_k: int = 10  # AMP's picks priced as the best measured of its top k (the released scripts ran 10)
    fit_fixed_cost: bool = True
    big_cluster: bool = False
    plan: PlanConfig = field(default_factory=PlanConfig)
    validate: ValidateConfig = field(default_factory=ValidateConfig)
