"""What leaves each party during private inference, and the check that only the logits reach the client.

Inside a party process `install(rank, trace)` wraps CrypTen's reveal functions and torch.distributed's
sending calls, so that every value the party sends is recorded as a `Sent` event with its destination and
the code that asked for it, and every value a reveal hands to a party as a `Revealed` event:

- an *opening* is a reveal requested by CrypTen's own protocols (Beaver multiplication, share conversion):
  the value opened is the secret minus a fresh random mask from the dealer, so it says nothing by itself
  (the semi-honest security of the protocol; this audit trusts CrypTen's protocols and checks our use of them);
- a *reveal* is a plaintext output requested by any other code: each must go to the input owner only and
  be rows of the final logits;
- a *protocol* message is anything else CrypTen sends (triples from the dealer, requests to it, seeds);
- a *raw* message is a send that does not come from CrypTen at all: always a leak.

`find_leaks(reports, logits, provider)` turns a run's events into a list of findings (empty: private).
"""

from __future__ import annotations

import sys
from dataclasses import dataclass, field
from pathlib import Path

import torch

MODEL_OWNER, INPUT_OWNER = 0, 1
OPENING, REVEAL, PROTOCOL, RAW = "opening", "reveal", "protocol", "raw"
# CrypTen files whose reveals open masked values (x - a, y - b with dealer triples a, b): the protocol itself
PROTOCOL_OPENERS = ("beaver.py", "converters.py", "circuit.py")
_REVEAL_FUNCTIONS = ("reveal", "reveal_batch", "get_plain_text")


@dataclass
class Sent:
    rank: int  # the sending party
    op: str  # the torch.distributed call
    to: str  # "party 1", "all", ...
    numel: int
    kind: str  # OPENING, REVEAL, PROTOCOL or RAW
    where: str  # the code that asked for it (file:function:line)
    payload: bytes | None = None  # kept when `keep_bytes` (searching the traffic for plaintext secrets)


@dataclass
class Revealed:
    rank: int  # the party that ran the reveal
    dst: int | None  # None: every party learns the value
    where: str
    shape: tuple[int, ...]
    value: torch.Tensor | None = None  # what this party learned (None when it is not a destination)


@dataclass
class Trace:
    sent: list[Sent] = field(default_factory=list)
    revealed: list[Revealed] = field(default_factory=list)
    keep_bytes: bool = False


def _crypten_file(filename: str) -> bool:
    return "/crypten/" in filename.replace("\\", "/")


def _communication_file(filename: str) -> bool:
    """torch.distributed, CrypTen's communicator, and this module's wrappers."""
    name = filename.replace("\\", "/")
    return filename == __file__ or "torch/distributed" in name or "/crypten/communicator/" in name


def _site(frame) -> str:
    return f"{Path(frame.f_code.co_filename).name}:{frame.f_code.co_name}:{frame.f_lineno}"


def _requester(frame) -> tuple[str, str]:
    """(OPENING or REVEAL, where) for a reveal whose wrapper was called from `frame`."""
    while frame is not None and (
        frame.f_code.co_filename == __file__
        or (_crypten_file(frame.f_code.co_filename) and frame.f_code.co_name in _REVEAL_FUNCTIONS)
    ):
        frame = frame.f_back  # CrypTen's own get_plain_text -> reveal wrappers, and ours
    if frame is None:
        return REVEAL, "?"
    if _crypten_file(frame.f_code.co_filename) and Path(frame.f_code.co_filename).name in PROTOCOL_OPENERS:
        return OPENING, _site(frame)
    return REVEAL, _site(frame)


def _sender(frame) -> tuple[str, str]:
    """(PROTOCOL or RAW, where) for a send outside any reveal: who called the communication layer."""
    while frame is not None and _communication_file(frame.f_code.co_filename):
        frame = frame.f_back
    if frame is None:
        return RAW, "?"
    return (PROTOCOL if _crypten_file(frame.f_code.co_filename) else RAW), _site(frame)


_active: list[tuple[str, str]] = []  # (kind, where) of the reveals in progress in this process


