"""A transformers BERT becomes its student: same weights, approximations swapped in, teacher untouched."""

import pytest
import torch

from common.errors import UserError
from mpcformer.approximations import QuadGELU
from mpcformer.convert import APPROXIMATIONS, Approximation, to_student


def test_exact_pair_reproduces_the_original_model(tiny, batch):
    ids, mask = batch
    ref = tiny(input_ids=ids, attention_mask=mask).logits
    out = to_student(tiny, "gelu+softmax")(input_ids=ids, attention_mask=mask).logits
    torch.testing.assert_close(out, ref, atol=1e-5, rtol=0)


@pytest.mark.parametrize("name", APPROXIMATIONS)
def test_student_swaps_functions_keeps_weights_and_ignores_padding(tiny, batch, name):
    ids, mask = batch
    before = {k: v.clone() for k, v in tiny.state_dict().items()}
    student = to_student(tiny, name)
    a = Approximation.parse(name)
    layer = student.bert.encoder.layer[0]
    assert isinstance(layer.intermediate.intermediate_act_fn, QuadGELU) == (a.activation == "quad")
    assert layer.attention.self.normaliser.kind == a.softmax
    for k, v in student.state_dict().items():
        torch.testing.assert_close(v, before[k])
    for k, v in tiny.state_dict().items():  # the teacher is not modified
        torch.testing.assert_close(v, before[k])
    assert not hasattr(tiny.bert.encoder.layer[0].attention.self, "normaliser")
    out = student(input_ids=ids, attention_mask=mask).logits
    ids2 = ids.clone()
    ids2[0, 6:] = 42  # padded positions
    torch.testing.assert_close(student(input_ids=ids2, attention_mask=mask).logits, out)


def test_attentions_are_raw_scores(tiny, batch):
    ids, mask = batch
    s = to_student(tiny, "quad+2quad")
    out = s(input_ids=ids, attention_mask=mask, output_attentions=True, output_hidden_states=True)
    sa = s.bert.encoder.layer[0].attention.self
    h = out.hidden_states[0]
    q = sa.query(h).view(3, 10, 4, 8).transpose(1, 2)
    k = sa.key(h).view(3, 10, 4, 8).transpose(1, 2)
    torch.testing.assert_close(out.attentions[0], q @ k.transpose(2, 3) / 8**0.5, atol=1e-5, rtol=0)
    assert len(out.hidden_states) == 3  # embedding output + 2 layers


@pytest.mark.parametrize("bad", ["quad+3quad", "relu+softmax", "quad", "", "quad+2quad+x"])
def test_unknown_approximation_is_a_user_error(tiny, bad):
    with pytest.raises(UserError, match="unknown approximation"):
        to_student(tiny, bad)


def test_non_bert_model_is_a_user_error():
    with pytest.raises(UserError, match="not a BERT-family"):
        to_student(torch.nn.Linear(3, 3), "quad+2quad")


def test_labels():
    assert Approximation.parse("QUAD+2quad").label == "Quad+2Quad"
    assert Approximation.parse("gelu+softmax").name == "gelu+softmax"
