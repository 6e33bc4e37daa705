"""`reproduce/conf/dcvae/`: the method's constants; per scale (and `+preset=`) data, model sizes and schedule.

Scale and preset files are `@package _global_`. `data`, `model` and `train` are passed whole to
`vaegan_contrastive`'s DataConfig, ModelConfig and TrainConfig, so their keys and defaults follow those.
"""

from dataclasses import dataclass, field

from .base import BaseConfig, ScaleName


@dataclass
class DataConfig:
    name: str = "mnist5k"
    root: str | None = None
    resolution: int = 32
    test_size: int = 1000
    subset: int | None = None


@dataclass
class ModelConfig:
    spectral_norm_encoder: bool = True
    encoder_pool: str = "sum"
    latent_dim: int = 128
    enc_ch: int = 128
    dec_ch: int = 256
    disc_ch: int = 128
    cont_dim: int = 16


@dataclass
class TrainConfig:
    lr: float = 2.0e-4
    betas: list[float] = field(default_factory=lambda: [0.0, 0.9])
    kl_weight: float = 1.0e-6
    temperature: float = 0.07
    in_batch_negatives: bool = False
    checkpoint_dir: str | None = None
    checkpoint_every: int = 0
    resume: bool = False
    log_every: int = 25
    n_critic: int = 5
    key_momentum: float = 0.999
    steps: int = 1000
    batch_size: int = 64
    gen_batch_size: int = 128
    queue_size: int = 8192
    ema_decay: float = 0.999
    warmup_steps: int = 5
    num_workers: int = 0


@dataclass
class ThroughputConfig:
    steps: int = 0
    processes: list[int] = field(default_factory=lambda: [1])


@dataclass
class EvalConfig:
    extractor: str = "lenet"  # lenet | inception
    inception_weights: str | None = None
    lenet_epochs: int = 2
    n_samples: int = 2000
    n_reference: int = 4000
    grid: int = 64


@dataclass
class DcvaeConfig(BaseConfig):
    scale: ScaleName = field(default_factory=ScaleName)
    processes: int = 1
    variants: list[str] = field(default_factory=lambda: ["dcvae"])
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    throughput: ThroughputConfig = field(default_factory=ThroughputConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    timeout_s: int = 0
