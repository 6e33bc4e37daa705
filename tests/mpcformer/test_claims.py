"""The claims are decided from the measured tables: each verdict follows its numbers, both ways."""

import pandas as pd
import pytest
import yaml

from common.claims import DOES_NOT_HOLD, HOLDS, NOT_MEASURED
from mpcformer.claims import decide_claims
from reproduce.mpcformer import PAPER_FILE

PAPER = yaml.safe_load(PAPER_FILE.read_text())


def _acc(distilled=(75.0, 74.0), finetuned=(70.0, 69.0), scratch=(60.0, 60.0)):
    return pd.DataFrame(
        {
            "approximation": ["Quad+2Quad", "GeLU+2ReLU"],
            "acc_no_distill_no_pretrain": scratch,
            "acc_no_distill": finetuned,
            "acc_distilled": distilled,
        }
    )


def _sp(model=3.0, quad=20.0):
    rows = [
        ("quad", "gelu", 128, quad),
        ("2quad", "softmax", 128, 10.0),
        ("2relu", "softmax", 128, 2.0),
        ("quad+2quad", "gelu+softmax", 64, 1.1),
        ("quad+2quad", "gelu+softmax", 128, model),
    ]
    return pd.DataFrame(
        [{"fast": f, "baseline": b, "length": L, "provider": "TTP", "speedup (wall_s)": x} for f, b, L, x in rows]
    )


def _mpc(agree=100.0):
    return pd.DataFrame(
        [
            {"model": "GeLU+Softmax", "label_agreement": 90.0, "acc_mpc": 70.0, "acc_plaintext": 71.0, "examples": 128},
            {
                "model": "Quad+2Quad (distilled)",
                "label_agreement": agree,
                "acc_mpc": 75.0,
                "acc_plaintext": 75.0,
                "examples": 128,
            },
        ]
    )


def _verdicts(**kw):
    args = dict(acc=_acc(), teacher_acc=76.0, majority_acc=51.6, sp=_sp(), mpc=_mpc(), paper=PAPER) | kw
    return {c.key: c.verdict for c in decide_claims(**args)}


def test_all_hold_on_tables_that_show_them():
    assert set(_verdicts().values()) == {HOLDS}


@pytest.mark.parametrize(
    "change, key",
    [
        (dict(acc=_acc(finetuned=(70.0, 74.5))), "distillation_beats_finetuning"),
        (dict(acc=_acc(scratch=(76.0, 60.0))), "distillation_beats_scratch"),
        (dict(teacher_acc=78.5), "quad_2quad_close_to_teacher"),
        (
            dict(acc=_acc(distilled=(75.0, 61.0), finetuned=(70.0, 60.0), scratch=(60.0, 55.0))),
            "students_learn_the_task",
        ),
        (dict(sp=_sp(quad=0.9)), "quad_faster_than_gelu"),
        (dict(sp=_sp(model=0.8)), "quad_2quad_model_faster"),  # at the longest length, not the first
        (dict(mpc=_mpc(agree=98.0)), "students_keep_accuracy_under_mpc"),
    ],
)
def test_each_claim_fails_when_its_numbers_do(change, key):
    verdicts = _verdicts(**change)
    assert verdicts[key] == DOES_NOT_HOLD
    assert all(v == HOLDS for k, v in verdicts.items() if k != key)


def test_what_was_not_measured_says_so():
    verdicts = _verdicts(sp=None, mpc=None)
    assert (
        verdicts["quad_faster_than_gelu"] == NOT_MEASURED
        and verdicts["students_keep_accuracy_under_mpc"] == NOT_MEASURED
    )
    no_quad = _acc().iloc[1:]
    assert _verdicts(acc=no_quad)["quad_2quad_close_to_teacher"] == NOT_MEASURED


def test_evidence_states_the_test_split_s_standard_error():
    args = dict(acc=_acc(), teacher_acc=76.0, majority_acc=51.6, sp=_sp(), mpc=_mpc(), paper=PAPER)
    measured = {c.key: c.measured_evidence for c in decide_claims(**args, test_examples=2500)}
    for key in ("distillation_beats_finetuning", "quad_2quad_close_to_teacher"):
        assert "2500 test examples: one accuracy's standard error 0.9 points" in measured[key]
    assert "standard error" not in decide_claims(**args)[0].measured_evidence


def test_a_failed_comparison_within_paired_noise_is_called_a_tie():
    acc = _acc(distilled=(75.0, 69.9), finetuned=(70.0, 70.0)).assign(
        distilled_minus_finetuned=[5.0, -0.1], paired_se=[0.6, 0.5]
    )
    args = dict(acc=acc, teacher_acc=76.0, majority_acc=51.6, sp=_sp(), mpc=_mpc(), paper=PAPER)
    c = decide_claims(**args)[0]
    assert c.verdict == DOES_NOT_HOLD and "GeLU+2ReLU -0.10 (0.50)" in c.measured_evidence
    assert "Where it does not (GeLU+2ReLU), the difference is within 2 paired standard errors" in c.measured_evidence
    far = acc.assign(distilled_minus_finetuned=[5.0, -3.0])
    assert "within 2 paired" not in decide_claims(**(args | {"acc": far}))[0].measured_evidence


def test_a_lead_within_paired_noise_is_said_so():
    acc = _acc(distilled=(75.0, 70.1), finetuned=(70.0, 70.0)).assign(
        distilled_minus_finetuned=[5.0, 0.1], paired_se=[0.6, 0.5]
    )
    args = dict(acc=acc, teacher_acc=76.0, majority_acc=51.6, sp=_sp(), mpc=_mpc(), paper=PAPER)
    c = decide_claims(**args)[0]
    assert c.verdict == HOLDS and "one paired standard error (GeLU+2ReLU)" in c.measured_evidence
    clear = acc.assign(distilled_minus_finetuned=[5.0, 1.5])
    assert "one paired standard error" not in decide_claims(**(args | {"acc": clear}))[0].measured_evidence


def test_the_scratch_claim_says_what_its_baseline_is_and_when_it_learned_nothing():
    args = dict(teacher_acc=76.0, majority_acc=57.6, sp=_sp(), mpc=_mpc(), paper=PAPER)
    by_key = lambda **kw: {c.key: c for c in decide_claims(**(args | kw))}["distillation_beats_scratch"]  # noqa: E731
    c = by_key(acc=_acc(scratch=(57.65, 60.0)), scratch_frozen_embeddings=True)
    assert c.verdict == HOLDS
    assert "from random weights" in c.measured_evidence and "word embeddings frozen" in c.measured_evidence
    assert "within a point of the majority class (57.6) for Quad+2Quad:" in c.measured_evidence
    learned = by_key(acc=_acc(scratch=(65.0, 66.0)))
    assert "majority class" not in learned.measured_evidence and "frozen" not in learned.measured_evidence
