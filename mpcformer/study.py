"""The paper's accuracy study: a fine-tuned teacher, and for each approximation the two no-distillation
baselines and the distilled student, all at the same number of training steps; then the students under MPC.

- "no distillation, no pretraining": the student's architecture from random weights, trained on labels;
- "no distillation": the student from the teacher's weights, trained on labels;
- distilled: stage 1 (attention scores and hidden states) then stage 2 (logits) from the teacher's outputs,
  computed once (`distill.TeacherOutputs`) for every student when they fit `Budget.teacher_cache_max_gb`
  (`teacher_cache`), else by running the teacher on each batch (as the released code does; at paper scale the
  cache of IMDb at length 512 would take ~1.9 TB).

Every run is scored on the dev split (where steps and learning rates are chosen) and on the test split
(reported, never used for a choice).
"""

from __future__ import annotations

import dataclasses
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd
import torch
from torch import nn

from common.errors import require

from .convert import EXACT, Approximation, to_student
from .distill import Encoded, TeacherOutputs, TrainConfig, distill, fine_tune, predict
from .private_inference import (
    batch_lengths,
    calibrate_layer_norms,
    check_against_plaintext,
    private_inference,
    truncation_risk,
)

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Budget:
    """Steps and learning rates of every run. Each baseline trains for stage1 + stage2 steps: the same number
    of steps (and examples) as the distilled student."""

    batch_size: int = 16
    teacher_steps: int = 400
    stage1_steps: int = 150
    stage2_steps: int = 50
    teacher_lr: float = 1e-4
    stage1_lr: float = 1e-4
    stage2_lr: float = 5e-5
    baseline_lr: float = 5e-5
    weight_decay: float = 0.01
    warmup_frac: float = 0.1
    temperature: float = 1.0
    label_weight: float = 0.0  # stage 2: weight of the labels' cross-entropy beside the teacher's logits
    freeze_word_embeddings: bool = True
    checkpoint_every: int = 0  # steps between mid-run checkpoints (0: only at each run's end)
    teacher_cache: bool = True  # the teacher's outputs computed once for every student (else per batch)
    teacher_cache_max_gb: float = 8.0  # a larger cache is refused before any training
    # what differs for one approximation's three runs, chosen on dev (as many candidates for the baselines'
    # learning rate as for the distillation's settings): [{"approximation": "quad+2quad", "stage1_lr": 2e-4}, ...]
    per_approximation: list[dict[str, Any]] = field(default_factory=list)

    PER_APPROXIMATION_KEYS = (
        "stage1_steps",
        "stage2_steps",
        "stage1_lr",
        "stage2_lr",
        "baseline_lr",
        "temperature",
        "label_weight",
    )

    def __post_init__(self) -> None:
        for over in self.per_approximation:
            require("approximation" in over, f"train.per_approximation: {over} names no approximation")
            Approximation.parse(over["approximation"])
            bad = sorted(set(over) - {"approximation", *self.PER_APPROXIMATION_KEYS})
            require(
                not bad,
                f"train.per_approximation ({over['approximation']}): {', '.join(bad)} cannot differ per "
                f"approximation; choose from {', '.join(self.PER_APPROXIMATION_KEYS)}",
            )

    def overrides(self, a: Approximation) -> dict[str, Any]:
        """`a`'s settings that differ from the common ones."""
        for over in self.per_approximation:
            if Approximation.parse(over["approximation"]) == a:
                return {k: v for k, v in over.items() if k != "approximation"}
        return {}

    def describe_overrides(self, approximations: list[Approximation]) -> str:
        """'GeLU+2Quad stage2_lr 0.0002; ...' for the approximations with settings of their own ('' if none)."""
        return "; ".join(
            f"{a.label} {', '.join(f'{k} {v}' for k, v in self.overrides(a).items())}"
            for a in approximations
            if self.overrides(a)
        )

    def for_approximation(self, a: Approximation) -> Budget:
        """This budget with `a`'s overrides applied (the teacher's settings never change)."""
        return dataclasses.replace(self, per_approximation=[], **self.overrides(a))

    @property
    def baseline_steps(self) -> int:
        return self.stage1_steps + self.stage2_steps

    def config(self, run: str) -> TrainConfig:
        steps = {
            "teacher": self.teacher_steps,
            "stage1": self.stage1_steps,
            "stage2": self.stage2_steps,
            "baseline": self.baseline_steps,
        }[run]
        lr = {
            "teacher": self.teacher_lr,
            "stage1": self.stage1_lr,
            "stage2": self.stage2_lr,
            "baseline": self.baseline_lr,
        }[run]
        return TrainConfig(
            steps=steps,
            batch_size=self.batch_size,
            lr=lr,
            weight_decay=self.weight_decay,
            warmup_frac=self.warmup_frac,
            temperature=self.temperature,
            label_weight=self.label_weight if run == "stage2" else 0.0,  # only stage 2 reads it
            freeze_word_embeddings=self.freeze_word_embeddings,
            checkpoint_every=self.checkpoint_every,
        )

    def check_teacher_cache(self, model_config, examples: int, length: int) -> None:
        """Refuse (UserError) a teacher cache over `teacher_cache_max_gb`, before any training."""
        if not self.teacher_cache:
            return
        gb = TeacherOutputs.nbytes(model_config, examples, length) / 1e9
        require(
            gb <= self.teacher_cache_max_gb,
            f"the teacher cache of {examples} training examples at length {length} would take {gb:,.1f} GB, over "
            f"train.teacher_cache_max_gb={self.teacher_cache_max_gb:g}: set train.teacher_cache=false (the teacher "
            "then runs on each batch) or raise the limit",
        )


