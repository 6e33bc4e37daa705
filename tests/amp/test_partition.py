"""The partitioner is optimal: it agrees with brute force on small random instances."""

import numpy as np
import pytest

from amp.partition import brute_force_partition, optimal_partition, pipeline_time, uniform_partition


@pytest.mark.parametrize("seed", range(40))
def test_optimal_matches_brute_force(seed):
    rng = np.random.default_rng(seed)
    L = int(rng.integers(2, 9))
    pp = int(rng.integers(1, min(L, 4) + 1))
    B = int(rng.choice([1, 2, 3, 8, 32]))
    hetero = bool(rng.integers(0, 2))
    e = rng.uniform(0.1, 1.0, (pp, L)) if hetero else np.tile(rng.uniform(0.1, 1.0, L), (pp, 1))
    c = rng.uniform(0.0, 0.5, (pp - 1, L - 1))
    blocking = bool(rng.integers(0, 2))
    feasible = rng.uniform(size=(pp, L + 1, L + 1)) < 0.8 if seed % 3 == 0 else None
    part, t = optimal_partition(e, c, pp, B, feasible=feasible, blocking=blocking)
    ref_part, ref_t = brute_force_partition(e, c, pp, B, feasible=feasible, blocking=blocking)
    if ref_part is None:
        assert part is None
        return
    assert t == pytest.approx(ref_t, rel=1e-12)
    assert pipeline_time(e, c, part, B, blocking) == pytest.approx(ref_t, rel=1e-12)
    assert sum(part) == L and len(part) == pp and min(part) >= 1


def test_uniform_partition_released_padding():
    assert uniform_partition(24, 16, (2, 4)) == [4, 2, 2, 2, 2, 2, 2, 2, 1, 1, 1, 1, 1, 1, 1, 5]
    assert uniform_partition(24, 4, (0, 1)) == [6, 6, 6, 7]


def test_fewer_layers_than_stages_is_a_user_error():
    from common.errors import UserError

    with pytest.raises(UserError, match="cannot fill"):
        optimal_partition(np.ones(3), np.zeros((3, 2)), pp=4, B=2)
