"""The improved model's new terms by hand, and the leave-one-setup-out fit on the released trials."""

import numpy as np
import pandas as pd
import pytest

from amp import trials
from amp.cost_model import CostModel, transfer_s
from amp.profiles import Profiles
from amp.specs import Cluster, Layer, Model, Node, Setup, Strategy
from reproduce.amp import TRIALS

PARAMS = 4e6


def test_fixed_cost_per_micro_batch_by_hand():
    prof = Profiles({("V100", 1, 1): np.array([0.010, 0.002])}).with_fixed_cost({1: 0.004})
    # c + (t1 - c) * mbs, c capped at the layer's own time
    np.testing.assert_allclose(prof.layer_times("V100", 1, 4, linear=False), [0.004 + 0.006 * 4, 0.002])
    np.testing.assert_allclose(prof.layer_times("V100", 1, 4, linear=True), [0.040, 0.008])  # released: linear
    np.testing.assert_allclose(prof.layer_times("V100", 1, 1, linear=False), [0.010, 0.002])


def two_nodes(gpus=2):
    layers = (
        Layer("a", "transformer", params=PARAMS, out_elems=1e5),
        Layer("b", "transformer", params=PARAMS, out_elems=1e5),
    )
    nodes = (Node("V100", gpus, intra_gbps=100, inter_gbps=10), Node("V100", gpus, intra_gbps=100, inter_gbps=10))
    prof = Profiles({("V100", 1, 1): np.array([0.01, 0.01]), ("V100", 2, 1): np.array([0.006, 0.006])})
    return Setup("two", Model("m", layers, 2, 8, 8, 1), Cluster(nodes), 8), prof


def test_nic_shared_by_the_rings_that_cross_it():
    setup, prof = two_nodes()
    s = Strategy(tp=2, dp=2, pp=1, mbs=1, partition=(2,))
    # two rings (one per tensor-parallel rank) cross between the nodes: each gets half of the 10 Gbps NIC
    expected = 2 * (2 - 1) / 2 * transfer_s(2 * PARAMS / 2, 10 / 2)
    assert CostModel(setup, prof, "improved").dp_allreduce(s, [2]) == pytest.approx(expected, rel=1e-12)
    released = CostModel(setup, prof, "released").dp_allreduce(s, [2])
    assert released == pytest.approx(2 * (2 - 1) / 2 * transfer_s(2 * PARAMS / 2, 10), rel=1e-12)
    # one ring (tp1 dp4 over both nodes) has the NIC to itself
    s1 = Strategy(tp=1, dp=4, pp=1, mbs=2, partition=(2,))
    one = CostModel(setup, prof, "improved").dp_allreduce(s1, [2])
    assert one == pytest.approx(2 * 3 / 4 * transfer_s(2 * PARAMS, 10), rel=1e-12)


def test_fit_never_reads_the_held_out_setup():
    rows = [
        {"setup": s, "tp": 1, "fixed_s": c, "sum": e, "count": 1}
        for s, best in (("a", 0.002), ("b", 0.002), ("c", 0.009))
        for c, e in ((0.002, abs(0.002 - best)), (0.009, abs(0.009 - best)))
    ]
    errors = pd.DataFrame(rows)
    assert trials.fit_fixed_costs(errors, exclude="c") == {1: 0.002}
    changed = errors.copy()
    changed.loc[changed.setup == "c", "sum"] = [1e9, 0.0]  # whatever c says, its own fit ignores it
    assert trials.fit_fixed_costs(changed, exclude="c") == {1: 0.002}
    assert trials.fit_fixed_costs(errors, exclude="a") != trials.fit_fixed_costs(changed, exclude="a")


@pytest.fixture(scope="module")
def released_trials():
    return trials.load_trials(TRIALS)


