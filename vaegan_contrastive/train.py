"""Data-parallel DC-VAE training: one loop, any number of ranks (torchrun, SLURM or spawned processes).

The released schedule (`train.py` of mlpc-ucsd/DC-VAE): a discriminator step every iteration (hinge on real
images, samples G(z) and reconstructions, weights 1, 0.5, 0.5); every `n_critic`-th iteration a generator step
(hinge on 128 samples and on the reconstructions + KL) and a contrastive step (InfoNCE of the
reconstructions' discriminator features against the momentum discriminator's keys of the same real images
+ KL), which also trains the discriminator's features; then the keys go into the queue and the decoder's EMA
is updated. The KL is summed over the batch with weight 1e-6; z is never clamped in training; Adam 2e-4,
betas (0, 0.9); the decoder is in training mode (BatchNorm batch statistics) throughout.
Gradients are averaged over ranks with one flat all-reduce per optimizer step
(`common.parallel.all_reduce_gradients`), so the replicas stay identical; each rank draws its own noise; the
queue is filled with every rank's keys.

The ablation variants switch terms on and off at the same schedule (the same number of iterations and of
encoder/decoder updates): `vae` (the release's per-pixel mean squared error + KL), `vaegan` (+ hinge GAN),
`vae_contrastive` (InfoNCE instead of pixels, no GAN), `dcvae` (GAN + InfoNCE).

One deviation for speed, same values: the discriminator scores real images, samples and reconstructions in
one batched call (the release makes three calls; the networks are per-sample, only spectral norm's power
iteration runs once instead of three times per step).
"""

from __future__ import annotations

import dataclasses
import logging
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
from tqdm import tqdm

from common.checkpoint import (
    load_checkpoint,
    loadable_steps,
    restore_training_state,
    rng_state,
    save_checkpoint,
    set_rng_state,
    training_state,
)
from common.distributed import rank as get_rank
from common.distributed import world_size as get_world_size
from common.errors import UserError
from common.parallel import all_reduce_gradients, all_reduce_tensors

from . import data as data_mod
from .losses import d_hinge, g_hinge, kl_divergence, pixel_reconstruction, reconstruction_spread
from .models import DCVAE, ModelConfig
from .negatives import ContrastiveNegatives

log = logging.getLogger(__name__)

VARIANTS: dict[str, dict[str, Any]] = {
    "vae": dict(adversarial=False, contrastive=False, pixel=True),
    "vaegan": dict(adversarial=True, contrastive=False, pixel=True),
    "vae_contrastive": dict(adversarial=False, contrastive=True, pixel=False),
    "dcvae": dict(adversarial=True, contrastive=True, pixel=False),
}


