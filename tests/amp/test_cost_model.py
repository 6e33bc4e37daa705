"""Hand-computed costs of a 2-layer model on a 2-node cluster, in both modes."""

import numpy as np
import pytest

from amp.cost_model import CostModel
from amp.profiles import Profiles
from amp.specs import Cluster, Layer, Model, Node, Setup, Strategy

A, B_ = 0.010, 0.030  # forward+backward s per layer at micro-batch 1 on V100
SLOW = 2.0  # T4 takes twice as long
OUT = 1e6  # elements a cut after layer 0 sends
PARAMS = 5e6


def two_layer_setup(gpu1="V100", gbs=8, latency_us=0.0):
    layers = (
        Layer("l0", "transformer", params=PARAMS, out_elems=OUT),
        Layer("l1", "transformer", params=PARAMS, out_elems=OUT),
    )
    model = Model("two", layers, blocks=2, hidden=8, seq=8, heads=1)
    nodes = (
        Node("V100", 1, intra_gbps=100, inter_gbps=10, latency_us=latency_us),
        Node(gpu1, 1, intra_gbps=100, inter_gbps=20, latency_us=latency_us),
    )
    prof = Profiles({("V100", 1, 1): np.array([A, B_]), ("T4", 1, 1): SLOW * np.array([A, B_])})
    return Setup("two", model, Cluster(nodes), gbs), prof


def test_pipeline_two_stages_by_hand():
    setup, prof = two_layer_setup()
    s = Strategy(tp=1, dp=1, pp=2, mbs=2, partition=(1, 1))
    B = 8 // 2
    cut = 2 * OUT * 32 / 10e9  # micro-batch 2, 32 bits per element, the slower NIC (10 Gbps)
    released = CostModel(setup, prof, "released").predict(s)
    assert released.total_s == pytest.approx(2 * (A + B_) + (B - 1) * 2 * B_ + cut, rel=1e-12)
    assert released.dp_allreduce_s == 0
    improved = CostModel(setup, prof, "improved").predict(s)  # blocking send/recv: the cut counts per micro-batch
    assert improved.total_s == pytest.approx(2 * (A + B_) + (B - 1) * (2 * B_ + cut) + cut, rel=1e-12)


def test_data_parallel_allreduce_by_hand():
    setup, prof = two_layer_setup()
    s = Strategy(tp=1, dp=2, pp=1, mbs=1, partition=(2,))
    B = 8 // 2
    ar = 2 * (2 - 1) / 2 * (2 * PARAMS) * 32 / 10e9
    p = CostModel(setup, prof, "released").predict(s)
    assert p.dp_allreduce_s == pytest.approx(ar, rel=1e-12)
    assert p.total_s == pytest.approx((A + B_) + (B - 1) * (A + B_) + ar, rel=1e-12)


def test_each_stage_priced_on_its_gpus():
    setup, prof = two_layer_setup(gpu1="T4")
    s = Strategy(tp=1, dp=1, pp=2, mbs=1, partition=(1, 1))
    B, cut = 8, OUT * 32 / 10e9
    improved = CostModel(setup, prof, "improved").predict(s)
    assert improved.stage_s == pytest.approx([A, SLOW * B_])
    assert improved.total_s == pytest.approx(A + SLOW * B_ + (B - 1) * (SLOW * B_ + cut) + cut, rel=1e-12)
    # released: one profile blended by GPU share (here half and half), the same on both stages
    released = CostModel(setup, prof, "released").predict(s)
    blend = 0.5 * (1 + SLOW)
    assert released.stage_s == pytest.approx([blend * A, blend * B_])


def test_latency_counts_in_improved_mode_only():
    setup, prof = two_layer_setup(latency_us=100.0)
    s = Strategy(tp=1, dp=1, pp=2, mbs=1, partition=(1, 1))
    base = two_layer_setup()
    r0 = CostModel(*base, "released").predict(s).total_s
    assert CostModel(setup, prof, "released").predict(s).total_s == pytest.approx(r0)
    i0 = CostModel(*base, "improved").predict(s).total_s
    # 2 messages per cut (activation, gradient), paid by the slowest stage for every micro-batch
    assert CostModel(setup, prof, "improved").predict(s).total_s == pytest.approx(i0 + 8 * 2e-4, rel=1e-9)


def test_improved_search_balances_stages_on_mixed_gpus():
    from amp.partition import optimal_partition

    e = np.array([[1.0] * 6, [2.0] * 6])  # stage 1 runs on GPUs twice as slow
    part, _ = optimal_partition(e, np.zeros((1, 5)), pp=2, B=16)
    assert part == [4, 2]


def test_micro_batch_scaling_of_profiles():
    prof = Profiles(
        {
            ("V100", 1, 1): np.array([1.0, 2.0]),
            ("T4", 1, 1): np.array([1.0, 2.0]),
            ("T4", 1, 2): np.array([1.5, 3.0]),
            ("T4", 1, 4): np.array([2.5, 5.0]),
        }
    )
    np.testing.assert_allclose(prof.layer_times("V100", 1, 4, linear=True), [4.0, 8.0])  # released: linear
    np.testing.assert_allclose(prof.layer_times("V100", 1, 4, linear=False), [4.0, 8.0])  # no exponent: linear
    fitted = prof.with_mbs_exponent({"V100": 0.5})
    np.testing.assert_allclose(fitted.layer_times("V100", 1, 4, linear=False), [2.0, 4.0])
    np.testing.assert_allclose(fitted.layer_times("V100", 1, 4, linear=True), [4.0, 8.0])
    # measured sizes are used and interpolated between; beyond them, scaled from the largest
    np.testing.assert_allclose(prof.layer_times("T4", 1, 3, linear=False), [2.0, 4.0])
    np.testing.assert_allclose(prof.layer_times("T4", 1, 8, linear=False), [5.0, 10.0])
    # no figure for tp=2: the tp=1 time split in two
    np.testing.assert_allclose(prof.layer_times("V100", 2, 1), [0.5, 1.0])


def test_strategy_from_yaml():
    import yaml

    from common.errors import UserError

    s = Strategy.from_dict(yaml.safe_load("{tp: 1, dp: 4, pp: 4, mbs: 1, partition: [7, 7, 6, 10]}"))
    assert s == Strategy(1, 4, 4, 1, (7, 7, 6, 10))
    with pytest.raises(UserError, match="lacks mbs"):
        Strategy.from_dict({"tp": 1, "dp": 4, "pp": 4})