@dataclass
class StudyResult:
    teacher: nn.Module
    exact: nn.Module  # the teacher routed through the MPCFormer attention (returns raw scores; runs under MPC)
    students: dict[Approximation, nn.Module]  # the distilled students
    accuracy: pd.DataFrame  # one row per approximation: test accuracy (%) of the three runs
    dev: pd.DataFrame  # the same on the dev split (where the recipe was chosen)
    teacher_accuracy: dict[str, float]  # split -> %


def correct(model: nn.Module, data: dict[str, Encoded]) -> dict[str, torch.Tensor]:
    """Per-example correctness (1.0 or 0.0) on the dev and test splits."""
    return {k: (predict(model, data[k]).argmax(-1) == data[k].labels).float() for k in ("dev", "test")}


def score(model: nn.Module, data: dict[str, Encoded]) -> dict[str, float]:
    """Accuracy (%) on the dev and test splits."""
    return {k: 100 * float(v.mean()) for k, v in correct(model, data).items()}


def paired(better: torch.Tensor, worse: torch.Tensor) -> tuple[float, float]:
    """(mean difference, its standard error) in points, from per-example correctness on the same examples."""
    d = better - worse
    return 100 * float(d.mean()), 100 * float(d.std() / len(d) ** 0.5) if len(d) > 1 else float("nan")


def run_study(
    teacher: nn.Module,
    data: dict[str, Encoded],
    approximations: list[Approximation],
    budget: Budget,
    checkpoint_dir: Path | None = None,
    tracker=None,
    seed: int = 0,
) -> StudyResult:
    """Fine-tune `teacher` on data["train"], then train the baselines and distil each student."""
    budget.check_teacher_cache(teacher.config, len(data["train"]), data["train"].input_ids.shape[1])
    ckpt = (lambda name: checkpoint_dir / f"{name}.pt") if checkpoint_dir else (lambda name: None)
    if checkpoint_dir:
        checkpoint_dir.mkdir(parents=True, exist_ok=True)
    fine_tune(
        teacher, data["train"], budget.config("teacher"), checkpoint=ckpt("teacher"), tracker=tracker, name="teacher"
    )
    t_acc = score(teacher, data)
    log.info("teacher: dev %.2f, test %.2f", t_acc["dev"], t_acc["test"])
    exact = to_student(teacher, EXACT)
    if budget.teacher_cache:
        log.info("teacher outputs on %d training examples, computed once for every student", len(data["train"]))
        source: nn.Module | TeacherOutputs = TeacherOutputs.compute(exact, data["train"])
    else:
        log.info("teacher outputs computed on each batch (no cache)")
        source = exact
    rows: dict[str, list[dict]] = {"dev": [], "test": []}
    students = {}
    for a in approximations:
        b = budget.for_approximation(a)
        # every run starts from the same seed (batch order and dropout), as in the dev search that chose its
        # settings: a run's numbers do not depend on which runs came before it
        torch.manual_seed(seed)
        scratch = to_student(type(teacher)(teacher.config), a, copy_model=False)
        fine_tune(
            scratch,
            data["train"],
            b.config("baseline"),
            checkpoint=ckpt(f"{a.name}-scratch"),
            tracker=tracker,
            name=f"{a.name}/scratch",
        )
        torch.manual_seed(seed)
        plain = fine_tune(
            to_student(teacher, a),
            data["train"],
            b.config("baseline"),
            checkpoint=ckpt(f"{a.name}-finetune"),
            tracker=tracker,
            name=f"{a.name}/finetune",
        )
        torch.manual_seed(seed)
        student = distill(
            to_student(teacher, a),
            source,
            data["train"],
            b.config("stage1"),
            b.config("stage2"),
            checkpoint_dir=checkpoint_dir,
            tracker=tracker,
            name=f"{a.name}/distill",
        )
        c = {
            "acc_no_distill_no_pretrain": correct(scratch, data),
            "acc_no_distill": correct(plain, data),
            "acc_distilled": correct(student, data),
        }
        scores = {k: {split: 100 * float(v.mean()) for split, v in per.items()} for k, per in c.items()}
        for split in ("dev", "test"):
            diff, se = paired(c["acc_distilled"][split], c["acc_no_distill"][split])
            rows[split].append(
                {"approximation": a.label, **{k: v[split] for k, v in scores.items()}}
                | {"distilled_minus_finetuned": diff, "paired_se": se}
            )
        log.info("%s: test %s", a.label, {k: round(v["test"], 2) for k, v in scores.items()})
        if tracker is not None:
            tracker.log({f"acc/{a.name}/{k}": v["test"] for k, v in scores.items()})
        students[a] = student
    return StudyResult(teacher, exact, students, pd.DataFrame(rows["test"]), pd.DataFrame(rows["dev"]), t_acc)


