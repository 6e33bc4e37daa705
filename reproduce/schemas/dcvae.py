"""`reproduce/conf/dcvae/`: the release's CIFAR-10 settings in the base config; scale and preset files
(`@package _global_`) hold what differs. `data`, `model` and `train` are passed whole to `vaegan_contrastive`'s
DataConfig, ModelConfig and TrainConfig, so their keys follow those. Defaults here are the mini values (drafted
by `python -m reproduce.schemas.draft dcvae`); the YAML files set every key."""

from dataclasses import dataclass, field
from typing import Any

from .base import BaseConfig


@dataclass
class ScaleConfig:
    name: str = "mini"


@dataclass
class DataConfig:
    name: str = "mnist5k"
    root: str | None = None
    resolution: int = 16
    test_size: int = 1000
    split_seed: int = 0
    subset: int | None = None
    eval_split: str = "test"
    dev_size: int = 500


@dataclass
class ModelConfig:
    latent_dim: int = 32
    enc_ch: int = 16
    dec_ch: int = 32
    disc_ch: int = 16
    cont_dim: int = 16
    spectral_norm_encoder: bool = False
    encoder_pool: str = "flatten"
    rgb_norm: str = "batch"
    xavier_init: bool = True


@dataclass
class TrainConfig:
    steps: int = 5000
    batch_size: int = 64
    gen_batch_size: int = 64
    n_critic: int = 5
    lr: float = 0.001
    disc_lr: float | None = None
    betas: list[float] = field(default_factory=lambda: [0.0, 0.9])
    pixel_weight: float = 1.0
    kl_weight: float = 0.0002
    cont_weight: float = 1.0
    queue_size: int = 512
    temperature: float = 0.07
    key_momentum: float = 0.9
    in_batch_negatives: bool = False
    ema_decay: float = 0.9
    log_every: int = 25
    console_every: int = 250
    warmup_steps: int = 5
    checkpoint_dir: str | None = "${results_dir}/checkpoints/dcvae/${scale.name}"
    checkpoint_every: int = 500
    resume: bool = True
    keep_checkpoints: bool = False
    num_workers: int = 0
    channels_last: bool = False


@dataclass
class EvalConfig:
    extractor: str = "lenet"
    inception_weights: str | None = None
    inception_features: str = "2048"
    lenet_epochs: int = 2
    n_samples: int = 2000
    n_reference: int = 4000
    n_recon: int | None = None
    grid: int = 64
    faithful_class_min: float = 0.85


@dataclass
class ThroughputConfig:
    steps: int = 20
    processes: list[int] = field(default_factory=lambda: [1, 2])


@dataclass
class AblationSettingConfig:
    label: str = ""
    train: dict[str, Any] = field(default_factory=dict)  # TrainConfig keys (checked by the study)
    variants: list[str] | None = None  # None: ablation.variants


@dataclass
class AblationConfig:
    run: bool = False
    variants: list[str] = field(default_factory=lambda: ["vaegan", "dcvae"])
    settings: list[AblationSettingConfig] = field(default_factory=list)


@dataclass
class DcvaeConfig(BaseConfig):
    scale: ScaleConfig = field(default_factory=ScaleConfig)
    processes: int = 2
    variants: list[str] = field(default_factory=lambda: ["vae", "vaegan", "vae_contrastive", "dcvae"])
    timeout_s: int = 3600
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    throughput: ThroughputConfig = field(default_factory=ThroughputConfig)
    ablation: AblationConfig = field(default_factory=AblationConfig)
