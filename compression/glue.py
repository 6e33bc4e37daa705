"""GLUE classification tasks from the GLUE benchmark's own TSV files, read through `datasets` (the study fine-tunes
BERT on GLUE). Small surface on purpose, `load_glue(root, task, split)`, so that one general loader
(`common.text_data`) can replace it later.

`root` holds one folder per task as the GLUE download script lays them out (`SST-2/train.tsv`, `RTE/dev.tsv`,
`MNLI/dev_matched.tsv`, ...). GLUE's test files carry no labels: the study, and this loader's callers, evaluate
on `dev`.
"""

from __future__ import annotations

import csv
from dataclasses import dataclass
from pathlib import Path

from common.errors import UserError, require


@dataclass(frozen=True)
class GlueTask:
    folder: str
    text: tuple[str, ...]  # one column (single sentence) or two (a pair)
    label: str
    labels: tuple[str, ...]  # label strings in class-id order
    header: tuple[str, ...] | None = None  # column names of a file without a header line (CoLA)
    dev: str = "dev"


TASKS = {
    "sst2": GlueTask("SST-2", ("sentence",), "label", ("0", "1")),
    "cola": GlueTask("CoLA", ("sentence",), "label", ("0", "1"), header=("source", "label", "original", "sentence")),
    "mrpc": GlueTask("MRPC", ("#1 String", "#2 String"), "Quality", ("0", "1")),
    "qqp": GlueTask("QQP", ("question1", "question2"), "is_duplicate", ("0", "1")),
    "qnli": GlueTask("QNLI", ("question", "sentence"), "label", ("entailment", "not_entailment")),
    "rte": GlueTask("RTE", ("sentence1", "sentence2"), "label", ("entailment", "not_entailment")),
    "mnli": GlueTask(
        "MNLI", ("sentence1", "sentence2"), "gold_label", ("contradiction", "entailment", "neutral"), dev="dev_matched"
    ),
}
SPLITS = ("train", "dev")


def load_glue(root: str | Path, task: str, split: str):
    """One split of a GLUE classification task as a `datasets.Dataset` with columns `text`, `text_pair` (None
    for single-sentence tasks) and `label` (class id). Bad names and missing files are UserErrors."""
    import datasets

    require(task in TASKS, f"unknown GLUE task {task!r}; choose one of {', '.join(TASKS)} (STS-B is regression)")
    require(split in SPLITS, f"unknown GLUE split {split!r}; choose one of {', '.join(SPLITS)} (test has no labels)")
    t = TASKS[task]
    path = Path(root) / t.folder / f"{t.dev if split == 'dev' else split}.tsv"
    if not path.exists():
        raise UserError(f"GLUE file not found: {path} (glue.root must hold the task folders, e.g. {t.folder}/)")
    kwargs = {"delimiter": "\t", "quoting": csv.QUOTE_NONE, "keep_default_na": False}
    if t.header is not None:
        kwargs.update(header=None, column_names=list(t.header))
    ds = datasets.load_dataset("csv", data_files={split: str(path)}, split=split, **kwargs)
    missing = [c for c in (*t.text, t.label) if c not in ds.column_names]
    require(not missing, f"{path}: columns {missing} missing (found {ds.column_names})")
    ids = {name: i for i, name in enumerate(t.labels)}
    bad = sorted(set(map(str, ds[t.label])) - set(ids))
    require(not bad, f"{path}: unexpected labels {bad[:5]}; expected {list(t.labels)}")

    def convert(row):
        return {
            "text": str(row[t.text[0]]),
            "text_pair": str(row[t.text[1]]) if len(t.text) > 1 else None,
            "label": ids[str(row[t.label])],
        }

    features = datasets.Features(
        {"text": datasets.Value("string"), "text_pair": datasets.Value("string"), "label": datasets.Value("int64")}
    )
    return ds.map(convert, remove_columns=ds.column_names, features=features)


def num_labels(task: str) -> int:
    require(task in TASKS, f"unknown GLUE task {task!r}; choose one of {', '.join(TASKS)}")
    return len(TASKS[task].labels)
