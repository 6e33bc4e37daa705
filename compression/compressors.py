"""Activation compressors with one interface: `encode` a tensor into wire tensors, `decode` them back, the
bytes on the wire (`payload_spec`), whether the compressor trains, and how tensor parallelism sums the
compressed partial results of its ranks (`collective`).

`collective == "all_reduce"`: the encoding is linear in its input with the same code layout on every rank
(identity, Random-K with shared indices, the auto-encoder's bias-free linear encoder, PowerSGD's shared
projection), so the codes themselves can be summed by an all-reduce. `"all_gather"`: each rank's code is
different (Top-K indices, per-rank quantization scales), so the codes are all-gathered, decoded and summed.
"""

from __future__ import annotations

import math
import sys
from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from common.errors import UserError, require

from . import fused

Spec = list[tuple[tuple[int, ...], torch.dtype]]

NAMES = ("identity", "topk", "randk", "quantize", "autoencoder", "powersgd")


class Compressor(nn.Module):
    """Base class: `decode(encode(x))` approximates `x`; `wire_bytes(shape)` is what one message costs."""

    name = "base"
    trainable = False
    collective = "all_gather"
    # Every tensor-parallel rank holds the same state (read by the runtime's `sync_partial_grads`, which sums the
    # gradients of such a compressor's parameters over the TP group); False: one independent copy per rank.
    shared_across_tp = True

    def encode(self, x: torch.Tensor) -> list[torch.Tensor]:
        raise NotImplementedError

    def decode(self, payload: list[torch.Tensor], shape: torch.Size, dtype: torch.dtype) -> torch.Tensor:
        raise NotImplementedError

    def payload_spec(self, shape: tuple[int, ...], dtype: torch.dtype = torch.float32) -> Spec:
        """Shapes and dtypes of the tensors `encode` returns for an input of `shape`."""
        raise NotImplementedError

    def wire_bytes(self, shape: tuple[int, ...], dtype: torch.dtype = torch.float32) -> int:
        return sum(math.prod(s) * torch.empty((), dtype=d).element_size() for s, d in self.payload_spec(shape, dtype))

    def ratio(self, shape: tuple[int, ...], dtype: torch.dtype = torch.float32) -> float:
        """How many times fewer bytes than the uncompressed tensor."""
        return math.prod(shape) * torch.empty((), dtype=dtype).element_size() / self.wire_bytes(shape, dtype)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.decode(self.encode(x), x.shape, x.dtype)

    def reduce(self, x: torch.Tensor, comm) -> torch.Tensor:
        """Approximate sum of `x` over the ranks of `comm` (a CountingComm, or None for one rank)."""
        payload = self.encode(x)
        if comm is None or comm.world_size == 1:
            return self.decode(payload, x.shape, x.dtype)
        if self.collective == "all_reduce":
            return self.decode([comm.all_reduce(p.contiguous()) for p in payload], x.shape, x.dtype)
        n = comm.world_size
        gathered = [comm.all_gather(p.contiguous().unsqueeze(0)) for p in payload]
        return sum(self.decode([g[r] for g in gathered], x.shape, x.dtype) for r in range(n))

    def extra_repr(self) -> str:
        return self.name


class Identity(Compressor):
    name = "identity"
    collective = "all_reduce"

    def encode(self, x):
        return [x]

    def decode(self, payload, shape, dtype):
        return payload[0].reshape(shape)

    def payload_spec(self, shape, dtype=torch.float32):
        return [(tuple(shape), dtype)]


def _count(numel: int, k: int | None, ratio: float | None) -> int:
    """How many elements Top-K / Random-K keep: `k` when given, else `ratio` of them."""
    k = k if k is not None else max(1, round(ratio * numel))
    if k > numel:
        raise UserError(f"k={k} is larger than the tensor it compresses ({numel} elements)")
    return k


