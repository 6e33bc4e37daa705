"""DC-VAE networks as in the authors' released CIFAR-10 code (`models/models_32.py`): a residual encoder (to
mean and log-variance), a decoder of three upsampling cells with cross-scale skip connections, and a
discriminator that is both an adversary (hinge head) and a contrastive critic (features "b1" and "final").

- Encoder / discriminator trunk: an optimized first block (conv, ReLU, conv, pool; shortcut pool then 1x1),
  one more downsampling block, two plain blocks, ReLU, a sum over positions. Spectral norm on the discriminator
  and on the encoder, as released.
- Decoder: a linear map to a 4x4 grid (256 channels), then cells that upsample (nearest, bilinear, nearest),
  with no normalization inside; cell i adds 1x1 convs of the first conv outputs of every earlier cell
  (resized), the first two have a 1x1 residual shortcut, the last has none; `to_rgb` is BatchNorm, ReLU,
  conv, tanh.
- Every conv weight is xavier-uniform initialised (BatchNorm weights N(1, 0.02)), as the release's
  `weights_init`; linear layers keep PyTorch's default.

At 32 px and the paper's widths this is 1.09M (encoder), 4.41M (decoder) and 1.06M (discriminator)
parameters. Widths are configurable so the same code runs a seconds-long test and the paper's model.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.utils.parametrizations import spectral_norm

from common.errors import UserError

SUPPORTED_RESOLUTIONS = (16, 28, 32, 48, 64, 96, 128, 256)
POOLS = ("sum", "mean", "flatten")
RGB_NORMS = ("batch", "none")


@dataclass
class ModelConfig:
    resolution: int = 32
    channels: int = 3  # image channels
    latent_dim: int = 128
    enc_ch: int = 128  # encoder width (released: 128)
    dec_ch: int = 256  # decoder width (released: 256)
    disc_ch: int = 128  # discriminator width (released: 128)
    cont_dim: int = 16  # contrastive embedding size (released: 16)
    spectral_norm_encoder: bool = True  # as released
    encoder_pool: str = "sum"  # "sum" (released), "mean", or "flatten" (narrow mini models, see Encoder)
    rgb_norm: str = "batch"  # "batch": BatchNorm in to_rgb (released); "none": per-sample (exact DP tests)
    xavier_init: bool = True  # the release's weights_init

    def __post_init__(self) -> None:
        grid(self.resolution)
        if self.encoder_pool not in POOLS:
            raise UserError(f"unknown model.encoder_pool {self.encoder_pool!r}; choose one of {', '.join(POOLS)}")
        if self.rgb_norm not in RGB_NORMS:
            raise UserError(f"unknown model.rgb_norm {self.rgb_norm!r}; choose one of {', '.join(RGB_NORMS)}")
        for name in ("channels", "latent_dim", "enc_ch", "dec_ch", "disc_ch", "cont_dim"):
            if int(getattr(self, name)) < 1:
                raise UserError(f"model.{name} must be >= 1, got {getattr(self, name)}")


def grid(resolution: int) -> tuple[int, int]:
    """(bottom width, number of 2x steps) with bottom * 2**steps == resolution, bottom in {4, 6, 7}."""
    if resolution not in SUPPORTED_RESOLUTIONS:
        choices = ", ".join(map(str, SUPPORTED_RESOLUTIONS))
        raise UserError(f"unsupported resolution {resolution}; choose one of {choices}")
    for bottom in (4, 7, 6):
        steps = math.log2(resolution / bottom)
        if steps == int(steps) and steps >= 2:
            return bottom, int(steps)
    raise UserError(f"unsupported resolution {resolution}")  # unreachable for SUPPORTED_RESOLUTIONS


def _sn(module: nn.Module, on: bool) -> nn.Module:
    return spectral_norm(module) if on else module


def xavier_init(module: nn.Module) -> None:
    """The release's `weights_init`: xavier-uniform on every conv weight (the unnormalized weight under
    spectral norm), BatchNorm weight ~ N(1, 0.02) and bias 0."""
    for m in module.modules():
        if isinstance(m, nn.Conv2d):
            w = m.parametrizations.weight.original if hasattr(m, "parametrizations") else m.weight
            nn.init.xavier_uniform_(w, 1.0)
        elif isinstance(m, nn.BatchNorm2d):
            nn.init.normal_(m.weight, 1.0, 0.02)
            nn.init.zeros_(m.bias)


class DownBlock(nn.Module):
    """Residual block of the encoder / discriminator trunk (optional 2x average-pool downsampling).

    `first`: the "optimized" block (conv, ReLU, conv, pool; shortcut: pool, then 1x1 conv); otherwise
    pre-activation (ReLU, conv, ReLU, conv[, pool]); shortcut 1x1 conv [then pool] when shapes change.
    """

    def __init__(self, cin: int, cout: int, down: bool, sn: bool, first: bool = False):
        super().__init__()
        self.first, self.down = first, down
        self.c1 = _sn(nn.Conv2d(cin, cout, 3, padding=1), sn)
        self.c2 = _sn(nn.Conv2d(cout, cout, 3, padding=1), sn)
        self.sc = _sn(nn.Conv2d(cin, cout, 1), sn) if (first or cin != cout or down) else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = x if self.first else F.relu(x)
        h = self.c2(F.relu(self.c1(h)))
        if self.down:
            h = F.avg_pool2d(h, 2)
        if self.first:
            return h + self.sc(F.avg_pool2d(x, 2))
        if self.sc is None:
            return h + x
        s = self.sc(x)
        return h + (F.avg_pool2d(s, 2) if self.down else s)


class Trunk(nn.Module):
    """Shared by the encoder and the discriminator: downsample to the bottom grid, then two plain blocks."""

    def __init__(self, cfg: ModelConfig, width: int, sn: bool, pool: str = "sum"):
        super().__init__()
        self.pool = pool
        bottom, steps = grid(cfg.resolution)
        n_down = steps - 1 if bottom == 4 else steps  # 32 px -> 8x8 as released; 28 px -> 7x7
        blocks = [DownBlock(cfg.channels, width, down=True, sn=sn, first=True)]
        blocks += [DownBlock(width, width, down=True, sn=sn) for _ in range(n_down - 1)]
        blocks += [DownBlock(width, width, down=False, sn=sn) for _ in range(2)]
        self.blocks = nn.ModuleList(blocks)
        side = cfg.resolution >> n_down
        self.out_dim = width * side * side if pool == "flatten" else width

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Returns (output of the first block, pooled features after the last block and a ReLU)."""
        first = h = self.blocks[0](x)
        for b in self.blocks[1:]:
            h = b(h)
        h = F.relu(h)
        if self.pool == "flatten":
            return first, h.flatten(1)
        return first, h.sum(dim=(2, 3)) if self.pool == "sum" else h.mean(dim=(2, 3))


