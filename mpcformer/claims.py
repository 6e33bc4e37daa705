"""MPCFormer's qualitative claims, decided from the measured tables (never written by hand).

`decide_claims` takes the accuracy table (test split, one row per approximation), the teacher's and the
majority class's test accuracy, the speedups table of `bench.bench_all` and the accuracy-under-MPC table,
and returns one `common.claims.Claim` per claim; a claim whose evidence this run did not measure is
"not measured at this scale".
"""

from __future__ import annotations

from typing import Any

import pandas as pd

from common.claims import Claim, decide

CLOSE_TO_TEACHER = 3.0  # points: "close to the teacher"
ABOVE_MAJORITY = 10.0  # points: a student that learned the task, not the majority class
MPC_AGREEMENT = 99.0  # %: the student keeps its predictions under MPC


def _fmt(rows: pd.DataFrame, a: str, b: str) -> str:
    return "; ".join(f"{r.approximation} {getattr(r, a):.1f} vs {getattr(r, b):.1f}" for r in rows.itertuples())


def _scratch_note(acc: pd.DataFrame, majority_acc: float, frozen: bool) -> str:
    """What the from-scratch baseline is, and where it ends at the majority class (it then learned nothing, and
    beating it shows only that the distilled student learned something)."""
    what = (
        ". Baseline: the student's architecture from random weights trained on the labels with the same steps and "
        "optimiser" + (", its random word embeddings frozen (train.freeze_word_embeddings)" if frozen else "")
    )
    flat = acc[(acc.acc_no_distill_no_pretrain - majority_acc).abs() <= 1.0] if len(acc) else acc
    if len(flat):
        what += (
            f". From scratch stays within a point of the majority class ({majority_acc:.1f}) for "
            f"{', '.join(flat.approximation)}: at this budget that baseline learns nothing, so this claim shows only "
            "that the distilled student learned the task"
        )
    return what


def _speedup(sp: pd.DataFrame, fast: str, slow: str) -> tuple[float, int, str] | None:
    """(speedup, length, provider) at the longest length measured (TTP preferred)."""
    if sp is None or sp.empty:
        return None
    rows = sp[(sp.fast == fast) & (sp.baseline == slow)]
    if rows.empty:
        return None
    rows = rows.assign(ttp=rows.provider == "TTP").sort_values(["length", "ttp"])
    r = rows.iloc[-1]
    return float(r["speedup (wall_s)"]), int(r.length), str(r.provider)


