"""The teacher model and the text data of a run: loaded, split (train / dev / test) and tokenised.

Model names: "minilm" (all-MiniLM-L6-v2, shipped in a package), "tiny" (a random 2-layer BERT with
MiniLM's tokenizer), a local folder (config, weights or none, tokenizer) or a hub id. `layers` keeps only the
first layers of the teacher (a smaller teacher trains and distils faster; it is fine-tuned after the cut).

Datasets: "rotten_tomatoes" (shipped), "imdb" and "glue/<task>" (from `data.path` in their distribution's
format, or from the hub). Every split used for choices (steps, learning rates) is `dev`: Rotten Tomatoes has
its own; for IMDb and GLUE a seeded part of the training split is held out, and GLUE's labelled dev split
is the test split (GLUE's test labels are not public).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from torch import nn

from common.errors import UserError, require

from .distill import Encoded, encode

TINY = dict(
    hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=64, max_position_embeddings=128
)
DATASETS = ("rotten_tomatoes", "imdb", "glue/<task>")
DEV_FRAC = 0.1


@dataclass(frozen=True)
class DataConfig:
    name: str = "rotten_tomatoes"
    path: str | None = None  # a local folder in the dataset's own format (GLUE TSVs, aclImdb)
    corpus: str = "small"  # rotten_tomatoes: "small" (4,866 snippets) or "full" (12,752)
    dev_frac: float = 0.1  # the seeded part of the labelled examples held out as dev (IMDb, GLUE: of train)
    test_frac: float = 0.1  # rotten_tomatoes: the seeded part held out as test (others have a test split)
    max_length: int = 48
    train_examples: int | None = None  # the first n of each split (None: all)
    dev_examples: int | None = None
    test_examples: int | None = None


def check_model_name(name: str) -> None:
    """A name that looks like a local path ('/', './', '../', '~') must exist: otherwise the hub would be asked
    for it and the error would blame the network."""
    if name.startswith(("/", "./", "../", "~")) and not Path(name).expanduser().exists():
        raise UserError(f"model.name={name}: no such folder")


def load_teacher(name: str, num_labels: int, layers: int | None = None, seed: int = 0):
    """(tokenizer, sequence classifier) for a model name (see the module docstring), cut to `layers`."""
    from transformers import AutoModelForSequenceClassification, AutoTokenizer, BertConfig
    from transformers.utils import logging as hf_logging

    from common.data import minilm_path

    hf_logging.set_verbosity_error()
    torch.manual_seed(seed)  # the classifier head (and the tiny model) start from this seed
    if name in ("minilm", "tiny"):
        path = minilm_path()
        tok = AutoTokenizer.from_pretrained(path)
        if name == "minilm":
            model = AutoModelForSequenceClassification.from_pretrained(path, num_labels=num_labels)
        else:
            cfg = BertConfig(vocab_size=tok.vocab_size, num_labels=num_labels, **TINY)
            model = AutoModelForSequenceClassification.from_config(cfg)
    else:
        check_model_name(name)
        try:
            tok = AutoTokenizer.from_pretrained(name)
            folder = Path(name)
            if folder.is_dir() and not any(folder.glob("*.safetensors")) and not any(folder.glob("*.bin")):
                from transformers import AutoConfig  # a config without weights: random weights (tests)

                cfg = AutoConfig.from_pretrained(name, num_labels=num_labels)
                model = AutoModelForSequenceClassification.from_config(cfg)
            else:
                model = AutoModelForSequenceClassification.from_pretrained(name, num_labels=num_labels)
        except OSError as exc:
            raise UserError(
                f"model {name!r} is not available offline ({str(exc).splitlines()[0]}); run once "
                "with HF_HUB_OFFLINE=0 to download it"
            ) from exc
    if layers is not None:
        keep_layers(model, layers)
    return tok, model


def keep_layers(model: nn.Module, n: int) -> nn.Module:
    """Keep the first `n` Transformer layers of a BERT-family model (in place)."""
    encoder = model.base_model.encoder
    require(1 <= n <= len(encoder.layer), f"model.layers must be between 1 and {len(encoder.layer)}, got {n}")
    encoder.layer = encoder.layer[:n]
    model.config.num_hidden_layers = n
    return model


def load_splits(cfg: DataConfig, seed: int = 0) -> dict[str, pd.DataFrame]:
    """{"train", "dev", "test"} DataFrames (text, [text_pair,] label) for the configured dataset."""
    name = cfg.name
    if name == "rotten_tomatoes":
        require(cfg.path is None, "rotten_tomatoes ships with the package: leave data.path empty")
        from common.data import rotten_tomatoes

        splits = rotten_tomatoes(cfg.corpus, seed=seed, dev_frac=cfg.dev_frac, test_frac=cfg.test_frac)
    elif name == "imdb":
        from common.text_data import imdb

        splits = imdb(cfg.path)
    elif name.startswith("glue/"):
        from common.text_data import glue

        g = glue(name.split("/", 1)[1], cfg.path)
        splits = {"train": g["train"], "test": g["dev"]}
    else:
        raise UserError(f"unknown dataset {name!r}; choose one of {', '.join(DATASETS)}")
    if "dev" not in splits:
        splits = hold_out_dev(splits, seed, cfg.dev_frac)
    for k, n in (("train", cfg.train_examples), ("dev", cfg.dev_examples), ("test", cfg.test_examples)):
        if n:
            splits[k] = splits[k].iloc[: int(n)].reset_index(drop=True)
    for k, df in splits.items():
        require(len(df) > 0, f"the {k} split of {name} is empty")
    return splits


def hold_out_dev(splits: dict[str, pd.DataFrame], seed: int, frac: float = DEV_FRAC) -> dict[str, pd.DataFrame]:
    """Split a seeded `frac` of the training examples off as the dev split (for choices, never the test split)."""
    train = splits["train"]
    order = np.random.default_rng(seed).permutation(len(train))
    n_dev = max(1, int(len(train) * frac))
    return {
        **splits,
        "dev": train.iloc[order[:n_dev]].reset_index(drop=True),
        "train": train.iloc[order[n_dev:]].reset_index(drop=True),
    }


def encode_splits(tokenizer, splits: dict[str, pd.DataFrame], max_length: int, model: nn.Module) -> dict[str, Encoded]:
    """Each split tokenised to `max_length`; sentence pairs get token type ids."""
    return {
        k: encode(
            tokenizer, df["text"], df["label"], max_length, model, pairs=df["text_pair"] if "text_pair" in df else None
        )
        for k, df in splits.items()
    }


def majority_accuracy(train_labels: torch.Tensor, test_labels: torch.Tensor) -> float:
    """Accuracy of always answering the training split's most frequent class, on the test split."""
    majority = int(torch.bincount(train_labels).argmax())
    return float((test_labels == majority).float().mean())
