"""Data-parallel DC-VAE training: one loop, any number of ranks (torchrun, SLURM or spawned processes).

The paper's schedule: a discriminator step every iteration; every `n_critic`-th iteration a generator step
(hinge on samples and reconstructions + KL) and a contrastive step (InfoNCE of reconstructions against the
momentum discriminator's keys of the real images + KL), which also trains the discriminator's features; then
the keys of every rank go into the queue and the decoder's EMA is updated. Adam 2e-4, betas (0, 0.9).
Gradients are averaged over ranks with one coalesced all-reduce per optimizer step, so the replicas stay
identical; each rank draws its own noise.

The ablation variants switch terms on and off at the same schedule (the same number of iterations and of
encoder/decoder updates): `vae` (summed squared pixel error + 0.1 KL, which keeps a short run from
collapsing its posterior), `vaegan` (+ hinge GAN), `vae_contrastive`
(InfoNCE instead of pixels, no GAN), `dcvae` (both).
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
from torch._utils import _flatten_dense_tensors, _unflatten_dense_tensors
from tqdm import tqdm

from common.checkpoint import (latest_checkpoint, load_checkpoint, restore_training_state, rng_state,
                               save_checkpoint, set_rng_state, training_state)
from common.distributed import rank as get_rank, world_size as get_world_size
from common.errors import UserError

from . import data as data_mod
from .losses import d_hinge, g_hinge, kl_divergence, pixel_reconstruction
from .models import DCVAE, ModelConfig
from .negatives import ContrastiveNegatives

log = logging.getLogger(__name__)

VARIANTS: dict[str, dict[str, Any]] = {
    "vae": dict(adversarial=False, contrastive=False, pixel_weight=1.0, kl_weight=0.1),
    "vaegan": dict(adversarial=True, contrastive=False, pixel_weight=1.0, kl_weight=0.1),
    "vae_contrastive": dict(adversarial=False, contrastive=True, pixel_weight=0.0, kl_weight=1e-6),
    "dcvae": dict(adversarial=True, contrastive=True, pixel_weight=0.0, kl_weight=1e-6),
}


@dataclass
class TrainConfig:
    steps: int = 1000  # iterations (discriminator steps)
    batch_size: int = 64  # global batch of real images
    gen_batch_size: int = 128  # global batch of samples G(z) in a generator step
    n_critic: int = 5  # a generator + contrastive step every n_critic iterations
    lr: float = 2e-4
    betas: tuple[float, float] = (0.0, 0.9)
    adversarial: bool = True
    contrastive: bool = True
    pixel_weight: float = 0.0  # summed squared error (the VAE baselines)
    kl_weight: float = 1e-6
    queue_size: int = 8192
    temperature: float = 0.07
    key_momentum: float = 0.999
    in_batch_negatives: bool = False
    ema_decay: float = 0.999
    seed: int = 0
    log_every: int = 50
    warmup_steps: int = 5  # excluded from the images/s measurement
    checkpoint_dir: str | None = None
    checkpoint_every: int = 0
    resume: bool = False
    progress: bool = True
    num_workers: int = 0  # DataLoader workers (image files at paper scale)

    @classmethod
    def for_variant(cls, variant: str, **kwargs: Any) -> "TrainConfig":
        if variant not in VARIANTS:
            raise UserError(f"unknown variant {variant!r}; choose one of {', '.join(VARIANTS)}")
        return cls(**{**kwargs, **VARIANTS[variant]})

    def check(self, world_size: int) -> None:
        if self.batch_size % world_size or self.gen_batch_size % world_size:
            raise UserError(f"batch sizes {self.batch_size}/{self.gen_batch_size} are not divisible by "
                            f"{world_size} processes")
        if self.contrastive and self.queue_size % self.batch_size:
            raise UserError(f"queue size {self.queue_size} is not divisible by the global batch {self.batch_size}")
        if self.steps < 1 or self.n_critic < 1:
            raise UserError("train.steps and train.n_critic must be >= 1")


def allreduce_grads(params: list[torch.nn.Parameter]) -> None:
    """Average the gradients of `params` over ranks with one flat all-reduce (None grads are left alone)."""
    world = get_world_size()
    grads = [p.grad for p in params if p.grad is not None]
    if world == 1 or not grads:
        return
    flat = _flatten_dense_tensors(grads)
    dist.all_reduce(flat)
    flat /= world
    for g, synced in zip(grads, _unflatten_dense_tensors(flat, grads)):
        g.copy_(synced)


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
                self.model.disc, dim=self.model_cfg.cont_dim, queue_size=self.cfg.queue_size,
                momentum=self.cfg.key_momentum, temperature=self.cfg.temperature,
                in_batch=self.cfg.in_batch_negatives, global_batch=self.cfg.batch_size).to(self.device)
        self.model.to(self.device)
        m = self.model
        self.gen_params = list(m.encoder.parameters()) + list(m.decoder.parameters())
        self.disc_params = list(m.disc.parameters())
        self.opt_gen = torch.optim.Adam(self.gen_params, lr=self.cfg.lr, betas=tuple(self.cfg.betas))
        self.opt_disc = torch.optim.Adam(self.disc_params, lr=self.cfg.lr, betas=tuple(self.cfg.betas))

    def modules(self) -> dict[str, torch.nn.Module]:
        return {"model": self.model, **({"negatives": self.negatives} if self.negatives is not None else {})}

    def optimizers(self) -> dict[str, torch.optim.Optimizer]:
        return {"gen": self.opt_gen, "disc": self.opt_disc}

    def _noise(self, n_global: int) -> torch.Tensor:
        return torch.randn(n_global // get_world_size(), self.model_cfg.latent_dim, device=self.device)

    def disc_step(self, x: torch.Tensor) -> dict[str, float]:
        m = self.model
        with torch.no_grad():
            fake = m.decoder(self._noise(self.cfg.batch_size))
            recon = m.decoder(m.reparameterize(x)[0])
        real_s, fake_s, recon_s = m.disc(torch.cat([x, fake, recon])).split([len(x), len(fake), len(recon)])
        loss = d_hinge(real_s, fake_s, recon_s)
        self.opt_disc.zero_grad(set_to_none=True)
        loss.backward()
        allreduce_grads(self.disc_params)
        self.opt_disc.step()
        return {"d_loss": loss.item()}

    def gen_step(self, x: torch.Tensor) -> dict[str, float]:
        m, c = self.model, self.cfg
        z, mu, logvar = m.reparameterize(x)
        recon = m.decoder(z)
        kl = kl_divergence(mu, logvar)
        loss = c.kl_weight * kl
        out = {"kl": kl.item()}
        if c.adversarial:
            fake = m.decoder(self._noise(c.gen_batch_size))
            fake_s, recon_s = m.disc(torch.cat([fake, recon])).split([len(fake), len(recon)])
            g = g_hinge(fake_s, recon_s)
            loss = loss + g
            out["g_loss"] = g.item()
        if c.pixel_weight:
            pix = pixel_reconstruction(recon, x)
            loss = loss + c.pixel_weight * pix
            out["pixel"] = pix.item()
        self.opt_gen.zero_grad(set_to_none=True)
        loss.backward()
        allreduce_grads(self.gen_params)
        self.opt_gen.step()
        return out

    def contrastive_step(self, x: torch.Tensor) -> dict[str, float]:
        m, negs = self.model, self.negatives
        negs.update_key_encoder(m.disc)
        keys = negs.keys(x)
        z, mu, logvar = m.reparameterize(x)
        recon = m.decoder(z)
        cont = negs.loss(m.disc.features(recon), keys)
        loss = cont + self.cfg.kl_weight * kl_divergence(mu, logvar)
        self.opt_gen.zero_grad(set_to_none=True)
        self.opt_disc.zero_grad(set_to_none=True)
        loss.backward()
        allreduce_grads(self.gen_params)
        allreduce_grads(self.disc_params)
        self.opt_gen.step()
        self.opt_disc.step()
        negs.enqueue(keys)
        with torch.no_grad():
            mse = (recon - x).pow(2).mean().item()
        return {"cont_loss": cont.item(), "recon_mse": mse}

    def step(self, it: int, x: torch.Tensor) -> dict[str, float]:
        x = x.to(self.device, non_blocking=True)
        out: dict[str, float] = {}
        if self.cfg.adversarial:
            out |= self.disc_step(x)
        if it % self.cfg.n_critic == 0:
            out |= self.gen_step(x)
            if self.cfg.contrastive:
                out |= self.contrastive_step(x)
            self.model.update_ema(self.cfg.ema_decay)
        return out

    # checkpoints -------------------------------------------------------------------------------------
    def save(self, directory: Path, step: int) -> None:
        """Rank 0 writes models, optimizers, the queue and every rank's RNG state (gathered)."""
        rngs: list[Any] = [None] * get_world_size()
        if get_world_size() > 1:
            dist.all_gather_object(rngs, rng_state())
        else:
            rngs = [rng_state()]
        if get_rank() == 0:
            state = training_state(step, self.modules(), self.optimizers(),
                                   extra={"rng_per_rank": rngs, "world_size": get_world_size()})
            save_checkpoint(directory / f"ckpt_{step:08d}.pt", state)
        if get_world_size() > 1:
            dist.barrier()

    def restore(self, path: Path) -> int:
        state = load_checkpoint(path, map_location=self.device)
        if state["extra"]["world_size"] != get_world_size():
            raise UserError(f"checkpoint {path} was written by {state['extra']['world_size']} processes; "
                            f"resume with the same number (got {get_world_size()})")
        step = restore_training_state(state, self.modules(), self.optimizers())
        set_rng_state(state["extra"]["rng_per_rank"][get_rank()])
        return step


