"""The quantizer's fused loops: the planar wire format by hand, the compiled path (torch.compile) equal to the
eager one byte for byte on several token counts, a mutated compiled kernel caught, and the fall-backs to eager."""

import pytest
import torch

from compression import compressors as C
from compression import fused


def _payloads(bits: int, shapes) -> list:
    out = []
    for i, shape in enumerate(shapes):
        x = torch.randn(shape, generator=torch.Generator().manual_seed(i)) * torch.linspace(0.1, 3, shape[-1])
        q = C.Quantize(bits)
        p = q.encode(x)
        out.append((p, q.decode(p, x.shape, x.dtype)))
    return out


def _same(a: list, b: list) -> bool:
    return all(
        all(torch.equal(u, v) for u, v in zip(pa, pb, strict=True)) and torch.equal(ya, yb)
        for (pa, ya), (pb, yb) in zip(a, b, strict=True)
    )


# token counts 256 and 32 (multiples of fused.BLOCK: range, scale and packing in one compiled graph), 37 and 15
# (the range eagerly, then the compiled packing loop)
# hidden 128: blocks of 16 columns a plane (two blocks a row at 2 bits); the one-block rows are checked by hand
SHAPES = [(4, 64, 128), (37, 128), (2, 16, 128), (3, 5, 128)]


def test_planar_packing_by_hand():
    """One block a row when the width is not a multiple of 16 values a byte: bits 4 on a row of 4 columns, byte 0
    holds columns 0 (low bits) and 2, byte 1 columns 1 and 3."""
    rows = torch.tensor([[1.0, 2.0, 3.0, 4.0]])
    one, half = torch.ones(4), torch.full((4,), 0.5)
    packed = fused.encode_rows(rows, one, half, 4)
    assert packed.tolist() == [[0x31, 0x42]]
    assert fused.decode_rows(packed, one, torch.zeros(4), 4).tolist() == rows.tolist()
    packed2 = fused.encode_rows(torch.arange(8.0).view(1, 8) % 4, torch.ones(8), torch.full((8,), 0.5), 2)
    # columns 0, 2, 4, 6 (levels 0, 2, 0, 2) in byte 0; 1, 3, 5, 7 (levels 1, 3, 1, 3) in byte 1
    assert packed2.tolist() == [[0 | 2 << 2 | 0 << 4 | 2 << 6, 1 | 3 << 2 | 1 << 4 | 3 << 6]]


@pytest.mark.parametrize("bits", [4, 2])
def test_blocked_planar_packing_by_hand(bits):
    """A width of 16 values a byte or a multiple: blocks of 16 * per columns, byte i of block b holding columns
    16 * per * b + i + 16 j for j = 0 .. per - 1 (the first in the low bits)."""
    per, c = 8 // bits, 32 * (8 // bits)  # two blocks
    levels = torch.randint(0, 2**bits, (c,), generator=torch.Generator().manual_seed(bits))
    rows = levels.float().view(1, c)
    packed = fused.encode_rows(rows, torch.ones(c), torch.full((c,), 0.5), bits)
    block = 16 * per
    want = [sum(int(levels[block * b + i + 16 * j]) << j * bits for j in range(per)) for b in (0, 1) for i in range(16)]
    assert packed.tolist() == [want]
    for decode in (fused.decode_rows, fused.decode_rows_eager):
        assert decode(packed, torch.ones(c), torch.zeros(c), bits).tolist() == rows.tolist()


@pytest.mark.skipif(fused._compiler() not in (None, "COMPRESSION_COMPILE=0"), reason="no C++ compiler here")
def test_compiled_equals_eager_and_a_mutated_kernel_is_caught(monkeypatch):
    """bits 8 (no packing) and 2 (four values a byte; 4 runs the same code with two): ~15 s of compilation on a
    quiet machine with an empty inductor cache, ~2 s with a warm one."""
    eager = {bits: _payloads(bits, SHAPES) for bits in (2, 8)}
    assert fused.backend().startswith("eager")
    monkeypatch.delenv("COMPRESSION_COMPILE")
    monkeypatch.setitem(fused._state, "compiled", None)
    assert fused.backend() == "compiled (inductor C++)"
    for bits in (2, 8):
        assert _same(_payloads(bits, SHAPES), eager[bits]), bits
    assert fused.backend() == "compiled (inductor C++)"  # no compile failed over to eager on the way
    # a mutation of either compiled encoder (the lowest bit of every byte flipped) is caught by the same check
    enc, dec = fused._compiled(2)
    with monkeypatch.context() as m:
        m.setitem(fused._kernels, 2, (lambda r, i, b: enc(r, i, b) ^ 1, dec))
        assert not _same(_payloads(2, SHAPES[1:2]), eager[2][1:2])
    renc = fused._compiled_range(2)

    def flipped(r):
        packed, span, lo = renc(r)
        return packed ^ 1, span, lo

    monkeypatch.setitem(fused._range_kernels, 2, flipped)
    assert not _same(_payloads(2, SHAPES[:1]), eager[2][:1])


def test_blocked_channel_range_is_the_exact_min_and_max():
    rows = torch.randn(64, 24, generator=torch.Generator().manual_seed(0))
    rows[37, 5], rows[3, 7] = 100.0, -100.0  # extremes inside one block, not at its start
    lo, hi = fused.channel_range(rows)
    assert torch.equal(lo, rows.amin(0)) and torch.equal(hi, rows.amax(0)) and lo[7] == -100 and hi[5] == 100
    lo, hi = fused.channel_range(rows[:-1])  # 63 rows: no blocks
    assert torch.equal(lo, rows[:-1].amin(0)) and torch.equal(hi, rows[:-1].amax(0))


def test_no_compiler_or_a_failed_compile_falls_back_to_eager(monkeypatch):
    want = _payloads(4, SHAPES[:1])
    monkeypatch.delenv("COMPRESSION_COMPILE")
    monkeypatch.setenv("CXX", "/nonexistent/c++")
    monkeypatch.setitem(fused._state, "compiled", None)
    assert fused.backend() == "eager (no C++ compiler (/nonexistent/c++ not found))"
    assert _same(_payloads(4, SHAPES[:1]), want)

    def broken(bits):
        raise RuntimeError("InductorError: CppCompileError\ncompiler output")

    monkeypatch.setitem(fused._state, "compiled", True)
    monkeypatch.setattr(fused, "_compiled", broken)
    with pytest.warns(UserWarning, match="compilation failed"):
        got = _payloads(4, SHAPES[:1])
    assert _same(got, want) and fused.backend().startswith("eager (compilation failed: RuntimeError: InductorError")
