"""`reproduce/conf/compression/`: compressors, the accuracy study and its ablation, the bench, message sizes, and
the thresholds the claims are decided by. Scale files are `@package _global_` and hold only what differs.

Compressor specs stay dicts here (`{name: topk, ratio: 0.065}`): `compression.compressors.CompressorSpec` parses
and checks each once. Defaults are the mini values (drafted by `python -m reproduce.schemas.draft compression`);
the YAML files set every key."""

from dataclasses import dataclass, field
from typing import Any

from reproduce.schemas.base import BaseConfig


@dataclass
class ScaleConfig:
    name: str = "mini"


@dataclass
class AccuracyConfig:
    compressors: list[str] = field(default_factory=lambda: ["none", "ae50", "topk", "randk", "int4", "powersgd"])
    early: list[str] = field(default_factory=lambda: ["ae50", "int4"])
    start_layer: int = 2
    layouts: list[dict[str, int]] = field(
        default_factory=lambda: [{"tp": 2, "pp": 1}, {"tp": 1, "pp": 2}, {"tp": 2, "pp": 2}]
    )
    early_layouts: list[dict[str, int]] = field(default_factory=lambda: [{"tp": 2, "pp": 1}])
    high_ratio: list[str] = field(default_factory=lambda: ["ae20", "topk20", "randk20", "int2"])
    high_ratio_layouts: list[dict[str, int]] = field(default_factory=lambda: [{"tp": 2, "pp": 1}])
    micro_batches: int = 2
    backward: bool = False
    layers: int = 4
    seq_len: int = 32
    batch_size: int = 16
    steps: int = 40
    lr: float = 0.0001
    weight_decay: float = 0.01
    dropout: float = 0.1
    freeze_word_embeddings: bool = True
    max_eval: int = 0
    seeds: list[int] = field(default_factory=lambda: [0, 1, 2])
    model_path: str | None = None
    glue_root: str | None = None
    task: str = "sst2"
    compile_quantizer: bool = False


@dataclass
class AblationLayoutConfig:
    tp: int = 2
    pp: int = 1


@dataclass
class AblationConfig:
    when: str = "failed"
    layout: AblationLayoutConfig = field(default_factory=AblationLayoutConfig)
    compressors: list[str] = field(default_factory=list)


@dataclass
class BenchConfig:
    compressors: list[str] = field(
        default_factory=lambda: ["none", "ae50", "topk", "randk", "int8", "int4", "int2", "powersgd"]
    )
    layouts: list[str] = field(default_factory=lambda: ["tp", "pp"])
    world: int = 2
    bandwidths_gbps: list[float] = field(default_factory=lambda: [0, 1.0, 0.1])
    layers: int = 4
    hidden: int = 384
    heads: int = 12
    ffn: int = 1536
    batch_size: int = 8
    seq_len: int = 64
    micro_batches: int = 2
    start_layer: int = 0
    backward: bool = True
    warmup: int = 0
    warmup_first: int = 3
    iters: int = 5
    codec_repeats: int = 5


@dataclass
class MessageConfig:
    hidden: int = 1024
    seq_len: int = 512
    batch_size: int = 32
    tp: int = 4
    dtype: str = "float16"
    compressors: dict[str, dict[str, Any]] = field(
        default_factory=lambda: {
            "none": {"name": "none"},
            "int8": {"name": "quantize", "bits": 8},
            "ae100": {"name": "autoencoder", "d": 100},
            "ae50": {"name": "autoencoder", "d": 50},
            "topk": {"name": "topk", "ratio": 0.05},
            "topk_int64": {"name": "topk", "ratio": 0.05, "index_dtype": "int64"},
        }
    )


@dataclass
class ClaimsConfig:
    learning: str = "ae50"
    rivals: list[str] = field(default_factory=lambda: ["topk", "randk", "int4"])
    high_ratio: dict[str, Any] = field(
        default_factory=lambda: {"learning": "ae20", "rivals": ["topk20", "randk20", "int2"]}
    )
    decide_at: str = "high_ratio"
    min_gap: float = 0.01
    cost_model_error_pct: float = 25.0
    cost_model_order: float = 0.8
    timing_noise_pct: float = 10.0
    break_even_links_gbps: list[float] = field(default_factory=lambda: [0.1, 100.0])


@dataclass
class CompressionConfig(BaseConfig):
    scale: ScaleConfig = field(default_factory=ScaleConfig)
    compressors: dict[str, dict[str, Any]] = field(
        default_factory=lambda: {
            "none": {"name": "none"},
            "ae50": {
                "name": "autoencoder",
                "d": 50,
                "shared": False,
                "lr_scale": 1.0,
                "matmul_dtype": "bfloat16",
                "warmup_steps": 0,
            },
            "ae100": {"name": "autoencoder", "d": 100, "shared": False, "lr_scale": 1.0, "matmul_dtype": "bfloat16"},
            "topk": {"name": "topk", "ratio": 0.065, "k": None, "index_dtype": "int32"},
            "randk": {"name": "randk", "ratio": 0.13, "k": None, "rescale": True, "index_pool": 16},
            "int8": {"name": "quantize", "bits": 8},
            "int4": {"name": "quantize", "bits": 4},
            "int2": {"name": "quantize", "bits": 2},
            "powersgd": {"name": "powersgd", "rank": 32, "error_feedback": False},
            "ae50_lr10": {"name": "autoencoder", "d": 50, "lr_scale": 10.0, "matmul_dtype": "bfloat16"},
            "ae50_warmup": {"name": "autoencoder", "d": 50, "matmul_dtype": "bfloat16", "warmup_steps": 10},
            "ae50_shared": {"name": "autoencoder", "d": 50, "shared": True, "matmul_dtype": "bfloat16"},
            "ae50_fp32": {"name": "autoencoder", "d": 50},
            "ae20": {"name": "autoencoder", "d": 20, "shared": False, "lr_scale": 10.0, "matmul_dtype": "bfloat16"},
            "topk20": {"name": "topk", "ratio": 0.026, "k": None, "index_dtype": "int32"},
            "randk20": {"name": "randk", "ratio": 0.052, "k": None, "rescale": True, "index_pool": 16},
        }
    )
    accuracy: AccuracyConfig = field(default_factory=AccuracyConfig)
    ablation: AblationConfig = field(default_factory=AblationConfig)
    bench: BenchConfig = field(default_factory=BenchConfig)
    message: MessageConfig = field(default_factory=MessageConfig)
    claims: ClaimsConfig = field(default_factory=ClaimsConfig)
