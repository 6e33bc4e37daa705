"""The claims are decided from the tables: each verdict flips when the table is changed against it."""

import math

import pandas as pd
import pytest

from common.claims import DOES_NOT_HOLD, HOLDS, NOT_MEASURED
from compression import findings as F

PAPER = {
    k: "paper"
    for k in (
        "learning_keeps_accuracy",
        "early_layers_hurt",
        "break_even_bandwidth",
        "cost_model_predicts",
        "int8_all_gather_saves_nothing",
    )
}
RULES = {
    "learning": "ae50",
    "rivals": ["topk", "int4"],
    "min_gap": 0.01,
    "cost_model_error_pct": 25,
    "cost_model_order": 0.8,
    "timing_noise_pct": 10.0,
    "dtype": "float16",
}


def _acc(ae=0.80, topk=0.70, int4=0.72, early_ae=0.70, std=0.01, layouts=("TP2", "PP2")):
    rows = []
    for lay in layouts:
        for comp, layers, group, mean in [
            ("none", "-", "main", 0.80),
            ("ae50", "2-3", "main", ae),
            ("topk", "2-3", "main", topk),
            ("int4", "2-3", "main", int4),
            ("ae50", "0-3", "early", early_ae),
        ]:
            rows.append(
                {"layout": lay, "compressor": comp, "layers": layers, "group": group, "acc_mean": mean, "acc_std": std}
            )
    return pd.DataFrame(rows)


def _thr(fast=0.8, slow=1.5):
    rows = []
    for lay in ("TP=2", "PP=2"):
        for comp in ("none", "int8", "ae50"):
            for g, sp in ((0.0, fast), (0.1, slow)):
                rows.append({"layout": lay, "compressor": comp, "gbps": g, "speedup": 1.0 if comp == "none" else sp})
    return pd.DataFrame(rows)


BE = pd.DataFrame(
    [{"layout": lay, "compressor": c, "break_even_Gbps": 2.0} for lay in ("TP=2", "PP=2") for c in ("int8", "ae50")]
)
MSG = pd.DataFrame([{"compressor": "int8", "wire_MB_per_rank": 50.3, "vs_ring_all_reduce": 1.0}])
FIT = {
    "held_out_n": 10,
    "held_out_mean_abs_error_pct": 12.0,
    "held_out_max_abs_error_pct": 30.0,
    "held_out_spearman": 0.9,
    "held_out_pairs": 45,
    "held_out_pairs_resolved": 20,
    "held_out_order_agreement": 0.9,
    "held_out_median_noise_pct": 3.0,
}


def _verdicts(**kw):
    args = {"acc": _acc(), "throughput": _thr(), "break_even": BE, "fitted": FIT, "message": MSG}
    args.update(kw)
    return {
        c.key: c.verdict
        for c in F.study_claims(
            args["acc"], args["throughput"], args["break_even"], args["fitted"], args["message"], RULES, PAPER
        )
    }


def test_every_claim_holds_on_tables_that_show_it():
    assert set(_verdicts().values()) == {HOLDS}


def test_each_claim_flips_when_its_table_says_otherwise():
    assert _verdicts(acc=_acc(int4=0.795))["learning_keeps_accuracy"] == DOES_NOT_HOLD  # a rival keeps up
    assert _verdicts(acc=_acc(ae=0.74))["learning_keeps_accuracy"] == DOES_NOT_HOLD  # the AE loses accuracy
    assert _verdicts(acc=_acc(std=0.09))["learning_keeps_accuracy"] == DOES_NOT_HOLD  # within the seeds' spread
    assert _verdicts(acc=_acc(early_ae=0.795))["early_layers_hurt"] == DOES_NOT_HOLD
    # a failed early-layers verdict says whether a drop was within the spread or absent (setup vs implementation)
    assert "ae50: lower in the mean, within its seeds' spread" in F.early_layers_hurt(_acc(early_ae=0.795), 0.01)[1]
    assert "ae50: no drop" in F.early_layers_hurt(_acc(early_ae=0.81), 0.01)[1]
    assert "Setup vs" not in F.early_layers_hurt(_acc(), 0.01)[1]
    # decided on the cost model's break-even against two fixed links, not on noisy measured loopback speedups
    assert _verdicts(throughput=_thr(fast=1.2))["break_even_bandwidth"] == HOLDS
    assert _verdicts(break_even=BE.assign(break_even_Gbps=500.0))["break_even_bandwidth"] == DOES_NOT_HOLD  # pays fast
    assert _verdicts(break_even=BE.assign(break_even_Gbps=0.05))["break_even_bandwidth"] == DOES_NOT_HOLD  # never pays
    assert _verdicts(fitted={**FIT, "held_out_mean_abs_error_pct": 40.0})["cost_model_predicts"] == DOES_NOT_HOLD
    assert _verdicts(fitted={**FIT, "held_out_order_agreement": 0.6})["cost_model_predicts"] == DOES_NOT_HOLD
    # decided on the pairs the timing noise tells apart: a low Spearman from near-ties alone does not flip it
    assert _verdicts(fitted={**FIT, "held_out_spearman": 0.3})["cost_model_predicts"] == HOLDS
    msg = MSG.assign(vs_ring_all_reduce=2.0)
    assert _verdicts(message=msg)["int8_all_gather_saves_nothing"] == DOES_NOT_HOLD


