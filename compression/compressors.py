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
from dataclasses import dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F

from common.errors import UserError, require

Spec = list[tuple[tuple[int, ...], torch.dtype]]

NAMES = ("identity", "topk", "randk", "quantize", "autoencoder", "powersgd")


class Compressor(nn.Module):
    """Base class: `decode(encode(x))` approximates `x`; `wire_bytes(shape)` is what one message costs."""

    name = "base"
    trainable = False
    collective = "all_gather"

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


class TopK(Compressor):
    """The k largest magnitudes and their flat indices (int32, or int64 as the study sent them)."""

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
        idx = flat.abs().topk(_count(flat.numel(), self.k, self.keep), sorted=False).indices
        return [flat[idx], idx.to(self.index_dtype)]

    def decode(self, payload, shape, dtype):
        values, idx = payload
        out = torch.zeros(math.prod(shape), dtype=dtype)
        return out.index_put((idx.long(),), values.to(dtype)).reshape(shape)

    def payload_spec(self, shape, dtype=torch.float32):
        k = _count(math.prod(shape), self.k, self.keep)
        return [((k,), dtype), ((k,), self.index_dtype)]


class RandomK(Compressor):
    """k random elements; the indices come from a seed every rank shares, so only the values travel and
    ranks can all-reduce them. The seed advances with every call (the same on every rank)."""

    name = "randk"
    collective = "all_reduce"

    def __init__(self, k: int | None = None, ratio: float | None = None, seed: int = 0):
        super().__init__()
        require(k is not None or ratio is not None, "randk: give k or ratio")
        require(k is None or k >= 1, f"randk: k must be >= 1, got {k}")
        require(k is not None or 0 < ratio <= 1, f"randk: ratio must be in (0, 1], got {ratio}")
        self.k, self.keep, self.seed = k, ratio, seed
        self.encoded = self.decoded = 0  # the n-th decode uses the n-th encode's indices, on any rank

    def _indices(self, numel: int, call: int) -> torch.Tensor:
        g = torch.Generator().manual_seed(self.seed * 1_000_003 + call)
        return torch.randperm(numel, generator=g)[:_count(numel, self.k, self.keep)]

    def encode(self, x):
        idx = self._indices(x.numel(), self.encoded)
        self.encoded += 1
        return [x.reshape(-1)[idx]]

    def get_extra_state(self):
        return {"encoded": self.encoded, "decoded": self.decoded}

    def set_extra_state(self, state):
        self.encoded, self.decoded = int(state["encoded"]), int(state["decoded"])

    def decode(self, payload, shape, dtype):
        idx = self._indices(math.prod(shape), self.decoded)
        self.decoded += 1
        out = torch.zeros(math.prod(shape), dtype=dtype)
        return out.index_put((idx,), payload[0].to(dtype)).reshape(shape)

    def payload_spec(self, shape, dtype=torch.float32):
        return [((_count(math.prod(shape), self.k, self.keep),), dtype)]


def pack_bits(q: torch.Tensor, bits: int) -> torch.Tensor:
    """Pack integers in [0, 2**bits) into bytes, 8 // bits per byte (zero-padded at the end)."""
    per = 8 // bits
    q = q.reshape(-1).to(torch.uint8)
    q = F.pad(q, (0, (-q.numel()) % per)).reshape(-1, per)
    shifts = torch.arange(per, dtype=torch.uint8) * bits
    return (q << shifts).sum(dim=1, dtype=torch.uint8)


def unpack_bits(packed: torch.Tensor, bits: int, numel: int) -> torch.Tensor:
    per = 8 // bits
    shifts = torch.arange(per, dtype=torch.uint8) * bits
    q = (packed.reshape(-1, 1) >> shifts) & ((1 << bits) - 1)
    return q.reshape(-1)[:numel]


