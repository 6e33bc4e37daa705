"""Pipeline stages: what crosses a stage boundary (with a hook for compression) and the GPipe and 1F1B
schedules.

Hand-written rather than `torch.distributed.pipelining` (ScheduleGPipe/Schedule1F1B run on gloo here): its
stages send with `dist.batch_isend_irecv` themselves, so a boundary cannot encode the activation gradient it
sends back, send integer payloads, or go through a `CountingComm` (byte counts, link emulation).

A `Boundary` is one pipeline cut. With no hooks it sends the activation forward and its gradient backward as
they are; `forward` / `backward` hooks (compressors) encode what is sent and decode what is received:
`encode(x) -> payload tensors`, `decode(payload, shape, dtype) -> x`, `payload_spec(shape, dtype) -> [(shape,
dtype)]` (what the receiver allocates), and `trainable` (the codes themselves are differentiated: the receiver
decodes inside its graph and sends the codes' gradient back, so no backward hook applies).
Sends are non-blocking (`CountingComm.isend`); a schedule waits for them at its end.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch

from common.collectives import CountingComm
from common.errors import require

SCHEDULES = ("gpipe", "1f1b")


@dataclass
class Boundary:
    """One pipeline cut; both neighbours hold the same hooks (built from one seed)."""

    forward: Any = None  # encodes the activation sent forward
    backward: Any = None  # encodes the activation gradient sent back (ignored under a trainable `forward`)

    @property
    def _codes_differentiated(self) -> bool:
        return self.forward is not None and getattr(self.forward, "trainable", False)

    def send_forward(self, x: torch.Tensor, comm: CountingComm, dst: int) -> list[torch.Tensor]:
        """Encode and send `x`; returns what the backward pass differentiates (the codes, or `x`)."""
        if self.forward is None:
            _send([x], comm, dst)
            return [x]
        payload = self.forward.encode(x)
        _send(payload, comm, dst)
        return payload[:1] if self._codes_differentiated else [x]

    def recv_forward(
        self,
        shape: tuple[int, ...],
        comm: CountingComm,
        src: int,
        dtype: torch.dtype | None = None,
        device: torch.device | str = "cpu",
    ) -> tuple[torch.Tensor, list[torch.Tensor]]:
        """Receive and decode; returns the activation and the leaves whose gradients go back."""
        dtype = dtype or torch.get_default_dtype()
        if self.forward is None:
            (x,) = _recv([(shape, dtype)], comm, src, device)
            x.requires_grad_()
            return x, [x]
        payload = _recv(self.forward.payload_spec(shape, dtype), comm, src, device)
        if self._codes_differentiated:
            payload[0].requires_grad_()
            return self.forward.decode(payload, torch.Size(shape), dtype), payload[:1]
        x = self.forward.decode(payload, torch.Size(shape), dtype).detach().requires_grad_()
        return x, [x]

    def send_backward(self, leaves: list[torch.Tensor], comm: CountingComm, dst: int) -> None:
        grads = [leaf.grad if leaf.grad is not None else torch.zeros_like(leaf) for leaf in leaves]
        if self.backward is not None and not self._codes_differentiated:
            grads = self.backward.encode(grads[0])
        _send(grads, comm, dst)

    def recv_backward(self, outputs: list[torch.Tensor], comm: CountingComm, src: int) -> list[torch.Tensor]:
        if self.backward is not None and not self._codes_differentiated:
            shape, dtype = tuple(outputs[0].shape), outputs[0].dtype
            payload = _recv(self.backward.payload_spec(shape, dtype), comm, src, outputs[0].device)
            return [self.backward.decode(payload, torch.Size(shape), dtype)]
        return _recv([(tuple(o.shape), o.dtype) for o in outputs], comm, src, outputs[0].device)


def _send(tensors: list[torch.Tensor], comm: CountingComm, dst: int) -> None:
    for t in tensors:
        comm.isend(t.detach().contiguous(), dst)


def _recv(spec, comm: CountingComm, src: int, device: torch.device | str = "cpu") -> list[torch.Tensor]:
    return [comm.recv(torch.empty(shape, dtype=dtype, device=device), src) for shape, dtype in spec]


def schedule_order(schedule: str, pp: int, stage: int, n_micro: int) -> list[tuple[str, int]]:
    """The ("F"|"B", micro-batch) actions of `stage`, in order.

    GPipe: every forward, then every backward. 1F1B (PipeDream-flush): `pp - stage - 1` warm-up forwards, then
    one forward and one backward in turn, then the remaining backwards; at most `pp - stage` micro-batches'
    activations are alive at once instead of `n_micro`. Backwards run in micro-batch order in both, so the
    gradients accumulate in the same order and the two schedules give identical gradients."""
    require(schedule in SCHEDULES, f"unknown pipeline schedule {schedule!r}; choose one of {', '.join(SCHEDULES)}")
    require(0 <= stage < pp and n_micro >= 1, f"bad stage {stage} of {pp} or {n_micro} micro-batches")
    if schedule == "gpipe":
        return [("F", i) for i in range(n_micro)] + [("B", i) for i in range(n_micro)]
    warm = min(pp - stage - 1, n_micro)
    order = [("F", i) for i in range(warm)]
    for i in range(n_micro - warm):
        order += [("F", warm + i), ("B", i)]
    return order + [("B", i) for i in range(n_micro - warm, n_micro)]


def in_flight(schedule: str, pp: int, stage: int, n_micro: int) -> int:
    """Most micro-batches whose activations `stage` holds at once under `schedule`."""
    alive = peak = 0
    for kind, _ in schedule_order(schedule, pp, stage, n_micro):
        alive += 1 if kind == "F" else -1
        peak = max(peak, alive)
    return peak


def pipeline_step(
    stage_fn: Callable[[torch.Tensor | None, int], torch.Tensor],
    loss_fn: Callable[[torch.Tensor, int], torch.Tensor],
    comm: CountingComm | None,
    stage: int,
    pp: int,
    n_micro: int,
    act_shape: tuple[int, ...],
    prev_rank: int | None = None,
    next_rank: int | None = None,
    boundary_in: Boundary | None = None,
    boundary_out: Boundary | None = None,
    schedule: str = "gpipe",
    device: torch.device | str = "cpu",
) -> torch.Tensor | None:
    """One forward/backward over `n_micro` micro-batches under `schedule`.

    `stage_fn(x, i)` runs this stage on micro-batch i (x is None on the first stage, which reads its own
    input); `loss_fn(out, i)` is the last stage's loss of micro-batch i (divide by `n_micro` for a mean).
    Gradients accumulate in the stage's parameters. Returns the summed loss on the last stage, else None.
    `prev_rank` / `next_rank` are the global ranks of the neighbouring stages.
    """
    first, last = stage == 0, stage == pp - 1
    boundary_in, boundary_out = boundary_in or Boundary(), boundary_out or Boundary()
    held: dict[int, tuple[list[torch.Tensor], list[torch.Tensor]]] = {}
    total = None
    for kind, i in schedule_order(schedule, pp, stage, n_micro):
        if kind == "F":
            x, leaves = None, []
            if not first:
                x, leaves = boundary_in.recv_forward(act_shape, comm, prev_rank, device=device)
            out = stage_fn(x, i)
            if last:
                loss = loss_fn(out, i)
                total = loss.detach() if total is None else total + loss.detach()
                held[i] = (leaves, [loss])
            else:
                held[i] = (leaves, boundary_out.send_forward(out, comm, next_rank))
        else:
            leaves, outputs = held.pop(i)
            if last:
                torch.autograd.backward(outputs)
            else:
                torch.autograd.backward(outputs, boundary_out.recv_backward(outputs, comm, next_rank))
            if not first:
                boundary_in.send_backward(leaves, comm, prev_rank)
    if comm is not None:
        comm.wait_pending()
    return total