def install(rank: int, trace: Trace) -> None:
    """Record, in this party process, every value it sends and every value a reveal gives it."""
    import torch.distributed as dist
    from crypten.mpc.primitives.arithmetic import ArithmeticSharedTensor
    from crypten.mpc.primitives.binary import BinarySharedTensor

    def wrap_reveal(cls):
        orig, orig_batch = cls.reveal, cls.reveal_batch

        def traced(call, tensors: list, dst, values_of):
            """Run a reveal with its requester on record (so its sends are classified), then record what each
            of `tensors` revealed to this party when a plaintext output (not a protocol opening) was asked for."""
            kind, where = _requester(sys._getframe(1))
            _active.append((kind, where))
            try:
                out = call()
            finally:
                _active.pop()
            if kind == REVEAL:
                learned = out is not None and (dst is None or dst == rank)
                for t, value in zip(tensors, values_of(out) if learned else [None] * len(tensors)):
                    if value is not None:
                        value = t.encoder.decode(value) if cls is ArithmeticSharedTensor else value.clone()
                    trace.revealed.append(Revealed(rank, dst, where, tuple(t.share.shape), value))
            return out

        def reveal(self, dst=None):
            return traced(lambda: orig(self, dst), [self], dst, lambda out: [out])

        def reveal_batch(tensor_or_list, dst=None):
            if not isinstance(tensor_or_list, list):
                return tensor_or_list.reveal(dst=dst)
            return traced(lambda: orig_batch(tensor_or_list, dst), tensor_or_list, dst, list)

        cls.reveal = reveal
        cls.reveal_batch = staticmethod(reveal_batch)

    wrap_reveal(ArithmeticSharedTensor)
    wrap_reveal(BinarySharedTensor)

    def record(op: str, to: str, tensor) -> None:
        tensors = tensor if isinstance(tensor, (list, tuple)) else [tensor]
        tensors = [t for t in tensors if isinstance(t, torch.Tensor)]
        kind, where = _active[-1] if _active else _sender(sys._getframe(2))
        payload = (
            b"".join(t.detach().cpu().contiguous().numpy().tobytes() for t in tensors) if trace.keep_bytes else None
        )
        trace.sent.append(Sent(rank, op, to, sum(t.numel() for t in tensors), kind, where, payload))

    def wrap(name: str, to_of, tensor_of, sends=lambda a, kw: True):
        orig = getattr(dist, name)

        def wrapper(*args, **kwargs):
            if sends(args, kwargs):
                record(name, to_of(args, kwargs), tensor_of(args, kwargs))
            return orig(*args, **kwargs)

        setattr(dist, name, wrapper)

    def arg(i: int, key: str):
        return lambda a, kw: kw.get(key, a[i] if len(a) > i else None)

    def party(i: int, key: str):
        return lambda a, kw: f"party {arg(i, key)(a, kw)}"

    everyone = lambda a, kw: "all"  # noqa: E731
    from_me = lambda i, key: lambda a, kw: arg(i, key)(a, kw) == rank  # noqa: E731
    wrap("send", party(1, "dst"), arg(0, "tensor"))
    wrap("isend", party(1, "dst"), arg(0, "tensor"))
    wrap("reduce", party(1, "dst"), arg(0, "tensor"))
    wrap("gather", party(2, "dst"), arg(0, "tensor"))
    wrap("all_reduce", everyone, arg(0, "tensor"))
    wrap("all_gather", everyone, arg(1, "tensor"))
    wrap("broadcast", everyone, arg(0, "tensor"), from_me(1, "src"))
    wrap("scatter", everyone, arg(1, "scatter_list"), from_me(2, "src"))


def find_leaks(traces: dict[int, Trace], logits: torch.Tensor | None, provider: str) -> list[str]:
    """Every way the run let a party learn more than the protocol allows: an empty list means only the final
    logits were revealed, only to the input owner, and nothing left a party outside CrypTen's protocol."""
    leaks: list[str] = []
    if provider != "TTP":
        leaks.append(
            f"provider {provider}: the model owner generates every multiplication triple and can "
            "unmask every opened value (the client's input included)"
        )
    for rank, trace in sorted(traces.items()):
        for s in trace.sent:
            if s.kind == RAW:
                leaks.append(f"party {rank} sent {s.numel} values to {s.to} outside the protocol ({s.where})")
        for r in trace.revealed:
            if r.dst != INPUT_OWNER:
                to = "every party" if r.dst is None else f"party {r.dst}"
                leaks.append(f"a {r.shape} value was revealed to {to} ({r.where})")
            elif rank == INPUT_OWNER and not _rows_of(r.value, logits):
                leaks.append(f"party {INPUT_OWNER} learned a {r.shape} value that is not the logits ({r.where})")
    return list(dict.fromkeys(leaks))  # a reveal every party takes part in is reported once


def _rows_of(value: torch.Tensor | None, logits: torch.Tensor | None) -> bool:
    """Whether `value` is a block of consecutive rows of `logits`."""
    if value is None or logits is None or value.dim() != 2 or value.shape[1:] != logits.shape[1:]:
        return False
    n = value.shape[0]
    return any(torch.equal(value, logits[lo : lo + n]) for lo in range(0, logits.shape[0] - n + 1))