@dataclass
class TrainConfig:
    steps: int = 1000  # iterations (discriminator steps)
    batch_size: int = 64  # global batch of real images
    gen_batch_size: int = 128  # global batch of samples G(z) in a generator step
    n_critic: int = 5  # a generator + contrastive step every n_critic iterations
    lr: float = 2e-4  # encoder / decoder
    disc_lr: float | None = None  # discriminator (None: lr, as released)
    betas: tuple[float, float] = (0.0, 0.9)
    adversarial: bool = True
    contrastive: bool = True
    pixel: bool = False  # the VAE baselines' reconstruction loss
    pixel_weight: float = 1.0  # weight of the per-pixel mean squared error (released: 1)
    kl_weight: float = 1e-6  # weight of the batch-summed KL (released: 1e-6)
    cont_weight: float = 1.0  # weight of the InfoNCE mean over layers (released: 1/2 per layer, i.e. 1)
    queue_size: int = 8192
    temperature: float = 0.07
    key_momentum: float = 0.999
    in_batch_negatives: bool = False
    ema_decay: float = 0.999
    seed: int = 0
    log_every: int = 50  # history + W&B every N iterations
    console_every: int = 0  # a console line every N iterations (0: never)
    warmup_steps: int = 5  # excluded from the images/s measurement
    checkpoint_dir: str | None = None  # this run's folder (the study gives each run its own, see study.launch)
    checkpoint_every: int = 0  # also at the last iteration, when > 0
    resume: bool = False  # continue from the newest checkpoint in checkpoint_dir at or before `steps`
    keep_checkpoints: bool = False  # (the study) keep each run's checkpoints after its results are written
    progress: bool = True
    num_workers: int = 0  # DataLoader workers (image files at paper scale)
    channels_last: bool = False  # NHWC activations (faster convolutions on some CPUs)

    @classmethod
    def for_variant(cls, variant: str, **kwargs: Any) -> TrainConfig:
        if variant not in VARIANTS:
            raise UserError(f"unknown variant {variant!r}; choose one of {', '.join(VARIANTS)}")
        return cls(**{**kwargs, **VARIANTS[variant]})

    def check(self, world_size: int) -> None:
        """Every key in its range, then the sizes against each other and the world size (one-line `UserError`s,
        before any process is spawned)."""
        at_least(
            "train",
            {"steps": 1, "batch_size": 1, "gen_batch_size": 1, "n_critic": 1, "queue_size": 1, "log_every": 1},
            self,
        )
        at_least("train", {"console_every": 0, "warmup_steps": 0, "checkpoint_every": 0, "num_workers": 0}, self)
        at_least("train", {"pixel_weight": 0, "kl_weight": 0, "cont_weight": 0}, self)
        for key in ("lr", "disc_lr", "temperature"):
            if (v := getattr(self, key)) is not None and not v > 0:
                raise UserError(f"train.{key} must be > 0, got {v}")
        for key in ("ema_decay", "key_momentum", "betas"):
            v = getattr(self, key)
            if not all(0 <= b <= 1 for b in (v if key == "betas" else [v])):
                raise UserError(f"train.{key} must be in [0, 1], got {v}")
        if self.batch_size % world_size or self.gen_batch_size % world_size:
            raise UserError(
                f"batch sizes {self.batch_size}/{self.gen_batch_size} are not divisible by {world_size} processes"
            )
        if self.contrastive and self.queue_size % self.batch_size:
            raise UserError(f"queue size {self.queue_size} is not divisible by the global batch {self.batch_size}")


def at_least(node: str, bounds: dict[str, float], values: Any) -> None:
    """`UserError` unless each `values.<key>` (attribute or mapping key) is >= its bound."""
    for key, low in bounds.items():
        v = values[key] if isinstance(values, dict) else getattr(values, key)
        if v is not None and not v >= low:
            raise UserError(f"{node + '.' if node else ''}{key} must be >= {low:g}, got {v}")


def _world_group():
    """Every rank is a data-parallel replica: the world group, or None (nothing to average) in one process."""
    return dist.group.WORLD if dist.is_available() and dist.is_initialized() else None