class Quantize(Compressor):
    """Uniform b-bit quantization with a per-channel (last dimension) offset and scale, bit-packed."""

    name = "quantize"

    def __init__(self, bits: int = 8):
        super().__init__()
        require(bits in (2, 4, 8), f"quantize: bits must be one of 2, 4, 8, got {bits}")
        self.bits = bits

    def encode(self, x):
        rows = x.reshape(-1, x.shape[-1])
        lo, hi = rows.amin(dim=0), rows.amax(dim=0)
        scale = ((hi - lo) / (2 ** self.bits - 1)).clamp_min(1e-12)
        q = torch.round((rows - lo) / scale).clamp_(0, 2 ** self.bits - 1)
        return [pack_bits(q, self.bits), scale, lo]

    def decode(self, payload, shape, dtype):
        packed, scale, lo = payload
        q = unpack_bits(packed, self.bits, math.prod(shape)).reshape(-1, shape[-1]).to(dtype)
        return (q * scale.to(dtype) + lo.to(dtype)).reshape(shape)

    def payload_spec(self, shape, dtype=torch.float32):
        n = math.prod(shape)
        return [((math.ceil(n * self.bits / 8),), torch.uint8), ((shape[-1],), dtype), ((shape[-1],), dtype)]


class AutoEncoder(Compressor):
    """A linear encoder (hidden -> d, no bias, so it commutes with the tensor-parallel sum) and a linear
    decoder (d -> hidden), trained end to end with the task loss. Each rank encodes its partial sum with the
    same encoder, so the encoder's gradient must be summed over the tensor-parallel group (`tp_partial`)."""

    name = "autoencoder"
    trainable = True
    collective = "all_reduce"

    def __init__(self, hidden: int, d: int, seed: int = 0):
        super().__init__()
        require(0 < d < hidden, f"autoencoder: width d must be in [1, hidden={hidden}), got {d}")
        g = torch.Generator().manual_seed(seed)
        basis = torch.linalg.qr(torch.randn(hidden, d, generator=g)).Q  # orthonormal columns
        self.encoder = nn.Linear(hidden, d, bias=False)
        self.decoder = nn.Linear(d, hidden)
        with torch.no_grad():
            self.encoder.weight.copy_(basis.T)
            self.decoder.weight.copy_(basis)
            self.decoder.bias.zero_()
        self.encoder.weight.tp_partial = True

    def encode(self, x):
        return [self.encoder(x)]

    def decode(self, payload, shape, dtype):
        return self.decoder(payload[0]).reshape(shape)

    def payload_spec(self, shape, dtype=torch.float32):
        return [((*shape[:-1], self.encoder.out_features), dtype)]


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
        q = m.T @ p
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
        q_local = m.T @ p
        q = comm.all_reduce(q_local.clone())
        self._remember(m, p @ q_local.T, q)
        return (p @ q.T).reshape(x.shape)


@dataclass
class CompressorSpec:
    """What to build at each compression site. `k` (wins when set) or `ratio` for Top-K and Random-K, `bits` for quantization,
    `d` for the auto-encoder, `rank` and `error_feedback` for PowerSGD."""

    name: str = "identity"
    ratio: float | None = None
    k: int | None = None
    bits: int = 8
    d: int = 50
    rank: int = 4
    error_feedback: bool = False
    index_dtype: str = "int32"


def build(spec: CompressorSpec, hidden: int, seed: int = 0) -> Compressor:
    """A fresh compressor for one compression site (each site has its own weights and state)."""
    name = spec.name
    if name in ("none", "identity"):
        return Identity()
    if name == "topk":
        return TopK(k=spec.k, ratio=spec.ratio, index_dtype=spec.index_dtype)
    if name == "randk":
        return RandomK(k=spec.k, ratio=spec.ratio, seed=seed)
    if name == "quantize":
        return Quantize(spec.bits)
    if name == "autoencoder":
        return AutoEncoder(hidden, spec.d, seed=seed)
    if name == "powersgd":
        return PowerSGD(hidden, spec.rank, spec.error_feedback, seed=seed)
    raise UserError(f"unknown compressor {name!r}; choose one of {', '.join(NAMES)}")


def spec_from_dict(d: dict) -> CompressorSpec:
    known = CompressorSpec.__dataclass_fields__
    unknown = set(d) - set(known)
    require(not unknown, f"unknown compressor option(s) {sorted(unknown)}; known: {sorted(known)}")
    return CompressorSpec(**d)
