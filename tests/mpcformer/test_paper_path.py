"""The paper's path on local files: GLUE-format sentence pairs and IMDb-format reviews written here, a tiny BERT
(random weights, a tokenizer built offline) saved to a folder, through `datasets`, distillation, private inference
(token type ids under MPC) and the tables and claims of `python -m reproduce.mpcformer scale=paper`."""

import json

import pytest
import torch

from mpcformer.convert import Approximation
from mpcformer.data import DataConfig, encode_splits, load_splits, load_teacher
from mpcformer.distill import TeacherOutputs
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


class _Losses:
    """A tracker that keeps every logged value."""

    def __init__(self):
        self.logged: dict[str, float] = {}

    def log(self, values: dict, step=None) -> None:
        self.logged |= values


def test_teacher_on_each_batch_gives_the_cached_losses():
    """Paper scale runs the teacher on each batch (train.teacher_cache=false); on a tiny model, with the same batch
    order, its distillation losses match those from the cache (held in half precision) to its rounding."""
    from mpcformer.distill import Encoded
    from tests.mpcformer.conftest import tiny_bert

    g = torch.Generator().manual_seed(0)
    ids = torch.randint(5, 100, (24, 12), generator=g)
    mask = torch.ones_like(ids)
    mask[::3, 8:] = 0
    train = Encoded(ids * mask, mask, torch.randint(0, 2, (24,), generator=g))
    data = {"train": train, "dev": train.head(8), "test": train.head(8)}

    def losses(cache: bool) -> dict[str, float]:
        budget = Budget(batch_size=4, teacher_steps=3, stage1_steps=10, stage2_steps=10, teacher_cache=cache)
        tracker = _Losses()
        torch.manual_seed(0)
        run_study(tiny_bert(seed=1), data, [Approximation.parse("quad+2quad")], budget, tracker=tracker)
        return {k: v for k, v in tracker.logged.items() if "distill" in k and k.endswith("/loss")}

    cached, live = losses(True), losses(False)
    assert set(cached) == {"quad+2quad/distill/stage1/loss", "quad+2quad/distill/stage2/loss"}
    for k in cached:
        assert live[k] == pytest.approx(cached[k], rel=1e-3), k


def test_a_teacher_cache_over_the_limit_is_refused_before_training():
    from transformers import BertConfig

    from common.errors import UserError

    imdb = TeacherOutputs.nbytes(BertConfig(num_labels=2), 22_500, 512)  # BERT-base: 12 layers, 12 heads, 768
    assert 1.8e12 < imdb < 2.0e12  # ~1.9 TB, 1.7 TB of it attention scores
    budget = Budget(teacher_cache=True, teacher_cache_max_gb=8.0)
    with pytest.raises(UserError, match="teacher cache of 22500 training examples at length 512 would take"):
        budget.check_teacher_cache(BertConfig(num_labels=2), 22_500, 512)
    Budget(teacher_cache=False).check_teacher_cache(BertConfig(num_labels=2), 22_500, 512)  # no cache: no limit
    Budget(teacher_cache_max_gb=8.0).check_teacher_cache(BertConfig(num_labels=2), 1_000, 48)
