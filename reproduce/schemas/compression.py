"""`reproduce/conf/compression/`: compressors, message sizes, and per scale the accuracy and bench runs.

Scale files are `@package _global_`. Compressor specs stay free-form dicts (`{name: topk, ratio: 0.065}`):
`compression` checks them itself. Keys only some scales set have the default the code falls back to.
"""

from dataclasses import dataclass, field
from typing import Any

from .base import BaseConfig, ScaleName

Compressors = dict[str, dict[str, Any]]


@dataclass
class MessageConfig:
    hidden: int = 1024
    seq_len: int = 512
    batch_size: int = 32
    tp: int = 4
    dtype: str = "float16"
    compressors: Compressors = field(default_factory=dict)


@dataclass
class AccuracyConfig:
    compressors: list[str] = field(default_factory=list)
    early: list[str] = field(default_factory=list)
    start_layer: int = 0
    backward: bool = False
    tp: int = 1
    pp: int = 1
    micro_batches: int = 1
    layers: int = 2
    seq_len: int = 32
    batch_size: int = 16
    steps: int | None = None  # smoke and mini
    epochs: int | None = None  # paper
    lr: float = 1.0e-4
    weight_decay: float = 0.01
    dropout: float = 0.1
    freeze_word_embeddings: bool = True
    max_eval: int | None = None  # 0 or null: the whole test split
    seeds: list[int] = field(default_factory=lambda: [0])


@dataclass
class BenchConfig:
    compressors: list[str] = field(default_factory=list)
    layouts: list[str] = field(default_factory=lambda: ["tp", "pp"])
    world: int = 2
    bandwidths_gbps: list[float] = field(default_factory=lambda: [0.0])  # 0: loopback (no emulation)
    layers: int = 2
    hidden: int = 64
    heads: int = 4
    ffn: int = 128
    batch_size: int = 4
    seq_len: int = 16
    micro_batches: int = 2
    start_layer: int = 0
    backward: bool = True
    warmup: int = 0
    warmup_first: int = 3
    iters: int = 2
    codec_repeats: int = 2


@dataclass
class PaperModelConfig:
    name: str = "bert-large-uncased"
    hidden: int = 1024
    heads: int = 16
    ffn: int = 4096
    layers: int = 24


@dataclass
class CompressionConfig(BaseConfig):
    scale: ScaleName = field(default_factory=ScaleName)
    compressors: Compressors = field(default_factory=dict)
    message: MessageConfig = field(default_factory=MessageConfig)
    accuracy: AccuracyConfig = field(default_factory=AccuracyConfig)
    bench: BenchConfig = field(default_factory=BenchConfig)
    # the paper scale's plan (printed by a dry run)
    model: PaperModelConfig | None = None
    tasks: list[str] | None = None
    layouts: list[dict[str, int]] | None = None
    gpus: int | None = None
