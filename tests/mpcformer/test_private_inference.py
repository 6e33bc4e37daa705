"""The student under MPC: two parties and a dealer agree with plaintext (single sentences and sentence pairs),
and a party that dies ends the others within the timeout. What leaves each party: test_privacy."""

import os
import time

import pytest
import torch

from common.errors import UserError
from mpcformer.convert import to_student
from mpcformer.distill import Encoded
from mpcformer.private_inference import (
    BertSpec,
    batch_lengths,
    check_against_plaintext,
    export_weights,
    private_inference,
    weight_shapes,
)
from mpcformer.study import mpc_accuracy

from .conftest import tiny_bert


@pytest.mark.timeout(180)
def test_student_under_mpc_matches_plaintext_with_sentence_pairs(batch):
    ids, mask = batch
    types = torch.zeros_like(ids)
    types[:, 4:] = 1  # the second sentence
    types[2] = 1  # and one row of type 1 throughout, [CLS] included: a difference the logits show
    # weights drawn 2.5x wider than the `tiny` fixture's: there the types moved the logits by 0.003 against MPC
    # errors of 0.0015-0.002, so the 1.5x check below failed now and then (without the types 1.3x, once in CI);
    # here they move them by 0.012 against 0.002-0.0035 (three runs: 3.4-4.2x)
    student = to_student(tiny_bert(initializer_range=0.05), "quad+2quad")
    with torch.no_grad():  # token types make a difference
        student.bert.embeddings.token_type_embeddings.weight[1].add_(
            torch.randn(32, generator=torch.Generator().manual_seed(0)) * 2
        )
    res = private_inference(student, ids, mask, token_type_ids=types, batch_size=2, timeout_s=90)
    assert res.party(0).logits is None and res.party(2).logits is None and res.party(2).role == "dealer"
    check = check_against_plaintext(student, ids, mask, res.logits, token_type_ids=types)
    assert check["max_abs_logit_error"] < 1e-2  # (labels of a random model can tie closer than that)
    without = check_against_plaintext(student, ids, mask, res.logits)  # ignoring the types is measurably wrong
    assert without["max_abs_logit_error"] > 1.5 * check["max_abs_logit_error"]
    assert res.party(0).rounds > 0 and res.party(1).bytes > 0


def test_batch_lengths_are_each_batchs_longest_rounded_up_to_the_bucket():
    mask = (torch.arange(12)[None, :] < torch.tensor([3, 5, 12, 1, 9])[:, None]).long()
    assert batch_lengths(mask, 2, None) == ()  # every batch at the full padded length
    assert batch_lengths(mask, 2, 4) == (8, 12, 12)  # 5 -> 8, 12 -> 12, 9 -> 12
    assert batch_lengths(mask, 2, 1) == (5, 12, 9)
    assert batch_lengths(mask, 5, 16) == (12,)  # never past the padded length


@pytest.mark.timeout(180)
def test_batches_cut_to_their_length_give_the_same_logits_for_fewer_bytes(tiny):
    g = torch.Generator().manual_seed(2)
    lengths = torch.tensor([12, 3, 5, 4, 11, 4])  # sorted, the first two batches of 2 are short
    mask = (torch.arange(12)[None, :] < lengths[:, None]).long()
    ids = torch.randint(5, 100, (6, 12), generator=g) * mask
    student = to_student(tiny, "quad+2quad")
    full = private_inference(student, ids, mask, batch_size=2, timeout_s=90)
    # mpc_accuracy sorts by length, cuts each batch (to 4, 8, 12 instead of 12, 12, 12) and puts the logits
    # back in the examples' order (this random model's logits differ too little to check the order: next test)
    row = mpc_accuracy({"s": student}, Encoded(ids, mask, torch.zeros(6, dtype=torch.long)), 2, 90, 0, 4).iloc[0]
    assert row.max_abs_logit_error < 1e-2 and row.leaks_found == 0  # (a random model's labels can tie closer)
    assert row.mean_batch_length == 8
    assert row.MB_p1 * 1e6 < 0.85 * full.party(1).bytes
    with pytest.raises(UserError, match="length_bucket"):
        private_inference(student, ids, mask, length_bucket=0)


