"""`reproduce/conf/mpcformer/`: the base config is mini; scale files (`@package _global_`) hold what differs.

Approximation names stay strings here; `mpcformer.approximations.Approximation` parses and checks each once.
Defaults are the mini values (drafted by `python -m reproduce.schemas.draft mpcformer`)."""

from dataclasses import dataclass, field
from typing import Any

from .base import BaseConfig


@dataclass
class ScaleConfig:
    name: str = "mini"


@dataclass
class ModelConfig:
    name: str = "minilm"
    num_labels: int = 2
    layers: int | None = None


@dataclass
class DataConfig:
    name: str = "rotten_tomatoes"
    path: str | None = None
    corpus: str = "full"
    dev_frac: float = 0.2
    test_frac: float = 0.2
    max_length: int = 48
    train_examples: int | None = None
    dev_examples: int | None = None
    test_examples: int | None = None


@dataclass
class TrainConfig:
    batch_size: int = 16
    teacher_steps: int = 400
    stage1_steps: int = 150
    stage2_steps: int = 50
    teacher_lr: float = 0.0001
    stage1_lr: float = 0.0001
    stage2_lr: float = 5e-05
    baseline_lr: float = 5e-05
    weight_decay: float = 0.01
    warmup_frac: float = 0.1
    temperature: float = 1.0
    label_weight: float = 0.0
    freeze_word_embeddings: bool = True
    checkpoint_every: int = 0
    teacher_cache: bool = True
    teacher_cache_max_gb: float = 8.0
    per_approximation: list[dict[str, Any]] = field(default_factory=list)


@dataclass
class MpcConfig:
    provider: str = "TTP"
    timeout_s: int = 600


@dataclass
class MpcEvalConfig:
    models: list[str] = field(default_factory=lambda: ["gelu+softmax", "quad+2quad", "quad+2relu"])
    examples: int | None = None
    batch_size: int = 16
    length_bucket: int | None = None
    risk_examples: int = 8


@dataclass
class BenchConfig:
    functions: list[str] = field(default_factory=lambda: ["gelu", "quad", "softmax", "2relu", "2quad"])
    models: list[str] = field(default_factory=lambda: ["quad+2quad", "gelu+softmax"])
    activation_layer: int = 1
    providers: list[str] = field(default_factory=lambda: ["TTP"])
    function_lengths: list[int] = field(default_factory=lambda: [64, 128, 256])
    model_lengths: list[int] = field(default_factory=lambda: [32, 64, 128])
    long: bool = False
    long_lengths: list[int] = field(default_factory=lambda: [256, 512])


@dataclass
class MpcformerConfig(BaseConfig):
    scale: ScaleConfig = field(default_factory=ScaleConfig)
    approximations: list[str] = field(
        default_factory=lambda: ["quad+softmax", "gelu+2relu", "quad+2relu", "gelu+2quad", "quad+2quad"]
    )
    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    torch_threads: int | None = 2
    checkpoint_dir: str = "${results_dir}/checkpoints/mpcformer"
    mpc: MpcConfig = field(default_factory=MpcConfig)
    mpc_eval: MpcEvalConfig = field(default_factory=MpcEvalConfig)
    bench: BenchConfig = field(default_factory=BenchConfig)
