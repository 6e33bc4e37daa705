"""DC-VAE's losses: the hinge adversarial loss (set level), KL to the prior, and instance-level InfoNCE.

Every loss is a mean over the rows this process holds. With the gradients averaged over ranks (what
`train.allreduce_grads` does), that equals the single-process loss over the global batch.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def d_hinge(real: torch.Tensor, fake: torch.Tensor, recon: torch.Tensor | None = None,
            w_fake: float = 0.5, w_recon: float = 0.5) -> torch.Tensor:
    """Discriminator hinge loss on real images, samples G(z) and reconstructions (weights 1, 0.5, 0.5).

    Without reconstructions (a plain GAN term) the samples get the full weight.
    """
    loss = F.relu(1.0 - real).mean()
    if recon is None:
        return loss + F.relu(1.0 + fake).mean()
    return loss + w_fake * F.relu(1.0 + fake).mean() + w_recon * F.relu(1.0 + recon).mean()


def g_hinge(fake: torch.Tensor, recon: torch.Tensor | None = None, w_fake: float = 0.5,
            w_recon: float = 0.5) -> torch.Tensor:
    """Generator side of the hinge loss: raise the critic's score of samples and reconstructions."""
    if recon is None:
        return -fake.mean()
    return -(w_fake * fake.mean() + w_recon * recon.mean())


def kl_divergence(mu: torch.Tensor, logvar: torch.Tensor) -> torch.Tensor:
    """KL(N(mu, exp(logvar)) || N(0, I)), summed over latent dimensions, mean over the batch."""
    return (-0.5 * (1 + logvar - mu.pow(2) - logvar.exp()).sum(dim=1)).mean()


def info_nce(q: torch.Tensor, k: torch.Tensor, queue: torch.Tensor, temperature: float = 0.07,
             in_batch: torch.Tensor | None = None, offset: int = 0) -> torch.Tensor:
    """InfoNCE of each query against its positive key and a set of negatives; mean over the rows of `q`.

    q: (n, d) queries, k: (n, d) positive keys, queue: (K, d) negative keys (no gradient); all unit-norm.
    in_batch: optional (N, d) queries of the whole global batch (with gradient, rows `offset..offset+n`
    are this process's `q`): every other row is one more negative.
    """
    pos = (q * k).sum(dim=1, keepdim=True)
    logits = [pos, q @ queue.detach().t()]
    if in_batch is not None:
        sim = q @ in_batch.t()
        own = torch.arange(q.shape[0], device=q.device)
        sim = sim.index_put((own, own + offset), sim.new_tensor(float("-inf")))
        logits.append(sim)
    logits = torch.cat(logits, dim=1) / temperature
    return F.cross_entropy(logits, torch.zeros(q.shape[0], dtype=torch.long, device=q.device))


def pixel_reconstruction(x_hat: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """Squared error summed over pixels, mean over the batch (a Gaussian likelihood, for the VAE baselines)."""
    return (x_hat - x).pow(2).flatten(1).sum(dim=1).mean()
