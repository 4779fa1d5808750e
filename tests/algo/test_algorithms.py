"""scope_ray/algo/algorithms.py: routing of each algorithm and its weights."""

import math

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


def _softmax2(a: float, b: float) -> list[float]:
    ea, eb = math.exp(a), math.exp(b)
    return [ea / (ea + eb), eb / (ea + eb)]


def test_each_name_gives_its_own_weights():
    """One prompt, two correct and two incorrect rollouts, weights worked out by hand
    from Eq. 4-5 (tau 1): swapping any two ablation specs fails this."""
    g = torch.tensor([0, 0, 0, 0])
    correct = torch.tensor([True, True, False, False])
    student = torch.tensor([-1.0, -2.0, -0.3, -0.4])  # ell_S; only the correct ones count
    teacher = torch.tensor([float("nan"), float("nan"), -0.5, -1.5])  # ell_T of the incorrect ones
    stu = _softmax2(1.0, 2.0)  # softmax(-ell_S): the less likely correct rollout weighs more
    tea = _softmax2(-0.5, -1.5)  # softmax(ell_T): the teacher-likelier incorrect one weighs more
    rev = _softmax2(0.5, 1.5)
    half = [0.5, 0.5]
    expected = {
        "scope": stu + tea,
        "scope-no-teacher-weight": stu + half,
        "scope-no-student-weight": half + tea,
        "scope-reversed-teacher": stu + rev,
        "scope-no-weight": half + half,
        "opd": [1.0] * 4,
        "grpo": [1.0] * 4,
    }
    assert set(expected) == set(ALGORITHMS)
    for name, want in expected.items():
        got = rollout_weights(get_algorithm(name), correct, student, teacher, g)
        assert got.tolist() == pytest.approx(want, abs=1e-6), name


