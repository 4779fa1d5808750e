"""scope_ray/algo/metrics.py: unbiased pass@k vs brute force, avg@k, weight statistics."""

import itertools
import math

import numpy as np
import pytest
import torch

from scope_ray.algo import mean_avg_at_k, mean_pass_at_k, mean_reverse_kl, pass_at_k, weight_stats


def _brute_force_pass_at_k(n: int, c: int, k: int) -> float:
    samples = [1] * c + [0] * (n - c)
    subsets = list(itertools.combinations(range(n), k))
    return sum(any(samples[i] for i in s) for s in subsets) / len(subsets)


@pytest.mark.parametrize("n", [1, 2, 5, 8])
def test_pass_at_k_equals_subset_enumeration(n):
    for c in range(n + 1):
        for k in range(1, n + 1):
            assert pass_at_k(n, c, k) == pytest.approx(_brute_force_pass_at_k(n, c, k), abs=1e-12)


def test_pass_at_k_large_n_is_stable():
    assert pass_at_k(1000, 1, 32) == pytest.approx(32 / 1000)
    # 1 - C(n-c, k) / C(n, k) = 1 - prod_{i<c} (n-k-i) / (n-i)
    assert pass_at_k(10_000, 3, 100) == pytest.approx(1 - (9900 * 9899 * 9898) / (10_000 * 9999 * 9998), rel=1e-12)


def test_avg_and_mean_pass():
    counts = [(8, 0), (8, 4), (8, 8)]
    assert mean_avg_at_k(counts) == pytest.approx(0.5)
    assert mean_pass_at_k(counts, 1) == pytest.approx(0.5)
    assert mean_pass_at_k(counts, 8) == pytest.approx(2 / 3)


@pytest.mark.parametrize("args, needle", [((4, 5, 1), "c must"), ((4, 1, 5), "k=5"), ((0, 0, 1), "n and k")])
def test_pass_at_k_bad_input(args, needle):
    with pytest.raises(ValueError, match=needle):
        pass_at_k(*args)


def test_weight_stats_uniform_and_peaked():
    g = torch.tensor([0, 0, 0, 0, 1, 1])
    members = torch.tensor([True, True, True, True, True, False])
    w = torch.tensor([0.25, 0.25, 0.25, 0.25, 1.0, 0.0])
    st = weight_stats(w, members, g)
    assert st["size"] == 5 and st["groups"] == 2
    assert st["ess"] == pytest.approx((4 + 1) / 2)
    assert st["ess_fraction"] == pytest.approx(1.0)
    assert st["entropy"] == pytest.approx(math.log(4) / 2)
    peaked = weight_stats(torch.tensor([0.97, 0.01, 0.01, 0.01]), torch.ones(4, dtype=torch.bool), torch.zeros(4, dtype=torch.long))
    assert peaked["ess"] < 1.1 and peaked["max_weight"] == pytest.approx(0.97)
    # "mean" normalisation gives the same statistics as "sum".
    assert weight_stats(w * 4, members, g)["ess"] == pytest.approx(st["ess"])
    assert weight_stats(w, torch.zeros(6, dtype=torch.bool), g)["size"] == 0


def test_mean_reverse_kl_over_every_scored_token():
    # log pi_S - log pi_T per response token of each scored rollout (ragged).
    assert mean_reverse_kl([[-0.5]]) == pytest.approx(-0.5)
    assert mean_reverse_kl([[-0.5], [2.0, 2.0]]) == pytest.approx((-0.5 + 2 + 2) / 3)
    assert mean_reverse_kl([np.array([1.0, 3.0], dtype=np.float32), []]) == pytest.approx(2.0)
    assert math.isnan(mean_reverse_kl([])) and math.isnan(mean_reverse_kl([[]]))