def test_unmeasured_claims_say_so():
    assert _verdicts(fitted={**FIT, "held_out_pairs_resolved": 2})["cost_model_predicts"] == NOT_MEASURED
    # timings noisier than the tolerance (a loaded machine) decide nothing, whichever way they point
    for order in (0.6, 0.95):
        noisy = {**FIT, "held_out_median_noise_pct": 12.0, "held_out_order_agreement": order}
        assert _verdicts(fitted=noisy)["cost_model_predicts"] == NOT_MEASURED
    v = _verdicts(acc=_acc().query("group != 'early'"), fitted={"held_out_n": 0})
    assert v["early_layers_hurt"] == NOT_MEASURED and v["cost_model_predicts"] == NOT_MEASURED
    only_ae = _acc().query("compressor in ['none', 'ae50']")
    assert _verdicts(acc=only_ae)["learning_keeps_accuracy"] == NOT_MEASURED


def test_ablation_is_reported_beside_a_failed_learning_claim():
    acc = _acc(ae=0.74)
    ab = pd.DataFrame(
        [
            {
                "layout": "TP2",
                "compressor": "ae100",
                "layers": "2-3",
                "group": "ablation",
                "acc_mean": 0.80,
                "acc_std": 0.005,
            },
            {
                "layout": "TP2",
                "compressor": "ae50_lr10",
                "layers": "2-3",
                "group": "ablation",
                "acc_mean": 0.73,
                "acc_std": 0.005,
            },
        ]
    )
    claims = F.study_claims(pd.concat([acc, ab]), _thr(), BE, FIT, MSG, RULES, PAPER)
    ev = claims[0].measured_evidence
    assert claims[0].verdict == DOES_NOT_HOLD
    assert "Ablation under TP2" in ev and "holds with ae100" in ev and "default setup" in ev
    ab.loc[0, "acc_mean"] = 0.70  # no setting recovers: then it is not the setup
    ev = F.study_claims(pd.concat([acc, ab]), _thr(), BE, FIT, MSG, RULES, PAPER)[0].measured_evidence
    assert "no auto-encoder setting tried" in ev and not math.isnan(len(ev))
    # a setting keeps accuracy but a rival keeps it too: the rivals, not the auto-encoder, fail the finding
    keep = _acc(ae=0.74, int4=0.80)
    ab.loc[0, "acc_mean"] = 0.80
    ev = F.study_claims(pd.concat([keep, ab]), _thr(), BE, FIT, MSG, RULES, PAPER)[0].measured_evidence
    assert "with ae100 the auto-encoder keeps accuracy" in ev and "but int4 keeps it too" in ev


def test_gpipe_schedule_hides_transfers_shorter_than_a_micro_batch():
    from compression.cost_model import gpipe_seconds

    f, b = 1.0, 2.0
    assert gpipe_seconds(2, 4, f, b, [0.0], [0.0]) == pytest.approx((4 + 2 - 1) * (f + b))  # compute only
    short = gpipe_seconds(2, 4, f, b, [0.1], [0.1])
    assert 15 + 0.2 <= short < 15 + 4 * 0.2  # some transfers hide behind the other stage's compute, not all
    long = gpipe_seconds(2, 4, f, b, [5.0], [5.0])
    assert long >= 4 * 5.0 + 4 * 5.0  # transfers longer than the compute: every one is exposed


def test_order_agreement_counts_only_pairs_the_noise_tells_apart():
    from compression.cost_model import order_agreement

    # four runs: two near-ties (1.00 / 1.01 s, noise 2%) that the model orders the other way, and two clear steps
    rows = pd.DataFrame(
        {
            "measured_s": [1.00, 1.01, 2.0, 4.0],
            "predicted_s": [1.05, 1.00, 2.1, 3.9],
            "noise_s": [0.02, 0.02, 0.04, 0.08],
        }
    )
    got = order_agreement(rows)
    assert got["pairs"] == 6 and got["resolved"] == 5 and got["agreement"] == 1.0
    assert got["noise_floor_pct"] == pytest.approx(2.0)
    # a misordered pair that the noise does resolve counts against the model
    worse = order_agreement(rows.assign(predicted_s=[1.05, 1.00, 4.5, 3.9]))
    assert worse["resolved"] == 5 and worse["agreement"] == pytest.approx(4 / 5)
    # a run whose rounds happened to agree gets the floor, not zero noise: the near-tie stays unresolved
    assert order_agreement(rows.assign(noise_s=[0.0, 0.0, 0.04, 0.08]))["resolved"] == 5


