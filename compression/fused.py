"""The quantizer's per-element work (scale, round, cast, bit-pack; and back), compiled into one loop each by
`torch.compile` (inductor's C++ backend) where a C++ compiler works, else the same formulas run eagerly, chunk by
chunk. Eager torch makes one memory pass per operation (~10x a plain copy for encode + decode); the fused loops read
the activation once and write the packed bytes once (~2-3x a copy with the per-channel min and max).

Wire format (both paths): row r of an (n, c) activation, with `per = 8 // bits` values a byte and c % per == 0, is
packed "planar" in blocks of `per * g` columns: byte i of a block holds its columns i, i + g, i + 2g, ... (the first
in the low bits), with g = `PLANE` (16) where c is a multiple of 16 * per, else g = c / per (one block: the whole row).
Every load and store of the fused loop is contiguous and vectorises, and a block's planes are neighbours in memory:
with one block per row (planes c/per apart, 1.5 KB for int4 at c = 768) the compiled int4 loops ran ~25-30% slower.
`backend()` says which path runs and why.
"""

from __future__ import annotations

import os
import shutil
import warnings
from collections.abc import Callable, Iterator
from contextlib import contextmanager

import torch

_ENV = "COMPRESSION_COMPILE"  # "0": always eager (the tests' default: no compile time per test process)
_state: dict = {"compiled": None, "reason": "not used yet"}
_kernels: dict[int, tuple[Callable, Callable]] = {}


PLANE = 16  # columns a byte's plane holds in a block: one AVX-512 vector of float32 (two of AVX2)


def plane(c: int, bits: int) -> int:
    """Columns per plane of a packed block (see the wire format above) for rows of c values at `bits` bits."""
    per = 8 // bits
    return PLANE if c % (PLANE * per) == 0 else c // per