def topk_indices(a: torch.Tensor, k: int) -> torch.Tensor:
    """Flat int32 indices of the k largest entries of the 1-d non-negative tensor `a`, ascending.

    Exact, and several times faster on CPU than `torch.topk` for large k (which sorts its candidates): a threshold
    from a strided sample (with a ~4 sigma margin) selects a few more than k candidates in one comparison and one
    `numpy.flatnonzero` (numpy's compaction is ~5x faster than `torch.nonzero`/`masked_select` here); the surplus
    smallest candidates are then dropped with `numpy.partition` over the candidates only. Falls back to a partition
    of the whole tensor when the sample's guess is too high; ties at the k-th value keep the lowest indices."""
    n = a.numel()
    if a.dtype not in (torch.float32, torch.float64, torch.float16):  # numpy has no bfloat16
        a = a.float()
    an = a.detach().contiguous().numpy()
    if k == n:
        return torch.arange(n, dtype=torch.int32)
    cand, vals = None, None
    if n >= 65_536 and k * 4 <= n * 3:
        stride = max(1, n // 32_768)
        sample = a[::stride]
        m = sample.numel()
        want = k / n * m
        keep = min(m, int(want + 4 * math.sqrt(want) + 8))
        t = float(sample.kthvalue(m - keep + 1).values)
        cand = np.flatnonzero(an >= t)
        if cand.size < k:
            cand = None
    if cand is None:
        cand = np.arange(n)
    vals = an[cand]
    surplus = cand.size - k
    if surplus:
        cut = np.partition(vals, surplus)[surplus]  # the k-th largest value among the candidates
        above = vals > cut
        need = k - int(np.count_nonzero(above))
        if need:  # ties at the cut: the first `need` of them
            ties = np.flatnonzero(vals == cut)[:need]
            above[ties] = True
        cand = cand[above]
    return torch.from_numpy(cand.astype(np.int32, copy=False))


class TopK(Compressor):
    """The k largest magnitudes, sent in the activation's dtype, with their flat indices (int32, or int64 as the
    study's code sent them: what `torch.topk` returns)."""

    name = "topk"

    def __init__(self, k: int | None = None, ratio: float | None = None, index_dtype: str = "int32"):
        super().__init__()
        require(k is not None or ratio is not None, "topk: give k or ratio")
        require(k is None or k >= 1, f"topk: k must be >= 1, got {k}")
        require(k is not None or 0 < ratio <= 1, f"topk: ratio must be in (0, 1], got {ratio}")
        require(index_dtype in ("int32", "int64"), f"topk: index_dtype must be int32 or int64, got {index_dtype}")
        self.k, self.keep, self.index_dtype = k, ratio, getattr(torch, index_dtype)

    def encode(self, x):
        flat = x.reshape(-1)
        idx = topk_indices(flat.detach().abs(), _count(flat.numel(), self.k, self.keep))
        return [flat.index_select(0, idx), idx.to(self.index_dtype)]

    def decode(self, payload, shape, dtype):
        values, idx = payload
        out = torch.zeros(math.prod(shape), dtype=dtype)
        return out.index_copy_(0, idx.long(), values.to(dtype)).reshape(shape)  # ~2x faster than index_put_

    def payload_spec(self, shape, dtype=torch.float32):
        k = _count(math.prod(shape), self.k, self.keep)
        return [((k,), dtype), ((k,), self.index_dtype)]


class RandomK(Compressor):
    """k random elements. The indices come from a seed every rank shares, so only the values travel and ranks can
    all-reduce them. `pool` index sets are drawn once per tensor size and used in turn (call n uses set n mod
    pool, the same on every rank), so no call pays for drawing them. With `rescale` the kept values are multiplied
    by numel / k, which makes the decoded tensor an unbiased estimate of the input (the study did not rescale)."""

    name = "randk"
    collective = "all_reduce"

    def __init__(
        self, k: int | None = None, ratio: float | None = None, seed: int = 0, rescale: bool = True, pool: int = 16
    ):
        super().__init__()
        require(k is not None or ratio is not None, "randk: give k or ratio")
        require(k is None or k >= 1, f"randk: k must be >= 1, got {k}")
        require(k is not None or 0 < ratio <= 1, f"randk: ratio must be in (0, 1], got {ratio}")
        require(pool >= 1, f"randk: index_pool must be >= 1, got {pool}")
        self.k, self.keep, self.seed, self.rescale, self.pool = k, ratio, seed, rescale, pool
        self.encoded = self.decoded = 0  # the n-th decode uses the n-th encode's indices, on any rank
        self._sets: tuple[int, list[torch.Tensor]] | None = None

    def _indices(self, numel: int, call: int) -> torch.Tensor:
        if self._sets is None or self._sets[0] != numel:
            g = torch.Generator().manual_seed(self.seed * 1_000_003 + numel)
            k = _count(numel, self.k, self.keep)
            # sorted: the gather and the scatter then walk memory in order
            self._sets = (numel, [torch.randperm(numel, generator=g)[:k].sort().values for _ in range(self.pool)])
        return self._sets[1][call % self.pool]

    def _scale(self, numel: int) -> float:
        return numel / _count(numel, self.k, self.keep) if self.rescale else 1.0

    def encode(self, x):
        idx = self._indices(x.numel(), self.encoded)
        self.encoded += 1
        values = x.reshape(-1).index_select(0, idx)
        return [values * self._scale(x.numel()) if self.rescale else values]

    def get_extra_state(self):
        return {"encoded": self.encoded, "decoded": self.decoded}

    def set_extra_state(self, state):
        self.encoded, self.decoded = int(state["encoded"]), int(state["decoded"])

    def decode(self, payload, shape, dtype):
        idx = self._indices(math.prod(shape), self.decoded)
        self.decoded += 1
        out = torch.zeros(math.prod(shape), dtype=dtype)
        return out.index_copy_(0, idx, payload[0].to(dtype)).reshape(shape)

    def payload_spec(self, shape, dtype=torch.float32):
        return [((_count(math.prod(shape), self.k, self.keep),), dtype)]


def pack_bits(q: torch.Tensor, bits: int) -> torch.Tensor:
    """Pack integers in [0, 2**bits) (uint8) into bytes, 8 // bits per byte, first value in the low bits
    (zero-padded at the end). One shift-or per value in a byte, on uint8 views: no reduction kernel."""
    per = 8 // bits
    q = q.reshape(-1).to(torch.uint8)
    if per == 1:
        return q
    if q.numel() % per:
        q = F.pad(q, (0, (-q.numel()) % per))
    q = q.view(-1, per)
    out = q[:, 0].clone()
    for j in range(1, per):
        out.bitwise_or_(q[:, j] << (j * bits))
    return out


def unpack_bits(packed: torch.Tensor, bits: int, numel: int) -> torch.Tensor:
    per = 8 // bits
    if per == 1:
        return packed[:numel]
    out = torch.empty(packed.numel(), per, dtype=torch.uint8)
    mask = (1 << bits) - 1
    for j in range(per):
        torch.bitwise_and(packed >> (j * bits) if j else packed, mask, out=out[:, j])
    return out.reshape(-1)[:numel]


class Quantize(Compressor):
    """Uniform b-bit quantization with a per-channel (last dimension) offset and scale, bit-packed; the scale and
    offset travel in the activation's dtype. Rounds to nearest (the integer cast truncates value + 1/2 >= 0).

    Hand-written (no library kernel fits): torch's quantized tensors quantize per channel ~40x slower than a copy on
    CPU and their packed 4/2-bit types ~8-60x (and are deprecated). The per-channel min and max are two vectorised
    torch passes; the scale, round, cast and packing (and back) are `compression.fused`'s loops, compiled by
    torch.compile where a C++ compiler works (`fused.backend()` says which path ran). Rows whose width does not fill
    whole bytes are packed across rows (`pack_bits`), eagerly."""

    name = "quantize"

    def __init__(self, bits: int = 8):
        super().__init__()
        require(bits in (2, 4, 8), f"quantize: bits must be one of 2, 4, 8, got {bits}")
        require(sys.byteorder == "little", "quantize: bit packing assumes a little-endian machine")
        self.bits = bits

    def encode(self, x):
        with torch.no_grad():
            rows = x.detach().reshape(-1, x.shape[-1])
            if rows.dtype != torch.float32:
                rows = rows.float()
            rows = rows.contiguous()
            levels = 2**self.bits - 1
            if rows.shape[1] % (8 // self.bits) == 0:
                packed, span, lo = fused.range_quantize(rows, self.bits)
                packed = packed.reshape(-1)
            else:
                lo, hi = rows.amin(0), rows.amax(0)
                span, inv, bias = fused.scale_offset(lo, hi, self.bits)
                packed = pack_bits((rows * inv + bias).to(torch.int32), self.bits)
        dtype = x.dtype if x.is_floating_point() else torch.float32
        return [packed, (span / levels).to(dtype), lo.to(dtype)]

    def decode(self, payload, shape, dtype):
        packed, scale, lo = payload
        c = shape[-1]
        scale, lo = scale.float(), lo.float()
        if c % (8 // self.bits):
            q = unpack_bits(packed, self.bits, math.prod(shape)).view(-1, c)
            out = q.to(torch.float32) * scale + lo
        else:
            out = fused.dequantize(packed, scale, lo, self.bits)
        out = out.reshape(shape)
        return out if dtype == torch.float32 else out.to(dtype)

    def payload_spec(self, shape, dtype=torch.float32):
        n = math.prod(shape)
        return [((math.ceil(n * self.bits / 8),), torch.uint8), ((shape[-1],), dtype), ((shape[-1],), dtype)]


class AutoEncoder(Compressor):
    """A linear encoder (hidden -> d, no bias, so it commutes with the tensor-parallel sum) and a linear decoder
    (d -> hidden), trained end to end with the task loss. Ranks all-reduce their codes and decode the sum.

    `shared=False` (the study's code: an encoder and a decoder inside each row-parallel layer, on every rank, with
    no gradient synchronisation): each tensor-parallel rank trains its own encoder on its own partial sum, so the
    code is sum_r E_r x_r. `shared=True`: one encoder for all ranks, its gradient summed over the group every step
    (`tp_partial`, `shared_across_tp`), d x hidden more values on the wire per compression site and step. Both
    start from the same orthonormal basis on every rank (decoder = encoder transposed: a projection)."""

    name = "autoencoder"
    trainable = True
    collective = "all_reduce"

    def __init__(self, hidden: int, d: int, seed: int = 0, shared: bool = False, matmul_dtype: str = "float32"):
        super().__init__()
        require(0 < d < hidden, f"autoencoder: width d must be in [1, hidden={hidden}), got {d}")
        require(
            matmul_dtype in ("float32", "bfloat16"),
            f"autoencoder: matmul_dtype must be float32 or bfloat16, got {matmul_dtype}",
        )
        self.matmul_dtype = getattr(torch, matmul_dtype)
        g = torch.Generator().manual_seed(seed)
        basis = torch.linalg.qr(torch.randn(hidden, d, generator=g)).Q  # orthonormal columns
        self.encoder = nn.Linear(hidden, d, bias=False)
        self.decoder = nn.Linear(d, hidden)
        with torch.no_grad():
            self.encoder.weight.copy_(basis.T)
            self.decoder.weight.copy_(basis)
            self.decoder.bias.zero_()
        self.shared_across_tp = shared
        if shared:
            self.encoder.weight.tp_partial = True  # its gradient sees only this rank's partial sum

    def _linear(self, x: torch.Tensor, layer: nn.Linear, dtype: torch.dtype) -> torch.Tensor:
        """`layer(x)`; with matmul_dtype bfloat16 the matmul runs in bf16 (the float32 weights cast per call, the
        product accumulated in float32, the result returned in `dtype`), as the study's fp16 training ran it;
        with float32 in the activation's own dtype."""
        md = self.matmul_dtype
        if md != torch.bfloat16 or x.dtype == md:
            return layer(x).to(dtype)
        b = layer.bias.to(md) if layer.bias is not None else None
        return F.linear(x.to(md), layer.weight.to(md), b).to(dtype)

    def encode(self, x):
        return [self._linear(x, self.encoder, x.dtype)]

    def decode(self, payload, shape, dtype):
        return self._linear(payload[0], self.decoder, dtype).reshape(shape)

    def payload_spec(self, shape, dtype=torch.float32):
        return [((*shape[:-1], self.encoder.out_features), dtype)]

    def sync_bytes(self, dtype: torch.dtype = torch.float32) -> int:
        """Bytes of the encoder gradient all-reduced per step when shared (0 when each rank has its own)."""
        return self.encoder.weight.numel() * torch.empty((), dtype=dtype).element_size() if self.shared_across_tp else 0


def _orthonormalize(p: torch.Tensor) -> torch.Tensor:
    return torch.linalg.qr(p).Q


class PowerSGD(Compressor):
    """Rank-r approximation P Q^T of the (tokens x hidden) matrix by one power iteration, warm-started from
    the previous call's Q; optional error feedback adds the last residual before compressing. In tensor
    parallelism P and Q are all-reduced in turn (both are linear in the input for a fixed Q)."""

    name = "powersgd"
    collective = "all_reduce"

    def __init__(self, hidden: int, rank: int = 4, error_feedback: bool = False, seed: int = 0):
        super().__init__()
        require(1 <= rank < hidden, f"powersgd: rank must be in [1, hidden={hidden}), got {rank}")
        g = torch.Generator().manual_seed(seed)
        self.register_buffer("q", _orthonormalize(torch.randn(hidden, rank, generator=g)))
        self.rank_, self.error_feedback = rank, error_feedback
        self.residual: torch.Tensor | None = None

    def get_extra_state(self):
        return {"residual": self.residual}

    def set_extra_state(self, state):
        self.residual = state["residual"]

    def _matrix(self, x: torch.Tensor) -> torch.Tensor:
        m = x.reshape(-1, x.shape[-1])
        if self.error_feedback and self.residual is not None and self.residual.shape == m.shape:
            m = m + self.residual
        return m

    def _remember(self, m: torch.Tensor, approx_local: torch.Tensor, q: torch.Tensor) -> None:
        self.q = q.detach().clone()
        if self.error_feedback and self.training:
            self.residual = (m - approx_local).detach()

    def encode(self, x):
        m = self._matrix(x)
        p = _orthonormalize(m @ self.q.to(m.dtype))
        q = (p.T @ m).T  # = m^T p; ~5x faster on CPU than multiplying by the transposed view m.T
        self._remember(m, p @ q.T, q)
        return [p, q]

    def decode(self, payload, shape, dtype):
        p, q = payload
        return (p @ q.T).reshape(shape).to(dtype)

    def payload_spec(self, shape, dtype=torch.float32):
        n = math.prod(shape[:-1])
        return [((n, self.rank_), dtype), ((shape[-1], self.rank_), dtype)]

    def reduce(self, x, comm):
        if comm is None or comm.world_size == 1:
            return super().reduce(x, comm)
        m = self._matrix(x)
        p = comm.all_reduce((m @ self.q.to(m.dtype)).contiguous())
        p = _orthonormalize(p)
        q_local = (p.T @ m).T
        q = comm.all_reduce(q_local.contiguous())
        self._remember(m, p @ q_local.T, q)
        return (p @ q.T).reshape(x.shape)


FAMILIES = {
    "identity": "none",
    "none": "none",
    "autoencoder": "learning",
    "topk": "pruning",
    "randk": "pruning",
    "quantize": "quantization",
    "powersgd": "low-rank",
}


@dataclass(frozen=True)
class CompressorSpec:
    """What to build at each compression site, parsed and checked once (`parse`) from a config mapping.

    `k` (wins when set) or `ratio` for Top-K and Random-K; `index_dtype` for Top-K; `rescale` and `index_pool`
    for Random-K; `bits` for quantization; `d`, `shared` (one encoder for all TP ranks instead of one per rank)
    `lr_scale` (its learning rate against the model's) and `matmul_dtype` (float32, or bfloat16 as the study's
    fp16 runs multiplied) for the auto-encoder; `rank` and `error_feedback` for PowerSGD; `warmup_steps` for any:
    fine-tuning steps with every communication uncompressed before compression starts (the study's code trains its
    first `warmup_epoch` epochs uncompressed)."""

    name: str = "identity"
    ratio: float | None = None
    k: int | None = None
    bits: int = 8
    d: int = 50
    rank: int = 4
    error_feedback: bool = False
    index_dtype: str = "int32"
    shared: bool = False
    rescale: bool = True
    index_pool: int = 16
    lr_scale: float = 1.0
    matmul_dtype: str = "float32"
    warmup_steps: int = 0

    @classmethod
    def parse(cls, options: Mapping, label: str | None = None) -> CompressorSpec:
        """A spec from a config mapping; unknown keys and bad values are UserErrors naming `label`."""
        where = f"compressors.{label}: " if label else ""
        unknown = set(options) - set(cls.__dataclass_fields__)
        require(
            not unknown,
            f"{where}unknown compressor option(s) {sorted(unknown)}; known: {sorted(cls.__dataclass_fields__)}",
        )
        for key, value in options.items():
            default = cls.__dataclass_fields__[key].default
            kind = type(default) if default is not None else (int if key == "k" else float if key == "ratio" else str)
            ok = (
                value is None
                and default is None
                or isinstance(value, kind)
                and (kind is bool or not isinstance(value, bool))
                or kind is float
                and isinstance(value, int)
            )
            require(ok, f"{where}{key} must be {kind.__name__}, got {value!r}")
        spec = cls(**dict(options))
        require(spec.name in FAMILIES, f"{where}unknown compressor {spec.name!r}; choose one of {', '.join(NAMES)}")
        require(spec.lr_scale > 0, f"{where}lr_scale must be > 0, got {spec.lr_scale}")
        require(spec.warmup_steps >= 0, f"{where}warmup_steps must be >= 0, got {spec.warmup_steps}")
        try:
            spec.build(max(spec.d + 1, spec.rank + 1, 2))  # checks bits, ratio, k, rank, index options
        except UserError as exc:
            raise UserError(f"{where}{exc}") from None
        return spec

    @property
    def family(self) -> str:
        """none, learning, pruning, quantization or low-rank (the study's grouping)."""
        return FAMILIES[self.name]

    @property
    def active(self) -> bool:
        return self.family != "none"

    def check(self, hidden: int, tokens: int, label: str | None = None) -> None:
        """Can this spec compress a (tokens x hidden) activation? UserError otherwise."""
        where = f"compressors.{label}: " if label else ""
        if self.name == "autoencoder":
            require(0 < self.d < hidden, f"{where}autoencoder width d={self.d} must be below the hidden size {hidden}")
        if self.name == "powersgd":
            require(self.rank < hidden, f"{where}powersgd rank {self.rank} must be below the hidden size {hidden}")
        if self.name in ("topk", "randk") and self.k is not None:
            require(
                self.k <= tokens * hidden,
                f"{where}k={self.k} is larger than the tensor it compresses "
                f"({tokens} tokens x {hidden} = {tokens * hidden} elements)",
            )

    def build(self, hidden: int, seed: int = 0) -> Compressor:
        """A fresh compressor for one compression site (each site has its own weights and state)."""
        return build(self, hidden, seed)

    def fewer_bytes(self, shape: tuple[int, ...], dtype: torch.dtype = torch.float32) -> float:
        """How many times fewer bytes one message takes than uncompressed."""
        return 1.0 if not self.active else self.build(shape[-1]).ratio(shape, dtype)


def build(spec: CompressorSpec, hidden: int, seed: int = 0) -> Compressor:
    """A fresh compressor for one compression site (each site has its own weights and state)."""
    name = spec.name
    if name in ("none", "identity"):
        return Identity()
    if name == "topk":
        return TopK(k=spec.k, ratio=spec.ratio, index_dtype=spec.index_dtype)
    if name == "randk":
        return RandomK(k=spec.k, ratio=spec.ratio, seed=seed, rescale=spec.rescale, pool=spec.index_pool)
    if name == "quantize":
        return Quantize(spec.bits)
    if name == "autoencoder":
        return AutoEncoder(hidden, spec.d, seed=seed, shared=spec.shared, matmul_dtype=spec.matmul_dtype)
    if name == "powersgd":
        return PowerSGD(hidden, spec.rank, spec.error_feedback, seed=seed)
    raise UserError(f"unknown compressor {name!r}; choose one of {', '.join(NAMES)}")


def spec_from_dict(d: Mapping) -> CompressorSpec:
    """`CompressorSpec.parse` without a label (kept for callers of the earlier API)."""
    return CompressorSpec.parse(d)


def parse_specs(options: Mapping[str, Mapping]) -> dict[str, CompressorSpec]:
    """Every labelled compressor of a config (`compressors:` block), parsed once."""
    return {str(label): CompressorSpec.parse(dict(o), str(label)) for label, o in options.items()}