def decide_claims(
    acc: pd.DataFrame,
    teacher_acc: float,
    majority_acc: float,
    sp: pd.DataFrame | None,
    mpc: pd.DataFrame | None,
    paper: dict[str, Any],
    test_examples: int | None = None,
    scratch_frozen_embeddings: bool = False,
) -> list[Claim]:
    """The claims of the paper this run measures, each with the paper's and the measured evidence.
    `test_examples`: the size of the test split, to state each accuracy's standard error beside the evidence.
    `scratch_frozen_embeddings`: the from-scratch baseline kept its random word embeddings frozen (said in the
    evidence: that baseline is then weaker than the paper's)."""
    imdb = pd.DataFrame(paper["imdb"])
    noise = ""
    if test_examples:
        p = float(acc.acc_distilled.mean()) / 100 if len(acc) else 0.5
        se = 100 * (p * (1 - p) / test_examples) ** 0.5
        noise = f" ({test_examples} test examples: one accuracy's standard error {se:.1f} points)"
    beats = bool((acc.acc_distilled > acc.acc_no_distill).all()) if len(acc) else None
    pairs = ""
    if len(acc) and "paired_se" in acc:
        pairs = "; distilled minus fine-tuned (paired standard error): " + "; ".join(
            f"{r.approximation} {r.distilled_minus_finetuned:+.2f} ({r.paired_se:.2f})" for r in acc.itertuples()
        )
        lost = acc[acc.acc_distilled <= acc.acc_no_distill]
        if beats is False and bool((lost.distilled_minus_finetuned.abs() <= 2 * lost.paired_se).all()):
            pairs += (
                f". Where it does not ({', '.join(lost.approximation)}), the difference is within 2 paired standard "
                "errors: a tie at this budget, not a loss"
            )
        narrow = acc[(acc.acc_distilled > acc.acc_no_distill) & (acc.distilled_minus_finetuned <= acc.paired_se)]
        if len(narrow):  # the verdict is by sign; say where the sign is inside one row's noise
            pairs += (
                f". Ahead by no more than one paired standard error ({', '.join(narrow.approximation)}): "
                "a lead this run cannot tell from noise"
            )
    claims = [
        Claim(
            "distillation_beats_finetuning",
            "Distillation beats training the student on labels from the teacher's weights, for every approximation",
            "IMDb: distilled vs no distillation " + _fmt(imdb, "acc_distilled", "acc_no_distill"),
            "test accuracy, distilled vs fine-tuned (same steps): "
            + _fmt(acc, "acc_distilled", "acc_no_distill")
            + noise
            + pairs,
            decide(beats),
        ),
        Claim(
            "distillation_beats_scratch",
            "Distillation beats training the student on labels from random weights, for every approximation",
            "IMDb: distilled vs no distillation, no pretraining "
            + _fmt(imdb, "acc_distilled", "acc_no_distill_no_pretrain"),
            "test accuracy, distilled vs from scratch (same steps): "
            + _fmt(acc, "acc_distilled", "acc_no_distill_no_pretrain")
            + _scratch_note(acc, majority_acc, scratch_frozen_embeddings),
            decide(bool((acc.acc_distilled > acc.acc_no_distill_no_pretrain).all()) if len(acc) else None),
        ),
    ]
    q = acc[acc.approximation == "Quad+2Quad"]
    paper_q = imdb[imdb.approximation == "Quad+2Quad"].acc_distilled.iloc[0]
    gap = None if q.empty else teacher_acc - float(q.acc_distilled.iloc[0])
    claims.append(
        Claim(
            "quad_2quad_close_to_teacher",
            f"The distilled Quad+2Quad student is close to its teacher (within {CLOSE_TO_TEACHER:g} points)",
            f"IMDb {paper_q} vs teacher {paper['imdb_teacher_accuracy']}; GLUE average 80.3 vs 82.8",
            "not trained in this run"
            if gap is None
            else f"test {float(q.acc_distilled.iloc[0]):.1f} vs teacher {teacher_acc:.1f} ({gap:+.1f} points below)"
            + noise,
            decide(None if gap is None else gap <= CLOSE_TO_TEACHER),
        )
    )
    worst = acc.loc[acc.acc_distilled.idxmin()] if len(acc) else None
    claims.append(
        Claim(
            "students_learn_the_task",
            f"Every distilled student learns the task (at least {ABOVE_MAJORITY:g} points above the majority class)",
            "IMDb: every distilled student 93.9-94.0 (majority class 50)",
            "not trained"
            if worst is None
            else (
                f"majority class {majority_acc:.1f}; lowest distilled student {worst.approximation} "
                f"{worst.acc_distilled:.1f}"
            ),
            decide(None if worst is None else float(worst.acc_distilled) >= majority_acc + ABOVE_MAJORITY),
        )
    )
    for fast, slow, paper_x in (("quad", "gelu", 22.0), ("2quad", "softmax", 12.5), ("2relu", "softmax", 2.7)):
        s = _speedup(sp, fast, slow)
        claims.append(
            Claim(
                f"{fast}_faster_than_{slow}",
                f"{fast} is faster than {slow} under MPC",
                f"{paper_x}x (CrypTen, BERT-base shapes, length 512; repository figure)",
                "not benchmarked" if s is None else f"{s[0]:.1f}x at length {s[1]} ({s[2]}, wall time)",
                decide(None if s is None else s[0] > 1.0),
            )
        )
    s = _speedup(sp, "quad+2quad", "gelu+softmax")
    claims.append(
        Claim(
            "quad_2quad_model_faster",
            "The Quad+2Quad student is faster than the exact model under MPC",
            f"{imdb[imdb.approximation == 'Quad+2Quad'].speedup.iloc[0]}x (IMDb, length 512); 2.2x (GLUE, length 128)",
            "not benchmarked" if s is None else f"{s[0]:.1f}x at length {s[1]} ({s[2]}, whole model, wall time)",
            decide(None if s is None else s[0] > 1.0),
        )
    )
    students = None if mpc is None or mpc.empty else mpc[~mpc.model.str.startswith("GeLU+Softmax")]
    claims.append(
        Claim(
            "students_keep_accuracy_under_mpc",
            f"The distilled students give the same predictions under MPC as in plaintext (>= {MPC_AGREEMENT:g}% agree)",
            "not shown: the released code measured accuracy in plaintext only",
            "not run under MPC"
            if students is None or students.empty
            else "; ".join(
                f"{r.model}: {r.label_agreement:.1f}% agree, MPC {r.acc_mpc:.1f} vs plaintext {r.acc_plaintext:.1f} "
                f"on {r.examples}"
                for r in students.itertuples()
            ),
            decide(
                None if students is None or students.empty else bool((students.label_agreement >= MPC_AGREEMENT).all())
            ),
        )
    )
    return claims