def train(model_cfg: ModelConfig, cfg: TrainConfig, dataset: torch.utils.data.Dataset,
          tracker: Any | None = None) -> dict[str, Any]:
    """Train on this rank's share of `dataset`; returns the history, images/s and (rank 0) the trained state."""
    rank, world = get_rank(), get_world_size()
    cfg.check(world)
    device = torch.device(f"cuda:{torch.cuda.current_device()}") if torch.cuda.is_available() else torch.device("cpu")
    trainer = Trainer(model_cfg, cfg, device)
    start = 0
    ckpt_dir = Path(cfg.checkpoint_dir) if cfg.checkpoint_dir else None
    if ckpt_dir and cfg.resume and (found := latest_checkpoint(ckpt_dir, "ckpt_*.pt")):
        start = trainer.restore(found)
        log.info("rank %d resumed from %s at step %d", rank, found, start)
    else:
        torch.manual_seed(cfg.seed * 1_000_003 + 7919 * (rank + 1))  # each rank its own noise
    if ckpt_dir:
        ckpt_dir.mkdir(parents=True, exist_ok=True)
    sampler = data_mod.StepBatches(len(dataset), cfg.batch_size, rank, world, cfg.steps, start, cfg.seed)
    # its own generator: a DataLoader iterator otherwise draws a seed from the global RNG (breaks exact resume)
    loader = torch.utils.data.DataLoader(dataset, batch_sampler=sampler, generator=torch.Generator(),
                                         num_workers=cfg.num_workers, pin_memory=device.type == "cuda")
    history: list[dict[str, float]] = []
    t0, timed_from = time.perf_counter(), None
    bar = tqdm(total=cfg.steps, initial=start, disable=rank != 0 or not cfg.progress, desc="dcvae", leave=False,
               mininterval=0.1 if sys.stderr.isatty() else 30.0)
    for it, (x, _) in enumerate(loader, start=start):
        if it == start + cfg.warmup_steps:
            timed_from = time.perf_counter()
        metrics = trainer.step(it, x)
        bar.update(1)
        if rank == 0 and (it % cfg.log_every == 0 or it == cfg.steps - 1):
            history.append({"step": it, **metrics})
            if tracker is not None:
                tracker.log(metrics, step=it)
        if ckpt_dir and cfg.checkpoint_every and (it + 1) % cfg.checkpoint_every == 0:
            trainer.save(ckpt_dir, it + 1)
    bar.close()
    end = time.perf_counter()
    timed_steps = cfg.steps - start - cfg.warmup_steps
    ips = timed_steps * cfg.batch_size / (end - timed_from) if timed_from and timed_steps > 0 else float("nan")
    result: dict[str, Any] = {"history": history, "images_per_s": ips, "wall_s": end - t0, "rank": rank}
    if rank == 0:
        result["state"] = {k: v.detach().cpu().clone() for k, v in trainer.model.state_dict().items()}
    return result


def train_worker(rank: int, world_size: int, model_cfg: ModelConfig, runs: dict[str, TrainConfig],
                 data_cfg: data_mod.DataConfig) -> dict[str, dict[str, Any]]:
    """Entry point for `common.distributed.run_processes`: load the data in the child, then train each of
    `runs` (e.g. the ablation's variants) one after the other in the same process group."""
    dataset = data_mod.load(data_cfg).train
    return {name: train(model_cfg, cfg, dataset) for name, cfg in runs.items()}


def load_model(model_cfg: ModelConfig, state: dict[str, torch.Tensor]) -> DCVAE:
    model = DCVAE(model_cfg)
    model.load_state_dict(state)
    return model.eval()


def replace(cfg: TrainConfig, **changes: Any) -> TrainConfig:
    return dataclasses.replace(cfg, **changes)
