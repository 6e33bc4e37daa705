"""DC-VAE networks: a residual encoder (to mean and log-variance), a residual decoder, and a discriminator that
is both an adversary (hinge head) and a contrastive critic (features at two depths, "b1" and "final").

The shapes follow the paper's CIFAR-10 model (encoder/discriminator: an optimized first block, one more
downsampling block, then two plain blocks, global sum pooling; decoder: a linear map to a 4x4 (or 7x7 at 28 px)
grid, then upsampling cells to the image size, tanh). Widths are configurable so that the same code runs a
seconds-long test and the paper's 128/256-channel model. Spectral norm is on the discriminator (and, as in the
released code, on the encoder), not on the decoder. Every layer is per-sample (no batch norm), so a batch split
over ranks computes exactly what one process computes on the whole batch.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.utils.parametrizations import spectral_norm

from common.errors import UserError

SUPPORTED_RESOLUTIONS = (28, 32, 48, 64, 96, 128, 256)
POOLS = ("sum", "mean", "flatten")


@dataclass
class ModelConfig:
    resolution: int = 32
    channels: int = 3  # image channels
    latent_dim: int = 128
    enc_ch: int = 128  # encoder width (the paper: 128)
    dec_ch: int = 256  # decoder width (the paper: 256)
    disc_ch: int = 128  # discriminator width (the paper: 128)
    cont_dim: int = 16  # contrastive embedding size (the paper: 16)
    spectral_norm_encoder: bool = True  # as in the released code
    encoder_pool: str = "sum"  # "sum" (released code), "mean", or "flatten" (narrow mini models, see Encoder)

    def __post_init__(self) -> None:
        grid(self.resolution)
        if self.encoder_pool not in POOLS:
            raise UserError(f"unknown model.encoder_pool {self.encoder_pool!r}; choose one of {', '.join(POOLS)}")
        for name in ("channels", "latent_dim", "enc_ch", "dec_ch", "disc_ch", "cont_dim"):
            if int(getattr(self, name)) < 1:
                raise UserError(f"model.{name} must be >= 1, got {getattr(self, name)}")


def grid(resolution: int) -> tuple[int, int]:
    """(bottom width, number of 2x steps) with bottom * 2**steps == resolution, bottom in {4, 6, 7}."""
    if resolution not in SUPPORTED_RESOLUTIONS:
        raise UserError(f"unsupported resolution {resolution}; choose one of {', '.join(map(str, SUPPORTED_RESOLUTIONS))}")
    for bottom in (4, 7, 6):
        steps = math.log2(resolution / bottom)
        if steps == int(steps) and steps >= 2:
            return bottom, int(steps)
    raise UserError(f"unsupported resolution {resolution}")  # unreachable for SUPPORTED_RESOLUTIONS


def _sn(module: nn.Module, on: bool) -> nn.Module:
    return spectral_norm(module) if on else module


class DownBlock(nn.Module):
    """Pre-activation residual block (ReLU, conv, ReLU, conv, optional 2x average-pool downsampling)."""

    def __init__(self, cin: int, cout: int, down: bool, sn: bool, first: bool = False):
        super().__init__()
        self.first, self.down = first, down
        self.c1 = _sn(nn.Conv2d(cin, cout, 3, padding=1), sn)
        self.c2 = _sn(nn.Conv2d(cout, cout, 3, padding=1), sn)
        self.sc = _sn(nn.Conv2d(cin, cout, 1), sn) if (cin != cout or down) else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = x if self.first else F.relu(x)
        h = self.c2(F.relu(self.c1(h)))
        s = x
        if self.first:  # the "optimized" first block pools before its shortcut conv
            s = self.sc(F.avg_pool2d(s, 2))
        elif self.sc is not None:
            s = self.sc(s)
            s = F.avg_pool2d(s, 2) if self.down else s
        if self.down:
            h = F.avg_pool2d(h, 2)
        return h + s


class Trunk(nn.Module):
    """Shared by the encoder and the discriminator: downsample to the bottom grid, then two plain blocks."""

    def __init__(self, cfg: ModelConfig, width: int, sn: bool, pool: str = "sum"):
        super().__init__()
        self.pool = pool
        bottom, steps = grid(cfg.resolution)
        n_down = steps - 1 if bottom == 4 else steps  # 32 px -> 8x8 as in the paper; 28 px -> 7x7
        blocks = [DownBlock(cfg.channels, width, down=True, sn=sn, first=True)]
        blocks += [DownBlock(width, width, down=True, sn=sn) for _ in range(n_down - 1)]
        blocks += [DownBlock(width, width, down=False, sn=sn) for _ in range(2)]
        self.blocks = nn.ModuleList(blocks)
        self.out_dim = width * (bottom if bottom != 4 else 2 * bottom) ** 2 if pool == "flatten" else width

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Returns (output of the first block, globally pooled features after the last block)."""
        first = h = self.blocks[0](x)
        for b in self.blocks[1:]:
            h = b(h)
        h = F.relu(h)
        if self.pool == "flatten":
            return first, h.flatten(1)
        return first, h.sum(dim=(2, 3)) if self.pool == "sum" else h.mean(dim=(2, 3))


