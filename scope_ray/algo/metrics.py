"""Evaluation and training metrics: unbiased pass@k, avg@k, per-branch weight statistics.

pass@k is the unbiased estimator of Chen et al. (2021): with n samples of which c are
correct, pass@k = 1 - C(n - c, k) / C(n, k), computed as a running product so it never
forms a huge binomial. (The SCOPE authors report a bootstrap estimate instead.)
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch

from scope_ray.algo._checks import check_1d, check_bool, check_group_index
from scope_ray.algo.weights import segment_ids, segment_sizes


def pass_at_k(n: int, c: int, k: int) -> float:
    """Unbiased pass@k for one problem with ``n`` samples, ``c`` of them correct."""
    if not (isinstance(n, int) and isinstance(c, int) and isinstance(k, int)):
        raise ValueError(f"n, c, k must be ints, got n={n!r} c={c!r} k={k!r}")
    if n <= 0 or k <= 0:
        raise ValueError(f"n and k must be > 0, got n={n} k={k}")
    if not 0 <= c <= n:
        raise ValueError(f"c must be in [0, n={n}], got {c}")
    if k > n:
        raise ValueError(f"k={k} is larger than the number of samples n={n}")
    if n - c < k:
        return 1.0
    prod = 1.0
    for i in range(n - c + 1, n + 1):
        prod *= 1.0 - k / i
    return 1.0 - prod


def mean_pass_at_k(counts: Sequence[tuple[int, int]], k: int) -> float:
    """Mean pass@k over problems given (n, c) per problem."""
    if not counts:
        raise ValueError("counts is empty")
    return sum(pass_at_k(n, c, k) for n, c in counts) / len(counts)


def mean_avg_at_k(counts: Sequence[tuple[int, int]]) -> float:
    """avg@k: the mean per-problem accuracy c / n."""
    if not counts:
        raise ValueError("counts is empty")
    for n, c in counts:
        if n <= 0 or not 0 <= c <= n:
            raise ValueError(f"bad count (n={n}, c={c})")
    return sum(c / n for n, c in counts) / len(counts)


def weight_stats(weights: torch.Tensor, members: torch.Tensor, group_index: torch.Tensor) -> dict[str, float]:
    """Statistics of one branch's weights over the prompts that have members in it.

    Weights are renormalised to sum 1 per prompt first, so the numbers mean the same under
    ``normalize="sum"`` and ``"mean"``. ESS = 1 / sum w^2 (equals the branch size for
    uniform weights); entropy in nats; both averaged over prompts.
    """
    n = weights.shape[0]
    check_1d("weights", weights, n)
    check_1d("members", members, n)
    check_bool("members", members)
    check_group_index(group_index, n)
    size = int(members.sum())
    if size == 0:
        return {"size": 0.0, "groups": 0.0, "ess": 0.0, "entropy": 0.0, "max_weight": 0.0}
    w = weights[members].double()
    seg, num = segment_ids(group_index[members])
    total = torch.zeros(num, dtype=torch.float64).index_add(0, seg, w)
    p = w / total[seg]
    ess = 1.0 / torch.zeros(num, dtype=torch.float64).index_add(0, seg, p * p)
    ent = -torch.zeros(num, dtype=torch.float64).index_add(0, seg, p * torch.log(p.clamp_min(1e-300)))
    sizes = segment_sizes(seg, num).double()
    return {
        "size": float(size),
        "groups": float(num),
        "ess": float(ess.mean()),
        "ess_fraction": float((ess / sizes).mean()),
        "entropy": float(ent.mean()),
        "max_weight": float(p.max()),
    }


def mean_reverse_kl(log_ratios: Sequence[Sequence[float]]) -> float:
    """Mean per-token sampled reverse KL over rollouts: ``log_ratios[r]`` holds
    log pi_S - log pi_T at each response token of rollout r (ragged). NaN if none."""
    count = sum(len(r) for r in log_ratios)
    if count == 0:
        return math.nan
    return float(sum(math.fsum(float(x) for x in r) for r in log_ratios) / count)


def reference_kl(log_ratios: Sequence[Sequence[float]]) -> float:
    """Mean per-token KL to a reference policy with GRPO's estimator exp(d) - d - 1 (>= 0,
    0 where the policies agree), d = log pi_ref - log pi_old; ``log_ratios[r]`` holds
    log pi_old - log pi_ref at each response token of rollout r (ragged). NaN if none."""
    if not any(len(r) for r in log_ratios):
        return math.nan
    d = -torch.cat([torch.as_tensor(r, dtype=torch.float64) for r in log_ratios])
    return float((torch.exp(d) - d - 1.0).mean())