def encode_rows(rows: torch.Tensor, inv: torch.Tensor, bias: torch.Tensor, bits: int) -> torch.Tensor:
    """(n, c) float32 -> (n, c * bits / 8) uint8: trunc(x * inv + bias) per value (bias holds the +1/2 that makes
    the truncation round to nearest), packed planar. Multiply then add, never fused (the same in both paths)."""
    per = 8 // bits
    n, c = rows.shape
    q = (rows * inv + bias).to(torch.int32)
    if per > 1:
        g = plane(c, bits)
        q = q.view(n, c // (per * g), per, g)
        acc = q[:, :, 0]
        for j in range(1, per):
            acc = acc | (q[:, :, j] << (j * bits))
        q = acc.view(n, c // per)
    return q.to(torch.uint8)


def decode_rows(packed: torch.Tensor, scale: torch.Tensor, lo: torch.Tensor, bits: int) -> torch.Tensor:
    """The inverse of `encode_rows` up to the rounding: (n, c * bits / 8) uint8 -> (n, c) float32 level * scale + lo."""
    per = 8 // bits
    c = scale.shape[0]
    if per == 1:
        return packed.to(torch.float32) * scale + lo
    g = plane(c, bits)
    blocks = c // (per * g)
    p = packed.view(-1, blocks, 1, g)
    s, z, mask = scale.view(1, blocks, per, g), lo.view(1, blocks, per, g), 2**bits - 1
    parts = [((p >> (k * bits)) & mask).to(torch.float32) * s[:, :, k : k + 1] + z[:, :, k : k + 1] for k in range(per)]
    return torch.cat(parts, 2).view(-1, c)


def decode_rows_eager(packed: torch.Tensor, scale: torch.Tensor, lo: torch.Tensor, bits: int) -> torch.Tensor:
    """`decode_rows`, the same values, shaped for eager torch (one memory pass per operation): every plane's levels
    unpacked as bytes and put in place first, then one cast, scale and offset over the whole rows (compiled, this
    form is ~7x slower than `decode_rows`, which inductor writes plane by plane; eagerly it is 1.5-1.9x faster)."""
    per = 8 // bits
    c = scale.shape[0]
    if per == 1:
        return packed.to(torch.float32) * scale + lo
    g = plane(c, bits)
    p, mask = packed.view(-1, c // (per * g), 1, g), 2**bits - 1
    levels = torch.cat([(p >> (k * bits)) & mask for k in range(per)], 2).view(-1, c)
    return levels.to(torch.float32) * scale + lo


BLOCK = 16  # rows reduced together first by `channel_range`: the compiled min and max then read the input once


def channel_range(rows: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-column min and max of (n, c) rows. When n % BLOCK == 0, blocks of BLOCK rows are reduced first: the same
    values (min and max are exact in any order), and compiled it is one pass that keeps both running results in
    registers (a plain column reduction compiles to 2.4x a copy; eager amin + amax are two passes)."""
    n, c = rows.shape
    if n % BLOCK:
        return rows.amin(0), rows.amax(0)
    blocks = rows.view(n // BLOCK, BLOCK, c)
    return blocks.amin(1).amin(0), blocks.amax(1).amax(0)


def scale_offset(lo: torch.Tensor, hi: torch.Tensor, bits: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(span, inv, bias) per channel: level = trunc(x * inv + bias) maps [lo, hi] onto 0 .. 2**bits - 1, rounding to
    nearest; a constant channel (span 0) encodes as level 0."""
    levels = 2**bits - 1
    span = hi - lo
    inv = torch.where(span > 0, levels / span.clamp_min(torch.finfo(span.dtype).tiny), 0.0)
    return span, inv, 0.5 - lo * inv


def range_encode_rows(rows: torch.Tensor, bits: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(n, c) float32 -> (packed, span, lo): the per-channel range, scale and offset and `encode_rows`, in one call
    (one compiled graph: no eager op between them)."""
    lo, hi = channel_range(rows)
    span, inv, bias = scale_offset(lo, hi, bits)
    return encode_rows(rows, inv, bias, bits), span, lo


def _compiler() -> str | None:
    """Why compilation cannot run here, or None when it may."""
    if os.environ.get(_ENV, "1") == "0":
        return f"{_ENV}=0"
    try:
        from torch._inductor import config as inductor_config
    except Exception as exc:  # pragma: no cover - torch builds without inductor
        return f"no inductor ({type(exc).__name__})"
    cxx = inductor_config.cpp.cxx[-1] if isinstance(inductor_config.cpp.cxx, tuple) else inductor_config.cpp.cxx
    cxx = os.environ.get("CXX", cxx or "g++")
    if shutil.which(cxx) is None:
        return f"no C++ compiler ({cxx} not found)"
    return None


def backend() -> str:
    """'compiled' or 'eager (why)': the path the next quantizer call takes (decided once per process)."""
    if _state["compiled"] is None:
        reason = _compiler()
        _state.update(compiled=reason is None, reason=reason or "inductor C++")
    return "compiled (inductor C++)" if _state["compiled"] else f"eager ({_state['reason']})"


@contextmanager
def compiled_if(wanted: bool, why_not: str = "not asked for") -> Iterator[None]:
    """The block runs the compiled path only if `wanted` (and possible here), else eagerly; the path before is restored
    after. The fine-tunings turn it off: their tensors are small and time nothing, so a compile per process (~5 s with a
    warm inductor cache, ~60 s cold) costs more than it saves."""
    saved = dict(_state)
    if not wanted:
        _state.update(compiled=False, reason=why_not)
    try:
        yield
    finally:
        _state.update(saved)


def _fall_back(exc: Exception) -> None:
    _state.update(compiled=False, reason=f"compilation failed: {type(exc).__name__}: {str(exc).splitlines()[0][:200]}")
    warnings.warn(f"compression.fused: {_state['reason']}; the quantizer runs eagerly", stacklevel=3)


# One function per width, so that each is its own code object with `bits` a literal: dynamo compiles each once with
# static loops (one shared function would make bits a dynamic integer after the second width, ~4x slower loops).
def _enc8(r, i, b):
    return encode_rows(r, i, b, 8)


def _enc4(r, i, b):
    return encode_rows(r, i, b, 4)


def _enc2(r, i, b):
    return encode_rows(r, i, b, 2)


def _dec8(p, s, z):
    return decode_rows(p, s, z, 8)


def _dec4(p, s, z):
    return decode_rows(p, s, z, 4)


def _dec2(p, s, z):
    return decode_rows(p, s, z, 2)


def _renc8(r):
    return range_encode_rows(r, 8)


def _renc4(r):
    return range_encode_rows(r, 4)


def _renc2(r):
    return range_encode_rows(r, 2)


_BY_BITS = {8: (_enc8, _dec8, _renc8), 4: (_enc4, _dec4, _renc4), 2: (_enc2, _dec2, _renc2)}
_range_kernels: dict[int, Callable] = {}


def _compiled(bits: int) -> tuple[Callable, Callable]:
    if bits not in _kernels:
        from torch._inductor import config as inductor_config

        inductor_config.compile_threads = 1  # no pool of compile workers per process on a shared machine
        # the token count is dynamic (marked on each call): one compile per width and hidden size
        _kernels[bits] = tuple(torch.compile(f, fullgraph=True) for f in _BY_BITS[bits][:2])
    return _kernels[bits]


def _compiled_range(bits: int) -> Callable:
    if bits not in _range_kernels:
        _compiled(bits)  # the same inductor settings
        _range_kernels[bits] = torch.compile(_BY_BITS[bits][2], fullgraph=True)
    return _range_kernels[bits]


def _chunked(fn: Callable, n: int, step: int, out: torch.Tensor, *, rows_in: torch.Tensor, args: tuple) -> torch.Tensor:
    """`fn(rows_in[chunk], *args)` into `out[chunk]` chunk by chunk: each chunk's temporaries stay in cache."""
    for start in range(0, n, step):
        out[start : start + step] = fn(rows_in[start : start + step], *args)
    return out


def _rows_per_chunk(c: int) -> int:
    return max(1, 65_536 // c)  # a 256 KB float32 chunk: its temporaries stay in a core's L2


def quantize(rows: torch.Tensor, inv: torch.Tensor, bias: torch.Tensor, bits: int) -> torch.Tensor:
    """`encode_rows` on the fastest path available; the same bytes either way (up to how the C++ compiler rounds)."""
    n, c = rows.shape
    if backend().startswith("compiled"):
        try:
            enc, _ = _compiled(bits)
            torch._dynamo.maybe_mark_dynamic(rows, 0)
            return enc(rows, inv, bias)
        except Exception as exc:  # no working toolchain after all: eager from now on
            _fall_back(exc)
    out = torch.empty(n, c * bits // 8, dtype=torch.uint8)
    return _chunked(encode_rows, n, _rows_per_chunk(c), out, rows_in=rows, args=(inv, bias, bits))


def range_quantize(rows: torch.Tensor, bits: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """`range_encode_rows` on the fastest path available: compiled, the range, scale and packing run as one graph;
    eager, two torch passes for the range and `encode_rows` chunk by chunk. The same bytes either way."""
    n, c = rows.shape
    if backend().startswith("compiled") and n % BLOCK == 0:  # other token counts: the range eagerly, then `quantize`
        try:
            enc = _compiled_range(bits)
            torch._dynamo.maybe_mark_dynamic(rows, 0)
            return enc(rows)
        except Exception as exc:
            _fall_back(exc)
    lo, hi = rows.amin(0), rows.amax(0)
    span, inv, bias = scale_offset(lo, hi, bits)
    return quantize(rows, inv, bias, bits), span, lo


def dequantize(packed: torch.Tensor, scale: torch.Tensor, lo: torch.Tensor, bits: int) -> torch.Tensor:
    """`decode_rows` on the fastest path available."""
    c = scale.shape[0]
    packed = packed.view(-1, c * bits // 8)
    if backend().startswith("compiled"):
        try:
            _, dec = _compiled(bits)
            torch._dynamo.maybe_mark_dynamic(packed, 0)
            return dec(packed, scale, lo)
        except Exception as exc:
            _fall_back(exc)
    out = torch.empty(packed.shape[0], c, dtype=torch.float32)
    return _chunked(decode_rows_eager, packed.shape[0], _rows_per_chunk(c), out, rows_in=packed, args=(scale, lo, bits))