class Encoder(nn.Module):
    """x -> (mu, logvar).

    `encoder_pool`: the released code sums the last feature map over positions ("sum"); at mini widths (16
    channels) a globally pooled 16-vector is too small a bottleneck and an autoencoder stays near the mean
    image for hundreds of steps, so mini models flatten the 8x8 map instead ("flatten").
    """

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.trunk = Trunk(cfg, cfg.enc_ch, cfg.spectral_norm_encoder, pool=cfg.encoder_pool)
        self.out = _sn(nn.Linear(self.trunk.out_dim, 2 * cfg.latent_dim, bias=False), cfg.spectral_norm_encoder)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        mu, logvar = self.out(self.trunk(x)[1]).chunk(2, dim=1)
        return mu, logvar


class UpCell(nn.Module):
    """Residual 2x upsampling cell (GroupNorm, ReLU, upsample, conv, GroupNorm, ReLU, conv) + 1x1 shortcut."""

    def __init__(self, ch: int):
        super().__init__()
        g = math.gcd(ch, 8)
        self.n1, self.n2 = nn.GroupNorm(g, ch), nn.GroupNorm(g, ch)
        self.c1, self.c2 = nn.Conv2d(ch, ch, 3, padding=1), nn.Conv2d(ch, ch, 3, padding=1)
        self.sc = nn.Conv2d(ch, ch, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = F.interpolate(F.relu(self.n1(x)), scale_factor=2, mode="nearest")
        h = self.c2(F.relu(self.n2(self.c1(h))))
        return h + self.sc(F.interpolate(x, scale_factor=2, mode="nearest"))


class Decoder(nn.Module):
    """z -> image in [-1, 1]."""

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.bottom, steps = grid(cfg.resolution)
        self.ch = cfg.dec_ch
        self.fc = nn.Linear(cfg.latent_dim, self.bottom * self.bottom * cfg.dec_ch)
        self.cells = nn.Sequential(*[UpCell(cfg.dec_ch) for _ in range(steps)])
        self.to_img = nn.Sequential(nn.GroupNorm(math.gcd(cfg.dec_ch, 8), cfg.dec_ch), nn.ReLU(),
                                    nn.Conv2d(cfg.dec_ch, cfg.channels, 3, padding=1), nn.Tanh())

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        h = self.fc(z).view(-1, self.ch, self.bottom, self.bottom)
        return self.to_img(self.cells(h))


class Discriminator(nn.Module):
    """The dual critic: `forward(x)` gives the hinge logit; `features(x)` the contrastive embeddings.

    "final" is the 16-d embedding h that also feeds the adversarial head; "b1" is a 1x1 conv on the first
    block's feature map, flattened and projected to the same size.
    """

    LAYERS = ("b1", "final")

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.trunk = Trunk(cfg, cfg.disc_ch, sn=True)
        self.embed = spectral_norm(nn.Linear(cfg.disc_ch, cfg.cont_dim, bias=False))
        self.adv_head = spectral_norm(nn.Linear(cfg.cont_dim, 1))
        side = cfg.resolution // 2
        self.b1_head = nn.Sequential(nn.Conv2d(cfg.disc_ch, 1, 1), nn.Flatten(),
                                     nn.Linear(side * side, cfg.cont_dim, bias=False))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.adv_head(self.embed(self.trunk(x)[1])).squeeze(1)

    def features(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        first, pooled = self.trunk(x)
        return {"b1": self.b1_head(first), "final": self.embed(pooled)}


class DCVAE(nn.Module):
    """Encoder + decoder (the generative autoencoder) and the discriminator, with the EMA decoder for eval."""

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.cfg = cfg
        self.encoder = Encoder(cfg)
        self.decoder = Decoder(cfg)
        self.disc = Discriminator(cfg)
        self.decoder_ema = Decoder(cfg)
        self.decoder_ema.load_state_dict(self.decoder.state_dict())
        self.decoder_ema.requires_grad_(False)

    def reparameterize(self, x: torch.Tensor, clamp: bool = True) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """z = mu + eps * std, clamped to [-1, 1] as in the released code; returns (z, mu, logvar)."""
        mu, logvar = self.encoder(x)
        z = mu + torch.randn_like(mu) * torch.exp(0.5 * logvar)
        return (z.clamp(-1, 1) if clamp else z), mu, logvar

    @torch.no_grad()
    def update_ema(self, decay: float) -> None:
        for p_ema, p in zip(self.decoder_ema.parameters(), self.decoder.parameters()):
            p_ema.lerp_(p, 1.0 - decay)
        for b_ema, b in zip(self.decoder_ema.buffers(), self.decoder.buffers()):
            b_ema.copy_(b)

    @torch.no_grad()
    def sample(self, n: int, generator: torch.Generator | None = None, ema: bool = True,
               batch: int = 500) -> torch.Tensor:
        dec = self.decoder_ema if ema else self.decoder
        z = torch.randn(n, self.cfg.latent_dim, generator=generator)
        return torch.cat([dec(z[i:i + batch]) for i in range(0, n, batch)])

    @torch.no_grad()
    def reconstruct(self, x: torch.Tensor, ema: bool = True, batch: int = 500) -> torch.Tensor:
        """Decode the posterior mean (deterministic reconstructions for evaluation)."""
        dec = self.decoder_ema if ema else self.decoder
        return torch.cat([dec(self.encoder(x[i:i + batch])[0].clamp(-1, 1)) for i in range(0, len(x), batch)])

    @torch.no_grad()
    def encode_mean(self, x: torch.Tensor, batch: int = 500) -> torch.Tensor:
        return torch.cat([self.encoder(x[i:i + batch])[0] for i in range(0, len(x), batch)])
