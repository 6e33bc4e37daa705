"""Training: fine-tuning on labels (the teacher and the paper's two baselines) and two-stage distillation.

Stage 1 matches the student's attention scores and every hidden state (the embedding output included) to
the teacher's with MSE; stage 2 matches the logits with a soft cross-entropy. The student starts from the
teacher's weights (`convert.to_student`). Baselines: the student trained on labels from random weights
("no distillation, no pretraining") and from the teacher's weights ("no distillation").

Every loop checkpoints atomically (model, optimizer, scheduler, RNG states, step) at its end and, with
`TrainConfig.checkpoint_every`, every that many steps; a run killed between checkpoints resumes from the last one
exactly (batches are drawn from torch's global generator, whose state the checkpoint carries), redoing the steps
after it.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

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
    label_weight: float = 0.0  # stage 2: weight of the labels' cross-entropy, mixed with the teacher's (1 - it)
    freeze_word_embeddings: bool = False  # saves most of the optimizer's time on a CPU
    checkpoint_every: int = 0  # steps; 0 = only at the end when a checkpoint path is given
    progress: bool = True


LENGTH_GROUP = 16  # batches are cut from this many batches' worth of rows sorted by length (4: 1.13x the tokens)


@dataclass
class Encoded:
    """A tokenised split: (examples, length) ids, mask and (for sentence pairs) token type ids; (examples,) labels."""

    input_ids: torch.Tensor
    attention_mask: torch.Tensor
    labels: torch.Tensor
    token_type_ids: torch.Tensor | None = None

    def __len__(self) -> int:
        return len(self.labels)

    def batch(self, idx: torch.Tensor) -> dict[str, torch.Tensor]:
        """Rows `idx`, trimmed to their longest sequence (dynamic padding); "index" holds `idx`."""
        mask = self.attention_mask[idx]
        n = int(mask.sum(1).max())
        b = {
            "input_ids": self.input_ids[idx, :n],
            "attention_mask": mask[:, :n],
            "labels": self.labels[idx],
            "index": idx,
        }
        if self.token_type_ids is not None:
            b["token_type_ids"] = self.token_type_ids[idx, :n]
        return b

    def head(self, n: int) -> Encoded:
        return self.select(torch.arange(min(n, len(self))))

    def select(self, idx: torch.Tensor) -> Encoded:
        tt = None if self.token_type_ids is None else self.token_type_ids[idx]
        return Encoded(self.input_ids[idx], self.attention_mask[idx], self.labels[idx], tt)

    def draw(self, step: int, batch_size: int, group: int = LENGTH_GROUP) -> torch.Tensor:
        """The rows of training step `step`: `group` x `batch_size` rows drawn from torch's generator, sorted by
        length and cut into `group` batches, of which this step takes number `step % group`. Batches of similar
        lengths pad less (Rotten Tomatoes at length 48, batch 16: 27.9 tokens a row against 45.3 for uniform
        batches and 26.8 unpadded); every row is still drawn uniformly."""
        b = min(batch_size, len(self))
        group = max(1, min(group, len(self) // b))  # more draws than rows would make batches of repeated rows
        idx = torch.randint(len(self), (group * b,))
        idx = idx[torch.argsort(self.attention_mask[idx].sum(1), stable=True)]
        return idx[(step % group) * b : (step % group + 1) * b]


def model_inputs(batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """What a transformers model takes from a batch."""
    return {k: batch[k] for k in ("input_ids", "attention_mask", "token_type_ids") if k in batch}


def check_tokenizer(tokenizer, model: nn.Module) -> None:
    """A tokenizer matches a model when its ids fit the embedding table and the padding ids agree."""
    c = model.config
    if len(tokenizer) > c.vocab_size:
        raise UserError(
            f"tokenizer does not match the model: it has {len(tokenizer)} tokens, the model's "
            f"embedding table {c.vocab_size}"
        )
    pad = getattr(c, "pad_token_id", None)
    if pad is not None and tokenizer.pad_token_id is not None and tokenizer.pad_token_id != pad:
        raise UserError(f"tokenizer does not match the model: padding id {tokenizer.pad_token_id} vs {pad}")


def encode(
    tokenizer,
    texts: Sequence[str],
    labels: Sequence[int],
    max_length: int,
    model: nn.Module,
    pairs: Sequence[str] | None = None,
) -> Encoded:
    """Tokenise to a fixed `max_length` (truncating), after checking tokenizer and length fit the model.
    With `pairs` (the second sentence of each example) the token type ids mark the two segments."""
    check_tokenizer(tokenizer, model)
    limit = model.config.max_position_embeddings
    require(0 < max_length <= limit, f"sequence length {max_length} is longer than the model allows ({limit})")
    enc = tokenizer(
        list(texts),
        None if pairs is None else list(pairs),
        padding="max_length",
        truncation=True,
        max_length=max_length,
        return_tensors="pt",
    )
    return Encoded(
        enc["input_ids"],
        enc["attention_mask"],
        torch.as_tensor(list(labels), dtype=torch.long),
        enc["token_type_ids"] if pairs is not None else None,
    )


# ---------------------------------------------------------------------------------------------------------
# The teacher's outputs, computed once for every distillation run


@dataclass
class TeacherOutputs:
    """The teacher's hidden states (embedding output included), raw attention scores and logits on every
    training example, computed once and shared by every student's distillation: a student's step then costs
    its own forward and backward only. States are kept in half precision (a quarter of the memory of float32
    at no measurable cost to the loss); `teacher` must return raw scores (`convert.to_student(t, 'gelu+softmax')`)."""

    hidden: torch.Tensor  # (layers + 1, examples, length, hidden)
    scores: torch.Tensor  # (layers, examples, heads, length, length)
    logits: torch.Tensor  # (examples, labels), float32

    @staticmethod
    def nbytes(config, examples: int, length: int, itemsize: int = 2) -> int:
        """Bytes a cache of `examples` rows at `length` takes for a model with this transformers `config`."""
        layers, heads, hidden = config.num_hidden_layers, config.num_attention_heads, config.hidden_size
        per_row = (layers + 1) * length * hidden + layers * heads * length * length
        return examples * (per_row * itemsize + 4 * config.num_labels)

    @classmethod
    @torch.no_grad()
    def compute(
        cls, teacher: nn.Module, data: Encoded, batch_size: int = 128, dtype: torch.dtype = torch.float16
    ) -> TeacherOutputs:
        teacher.eval()
        hidden, scores, logits = [], [], []
        full = data.attention_mask.shape[1]
        for lo in range(0, len(data), batch_size):
            b = data.batch(torch.arange(lo, min(lo + batch_size, len(data))))
            n = b["input_ids"].shape[1]
            o = teacher(**model_inputs(b), output_hidden_states=True, output_attentions=True)
            pad = full - n  # back to the full length, so that any batch can be sliced out later
            hidden.append(F.pad(torch.stack(o.hidden_states), (0, 0, 0, pad)).to(dtype))
            scores.append(F.pad(torch.stack(o.attentions), (0, pad, 0, pad)).to(dtype))
            logits.append(o.logits.float())
        return cls(torch.cat(hidden, 1), torch.cat(scores, 1), torch.cat(logits))

    def of(self, batch: dict[str, torch.Tensor]) -> tuple[list[torch.Tensor], list[torch.Tensor], torch.Tensor]:
        """(hidden states, attention scores, logits) of a batch's rows, trimmed to its length, in float32."""
        idx, n = batch["index"], batch["input_ids"].shape[1]
        return (
            [h[idx, :n].float() for h in self.hidden],
            [a[idx, :, :n, :n].float() for a in self.scores],
            self.logits[idx],
        )


