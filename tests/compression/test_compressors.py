"""Each compressor: round-trip error, bytes on the wire equal to the tensors it really sends, the
all-reduce property of the linear ones, learning for the auto-encoder, and bad options as UserErrors."""

import copy
import math

import pytest
import torch

from common.errors import UserError
from compression import compressors as C

SHAPE = (4, 8, 16)


def _x(seed=0):
    return torch.randn(SHAPE, generator=torch.Generator().manual_seed(seed))


def _all():
    return [C.Identity(), C.TopK(ratio=0.25), C.TopK(ratio=0.25, index_dtype="int64"), C.RandomK(ratio=0.25, seed=3),
            C.Quantize(2), C.Quantize(4), C.Quantize(8), C.AutoEncoder(16, 4), C.PowerSGD(16, 2),
            C.PowerSGD(16, 2, error_feedback=True)]


@pytest.mark.parametrize("comp", _all(), ids=lambda c: f"{c.name}")
def test_wire_bytes_match_the_encoded_tensors(comp):
    payload = comp.encode(_x())
    sent = sum(t.numel() * t.element_size() for t in payload)
    assert sent == comp.wire_bytes(SHAPE)
    assert [(tuple(t.shape), t.dtype) for t in payload] == [(tuple(s), d) for s, d in comp.payload_spec(SHAPE)]
    assert comp.decode(payload, torch.Size(SHAPE), torch.float32).shape == SHAPE


def test_bytes_and_ratios():
    n = math.prod(SHAPE)
    assert C.Identity().wire_bytes(SHAPE) == 4 * n
    assert C.TopK(ratio=0.25).wire_bytes(SHAPE) == n // 4 * (4 + 4)
    assert C.TopK(ratio=0.25, index_dtype="int64").wire_bytes(SHAPE) == n // 4 * (4 + 8)
    assert C.RandomK(ratio=0.25).wire_bytes(SHAPE) == n // 4 * 4  # indices never travel
    for bits in (2, 4, 8):
        assert C.Quantize(bits).wire_bytes(SHAPE) == n * bits // 8 + 2 * 16 * 4
    assert C.AutoEncoder(16, 4).ratio(SHAPE) == 4.0
    assert C.PowerSGD(16, 2).wire_bytes(SHAPE) == (32 * 2 + 16 * 2) * 4
    # the study's figure: AE d=100 on BERT-large (hidden 1024) sends 10.24x fewer bytes
    assert C.AutoEncoder(1024, 100).ratio((32, 512, 1024), torch.float16) == pytest.approx(10.24)


def test_topk_keeps_largest_and_quantization_error_bound():
    x = _x()
    y = C.TopK(ratio=0.25)(x)
    kept = y != 0
    assert kept.sum() == x.numel() // 4
    assert torch.equal(y[kept], x[kept])
    assert x[~kept].abs().max() <= x[kept].abs().min()
    for bits in (2, 4, 8):
        rows = x.reshape(-1, 16)
        step = (rows.amax(0) - rows.amin(0)) / (2 ** bits - 1)
        err = (C.Quantize(bits)(x) - x).reshape(-1, 16).abs()
        assert (err <= step / 2 + 1e-6).all()
    errs = [(C.Quantize(b)(x) - x).norm() for b in (2, 4, 8)]
    assert errs[0] > errs[1] > errs[2]


def test_bit_packing_roundtrip():
    for bits in (2, 4, 8):
        q = torch.randint(0, 2 ** bits, (37,))
        packed = C.pack_bits(q, bits)
        assert packed.numel() == math.ceil(37 * bits / 8) and packed.dtype == torch.uint8
        assert torch.equal(C.unpack_bits(packed, bits, 37).long(), q)


def test_randomk_indices_come_from_the_shared_seed():
    a, b = C.RandomK(ratio=0.25, seed=7), C.RandomK(ratio=0.25, seed=7)
    x = _x()
    # a receiver that never saw the sender's indices decodes the same tensor
    assert torch.equal(b.decode(a.encode(x), x.shape, x.dtype), C.RandomK(ratio=0.25, seed=7)(x))
    # fresh indices every call
    assert not torch.equal(a(x) != 0, a(x) != 0)


@pytest.mark.parametrize("comp", [C.Identity(), C.RandomK(ratio=0.3, seed=1), C.AutoEncoder(16, 4)],
                         ids=lambda c: c.name)
def test_all_reduce_compressors_commute_with_the_sum(comp):
    """What makes all-reducing the codes correct: the sum of two ranks' codes decodes to the compression
    of the sum (each rank holds an identical copy of the compressor)."""
    assert comp.collective == "all_reduce"
    rank0, rank1, whole = (copy.deepcopy(comp) for _ in range(3))
    x1, x2 = _x(1), _x(2)
    codes = [a + b for a, b in zip(rank0.encode(x1), rank1.encode(x2))]
    torch.testing.assert_close(rank0.decode(codes, x1.shape, x1.dtype), whole(x1 + x2))


def test_powersgd_error_feedback_and_warm_start_reduce_error():
    torch.manual_seed(0)
    x = torch.randn(64, 6) @ torch.randn(6, 16) + 0.05 * torch.randn(64, 16)
    comp = C.PowerSGD(16, 6)
    errs = [(comp(x) - x).norm().item() for _ in range(4)]
    assert errs[-1] < errs[0]  # warm start converges to the top subspace
    ef = C.PowerSGD(16, 1, error_feedback=True)
    total = sum(ef(x) for _ in range(8)) / 8
    plain = C.PowerSGD(16, 1)
    avg_plain = sum(plain(x) for _ in range(8)) / 8
    assert (total - x).norm() < (avg_plain - x).norm()  # error feedback: the average converges to x


def test_autoencoder_learns_the_subspace():
    torch.manual_seed(0)
    data = torch.randn(256, 4) @ torch.randn(4, 16)
    ae = C.AutoEncoder(16, 4)
    opt = torch.optim.Adam(ae.parameters(), lr=5e-2)
    first = None
    for _ in range(100):
        loss = (ae(data) - data).pow(2).mean()
        first = first or loss.item()
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert ae.trainable and loss.item() < 0.01 * first


@pytest.mark.parametrize("make, msg", [
    (lambda: C.Quantize(3), "bits"),
    (lambda: C.AutoEncoder(16, 16), "width"),
    (lambda: C.TopK(k=600).encode(_x()), "larger than the tensor"),
    (lambda: C.TopK(ratio=1.5), "ratio"),
    (lambda: C.build(C.CompressorSpec(name="zip"), 16), "unknown compressor"),
    (lambda: C.spec_from_dict({"name": "topk", "kk": 3}), "unknown compressor option"),
])
def test_bad_options_are_user_errors(make, msg):
    with pytest.raises(UserError, match=msg):
        make()