def test_mpc_accuracy_puts_the_logits_back_in_the_examples_order(tiny, monkeypatch):
    """The ordering alone, exactly: private inference replaced by the plaintext model on what the client sends."""
    import mpcformer.study as study

    class Plain:
        def __init__(self, model, ids, mask, types, **kw):
            self.logits = model(input_ids=ids, attention_mask=mask).logits.detach()
            self.wall_s, self.sent_shape = 1.0, ids.shape

        def leaks(self):
            return []

        def party(self, rank):
            return type("Report", (), {"bytes": 0, "rounds": 0})()

    monkeypatch.setattr(study, "private_inference", Plain)
    lengths = torch.tensor([12, 3, 5, 4, 11, 4])
    mask = (torch.arange(12)[None, :] < lengths[:, None]).long()
    ids = torch.randint(5, 100, (6, 12), generator=torch.Generator().manual_seed(2)) * mask
    student = to_student(tiny, "quad+2quad")
    row = mpc_accuracy({"s": student}, Encoded(ids, mask, torch.zeros(6, dtype=torch.long)), 2, 90, 0, 4).iloc[0]
    assert row.max_abs_logit_error < 1e-6  # the examples' logits differ by up to 8e-3 from one another


def input_owner_dies(view) -> None:
    if view.rank == 1 and view.layer == 1:
        os._exit(3)


@pytest.mark.timeout(240)
def test_a_party_that_dies_ends_the_others_within_the_timeout(tiny, batch):
    ids, mask = batch
    start = time.monotonic()
    with pytest.raises(UserError, match="private inference failed"):
        private_inference(
            to_student(tiny, "quad+2quad"), ids, mask, provider="TTP", timeout_s=20, hook=input_owner_dies
        )
    assert time.monotonic() - start < 20 + 40  # start-up of three processes + at most the timeout


def test_bad_inputs_are_user_errors(tiny, batch):
    ids, mask = batch
    student = to_student(tiny, "quad+2quad")
    with pytest.raises(UserError, match="longer than the model allows"):
        private_inference(student, torch.ones(1, 65, dtype=torch.long), torch.ones(1, 65, dtype=torch.long))
    with pytest.raises(UserError, match="wrong tokenizer"):
        private_inference(student, ids + 1000, mask)
    with pytest.raises(UserError, match="unknown provider"):
        private_inference(student, ids, mask, provider="HE")


def test_weight_shapes_are_public_and_match_the_export(tiny):
    w = export_weights(to_student(tiny, "quad+2quad"))
    assert {k: tuple(v.shape) for k, v in w.items()} == weight_shapes(BertSpec.of(tiny))


@pytest.mark.parametrize("scale", [4.0**-4, 1.0, 4.0**3])
def test_layer_norm_with_a_public_scale_is_layer_norm(scale):
    """The MPC LayerNorm scales its input (large variances) or its variance (small ones) by a public power of
    four; in exact arithmetic that changes nothing."""
    from mpcformer.private_inference import layer_norm

    g = torch.Generator().manual_seed(0)
    x = (
        torch.randn(3, 5, 16, generator=g, dtype=torch.float64)
        * torch.tensor([0.03, 1.0, 300.0], dtype=torch.float64)[:, None, None]
    )
    w, b = torch.randn(16, generator=g, dtype=torch.float64), torch.randn(16, generator=g, dtype=torch.float64)
    torch.testing.assert_close(layer_norm(x, w, b, 1e-12, scale), torch.nn.functional.layer_norm(x, (16,), w, b, 1e-12))


def _square_party(rank: int, nprocs: int, value: float, n: int) -> int | None:
    import os

    from mpcformer import crypten_compat

    ct = crypten_compat.join_party(rank, 2, f"tcp://127.0.0.1:{os.environ['MASTER_PORT']}", "TFP", 120)
    x = ct.cryptensor(torch.full((n,), value), src=0)
    out = x.square().get_plain_text()
    crypten_compat.leave_party()
    return int(((out - value**2).abs() > 1e6).sum()) if rank == 0 else None


@pytest.mark.timeout(180)
def test_two_party_truncation_wraps_at_the_rate_truncation_risk_assumes():
    """Squaring 12M secret 60s: each product truncation wraps (an error of 2^32) with probability
    3600 / 2^32, so about 10 elements come out wrong; the same count `truncation_risk` adds up for a model."""
    from common.distributed import run_processes

    n, value = 12_000_000, 60.0
    wrong, _ = run_processes(_square_party, 2, args=(value, n), init_group=False, timeout_s=150)
    expected = n * value**2 / 2**32  # 10.06
    assert 1 <= wrong <= 30, (wrong, expected)