def _teacher_forward(teacher: nn.Module | TeacherOutputs, batch: dict[str, torch.Tensor]):
    if isinstance(teacher, TeacherOutputs):
        return teacher.of(batch)
    with torch.no_grad():
        t = teacher.eval()(**model_inputs(batch), output_hidden_states=True, output_attentions=True)
    return list(t.hidden_states), list(t.attentions), t.logits


# ---------------------------------------------------------------------------------------------------------
# Losses: each takes (model, batch) and returns a scalar


def task_loss(model: nn.Module, batch: dict[str, torch.Tensor]) -> torch.Tensor:
    return F.cross_entropy(model(**model_inputs(batch)).logits, batch["labels"])


class Stage1Loss:
    """MSE on attention scores (valid query/key pairs) and on every hidden state, summed over layers.
    `teacher`: a model returning raw attention scores, or its precomputed `TeacherOutputs`."""

    def __init__(self, teacher: nn.Module | TeacherOutputs):
        self.teacher = teacher

    def __call__(self, student: nn.Module, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        t_hidden, t_scores, _ = _teacher_forward(self.teacher, batch)
        s = student(**model_inputs(batch), output_hidden_states=True, output_attentions=True)
        require(len(s.attentions) == len(t_scores), "student and teacher must have the same number of layers")
        m = batch["attention_mask"].float()
        pairs = m[:, None, :, None] * m[:, None, None, :]
        tokens = m[..., None]
        loss = torch.zeros(())
        for sa, ta in zip(s.attentions, t_scores):
            loss = loss + ((sa - ta).square() * pairs).sum() / (pairs.sum() * sa.size(1))
        for sh, th in zip(s.hidden_states, t_hidden):
            loss = loss + ((sh - th).square() * tokens).sum() / (tokens.sum() * sh.size(-1))
        return loss


class Stage2Loss:
    """Soft cross-entropy between the teacher's and the student's logits at temperature T; with `label_weight`
    w > 0, (1 - w) of it plus w times the cross-entropy on the labels (Hinton et al.'s mix; the released
    MPCFormer code uses w = 0)."""

    def __init__(self, teacher: nn.Module | TeacherOutputs, temperature: float = 1.0, label_weight: float = 0.0):
        require(0.0 <= label_weight <= 1.0, f"label_weight must be in [0, 1], got {label_weight}")
        self.teacher, self.t, self.w = teacher, temperature, label_weight

    def __call__(self, student: nn.Module, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        if isinstance(self.teacher, TeacherOutputs):
            t_logits = self.teacher.logits[batch["index"]]
        else:
            with torch.no_grad():
                t_logits = self.teacher.eval()(**model_inputs(batch)).logits
        logits = student(**model_inputs(batch)).logits
        target = F.softmax(t_logits / self.t, dim=-1)
        soft = -(target * F.log_softmax(logits / self.t, dim=-1)).sum(-1).mean()
        if not self.w:
            return soft
        return (1 - self.w) * soft + self.w * F.cross_entropy(logits, batch["labels"])


# ---------------------------------------------------------------------------------------------------------


def train(
    model: nn.Module,
    loss_fn: Callable[[nn.Module, dict], torch.Tensor],
    data: Encoded,
    cfg: TrainConfig,
    checkpoint: str | Path | None = None,
    tracker=None,
    name: str = "train",
) -> nn.Module:
    """Minimise `loss_fn` for `cfg.steps` steps of AdamW with linear warmup and decay; resumes from `checkpoint`."""
    require(cfg.steps >= 0 and cfg.batch_size > 0, f"bad training config {cfg}")
    if cfg.freeze_word_embeddings:
        model.get_input_embeddings().weight.requires_grad_(False)
    params = [p for p in model.parameters() if p.requires_grad]
    decay = [p for p in params if p.dim() > 1]
    no_decay = [p for p in params if p.dim() <= 1]
    opt = torch.optim.AdamW(
        [{"params": decay, "weight_decay": cfg.weight_decay}, {"params": no_decay, "weight_decay": 0.0}], lr=cfg.lr
    )
    warmup = max(1, int(cfg.warmup_frac * cfg.steps))
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda s: min((s + 1) / warmup, max(0.0, (cfg.steps - s) / max(1, cfg.steps - warmup)))
    )
    start = 0
    if checkpoint is not None and Path(checkpoint).exists():
        state = load_checkpoint(checkpoint)
        start = restore_training_state(state, {"model": model}, {"opt": opt})
        sched.load_state_dict(state["extra"]["sched"])
        log.info("%s: resumed from %s at step %d", name, checkpoint, start)
    model.train()
    bar = tqdm(range(start, cfg.steps), desc=name, disable=not cfg.progress, leave=False)
    for step in bar:
        loss = loss_fn(model, data.batch(data.draw(step, cfg.batch_size)))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        sched.step()
        bar.set_postfix(loss=f"{loss.item():.4f}")
        done = step + 1
        if tracker is not None and (done % 10 == 0 or done == cfg.steps):
            tracker.log({f"{name}/loss": loss.item(), f"{name}/lr": sched.get_last_lr()[0]})
        if checkpoint is not None and (
            done == cfg.steps or (cfg.checkpoint_every and done % cfg.checkpoint_every == 0)
        ):
            save_checkpoint(
                checkpoint, training_state(done, {"model": model}, {"opt": opt}, extra={"sched": sched.state_dict()})
            )
    return model.eval()


def fine_tune(model: nn.Module, data: Encoded, cfg: TrainConfig, **kw) -> nn.Module:
    """Cross-entropy on the labels: the teacher, and both no-distillation baselines."""
    return train(model, task_loss, data, cfg, **kw)


def distill(
    student: nn.Module,
    teacher: nn.Module | TeacherOutputs,
    data: Encoded,
    stage1: TrainConfig,
    stage2: TrainConfig,
    checkpoint_dir: str | Path | None = None,
    tracker=None,
    name: str = "distill",
) -> nn.Module:
    """Stage 1 (attention scores and hidden states), then stage 2 (logits), from the teacher's outputs.

    `teacher`: `TeacherOutputs.compute(exact, data)` (computed once for all students) or a model that returns
    raw attention scores (`convert.to_student(teacher, 'gelu+softmax')`).
    """
    ckpt = (lambda s: Path(checkpoint_dir) / f"{name.replace('/', '-')}-{s}.pt") if checkpoint_dir else (lambda s: None)
    train(student, Stage1Loss(teacher), data, stage1, ckpt("stage1"), tracker, f"{name}/stage1")
    stage2_loss = Stage2Loss(teacher, stage2.temperature, stage2.label_weight)
    return train(student, stage2_loss, data, stage2, ckpt("stage2"), tracker, f"{name}/stage2")


@torch.no_grad()
def predict(model: nn.Module, data: Encoded, batch_size: int = 128) -> torch.Tensor:
    """Logits in `data`'s order; examples are batched by length, so each batch is padded only to its longest."""
    model.eval()
    order = torch.argsort(data.attention_mask.sum(1), stable=True)
    out = []
    for lo in range(0, len(data), batch_size):
        out.append(model(**model_inputs(data.batch(order[lo : lo + batch_size]))).logits)
    return torch.cat(out)[torch.argsort(order)]


def accuracy(model: nn.Module, data: Encoded, batch_size: int = 128) -> float:
    return float((predict(model, data, batch_size).argmax(-1) == data.labels).float().mean())
