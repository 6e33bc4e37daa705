"""GLUE-format TSVs and an IMDb-format folder, written here, load through `datasets` into text/pair/label frames."""

import pytest

from common.errors import UserError
from common.text_data import glue, imdb


def write_glue_mrpc(folder, n=6):
    folder.mkdir(parents=True, exist_ok=True)
    for name, rows in (("train.tsv", n), ("dev.tsv", n // 2)):
        lines = ["Quality\t#1 ID\t#2 ID\t#1 String\t#2 String"]
        for i in range(rows):
            lines.append(f'{i % 2}\t{i}\t{i + 100}\tthe film is "good {i}\tthe movie is good {i} indeed')
        (folder / name).write_text("\n".join(lines) + "\n")
    return folder


def write_glue_rte(folder, n=4):
    folder.mkdir(parents=True, exist_ok=True)
    for name in ("train.tsv", "dev.tsv"):
        lines = ["index\tsentence1\tsentence2\tlabel"]
        lines += [f"{i}\ta cat sat {i}\ta cat {i}\t{'entailment' if i % 2 else 'not_entailment'}" for i in range(n)]
        (folder / name).write_text("\n".join(lines) + "\n")
    return folder


def write_imdb(folder, n=3):
    for split in ("train", "test"):
        for label, words in (("pos", "wonderful great film"), ("neg", "dull awful film")):
            d = folder / split / label
            d.mkdir(parents=True, exist_ok=True)
            for i in range(n):
                (d / f"{i}_{7 if label == 'pos' else 2}.txt").write_text(f"A {words} number {i}.<br />Two lines.")
    return folder


def test_glue_pairs_keep_both_sentences_labels_and_quotes(tmp_path):
    splits = glue("mrpc", write_glue_mrpc(tmp_path / "MRPC"))
    assert set(splits) == {"train", "dev"} and len(splits["train"]) == 6 and len(splits["dev"]) == 3
    row = splits["train"].iloc[1]
    assert row.text == 'the film is "good 1' and row.text_pair == "the movie is good 1 indeed" and row.label == 1
    assert list(splits["train"].columns) == ["text", "text_pair", "label"]


def test_glue_string_labels_become_ids(tmp_path):
    splits = glue("rte", write_glue_rte(tmp_path / "RTE"))
    assert splits["train"].label.tolist() == [1, 0, 1, 0]  # not_entailment = 1 as on the hub


def test_imdb_folder_gives_labelled_reviews(tmp_path):
    splits = imdb(write_imdb(tmp_path / "aclImdb"))
    assert len(splits["train"]) == 6 and sorted(splits["test"].label.tolist()) == [0, 0, 0, 1, 1, 1]
    pos = splits["train"][splits["train"].label == 1].text.tolist()
    assert all("wonderful" in t for t in pos) and "<br />Two lines." in pos[0]


def test_bad_folders_are_user_errors(tmp_path):
    with pytest.raises(UserError, match="lacks train.tsv"):
        glue("mrpc", tmp_path)
    with pytest.raises(UserError, match="unknown GLUE task"):
        glue("wnli9", tmp_path)
    with pytest.raises(UserError, match="no column"):
        glue("rte", write_glue_mrpc(tmp_path / "MRPC"))
    with pytest.raises(UserError, match="no train/pos"):
        imdb(tmp_path)


def test_glue_reads_cola_without_a_header_and_mnli_dev_matched(tmp_path):
    cola = tmp_path / "CoLA"
    cola.mkdir()
    for name in ("train.tsv", "dev.tsv"):
        (cola / name).write_text("gj04\t1\t\tThe cat sat .\ngj04\t0\t*\tCat the sat .\n")
    frames = glue("cola", cola)
    assert frames["dev"]["label"].tolist() == [1, 0] and frames["train"]["text"][0] == "The cat sat ."
    mnli = tmp_path / "MNLI"
    mnli.mkdir()
    rows = ["sentence1\tsentence2\tgold_label", "a cat\ta dog\tneutral", "a cat\ta cat\tentailment"]
    for name in ("train.tsv", "dev_matched.tsv"):
        (mnli / name).write_text("\n".join(rows) + "\n")
    assert glue("mnli", mnli)["dev"]["label"].tolist() == [1, 0]
