"""Text classification data in the GLUE and IMDb formats, loaded through Hugging Face `datasets`.

Every loader returns {split: DataFrame} with columns `text`, `text_pair` (the second sentence of a pair
task, else absent) and `label` (int), so that a tokenizer given both columns builds the token type ids.

- GLUE: a folder with the task's `train.tsv` and `dev.tsv` (the files of the GLUE distribution; `dev.tsv`
  is GLUE's labelled validation split, `test.tsv` has no labels), or the hub's `glue/<task>` when no folder
  is given.
- IMDb: the `aclImdb` folder (`train/pos/*.txt`, `train/neg/*.txt`, `test/...`), or the hub's `imdb`.

`datasets` reads the files; the column names of each GLUE task are listed in `GLUE_TASKS`.
"""

from __future__ import annotations

import csv
from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from .errors import UserError


@dataclass(frozen=True)
class GlueTask:
    """Column names of a GLUE task in its TSV files and on the hub, its labels and its files."""

    folder: str  # the task's folder in the GLUE download (`SST-2`, `MNLI`, ...)
    text: str
    text_pair: str | None
    label: str
    hub_text: str
    hub_pair: str | None
    labels: tuple[str, ...] = ("0", "1")  # label strings in the TSV, in the order of their ids
    header: tuple[str, ...] | None = None  # column names of a file without a header line (CoLA)
    dev: str = "dev"  # the labelled validation file's stem (MNLI: dev_matched)
    hub_dev: str = "validation"

    def files(self, folder: Path) -> dict[str, Path]:
        return {"train": folder / "train.tsv", "dev": folder / f"{self.dev}.tsv"}


_NLI = ("entailment", "not_entailment")
_COLA_COLUMNS = ("source", "label", "orig", "sentence")  # CoLA's files have no header line
GLUE_TASKS = {
    "sst2": GlueTask("SST-2", "sentence", None, "label", "sentence", None),
    "cola": GlueTask("CoLA", "sentence", None, "label", "sentence", None, header=_COLA_COLUMNS),
    "mrpc": GlueTask("MRPC", "#1 String", "#2 String", "Quality", "sentence1", "sentence2"),
    "qqp": GlueTask("QQP", "question1", "question2", "is_duplicate", "question1", "question2"),
    "qnli": GlueTask("QNLI", "question", "sentence", "label", "question", "sentence", _NLI),
    "rte": GlueTask("RTE", "sentence1", "sentence2", "label", "sentence1", "sentence2", _NLI),
    "mnli": GlueTask(
        "MNLI", "sentence1", "sentence2", "gold_label", "premise", "hypothesis",
        ("entailment", "neutral", "contradiction"), dev="dev_matched", hub_dev="validation_matched",
    ),
}  # fmt: skip


def _datasets():
    try:
        import datasets
    except ImportError as exc:  # pragma: no cover - the test extra installs it
        raise UserError("loading GLUE or IMDb needs the `datasets` package: pip install 'datasets>=2.14'") from exc
    datasets.utils.logging.disable_progress_bar()
    return datasets


def glue_task(task: str) -> GlueTask:
    if task not in GLUE_TASKS:
        raise UserError(f"unknown GLUE task {task!r}; choose one of {', '.join(GLUE_TASKS)} (STS-B is regression)")
    return GLUE_TASKS[task]


def glue_task_folder(root: str | Path, task: str) -> Path:
    """The folder of `task` under a GLUE download's root (`root/SST-2`, `root/MNLI`, ...)."""
    return Path(root) / glue_task(task).folder


def glue(task: str, folder: str | Path | None = None) -> dict[str, pd.DataFrame]:
    """{"train", "dev"} of a GLUE classification task from its TSV folder (or the hub when `folder` is None)."""
    spec, ds = glue_task(task), _datasets()
    if folder is None:
        try:
            hub = ds.load_dataset("glue", task)
        except Exception as exc:  # noqa: BLE001 - offline, or the hub moved
            raise UserError(
                f"GLUE {task} is not available offline ({str(exc).splitlines()[0]}); give "
                "data.path, a folder with train.tsv and dev.tsv"
            ) from exc
        return {
            k: _frame(hub[split].to_pandas(), spec.hub_text, spec.hub_pair, "label")
            for k, split in (("train", "train"), ("dev", spec.hub_dev))
        }
    paths = spec.files(Path(folder))
    missing = [p.name for p in paths.values() if not p.is_file()]
    if missing:
        raise UserError(f"GLUE folder {folder} lacks {', '.join(missing)}")
    files = {k: str(p) for k, p in paths.items()}
    # QUOTE_NONE: GLUE's sentences contain unbalanced quotes; every column is read as text
    kwargs = {"delimiter": "\t", "quoting": csv.QUOTE_NONE, "keep_default_na": False}
    if spec.header is not None:
        kwargs.update(header=None, column_names=list(spec.header))
    loaded = ds.load_dataset("csv", data_files=files, **kwargs)
    out = {}
    for k in files:
        df = loaded[k].to_pandas()
        cols = [c for c in (spec.text, spec.text_pair, spec.label) if c]
        lacking = [c for c in cols if c not in df.columns]
        if lacking:
            raise UserError(f"{files[k]} is not GLUE {task}: no column {', '.join(map(repr, lacking))}")
        codes = {s: i for i, s in enumerate(spec.labels)}
        df = df.assign(**{spec.label: df[spec.label].astype(str)})
        bad = sorted(set(df[spec.label]) - set(codes))
        if bad:
            raise UserError(f"{files[k]}: unknown labels {bad[:3]} for GLUE {task} (expected {list(spec.labels)})")
        df = df.assign(**{spec.label: df[spec.label].map(codes)})
        out[k] = _frame(df, spec.text, spec.text_pair, spec.label)
    return out


def imdb(folder: str | Path | None = None) -> dict[str, pd.DataFrame]:
    """{"train", "test"} of IMDb reviews (1 positive, 0 negative) from an `aclImdb` folder or the hub."""
    ds = _datasets()
    if folder is None:
        try:
            hub = ds.load_dataset("imdb")
        except Exception as exc:  # noqa: BLE001
            raise UserError(
                f"IMDb is not available offline ({str(exc).splitlines()[0]}); give data.path, an aclImdb folder"
            ) from exc
        return {k: _frame(hub[k].to_pandas(), "text", None, "label") for k in ("train", "test")}
    folder = Path(folder)
    out = {}
    for split in ("train", "test"):
        frames = []
        for label, name in ((1, "pos"), (0, "neg")):
            files = sorted(str(p) for p in (folder / split / name).glob("*.txt"))
            if not files:
                raise UserError(f"IMDb folder {folder} has no {split}/{name}/*.txt reviews")
            texts = ds.load_dataset("text", data_files=files, sample_by="document", split="train")["text"]
            frames.append(pd.DataFrame({"text": texts, "label": label}))
        out[split] = pd.concat(frames, ignore_index=True)
    return out


def _frame(df: pd.DataFrame, text: str, pair: str | None, label: str) -> pd.DataFrame:
    cols = {"text": df[text].astype(str).str.strip()}
    if pair:
        cols["text_pair"] = df[pair].astype(str).str.strip()
    cols["label"] = df[label].astype(int)
    return pd.DataFrame(cols).reset_index(drop=True)