def calibrate(models: list[nn.Module], data: Encoded, n: int = 64) -> None:
    """The model owner's public LayerNorm scales for MPC, from its own (training) examples."""
    sub = data.head(n)
    for m in models:
        calibrate_layer_norms(m, sub.input_ids, sub.attention_mask, sub.token_type_ids)


def mpc_accuracy(
    models: dict[str, nn.Module],
    data: Encoded,
    batch_size: int = 32,
    timeout_s: float = 600.0,
    risk_examples: int = 0,
    length_bucket: int | None = None,
) -> pd.DataFrame:
    """Each model under MPC (two parties and a dealer, audited) on every example of `data`, against the same
    model in plaintext: accuracy both ways, label agreement, largest logit error, leaks found by the audit,
    and (on the first `risk_examples`) the expected number of wrapped truncations per example.

    With `length_bucket` the client sorts its examples by length and pads each batch only to its longest,
    rounded up to a multiple of the bucket (public, as the padded length is; `private_inference`)."""
    order = torch.argsort(data.attention_mask.sum(1), stable=True) if length_bucket else torch.arange(len(data))
    sent = data.select(order)
    cuts = batch_lengths(sent.attention_mask, batch_size, length_bucket) or (sent.input_ids.shape[1],)
    rows = []
    for name, model in models.items():
        log.info("under MPC: %s on %d examples (batches of %d)", name, len(data), batch_size)
        res = private_inference(
            model,
            sent.input_ids,
            sent.attention_mask,
            sent.token_type_ids,
            batch_size=batch_size,
            timeout_s=timeout_s,
            audit=True,
            length_bucket=length_bucket,
        )
        logits = res.logits[torch.argsort(order)]  # back to the examples' order
        leaks = len(res.leaks())
        with torch.no_grad():
            plain_logits = predict(model, data)  # the plaintext model once, for the check and its accuracy
        check = check_against_plaintext(
            model, data.input_ids, data.attention_mask, logits, data.token_type_ids, plain_logits=plain_logits
        )
        plain = plain_logits.argmax(-1)
        row = {
            "model": name,
            "examples": len(data),
            "length": int(data.input_ids.shape[1]),
            "mean_batch_length": sum(cuts) / len(cuts),
            "acc_mpc": 100 * float((logits.argmax(-1) == data.labels).float().mean()),
            "acc_plaintext": 100 * float((plain == data.labels).float().mean()),
            "label_agreement": 100 * check["label_agreement"],
            "max_abs_logit_error": check["max_abs_logit_error"],
            "leaks_found": leaks,
        }
        if risk_examples:
            few = data.head(risk_examples)
            risk = truncation_risk(
                model,
                few.input_ids,
                few.attention_mask,
                few.token_type_ids,
                batch_size=risk_examples,
                timeout_s=timeout_s,
            )
            row["expected_wraps_per_example"] = sum(risk.values()) / len(few)
        row |= {
            "wall_s": res.wall_s,
            "s_per_example": res.wall_s / len(data),
            "MB_p0": res.party(0).bytes / 1e6,
            "MB_p1": res.party(1).bytes / 1e6,
            "rounds_p0": res.party(0).rounds,
            "rounds_p1": res.party(1).rounds,
        }
        log.info("under MPC: %s", row)
        rows.append(row)
    return pd.DataFrame(rows)


def checkpoint_dir(root: str | Path, scale: str, training_keys: dict) -> Path:
    """One directory per scale and training-relevant config, so a changed config never resumes a stale run."""
    import hashlib
    import json

    digest = hashlib.sha1(json.dumps(training_keys, sort_keys=True, default=str).encode()).hexdigest()[:10]
    return Path(root) / f"{scale}-{digest}"