@dataclass
class Trainer:
    """The models, optimizers and queue of one rank, and the three kinds of step."""

    model_cfg: ModelConfig
    cfg: TrainConfig
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))
    model: DCVAE = field(init=False)
    negatives: ContrastiveNegatives | None = field(init=False)

    def __post_init__(self) -> None:
        torch.manual_seed(self.cfg.seed)  # identical initial replicas on every rank
        self.model = DCVAE(self.model_cfg)
        self.negatives = None
        if self.cfg.contrastive:
            self.negatives = ContrastiveNegatives(
                self.model.disc,
                dim=self.model_cfg.cont_dim,
                queue_size=self.cfg.queue_size,
                momentum=self.cfg.key_momentum,
                temperature=self.cfg.temperature,
                in_batch=self.cfg.in_batch_negatives,
                global_batch=self.cfg.batch_size,
            ).to(self.device)
        self.model.to(self.device)
        if self.cfg.channels_last:
            self.model.to(memory_format=torch.channels_last)
        m = self.model
        self.gen_params = list(m.encoder.parameters()) + list(m.decoder.parameters())
        self.disc_params = list(m.disc.parameters())
        self.opt_gen = torch.optim.Adam(self.gen_params, lr=self.cfg.lr, betas=tuple(self.cfg.betas))
        self.opt_disc = torch.optim.Adam(
            self.disc_params, lr=self.cfg.disc_lr or self.cfg.lr, betas=tuple(self.cfg.betas)
        )
        self.world = get_world_size()

    def modules(self) -> dict[str, torch.nn.Module]:
        return {"model": self.model, **({"negatives": self.negatives} if self.negatives is not None else {})}

    def optimizers(self) -> dict[str, torch.optim.Optimizer]:
        return {"gen": self.opt_gen, "disc": self.opt_disc}

    def _noise(self, n_global: int) -> torch.Tensor:
        return torch.randn(n_global // self.world, self.model_cfg.latent_dim, device=self.device)

    def _kl(self, mu: torch.Tensor, logvar: torch.Tensor) -> torch.Tensor:
        """The weighted KL summed over the global batch: the local sum times the world size, since the
        gradients are averaged over ranks."""
        return self.cfg.kl_weight * self.world * kl_divergence(mu, logvar, reduction="sum")

    def disc_step(self, x: torch.Tensor) -> dict[str, float]:
        m = self.model
        with torch.no_grad():
            fake = m.decoder(self._noise(self.cfg.batch_size))
            recon = m.decoder(m.reparameterize(x)[0])
        real_s, fake_s, recon_s = m.disc(torch.cat([x, fake, recon])).split([len(x), len(fake), len(recon)])
        loss = d_hinge(real_s, fake_s, recon_s)
        self.opt_disc.zero_grad(set_to_none=True)
        loss.backward()
        all_reduce_gradients(self.disc_params, _world_group())
        self.opt_disc.step()
        return {"d_loss": loss.detach()}

    def gen_step(self, x: torch.Tensor) -> dict[str, Any]:
        m, c = self.model, self.cfg
        z, mu, logvar = m.reparameterize(x)
        recon = m.decoder(z)
        kl = self._kl(mu, logvar)
        loss, out = kl, {"kl": kl.detach()}
        if c.adversarial:
            fake = m.decoder(self._noise(c.gen_batch_size))
            fake_s, recon_s = m.disc(torch.cat([fake, recon])).split([len(fake), len(recon)])
            g = g_hinge(fake_s, recon_s)
            loss = loss + g
            out["g_loss"] = g.detach()
        if c.pixel:
            pix = pixel_reconstruction(recon, x)
            loss = loss + c.pixel_weight * pix
            out["pixel"] = pix.detach()
        self.opt_gen.zero_grad(set_to_none=True)
        loss.backward()
        all_reduce_gradients(self.gen_params, _world_group())
        self.opt_gen.step()
        if not c.contrastive:
            out |= self._recon_stats(recon.detach(), x)
        return out

    def contrastive_step(self, x: torch.Tensor) -> dict[str, Any]:
        m, negs = self.model, self.negatives
        negs.update_key_encoder(m.disc)
        keys = negs.keys(x)
        z, mu, logvar = m.reparameterize(x)
        recon = m.decoder(z)
        cont, acc = negs.loss(m.disc.features(recon), keys)
        loss = self.cfg.cont_weight * cont + self._kl(mu, logvar)
        self.opt_gen.zero_grad(set_to_none=True)
        self.opt_disc.zero_grad(set_to_none=True)
        loss.backward()
        all_reduce_gradients(self.gen_params + self.disc_params, _world_group())
        self.opt_gen.step()
        self.opt_disc.step()
        negs.enqueue(keys)
        return {"cont_loss": cont.detach(), **acc, **self._recon_stats(recon.detach(), x)}

    @staticmethod
    def _recon_stats(recon: torch.Tensor, x: torch.Tensor) -> dict[str, Any]:
        return {
            "recon_mse": (recon - x).pow(2).mean(),
            "recon_spread": reconstruction_spread(recon),
            "real_spread": reconstruction_spread(x),
        }

    def step(self, it: int, x: torch.Tensor) -> dict[str, float]:
        """One iteration; returns its metrics as floats (one sync, after every step of the iteration)."""
        x = x.to(self.device, non_blocking=True)
        if self.cfg.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        self.model.train()
        out: dict[str, Any] = {}
        if self.cfg.adversarial:
            out |= self.disc_step(x)
        if it % self.cfg.n_critic == 0:
            if self.cfg.adversarial or self.cfg.pixel or not self.cfg.contrastive:
                out |= self.gen_step(x)
            if self.cfg.contrastive:
                out |= self.contrastive_step(x)
        # BatchNorm running statistics: each rank normalizes with its own batch (as the release's DataParallel
        # does per GPU); averaging keeps the replicas identical
        all_reduce_tensors([b for b in self.model.decoder.buffers() if b.is_floating_point()], _world_group())
        if it % self.cfg.n_critic == 0:
            self.model.update_ema(self.cfg.ema_decay)
        return {k: float(v) for k, v in out.items()}

    # checkpoints -------------------------------------------------------------------------------------
    def save(self, directory: Path, step: int, log: dict[str, Any] | None = None) -> None:
        """Rank 0 writes models, optimizers, the queue, every rank's RNG state (gathered) and `log` (rank 0's
        history so far: a resumed run's curves start at iteration 0), then removes its older checkpoints."""
        rngs: list[Any] = [None] * get_world_size()
        if get_world_size() > 1:
            dist.all_gather_object(rngs, rng_state())
        else:
            rngs = [rng_state()]
        if get_rank() == 0:
            extra = {"rng_per_rank": rngs, "world_size": get_world_size(), "log": log or {}}
            path = save_checkpoint(
                directory / f"ckpt_{step:08d}.pt", training_state(step, **self._state(), extra=extra)
            )
            for old in directory.glob("ckpt_*.pt"):
                if old != path:
                    old.unlink(missing_ok=True)
        if get_world_size() > 1:
            dist.barrier()

    def _state(self) -> dict[str, Any]:
        return {"modules": self.modules(), "optimizers": self.optimizers()}

    def restore(self, path: Path) -> tuple[int, dict[str, Any]]:
        """Load a checkpoint into this rank; returns its step and the `log` saved with it."""
        state = load_checkpoint(path, map_location=self.device)
        if state["extra"]["world_size"] != get_world_size():
            raise UserError(
                f"checkpoint {path} was written by {state['extra']['world_size']} processes; "
                f"resume with the same number (got {get_world_size()})"
            )
        step = restore_training_state(state, **self._state())
        set_rng_state(state["extra"]["rng_per_rank"][get_rank()])
        return step, state["extra"].get("log", {})


def resume_point(directory: Path, steps: int) -> Path | None:
    """The checkpoint to resume a run of `steps` iterations from: the newest loadable one at or before `steps` (a
    run continues a shorter one exactly; a longer one's later checkpoint is not this run's), or None."""
    found = loadable_steps(directory, "ckpt_*.pt")
    usable = [s for s in found if s <= steps]
    return found[max(usable)] if usable else None


def _console_line(name: str, it: int, steps: int, metrics: dict[str, float]) -> str:
    keys = (
        "d_loss",
        "g_loss",
        "pixel",
        "cont_loss",
        "nce_top1_final",
        "nce_top5_final",
        "nce_top1_b1",
        "recon_mse",
        "recon_spread",
        "real_spread",
    )
    return f"{name} {it}/{steps}: " + " ".join(f"{k}={metrics[k]:.3g}" for k in keys if k in metrics)


def train(
    model_cfg: ModelConfig,
    cfg: TrainConfig,
    dataset: torch.utils.data.Dataset,
    tracker: Any | None = None,
    name: str = "dcvae",
    step_offset: int = 0,
) -> dict[str, Any]:
    """Train on this rank's share of `dataset`; returns the history, images/s and (rank 0) the trained state.

    Rank 0 logs the metrics every `cfg.log_every` iterations to `tracker` (as `<name>/<metric>`, at W&B step
    `step_offset + iteration`, so several runs logged one after the other keep increasing steps) and, every
    `cfg.console_every` iterations, one console line: the InfoNCE top-1/top-5 accuracy of the positive and the
    reconstructions' spread across images tell whether the contrastive critic works while training runs.
    """
    rank, world = get_rank(), get_world_size()
    cfg.check(world)
    device = torch.device(f"cuda:{torch.cuda.current_device()}") if torch.cuda.is_available() else torch.device("cpu")
    trainer = Trainer(model_cfg, cfg, device)
    start, saved = 0, {}
    ckpt_dir = Path(cfg.checkpoint_dir) if cfg.checkpoint_dir else None
    if ckpt_dir and cfg.resume and (found := resume_point(ckpt_dir, cfg.steps)):
        start, saved = trainer.restore(found)
        if rank == 0:
            log.info("%s resumed from %s at iteration %d of %d", name, found, start, cfg.steps)
    else:
        torch.manual_seed(cfg.seed * 1_000_003 + 7919 * (rank + 1))  # each rank its own noise
    if ckpt_dir:
        ckpt_dir.mkdir(parents=True, exist_ok=True)
    sampler = data_mod.StepBatches(len(dataset), cfg.batch_size, rank, world, cfg.steps, start, cfg.seed)
    # its own generator: a DataLoader iterator otherwise draws a seed from the global RNG (breaks exact resume)
    loader = torch.utils.data.DataLoader(
        dataset,
        batch_sampler=sampler,
        generator=torch.Generator(),
        num_workers=cfg.num_workers,
        pin_memory=device.type == "cuda",
    )
    # what rank 0 has logged so far (restored on resume): the curves, the latest metrics, the training time
    history: list[dict[str, float]] = list(saved.get("history", []))
    last: dict[str, float] = dict(saved.get("last", {}))
    t0, timed_from = time.perf_counter() - saved.get("elapsed_s", 0.0), None
    bar = tqdm(
        total=cfg.steps,
        initial=start,
        disable=rank != 0 or not cfg.progress,
        desc=name,
        leave=False,
        mininterval=0.1 if sys.stderr.isatty() else 30.0,
    )
    for it, (x, _) in enumerate(loader, start=start):
        if it == start + cfg.warmup_steps:
            timed_from = time.perf_counter()
        metrics = trainer.step(it, x)
        last |= metrics  # the latest value of every metric (the generator-side ones are not every iteration)
        bar.update(1)
        if rank == 0 and (it % cfg.log_every == 0 or it == cfg.steps - 1):
            row = {"step": it, **last, "elapsed_s": time.perf_counter() - t0}
            history.append(row)
            if tracker is not None:
                tracker.log({f"{name}/{k}": v for k, v in row.items()}, step=step_offset + it)
        if rank == 0 and cfg.console_every and (it % cfg.console_every == 0 or it == cfg.steps - 1):
            log.info(_console_line(name, it, cfg.steps, last))
        if ckpt_dir and cfg.checkpoint_every and ((it + 1) % cfg.checkpoint_every == 0 or it + 1 == cfg.steps):
            logged = {"history": history, "last": last, "elapsed_s": time.perf_counter() - t0}
            trainer.save(ckpt_dir, it + 1, logged if rank == 0 else None)
    bar.close()
    end = time.perf_counter()
    timed_steps = cfg.steps - start - cfg.warmup_steps
    ips = timed_steps * cfg.batch_size / (end - timed_from) if timed_from and timed_steps > 0 else float("nan")
    result: dict[str, Any] = {
        "history": history,
        "images_per_s": ips,
        "wall_s": end - t0,
        "rank": rank,
        "checkpoint_dir": cfg.checkpoint_dir,
    }
    if rank == 0:
        result["state"] = {k: v.detach().cpu().clone() for k, v in trainer.model.state_dict().items()}
    return result


def train_worker(
    rank: int,
    world_size: int,
    model_cfg: ModelConfig,
    runs: dict[str, TrainConfig],
    data_cfg: data_mod.DataConfig,
    tracking: Any = None,
) -> dict[str, dict[str, Any]]:
    """Entry point for `common.distributed.run_processes`: load the data in the child, then train each of
    `runs` (e.g. the ablation's variants) one after the other in the same process group.

    `tracking`: a `common.tracking.Tracker` (same process) or the keyword arguments to open one on rank 0
    (a spawned child opens its own W&B run, so the curves stream while training runs).
    """
    from common.tracking import Tracker

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    dataset = data_mod.load(data_cfg).train
    own = isinstance(tracking, dict) and rank == 0
    tracker = Tracker(**tracking) if own else (tracking if rank == 0 and not isinstance(tracking, dict) else None)
    out, offset = {}, 0
    try:
        for name, cfg in runs.items():
            out[name] = train(model_cfg, cfg, dataset, tracker=tracker, name=name, step_offset=offset)
            offset += cfg.steps
    finally:
        if own:
            tracker.finish()
    return out


def load_model(model_cfg: ModelConfig, state: dict[str, torch.Tensor]) -> DCVAE:
    model = DCVAE(model_cfg)
    model.load_state_dict(state)
    return model.eval()


def replace(cfg: TrainConfig, **changes: Any) -> TrainConfig:
    return dataclasses.replace(cfg, **changes)
