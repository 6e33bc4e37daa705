"""`reproduce/conf/mpcformer/`: the method's constants; per scale the model, data, steps and MPC sizes.

Scale files are `@package _global_`.
"""

from dataclasses import dataclass, field

from .base import BaseConfig, ScaleName


@dataclass
class DistillConfig:
    lr: float = 1.0e-4
    weight_decay: float = 0.01
    warmup_frac: float = 0.1
    temperature: float = 1.0


@dataclass
class MpcConfig:
    provider: str = "TTP"  # TTP: two parties + a dealer of triples; TFP: online phase only (timing)
    timeout_s: int = 600


@dataclass
class BenchConfig:
    functions: list[str] = field(default_factory=lambda: ["gelu", "quad", "softmax", "2relu", "2quad"])
    models: list[str] = field(default_factory=lambda: ["quad+2quad", "gelu+softmax"])
    activation_layer: int = 2


@dataclass
class ModelConfig:
    name: str = "minilm"
    num_labels: int = 2


@dataclass
class DataConfig:
    name: str = "rotten_tomatoes"
    max_length: int = 64
    train_examples: int | None = None
    test_examples: int | None = None


@dataclass
class TrainConfig:
    batch_size: int = 16
    freeze_word_embeddings: bool = True
    teacher_steps: int = 120
    baseline_steps: int = 30
    stage1_steps: int = 40
    stage2_steps: int = 30


@dataclass
class MpcEvalConfig:
    approximations: list[str] = field(default_factory=list)
    examples: int = 24
    batch_size: int = 12


@dataclass
class BenchSizesConfig:
    providers: list[str] = field(default_factory=lambda: ["TFP", "TTP"])
    function_lengths: list[int] = field(default_factory=list)
    model_lengths: list[int] = field(default_factory=list)


@dataclass
class MpcformerConfig(BaseConfig):
    scale: ScaleName = field(default_factory=ScaleName)
    distill: DistillConfig = field(default_factory=DistillConfig)
    torch_threads: int | None = None
    checkpoint_dir: str | None = "outputs/mpcformer/checkpoints"
    mpc: MpcConfig = field(default_factory=MpcConfig)
    bench: BenchConfig = field(default_factory=BenchConfig)
    approximations: list[str] = field(default_factory=list)
    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    mpc_eval: MpcEvalConfig = field(default_factory=MpcEvalConfig)
    bench_sizes: BenchSizesConfig = field(default_factory=BenchSizesConfig)
