"""Momentum keys and the queue of negatives, filled across ranks (MoCo-style, for DC-VAE's contrastive critic).

Query = the discriminator's features of a reconstruction x_hat; positive key = the momentum discriminator's
features of the same real x; negatives = a queue of past keys. Each step the keys of every rank are gathered
(rank order) into the queue, so all ranks hold the same queue, and with `in_batch=True` the queries of the
whole global batch (gathered with gradient) are negatives too. The released code ran one process and
enqueued only its own batch.
"""

from __future__ import annotations

import copy

import torch
import torch.nn.functional as F
from torch import nn

from common.collectives import all_gather_with_grad, gather_into_queue
from common.distributed import rank
from common.errors import UserError

from .losses import nce_logits, positive_rank_accuracy


class ContrastiveNegatives(nn.Module):
    """The momentum ("key") copy of the discriminator and one queue of unit-norm keys per feature layer."""

    def __init__(
        self,
        disc: nn.Module,
        layers: tuple[str, ...] = ("b1", "final"),
        dim: int = 16,
        queue_size: int = 8192,
        momentum: float = 0.999,
        temperature: float = 0.07,
        in_batch: bool = False,
        global_batch: int | None = None,
    ):
        super().__init__()
        if global_batch is not None and queue_size % global_batch:
            raise UserError(f"queue size {queue_size} is not divisible by the global batch {global_batch}")
        self.layers, self.momentum, self.temperature, self.in_batch = tuple(layers), momentum, temperature, in_batch
        self.key_disc = copy.deepcopy(disc).requires_grad_(False)
        for name in self.layers:
            self.register_buffer(f"queue_{name}", F.normalize(torch.randn(queue_size, dim), dim=1))
        self.register_buffer("ptr", torch.zeros((), dtype=torch.long))

    def queue(self, name: str) -> torch.Tensor:
        return getattr(self, f"queue_{name}")

    @torch.no_grad()
    def update_key_encoder(self, disc: nn.Module) -> None:
        """EMA of the online discriminator's parameters (buffers, e.g. spectral-norm vectors, are copied)."""
        for p_k, p in zip(self.key_disc.parameters(), disc.parameters()):
            p_k.lerp_(p, 1.0 - self.momentum)
        for b_k, b in zip(self.key_disc.buffers(), disc.buffers()):
            b_k.copy_(b)

    @torch.no_grad()
    def keys(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        feats = self.key_disc.features(x)
        return {name: F.normalize(feats[name], dim=1) for name in self.layers}

    def loss(
        self, query_feats: dict[str, torch.Tensor], keys: dict[str, torch.Tensor]
    ) -> tuple[torch.Tensor, dict[str, float]]:
        """Mean over layers of InfoNCE(query, key, queue [+ the global batch's other queries]) (the release
        weights each of its two layers 1/2), and per layer the top-1/top-5 accuracy of the positive."""
        total, stats = 0.0, {}
        for name in self.layers:
            q = F.normalize(query_feats[name], dim=1)
            extra = all_gather_with_grad(q) if self.in_batch else None
            logits = nce_logits(q, keys[name], self.queue(name), self.temperature, extra, offset=rank() * q.shape[0])
            total = total + F.cross_entropy(logits, torch.zeros(len(q), dtype=torch.long, device=q.device))
            acc = positive_rank_accuracy(logits)
            stats[f"nce_top1_{name}"], stats[f"nce_top5_{name}"] = acc[1], acc[5]
        return total / len(self.layers), stats

    @torch.no_grad()
    def enqueue(self, keys: dict[str, torch.Tensor]) -> None:
        """Write every rank's keys into the queues (same pointer for all layers)."""
        ptr = int(self.ptr)
        for name in self.layers:
            new_ptr = gather_into_queue(self.queue(name), ptr, keys[name])
        self.ptr.fill_(new_ptr)