def test_leave_one_setup_out_correlations(released_trials):
    """The improved model with the fixed cost fitted on the other two setups reaches the targets 0.95 / 0.80 /
    0.90 (measured 0.958 / 0.858 / 0.967, asserted so a regression fails)."""
    from amp import profiles
    from amp.specs import load_setup

    fits = trials.leave_one_setup_out(released_trials, grid=np.round(np.arange(0.0, 0.0161, 0.001), 4))
    floor = {"homogeneous": 0.955, "het_cluster": 0.855, "het_model": 0.965}
    for name, fixed in fits.items():
        setup = load_setup(name)
        prof = profiles.released(setup.model)
        df = trials.trial_predictions(
            setup, prof, released_trials[released_trials.setting == name], prof.with_fixed_cost(fixed)
        )
        assert trials.correlations(df, "improved_fit")["spearman"] >= floor[name], name
        assert df[df.timed].fits.all()  # no trial that ran with a time is called out of memory


def test_tp_comm_once_removes_the_forward_communication_once():
    """Layer 0: forward(tp2) = 9 / 3 = 3 against forward(1) / 2 = 2, so 1 of communication comes out once
    (9 -> 8); layer 1: forward(tp2) = forward(1) / 2, nothing to take out."""
    from amp.profiles import Profiles

    p = Profiles({("T4", 1, 1): np.array([12.0, 3.0]), ("T4", 2, 1): np.array([9.0, 1.5])})
    q = p.with_tp_comm_once()
    assert np.allclose(q.times[("T4", 2, 1)], [8.0, 1.5])
    assert np.allclose(q.times[("T4", 1, 1)], [12.0, 3.0])
    assert np.allclose(p.times[("T4", 2, 1)], [9.0, 1.5])  # the original is left alone


def test_tp_comm_once_variant_leave_one_setup_out(released_trials):
    """The variant gains on the homogeneous setup and loses the heterogeneous cluster's target (measured
    values asserted, so a change in either direction shows)."""
    from amp import profiles
    from amp.specs import load_setup

    fits = trials.leave_one_setup_out(
        released_trials, grid=np.round(np.arange(0.0, 0.0161, 0.001), 4), tp_comm_once=True
    )
    got = {}
    for name, fixed in fits.items():
        setup = load_setup(name)
        prof = profiles.released(setup.model).with_tp_comm_once()
        df = trials.trial_predictions(
            setup, prof, released_trials[released_trials.setting == name], prof.with_fixed_cost(fixed)
        )
        got[name] = round(trials.correlations(df, "improved_fit")["spearman"], 3)
        assert df[df.timed].fits.all()
    assert got == {"homogeneous": 0.987, "het_cluster": 0.797, "het_model": 0.949}


def test_per_sample_cost_scaled_from_the_slower_memory_type():
    """Under a fixed cost, a V100 layer's per-sample cost is the T4's (time(1) - fixed) x 320 / 900; the T4
    keeps its own; a type with no known bandwidth keeps the plain fixed-cost form."""
    from amp.profiles import Profiles
    from amp.specs import GPU_TYPES, GPUType

    p = Profiles(
        {("T4", 1, 1): np.array([0.010]), ("V100", 1, 1): np.array([0.008]), ("nobw", 1, 1): np.array([0.008])},
        fixed_s={1: 0.004},
    )
    GPU_TYPES["nobw"] = GPUType("nobw", 16.0)
    try:
        assert p.slope_reference("V100", 1) == "T4" and p.slope_reference("T4", 1) is None
        assert np.allclose(p.layer_times("T4", 1, 4, linear=False), 0.004 + 0.006 * 4)
        assert np.allclose(p.layer_times("V100", 1, 4, linear=False), 0.008 + 3 * 0.006 * 320 / 900)
        assert np.allclose(p.layer_times("nobw", 1, 4, linear=False), 0.004 + 0.004 * 4)
        assert np.allclose(p.layer_times("V100", 1, 4, linear=True), 0.032)  # the released linear scaling stays
    finally:
        del GPU_TYPES["nobw"]