class Encoder(nn.Module):
    """x -> (mu, logvar).

    `encoder_pool`: the release sums the last feature map over positions ("sum"); at mini widths (16
    channels) a pooled 16-vector is a tight bottleneck, so mini models may flatten the map instead.
    """

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.trunk = Trunk(cfg, cfg.enc_ch, cfg.spectral_norm_encoder, pool=cfg.encoder_pool)
        self.out = _sn(nn.Linear(self.trunk.out_dim, 2 * cfg.latent_dim, bias=False), cfg.spectral_norm_encoder)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        mu, logvar = self.out(self.trunk(x)[1]).chunk(2, dim=1)
        return mu, logvar


def upsample_nearest(x: torch.Tensor, fh: int, fw: int) -> torch.Tensor:
    """Nearest-neighbour upsampling by integer factors as one broadcast copy: the same values (and gradients) as
    `F.interpolate(mode="nearest")`, 2-4x faster on CPU, where interpolate copies its input first."""
    n, c, h, w = x.shape
    return x[:, :, :, None, :, None].expand(n, c, h, fh, w, fw).reshape(n, c, h * fh, w * fw)


class UpCell(nn.Module):
    """2x upsampling cell: ReLU, upsample, conv (+ 1x1 convs of earlier cells' skip features), ReLU, conv,
    (+ 1x1 shortcut of the upsampled input). Returns (skip features, output); no normalization, as released.

    The skip features are the first conv's output with the incoming skips already added (the release adds
    them in place into the tensor it returns as the skip output).
    """

    def __init__(self, ch: int, mode: str, n_skip_in: int, shortcut: bool):
        super().__init__()
        self.mode = mode
        self.c1, self.c2 = nn.Conv2d(ch, ch, 3, padding=1), nn.Conv2d(ch, ch, 3, padding=1)
        self.sc = nn.Conv2d(ch, ch, 1) if shortcut else None
        self.skips = nn.ModuleList(nn.Conv2d(ch, ch, 1) for _ in range(n_skip_in))

    def _up(self, x: torch.Tensor, size: tuple[int, int] | None = None) -> torch.Tensor:
        size = size or (2 * x.shape[-2], 2 * x.shape[-1])
        if self.mode == "nearest" and size[0] % x.shape[-2] == 0 and size[1] % x.shape[-1] == 0:
            return upsample_nearest(x, size[0] // x.shape[-2], size[1] // x.shape[-1])
        return F.interpolate(x, size=size, mode=self.mode)

    def forward(self, x: torch.Tensor, skip_in: list[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        h = self.c1(self._up(F.relu(x)))
        size = tuple(h.shape[-2:])
        for conv, s in zip(self.skips, skip_in):
            h = h + conv(self._up(s, size))
        out = self.c2(F.relu(h))
        if self.sc is not None:
            out = out + self.sc(self._up(x))
        return h, out


class Decoder(nn.Module):
    """z -> image in [-1, 1]. Cell i (0-based) takes skips from every earlier cell; cell 1 upsamples
    bilinearly, the others nearest; every cell but the last has a residual shortcut (released at 32 px)."""

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.bottom, steps = grid(cfg.resolution)
        self.ch = cfg.dec_ch
        self.fc = nn.Linear(cfg.latent_dim, self.bottom * self.bottom * cfg.dec_ch)
        self.cells = nn.ModuleList(
            UpCell(cfg.dec_ch, "bilinear" if i == 1 else "nearest", n_skip_in=i, shortcut=i < steps - 1)
            for i in range(steps)
        )
        norm = nn.BatchNorm2d(cfg.dec_ch) if cfg.rgb_norm == "batch" else nn.Identity()
        self.to_rgb = nn.Sequential(norm, nn.ReLU(), nn.Conv2d(cfg.dec_ch, cfg.channels, 3, padding=1), nn.Tanh())

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        h = self.fc(z).view(-1, self.ch, self.bottom, self.bottom)
        skips: list[torch.Tensor] = []
        for cell in self.cells:
            s, h = cell(h, skips)
            skips.append(s)
        return self.to_rgb(h)


class Discriminator(nn.Module):
    """The dual critic: `forward(x)` gives the hinge logit; `features(x)` the contrastive embeddings.

    "final" is the 16-d embedding h that also feeds the adversarial head; "b1" is a 1x1 conv on the first
    block's feature map, flattened and projected to the same size (the two layers the release trains with).
    """

    LAYERS = ("b1", "final")

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.trunk = Trunk(cfg, cfg.disc_ch, sn=True)
        self.embed = spectral_norm(nn.Linear(cfg.disc_ch, cfg.cont_dim, bias=False))
        self.adv_head = spectral_norm(nn.Linear(cfg.cont_dim, 1))
        side = cfg.resolution // 2
        self.b1_head = nn.Sequential(
            nn.Conv2d(cfg.disc_ch, 1, 1), nn.Flatten(), nn.Linear(side * side, cfg.cont_dim, bias=False)
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.adv_head(self.embed(self.trunk(x)[1])).squeeze(1)

    def features(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        first, pooled = self.trunk(x)
        return {"b1": self.b1_head(first), "final": self.embed(pooled)}


def reparameterize(mu: torch.Tensor, logvar: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
    """z = mu + eps * exp(logvar / 2), never clamped (the release's training and reconstruction path)."""
    eps = torch.randn(mu.shape, generator=generator, device=mu.device, dtype=mu.dtype)
    return mu + eps * torch.exp(0.5 * logvar)


class DCVAE(nn.Module):
    """Encoder + decoder (the generative autoencoder) and the discriminator, with the EMA decoder for eval."""

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.cfg = cfg
        self.encoder = Encoder(cfg)
        self.decoder = Decoder(cfg)
        self.disc = Discriminator(cfg)
        if cfg.xavier_init:
            for m in (self.encoder, self.decoder, self.disc):
                xavier_init(m)
        self.decoder_ema = Decoder(cfg)
        self.decoder_ema.load_state_dict(self.decoder.state_dict())
        self.decoder_ema.requires_grad_(False)

    def reparameterize(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(z, mu, logvar) for images x; z is a sample of the posterior, not clamped (as released)."""
        mu, logvar = self.encoder(x)
        return reparameterize(mu, logvar), mu, logvar

    @torch.no_grad()
    def update_ema(self, decay: float) -> None:
        """EMA of the decoder's parameters; its buffers (BatchNorm statistics) are the live decoder's, as the
        release swaps only parameters in for evaluation."""
        for p_ema, p in zip(self.decoder_ema.parameters(), self.decoder.parameters()):
            p_ema.lerp_(p, 1.0 - decay)
        for b_ema, b in zip(self.decoder_ema.buffers(), self.decoder.buffers()):
            b_ema.copy_(b)

    def _eval_decoder(self, ema: bool) -> Decoder:
        dec = self.decoder_ema if ema else self.decoder
        return dec.eval()

    @torch.no_grad()
    def sample(
        self, n: int, generator: torch.Generator | None = None, ema: bool = True, clamp: bool = True, batch: int = 500
    ) -> torch.Tensor:
        """G(z), z ~ N(0, I) clamped to [-1, 1] as the release's sampling FID does; decoder in eval mode."""
        dec = self._eval_decoder(ema)
        z = torch.randn(n, self.cfg.latent_dim, generator=generator)
        z = z.clamp(-1, 1) if clamp else z
        dev = next(dec.parameters()).device
        return torch.cat([dec(z[i : i + batch].to(dev)).cpu() for i in range(0, n, batch)])

    @torch.no_grad()
    def reconstruct(
        self, x: torch.Tensor, generator: torch.Generator | None = None, ema: bool = True, batch: int = 500
    ) -> torch.Tensor:
        """G(z), z a posterior sample (not clamped), as the release's reconstruction FID; eval mode."""
        dec = self._eval_decoder(ema)
        self.encoder.eval()
        dev = next(dec.parameters()).device
        out = []
        for i in range(0, len(x), batch):
            mu, logvar = self.encoder(x[i : i + batch].to(dev))
            gen = generator if generator is None or generator.device == mu.device else None
            out.append(dec(reparameterize(mu, logvar, gen)).cpu())
        return torch.cat(out)

    @torch.no_grad()
    def encode_mean(self, x: torch.Tensor, batch: int = 500) -> torch.Tensor:
        dev = next(self.encoder.parameters()).device
        return torch.cat([self.encoder(x[i : i + batch].to(dev))[0].cpu() for i in range(0, len(x), batch)])
