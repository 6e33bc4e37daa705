"""The paper's path on local files: GLUE-format sentence pairs and IMDb-format reviews written here, a tiny BERT
(random weights, a tokenizer built offline) saved to a folder, through `datasets`, distillation, private inference
(token type ids under MPC) and the tables and claims of `python -m reproduce.mpcformer scale=paper`."""

import json

import pytest

from mpcformer.convert import Approximation
from mpcformer.data import DataConfig, encode_splits, load_splits, load_teacher
from mpcformer.study import Budget, run_study
from tests.common.test_text_data import write_glue_mrpc, write_imdb
from tests.conftest import run_cli
from tests.fixtures import tiny_hub

WORDS = "a the film movie is good great dull awful wonderful number indeed two lines br cat sat".split()


def write_tiny_bert(folder):
    return tiny_hub.write_tiny_bert(folder, WORDS)


@pytest.mark.timeout(600)
def test_paper_scale_on_glue_pairs_from_local_files_writes_tables_and_claims(tmp_path):
    model, glue = write_tiny_bert(tmp_path / "bert"), write_glue_mrpc(tmp_path / "MRPC", n=24)
    out = tmp_path / "results"
    proc = run_cli(
        [
            "-m",
            "reproduce.mpcformer",
            "scale=paper",
            "tracking.mode=disabled",
            f"results_dir={out}",
            f"checkpoint_dir={tmp_path}/ckpt",
            f"model.name={model}",
            "data.name=glue/mrpc",
            f"data.path={glue}",
            "data.max_length=24",
            "approximations=[quad+2quad]",
            "train.batch_size=4",
            "train.teacher_steps=2",
            "train.stage1_steps=1",
            "train.stage2_steps=1",
            "mpc_eval.models=[quad+2quad]",
            "mpc_eval.examples=2",
            "mpc_eval.risk_examples=0",
            "bench.functions=[]",
            "bench.models=[]",
        ],
        timeout=560,
    )  # the bench has its own tests
    assert proc.returncode == 0, proc.stderr[-3000:]
    res = out / "mpcformer" / "paper"
    tables = (res / "tables.md").read_text()
    assert "glue/mrpc" in tables and "Quad+2Quad" in tables
    mpc = (res / "mpc_accuracy.csv").read_text().splitlines()
    assert len(mpc) == 2 and ",2,24," in mpc[1]  # 2 examples of (padded) length 24 under MPC
    claims = json.loads((res / "claims.json").read_text())
    verdicts = {c["key"]: c["verdict"] for c in claims["claims"]}
    assert claims["scale"] == "paper" and verdicts["quad_2quad_model_faster"] == "not measured at this scale"


def test_imdb_folder_through_distillation(tmp_path):
    tok, teacher = load_teacher(str(write_tiny_bert(tmp_path / "bert")), 2)
    splits = load_splits(DataConfig(name="imdb", path=str(write_imdb(tmp_path / "aclImdb", n=10))), seed=0)
    assert {k: len(v) for k, v in splits.items()} == {"train": 18, "test": 20, "dev": 2}  # dev held out of train
    data = encode_splits(tok, splits, 16, teacher)
    assert data["train"].token_type_ids is None and data["train"].input_ids.shape == (18, 16)
    budget = Budget(batch_size=4, teacher_steps=2, stage1_steps=1, stage2_steps=1)
    study = run_study(teacher, data, [Approximation.parse("quad+2quad")], budget)
    assert list(study.accuracy.columns) == [
        "approximation",
        "acc_no_distill_no_pretrain",
        "acc_no_distill",
        "acc_distilled",
        "distilled_minus_finetuned",
        "paired_se",
    ]


def test_sentence_pairs_get_token_type_ids(tmp_path):
    tok, teacher = load_teacher(str(write_tiny_bert(tmp_path / "bert")), 2)
    splits = load_splits(DataConfig(name="glue/mrpc", path=str(write_glue_mrpc(tmp_path / "MRPC", n=20))), seed=0)
    enc = encode_splits(tok, splits, 24, teacher)["train"]
    first = enc.token_type_ids[0][enc.attention_mask[0].bool()]
    assert first[0] == 0 and first[-1] == 1 and set(first.tolist()) == {0, 1}
