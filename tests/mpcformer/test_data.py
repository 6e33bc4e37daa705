"""Teacher and data of a run: cut teachers, dev held out of train (never test), majority class, diagnostics."""

import pandas as pd
import pytest
import torch

from common.errors import UserError
from mpcformer.convert import Approximation
from mpcformer.data import DataConfig, hold_out_dev, keep_layers, load_splits, majority_accuracy
from mpcformer.diagnostics import cls_spread, diagnostics, embedding_gradient
from mpcformer.distill import Encoded
from mpcformer.study import Budget

from .conftest import tiny_bert


def test_keep_layers_cuts_the_teacher():
    m = keep_layers(tiny_bert(), 1)
    assert len(m.bert.encoder.layer) == 1 and m.config.num_hidden_layers == 1
    out = m(input_ids=torch.ones(1, 5, dtype=torch.long), output_hidden_states=True)
    assert len(out.hidden_states) == 2
    with pytest.raises(UserError, match="model.layers"):
        keep_layers(tiny_bert(), 3)


def test_dev_is_held_out_of_train_and_test_is_untouched():
    splits = {
        "train": pd.DataFrame({"text": [str(i) for i in range(50)], "label": [i % 2 for i in range(50)]}),
        "test": pd.DataFrame({"text": ["t"], "label": [0]}),
    }
    out = hold_out_dev(splits, seed=0)
    assert len(out["dev"]) == 5 and len(out["train"]) == 45 and out["test"] is splits["test"]
    assert not set(out["dev"].text) & set(out["train"].text)
    assert out["dev"].text.tolist() == hold_out_dev(splits, seed=0)["dev"].text.tolist()


def test_rotten_tomatoes_splits_and_majority():
    assert len(load_splits(DataConfig(train_examples=100), seed=0)["train"]) == 100
    splits = load_splits(DataConfig(), seed=0)
    assert [len(splits[k]) for k in ("train", "dev", "test")] == [3891, 486, 486]
    assert (
        abs(
            100
            * majority_accuracy(torch.tensor(splits["train"].label.values), torch.tensor(splits["test"].label.values))
            - 51.65
        )
        < 0.01
    )
    with pytest.raises(UserError, match="unknown dataset"):
        load_splits(DataConfig(name="sst"))


def test_budget_gives_baselines_the_distillation_s_steps():
    b = Budget(stage1_steps=7, stage2_steps=3, stage1_lr=1e-3, baseline_lr=2e-4)
    assert b.config("baseline").steps == 10 and b.config("baseline").lr == 2e-4 and b.config("stage1").lr == 1e-3


def test_budget_per_approximation_overrides_one_approximation_only():
    over = {"approximation": "GeLU+2Quad", "stage1_steps": 4, "stage2_steps": 6, "baseline_lr": 1e-3}
    over["label_weight"] = 0.5
    b = Budget(stage1_steps=7, stage2_steps=3, per_approximation=[over])
    g = b.for_approximation(Approximation.parse("gelu+2quad"))
    assert (g.config("stage1").steps, g.config("stage2").steps, g.config("baseline").steps) == (4, 6, 10)
    assert g.config("baseline").lr == 1e-3 and g.config("teacher") == b.config("teacher")
    assert g.config("stage2").label_weight == 0.5 and b.config("stage2").label_weight == 0.0
    q = b.for_approximation(Approximation.parse("quad+2quad"))
    assert q.config("baseline").steps == 10 and q.config("baseline").lr == b.baseline_lr
    listed = [Approximation.parse(a) for a in ("quad+2quad", "gelu+2quad")]
    assert b.describe_overrides(listed) == (
        "GeLU+2Quad stage1_steps 4, stage2_steps 6, baseline_lr 0.001, label_weight 0.5"
    )
    with pytest.raises(UserError, match="teacher_steps cannot differ"):
        Budget(per_approximation=[{"approximation": "quad+2quad", "teacher_steps": 1}])
    with pytest.raises(UserError, match="unknown approximation"):
        Budget(per_approximation=[{"approximation": "cubic+2quad"}])


def test_rotten_tomatoes_full_corpus_gives_larger_held_out_splits():
    splits = load_splits(DataConfig(corpus="full", dev_frac=0.2, test_frac=0.2), seed=0)
    assert [len(splits[k]) for k in ("train", "dev", "test")] == [7652, 2550, 2550]
    assert not set(splits["test"].text) & (set(splits["train"].text) | set(splits["dev"].text))
    with pytest.raises(UserError, match="corpus"):
        load_splits(DataConfig(corpus="huge"))


def test_diagnostics_see_a_student_that_answers_the_same_for_every_input(tiny):
    g = torch.Generator().manual_seed(0)
    data = Encoded(
        torch.randint(5, 100, (16, 8), generator=g),
        torch.ones(16, 8, dtype=torch.long),
        torch.randint(0, 2, (16,), generator=g),
    )
    flat = tiny_bert()
    with torch.no_grad():
        flat.bert.encoder.layer[-1].output.LayerNorm.weight.zero_()
    assert cls_spread(flat, data) < 1e-6 < 1e-2 < cls_spread(tiny, data)
    assert embedding_gradient(tiny, data) > 0
    table = diagnostics(tiny, {Approximation.parse("quad+2quad"): flat}, {"train": data, "test": data})
    assert table.approximation.tolist() == ["Quad+2Quad"] and table.cls_spread_distilled[0] < 1e-6
