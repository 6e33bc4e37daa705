"""DC-VAE's losses: the hinge adversarial loss (set level), KL to the prior, and instance-level InfoNCE.

The hinge and InfoNCE losses are means over the rows this process holds; with gradients averaged over ranks
(`common.parallel.all_reduce_gradients`) that equals the single-process loss over the global batch. The KL
term is summed over the batch, as released; `train` multiplies the local sum by the world size so the
averaged gradient is that of the global sum.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def d_hinge(
    real: torch.Tensor, fake: torch.Tensor, recon: torch.Tensor | None = None, w_fake: float = 0.5, w_recon: float = 0.5
) -> torch.Tensor:
    """Discriminator hinge loss on real images, samples G(z) and reconstructions (weights 1, 0.5, 0.5).

    Without reconstructions (a plain GAN term) the samples get the full weight.
    """
    loss = F.relu(1.0 - real).mean()
    if recon is None:
        return loss + F.relu(1.0 + fake).mean()
    return loss + w_fake * F.relu(1.0 + fake).mean() + w_recon * F.relu(1.0 + recon).mean()


def g_hinge(
    fake: torch.Tensor, recon: torch.Tensor | None = None, w_fake: float = 0.5, w_recon: float = 0.5
) -> torch.Tensor:
    """Generator side of the hinge loss: raise the critic's score of samples and reconstructions."""
    if recon is None:
        return -fake.mean()
    return -(w_fake * fake.mean() + w_recon * recon.mean())


def kl_divergence(mu: torch.Tensor, logvar: torch.Tensor, reduction: str = "sum") -> torch.Tensor:
    """KL(N(mu, exp(logvar)) || N(0, I)) summed over latent dimensions, then summed over the batch (the
    release's reduction, with its weight 1e-6) or averaged (`reduction="mean"`)."""
    per_row = -0.5 * (1 + logvar - mu.pow(2) - logvar.exp()).sum(dim=1)
    return per_row.sum() if reduction == "sum" else per_row.mean()


def nce_logits(
    q: torch.Tensor,
    k: torch.Tensor,
    queue: torch.Tensor,
    temperature: float = 0.07,
    in_batch: torch.Tensor | None = None,
    offset: int = 0,
) -> torch.Tensor:
    """Logits of each query against its positive key (column 0) and its negatives, divided by temperature.

    q: (n, d) queries, k: (n, d) positive keys, queue: (K, d) negative keys (no gradient); all unit-norm.
    in_batch: optional (N, d) queries of the whole global batch (with gradient, rows `offset..offset+n`
    are this process's `q`): every other row is one more negative.
    """
    logits = [(q * k).sum(dim=1, keepdim=True), q @ queue.detach().t()]
    if in_batch is not None:
        sim = q @ in_batch.t()
        own = torch.arange(q.shape[0], device=q.device)
        logits.append(sim.index_put((own, own + offset), sim.new_tensor(float("-inf"))))
    return torch.cat(logits, dim=1) / temperature


def info_nce(
    q: torch.Tensor,
    k: torch.Tensor,
    queue: torch.Tensor,
    temperature: float = 0.07,
    in_batch: torch.Tensor | None = None,
    offset: int = 0,
) -> torch.Tensor:
    """InfoNCE: cross-entropy of the positive against the negatives (see `nce_logits`); mean over rows."""
    logits = nce_logits(q, k, queue, temperature, in_batch, offset)
    return F.cross_entropy(logits, torch.zeros(q.shape[0], dtype=torch.long, device=q.device))


@torch.no_grad()
def positive_rank_accuracy(logits: torch.Tensor, ks: tuple[int, ...] = (1, 5)) -> dict[int, float]:
    """Fraction of rows whose positive (column 0) is among the top-k logits, for each k (the release logs
    acc1/acc5): chance is k / number of columns, and a critic that tells instances apart drives it to 1."""
    rank = (logits[:, 1:] > logits[:, :1]).sum(dim=1)  # how many negatives beat the positive
    return {k: float((rank < k).float().mean()) for k in ks}


def pixel_reconstruction(x_hat: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """Mean squared error per pixel, the release's reconstruction loss (`torch.mean((x_recon - x) ** 2)`)."""
    return (x_hat - x).pow(2).mean()


@torch.no_grad()
def reconstruction_spread(x_hat: torch.Tensor) -> float:
    """Per-pixel standard deviation across the batch, averaged over pixels: 0 when every reconstruction is
    the same image (the collapse this training can fall into); compare with the same number for real x."""
    return float(x_hat.float().std(dim=0).mean()) if len(x_hat) > 1 else 0.0