def _high(ae20=0.795, topk20=0.70, randk20=0.65, int2=0.72, std=0.01):
    """The study-ratio runs (TP2 only) beside the main table, with fewer_bytes as the accuracy table has it."""
    rows = [
        ("ae20", ae20, 19.2),
        ("topk20", topk20, 19.2),
        ("randk20", randk20, 19.2),
        ("int2", int2, 15.1),
    ]
    return pd.DataFrame(
        [
            {
                "layout": "TP2",
                "compressor": c,
                "layers": "2-3",
                "group": "high_ratio",
                "acc_mean": m,
                "acc_std": std,
                "fewer_bytes": fb,
            }
            for c, m, fb in rows
        ]
    )


HR_RULES = {
    **RULES,
    "high_ratio": {"learning": "ae20", "rivals": ["topk20", "randk20", "int2"]},
    "decide_at": "high_ratio",
}


def _learning(acc, rules=HR_RULES):
    claims = F.study_claims(acc, _thr(), BE, FIT, MSG, rules, PAPER)
    return claims[0].verdict, claims[0].measured_evidence


def test_the_study_ratio_decides_the_learning_finding():
    fails_at_main = _acc(int4=0.795)  # int4 keeps up at 7.7x
    verdict, ev = _learning(pd.concat([fails_at_main, _high()]))
    assert verdict == HOLDS  # decided at ~19x, where the auto-encoder beats every rival
    assert ev.index("(decides)") < ev.index("(reported)") and "ae20 at 19.2x fewer bytes (decides)" in ev
    assert "int2 0.720±0.010 (15.1x: more bytes)" in ev  # a rival that sends more bytes says so
    # each rival at the study's ratio can fail it; so can the auto-encoder losing accuracy there
    for kw in ({"int2": 0.79}, {"topk20": 0.79}, {"randk20": 0.79}, {"ae20": 0.70}):
        assert _learning(pd.concat([_acc(), _high(**kw)]))[0] == DOES_NOT_HOLD
    # decide_at: main decides on the 7.7x runs and reports the study's ratio beside them
    verdict, ev = _learning(pd.concat([fails_at_main, _high()]), {**HR_RULES, "decide_at": "main"})
    assert verdict == DOES_NOT_HOLD and "ae20" in ev and ev.index("(decides)") < ev.index("ae20")
    # no study-ratio runs: the main ratio decides
    assert _learning(fails_at_main)[0] == DOES_NOT_HOLD and _learning(_acc())[0] == HOLDS
    assert set(F.learning_verdicts(pd.concat([_acc(), _high()]), HR_RULES)) == {"main", "high_ratio"}


def _early_pair(late, early, layout="TP2", label="ae50"):
    """A latter-layer and an every-layer row with their per-seed accuracies (seeds 0..n-1)."""
    seeds = " ".join(str(i) for i in range(len(late)))
    return pd.DataFrame(
        [
            {
                "layout": layout,
                "compressor": label,
                "layers": layers,
                "group": group,
                "acc_mean": sum(v) / len(v),
                "acc_std": pd.Series(v).std(),
                "per_seed": " ".join(f"{x:.4f}" for x in v),
                "seed_ids": seeds,
            }
            for layers, group, v in (("2-3", "main", late), ("0-3", "early", early))
        ]
    )


def test_early_layers_are_decided_on_paired_seeds():
    # the seeds' spread is large (0.07) but every seed drops by about 0.05: paired, that is resolved
    late, early = [0.62, 0.74, 0.68, 0.70, 0.66], [0.57, 0.70, 0.62, 0.65, 0.61]
    ok, ev = F.early_layers_hurt(_early_pair(late, early), 0.01)
    assert ok is True and "SE 0.00" in ev and "over 5 paired seeds" in ev
    mean, se, n = F.paired_drop(*_early_pair(late, early).itertuples())
    assert (
        n == 5
        and mean == pytest.approx(0.05)
        and se == pytest.approx(pd.Series([0.05, 0.04, 0.06, 0.05, 0.05]).std() / 5**0.5)
    )
    # the same means with the drops spread over seeds (one seed gains): unresolved, not hurt
    noisy = [0.57, 0.78, 0.60, 0.65, 0.60]
    ok, ev = F.early_layers_hurt(_early_pair(late, noisy), 0.01)
    assert ok is False and "unresolved" in ev
    # no drop: the mean plus its bound below min_gap
    ok, ev = F.early_layers_hurt(_early_pair(late, [x + 0.01 for x in late]), 0.01)
    assert ok is False and "no drop" in ev
    # a drop larger than its bound but below min_gap does not count
    assert F.early_layers_hurt(_early_pair(late, [x - 0.005 for x in late]), 0.01)[0] is False
    # seeds are paired by id, not by position
    swapped = _early_pair(late, early)
    swapped.loc[1, "per_seed"] = " ".join(f"{x:.4f}" for x in reversed(early))
    swapped.loc[1, "seed_ids"] = "4 3 2 1 0"
    assert F.paired_drop(*swapped.itertuples()) == pytest.approx(F.paired_drop(*_early_pair(late, early).itertuples()))
