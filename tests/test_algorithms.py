"""scope_ray/algo/algorithms.py: routing of each algorithm and its weights."""

import pytest
import torch

from scope_ray.algo import ALGORITHMS, get_algorithm, needs_teacher_score, rollout_weights

CORRECT = torch.tensor([True, False, True, False])


@pytest.mark.parametrize(
    "name, expected",
    [
        ("scope", [False, True, False, True]),
        ("scope-no-teacher-weight", [False, True, False, True]),
        ("opd", [True, True, True, True]),
        ("grpo", [False, False, False, False]),
    ],
)
def test_which_rollouts_the_teacher_scores(name, expected):
    assert needs_teacher_score(get_algorithm(name), CORRECT).tolist() == expected


def test_every_algorithm_gives_finite_weights():
    g = torch.tensor([0, 0, 1, 1])
    s = torch.tensor([-1.0, -2.0, -0.5, -0.7])
    t = torch.tensor([-1.5, -0.2, -0.9, -0.1])
    for name, spec in ALGORITHMS.items():
        w = rollout_weights(spec, CORRECT, s, t, g)
        assert w.shape == (4,) and torch.isfinite(w).all(), name
    # OPD routes all four rollouts to distillation with weight 1.
    assert rollout_weights(get_algorithm("opd"), CORRECT, s, t, g).tolist() == [1.0] * 4
