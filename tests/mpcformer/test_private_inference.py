"""The student under MPC: two parties and a dealer agree with plaintext, only party 1 learns the logits,
nothing a party sends contains its secrets, and a party that dies ends the others within the timeout."""

import time

import numpy as np
import pytest
import torch

from common.errors import UserError
from mpcformer.convert import to_student
from mpcformer.private_inference import (check_against_plaintext, export_weights, private_inference,
                                         weight_shapes, BertSpec)


def _fixed_point(t: torch.Tensor) -> bytes:
    return torch.round(t.double() * 2**16).long().numpy().tobytes()


def _found(needle: bytes, messages: list[bytes], itemsize: int = 8) -> bool:
    """Whether `needle` occurs in a message at an element boundary (a byte-shifted match inside a tensor of
    random bits is a coincidence, not the value)."""
    for msg in messages:
        i = msg.find(needle)
        while i >= 0:
            if i % itemsize == 0:
                return True
            i = msg.find(needle, i + 1)
    return False


def test_search_finds_a_planted_secret_and_only_at_element_boundaries():
    secret = torch.randn(8)
    noise = np.random.default_rng(0).bytes(4096)
    assert _found(_fixed_point(secret), [noise + _fixed_point(secret)])
    assert not _found(_fixed_point(secret + 1), [noise + _fixed_point(secret)])
    assert not _found(_fixed_point(secret), [noise + b"\x00\x00" + _fixed_point(secret)])


@pytest.mark.timeout(240)
def test_student_under_mpc_matches_plaintext_and_leaks_nothing(tiny, batch):
    ids, mask = batch
    student = to_student(tiny, "quad+2quad")
    with torch.no_grad():  # no all-zero biases or all-one LayerNorm weights: every weight is a distinct secret
        for p in student.parameters():
            p.add_(torch.randn_like(p) * 0.02)
    res = private_inference(student, ids, mask, provider="TTP", batch_size=2, timeout_s=120, audit=True)
    # only the input owner learns the logits, and they match the plaintext student's
    assert res.party(0).logits is None and res.party(2).logits is None and res.party(2).role == "dealer"
    check = check_against_plaintext(student, ids, mask, res.logits)
    assert check["max_abs_logit_error"] < 1e-2 and check["label_agreement"] == 1.0
    assert res.party(0).rounds > 0 and res.party(1).bytes > 0

    sent = {r.rank: r.sent for r in res.reports}
    assert sum(map(len, sent[1])) >= 0.5 * res.party(1).bytes  # the capture sees the traffic CrypTen counts
    # party 1 (the input owner): neither its token rows, ids nor mask, plain or fixed-point encoded
    one_hot = torch.nn.functional.one_hot(ids, 100).float()
    for b in range(ids.shape[0]):
        # (the raw 0/1 mask is not searched: ten 0/1 values occur by chance in messages of random bits)
        for needle in (ids[b].numpy().tobytes(), _fixed_point(mask[b].float())):
            assert not _found(needle, sent[1])
        for t in range(ids.shape[1]):
            assert not _found(_fixed_point(one_hot[b, t]), sent[1])
            assert not _found(one_hot[b, t].numpy().tobytes(), sent[1], itemsize=4)
    # party 0 (the model owner): no weight, plain or fixed-point encoded
    for name, w in export_weights(student).items():
        row = w.reshape(-1, w.shape[-1])[0] if w.dim() > 1 else w
        for rank in (0, 2):
            assert not _found(row.numpy().tobytes(), sent[rank], itemsize=4), f"{name} in what rank {rank} sent"
            assert not _found(_fixed_point(row), sent[rank]), f"{name} (fixed point) in what rank {rank} sent"


@pytest.mark.timeout(240)
def test_a_party_that_dies_ends_the_others_within_the_timeout(tiny, batch):
    ids, mask = batch
    start = time.monotonic()
    with pytest.raises(UserError, match="private inference failed"):
        private_inference(to_student(tiny, "quad+2quad"), ids, mask, provider="TTP", timeout_s=20, die_at_layer=1)
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
    x = torch.randn(3, 5, 16, generator=g, dtype=torch.float64) * torch.tensor([0.03, 1.0, 300.0],
                                                                               dtype=torch.float64)[:, None, None]
    w, b = torch.randn(16, generator=g, dtype=torch.float64), torch.randn(16, generator=g, dtype=torch.float64)
    torch.testing.assert_close(layer_norm(x, w, b, 1e-12, scale),
                               torch.nn.functional.layer_norm(x, (16,), w, b, 1e-12))


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
