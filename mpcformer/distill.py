"""Training: fine-tuning on labels (the teacher and the paper's two baselines) and two-stage distillation.

Stage 1 matches the student's attention scores and every hidden state (the embedding output included) to
the teacher's with MSE; stage 2 matches the logits with a soft cross-entropy. The student starts from the
teacher's weights (`convert.to_student`). Baselines: the student trained on labels from random weights
("no distillation, no pretraining") and from the teacher's weights ("no distillation").

Every loop checkpoints atomically (model, optimizer, scheduler, RNG states, step) and resumes exactly: batches
are drawn from torch's global generator, whose state the checkpoint carries.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Sequence

import torch
import torch.nn.functional as F
from torch import nn
from tqdm import tqdm

from common.checkpoint import load_checkpoint, restore_training_state, save_checkpoint, training_state
from common.errors import UserError, require

log = logging.getLogger(__name__)


@dataclass
class TrainConfig:
    steps: int = 100
    batch_size: int = 32
    lr: float = 5e-5
    weight_decay: float = 0.01
    warmup_frac: float = 0.1
    temperature: float = 1.0  # stage 2 soft cross-entropy
    freeze_word_embeddings: bool = False  # saves most of the optimizer's time on a CPU
    checkpoint_every: int = 0  # steps; 0 = only at the end when a checkpoint path is given
    progress: bool = True


@dataclass
class Encoded:
    """A tokenised split: (examples, length) ids and mask, and (examples,) labels."""

    input_ids: torch.Tensor
    attention_mask: torch.Tensor
    labels: torch.Tensor

    def __len__(self) -> int:
        return len(self.labels)

    def batch(self, idx: torch.Tensor) -> dict[str, torch.Tensor]:
        """Rows `idx`, trimmed to their longest sequence (dynamic padding)."""
        mask = self.attention_mask[idx]
        n = int(mask.sum(1).max())
        return {"input_ids": self.input_ids[idx, :n], "attention_mask": mask[:, :n], "labels": self.labels[idx]}

    def head(self, n: int) -> "Encoded":
        return Encoded(self.input_ids[:n], self.attention_mask[:n], self.labels[:n])


def check_tokenizer(tokenizer, model: nn.Module) -> None:
    """A tokenizer matches a model when its ids fit the embedding table and the padding ids agree."""
    c = model.config
    if len(tokenizer) > c.vocab_size:
        raise UserError(f"tokenizer does not match the model: it has {len(tokenizer)} tokens, the model's "
                        f"embedding table {c.vocab_size}")
    pad = getattr(c, "pad_token_id", None)
    if pad is not None and tokenizer.pad_token_id is not None and tokenizer.pad_token_id != pad:
        raise UserError(f"tokenizer does not match the model: padding id {tokenizer.pad_token_id} vs {pad}")


def encode(tokenizer, texts: Sequence[str], labels: Sequence[int], max_length: int, model: nn.Module) -> Encoded:
    """Tokenise to a fixed `max_length` (truncating), after checking tokenizer and length fit the model."""
    check_tokenizer(tokenizer, model)
    limit = model.config.max_position_embeddings
    require(0 < max_length <= limit, f"sequence length {max_length} is longer than the model allows ({limit})")
    enc = tokenizer(list(texts), padding="max_length", truncation=True, max_length=max_length,
                    return_tensors="pt")
    return Encoded(enc["input_ids"], enc["attention_mask"], torch.as_tensor(list(labels), dtype=torch.long))


# ---------------------------------------------------------------------------------------------------------
# Losses: each takes (model, batch) and returns a scalar


def task_loss(model: nn.Module, batch: dict[str, torch.Tensor]) -> torch.Tensor:
    return F.cross_entropy(model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits,
                           batch["labels"])


class Stage1Loss:
    """MSE on attention scores (valid query/key pairs) and on every hidden state, summed over layers."""

    def __init__(self, teacher: nn.Module):
        self.teacher = teacher.eval()

    def __call__(self, student: nn.Module, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        kw = dict(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"], output_hidden_states=True,
                  output_attentions=True)
        with torch.no_grad():
            t = self.teacher(**kw)
        s = student(**kw)
        require(len(s.attentions) == len(t.attentions), "student and teacher must have the same number of layers")
        m = batch["attention_mask"].float()
        pairs = m[:, None, :, None] * m[:, None, None, :]
        tokens = m[..., None]
        loss = torch.zeros(())
        for sa, ta in zip(s.attentions, t.attentions):
            loss = loss + ((sa - ta).square() * pairs).sum() / (pairs.sum() * sa.size(1))
        for sh, th in zip(s.hidden_states, t.hidden_states):
            loss = loss + ((sh - th).square() * tokens).sum() / (tokens.sum() * sh.size(-1))
        return loss


class Stage2Loss:
    """Soft cross-entropy between the teacher's and the student's logits at temperature T."""

    def __init__(self, teacher: nn.Module, temperature: float = 1.0):
        self.teacher, self.t = teacher.eval(), temperature

    def __call__(self, student: nn.Module, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        kw = dict(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"])
        with torch.no_grad():
            target = F.softmax(self.teacher(**kw).logits / self.t, dim=-1)
        return -(target * F.log_softmax(student(**kw).logits / self.t, dim=-1)).sum(-1).mean()


# ---------------------------------------------------------------------------------------------------------


def train(model: nn.Module, loss_fn: Callable[[nn.Module, dict], torch.Tensor], data: Encoded, cfg: TrainConfig,
          checkpoint: str | Path | None = None, tracker=None, name: str = "train") -> nn.Module:
    """Minimise `loss_fn` for `cfg.steps` steps of AdamW with linear warmup and decay; resumes from `checkpoint`."""
    require(cfg.steps >= 0 and cfg.batch_size > 0, f"bad training config {cfg}")
    if cfg.freeze_word_embeddings:
        model.get_input_embeddings().weight.requires_grad_(False)
    params = [p for p in model.parameters() if p.requires_grad]
    decay = [p for p in params if p.dim() > 1]
    no_decay = [p for p in params if p.dim() <= 1]
    opt = torch.optim.AdamW([{"params": decay, "weight_decay": cfg.weight_decay},
                             {"params": no_decay, "weight_decay": 0.0}], lr=cfg.lr)
    warmup = max(1, int(cfg.warmup_frac * cfg.steps))
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda s: min((s + 1) / warmup, max(0.0, (cfg.steps - s) / max(1, cfg.steps - warmup))))
    start = 0
    if checkpoint is not None and Path(checkpoint).exists():
        state = load_checkpoint(checkpoint)
        start = restore_training_state(state, {"model": model}, {"opt": opt})
        sched.load_state_dict(state["extra"]["sched"])
        log.info("%s: resumed from %s at step %d", name, checkpoint, start)
    model.train()
    bar = tqdm(range(start, cfg.steps), desc=name, disable=not cfg.progress, leave=False)
    for step in bar:
        idx = torch.randint(len(data), (min(cfg.batch_size, len(data)),))
        loss = loss_fn(model, data.batch(idx))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        sched.step()
        bar.set_postfix(loss=f"{loss.item():.4f}")
        done = step + 1
        if tracker is not None and (done % 10 == 0 or done == cfg.steps):
            tracker.log({f"{name}/loss": loss.item(), f"{name}/lr": sched.get_last_lr()[0]})
        if checkpoint is not None and (done == cfg.steps or (cfg.checkpoint_every and done % cfg.checkpoint_every == 0)):
            save_checkpoint(checkpoint, training_state(done, {"model": model}, {"opt": opt},
                                                       extra={"sched": sched.state_dict()}))
    return model.eval()


def fine_tune(model: nn.Module, data: Encoded, cfg: TrainConfig, **kw) -> nn.Module:
    """Cross-entropy on the labels: the teacher, and both no-distillation baselines."""
    return train(model, task_loss, data, cfg, **kw)


def distill(student: nn.Module, teacher: nn.Module, data: Encoded, stage1: TrainConfig, stage2: TrainConfig,
            checkpoint_dir: str | Path | None = None, tracker=None, name: str = "distill") -> nn.Module:
    """Stage 1 (attention scores and hidden states), then stage 2 (logits), from the teacher's outputs.

    `teacher` must return raw attention scores: pass it through `convert.to_student(teacher, 'gelu+softmax')`.
    """
    ckpt = (lambda s: Path(checkpoint_dir) / f"{name}-{s}.pt") if checkpoint_dir else (lambda s: None)
    train(student, Stage1Loss(teacher), data, stage1, ckpt("stage1"), tracker, f"{name}/stage1")
    return train(student, Stage2Loss(teacher, stage2.temperature), data, stage2, ckpt("stage2"), tracker,
                 f"{name}/stage2")


@torch.no_grad()
def predict(model: nn.Module, data: Encoded, batch_size: int = 128) -> torch.Tensor:
    """Logits in `data`'s order; examples are batched by length, so each batch is padded only to its longest."""
    model.eval()
    order = torch.argsort(data.attention_mask.sum(1), stable=True)
    out = []
    for lo in range(0, len(data), batch_size):
        b = data.batch(order[lo:lo + batch_size])
        out.append(model(input_ids=b["input_ids"], attention_mask=b["attention_mask"]).logits)
    return torch.cat(out)[torch.argsort(order)]


def accuracy(model: nn.Module, data: Encoded, batch_size: int = 128) -> float:
    return float((predict(model, data, batch_size).argmax(-1) == data.labels).float().mean())
