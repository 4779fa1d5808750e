"""scope_ray/algo/weights.py: Eq. 4-5 against hand-worked numbers and their invariants."""

import math

import pytest
import torch

from scope_ray.algo import scope_weights, sequence_mean_logprob

NAN = float("nan")


def _w(correct, s, t, g, **kw):
    return scope_weights(
        torch.tensor(correct), torch.tensor(s, dtype=torch.float64), torch.tensor(t, dtype=torch.float64),
        torch.tensor(g), **kw,
    )


def test_hand_worked_group():
    # correct: ell_S = -1, -2 -> logits 1, 2 -> softmax = [1/(1+e), e/(1+e)]
    # incorrect: ell_T = -1, -2, -3 -> softmax of (-1, -2, -3)
    w = _w([True, True, False, False, False], [-1, -2, 0, 0, 0], [NAN, NAN, -1, -2, -3], [7] * 5)
    e = math.e
    z = e**-1 + e**-2 + e**-3
    expected = [1 / (1 + e), e / (1 + e), e**-1 / z, e**-2 / z, e**-3 / z]
    assert w.tolist() == pytest.approx(expected, rel=1e-6)


def test_ppl_form_matches_softmax_form():
    # w_i^stu = PPL_S(y_i)^(1/tau) / sum_j PPL_S(y_j)^(1/tau), with tau = 2
    ell = [-0.5, -1.5, -0.1]
    ppl = [math.exp(-x) for x in ell]
    w = _w([True] * 3, ell, [NAN] * 3, [0, 0, 0], tau=2.0)
    z = sum(p**0.5 for p in ppl)
    assert w.tolist() == pytest.approx([p**0.5 / z for p in ppl], rel=1e-6)
    # w_i^tea = PPL_T^(-1/tau) / sum PPL_T^(-1/tau)
    w = _w([False] * 3, [NAN] * 3, ell, [0, 0, 0], tau=2.0)
    z = sum(p**-0.5 for p in ppl)
    assert w.tolist() == pytest.approx([p**-0.5 / z for p in ppl], rel=1e-6)


def test_direction_of_weights():
    w = _w([True, True], [-0.1, -3.0], [NAN, NAN], [0, 0])
    assert w[1] > w[0], "the correct rollout the student finds unlikely must get more weight"
    w = _w([False, False], [NAN, NAN], [-0.1, -3.0], [0, 0])
    assert w[0] > w[1], "the incorrect rollout the teacher finds unlikely must get less weight"


def test_sum_per_branch_per_prompt_with_unsorted_groups():
    g = torch.tensor([5, -3, 5, 9, -3, 5, 9, 9, -3, 5])
    correct = torch.tensor([1, 0, 0, 1, 1, 1, 0, 1, 0, 0], dtype=torch.bool)
    s = torch.randn(10, dtype=torch.float64)
    t = torch.randn(10, dtype=torch.float64)
    w = scope_weights(correct, s, t, g)
    for gid in (5, -3, 9):
        for branch in (True, False):
            sel = (g == gid) & (correct == branch)
            if sel.any():
                assert float(w[sel].sum()) == pytest.approx(1.0, abs=1e-6)
    assert bool((w > 0).all()) and bool((w <= 1).all())


def test_mean_normalisation_averages_one():
    g = torch.tensor([0, 0, 0, 1, 1])
    correct = torch.tensor([1, 1, 0, 0, 0], dtype=torch.bool)
    w = scope_weights(correct, torch.randn(5), torch.randn(5), g, normalize="mean")
    assert float(w[:2].mean()) == pytest.approx(1.0)
    assert float(w[2]) == pytest.approx(1.0)
    assert float(w[3:].mean()) == pytest.approx(1.0)


def test_large_tau_is_uniform_and_small_tau_is_argmax():
    s = torch.tensor([-0.2, -0.9, -0.5, -2.0])
    correct = torch.ones(4, dtype=torch.bool)
    g = torch.zeros(4, dtype=torch.long)
    w = scope_weights(correct, s, torch.full((4,), NAN), g, tau=1e9)
    assert w.tolist() == pytest.approx([0.25] * 4, abs=1e-6)
    w = scope_weights(correct, s, torch.full((4,), NAN), g, tau=1e-4)
    assert w.tolist() == pytest.approx([0, 0, 0, 1], abs=1e-6)


def test_one_member_branch_gets_one_and_all_same_branch_groups():
    w = _w([True, False, False], [-3, NAN, NAN], [NAN, -1, -2], [0, 0, 0])
    assert float(w[0]) == 1.0
    all_correct = _w([True] * 3, [-1, -2, -3], [NAN] * 3, [1, 1, 1])
    all_wrong = _w([False] * 3, [NAN] * 3, [-1, -2, -3], [1, 1, 1])
    assert float(all_correct.sum()) == pytest.approx(1.0)
    assert float(all_wrong.sum()) == pytest.approx(1.0)


def test_permutation_equivariance():
    torch.manual_seed(0)
    n = 24
    g = torch.randint(0, 4, (n,))
    correct = torch.rand(n) < 0.5
    s, t = torch.randn(n), torch.randn(n)
    w = scope_weights(correct, s, t, g)
    perm = torch.randperm(n)
    wp = scope_weights(correct[perm], s[perm], t[perm], g[perm])
    assert torch.allclose(wp, w[perm])


def test_stable_for_extreme_log_probs():
    w = _w([True, True, False, False], [-1e4, -1e4 + 1, NAN, NAN], [NAN, NAN, -1e4, -1e4 - 2], [0] * 4)
    assert torch.isfinite(w).all()
    assert w[:2].tolist() == pytest.approx([math.e / (1 + math.e), 1 / (1 + math.e)], rel=1e-6)
    assert w[2:].tolist() == pytest.approx([1 / (1 + math.e**-2), math.e**-2 / (1 + math.e**-2)], rel=1e-6)


def test_sequence_mean_logprob_long_and_padded():
    t = 10_000
    logp = torch.full((2, t), -0.1, dtype=torch.float32)
    mask = torch.ones(2, t)
    mask[1, 5000:] = 0
    logp[1, 5000:] = float("nan")  # padding may hold garbage
    ell = sequence_mean_logprob(logp, mask)
    assert ell.dtype == torch.float64
    assert ell.tolist() == pytest.approx([-0.1, -0.1], rel=1e-6)


def test_ablation_variants():
    args = ([True, True, False, False], [-1, -2, NAN, NAN], [NAN, NAN, -1, -2], [0] * 4)
    base = _w(*args)
    no_s = _w(*args, student="uniform")
    no_t = _w(*args, teacher="uniform")
    rev = _w(*args, teacher="reversed")
    assert no_s[:2].tolist() == [0.5, 0.5] and torch.allclose(no_s[2:], base[2:])
    assert no_t[2:].tolist() == [0.5, 0.5] and torch.allclose(no_t[:2], base[:2])
    assert torch.allclose(rev[2:], base[2:].flip(0))


@pytest.mark.parametrize(
    "kwargs, needle",
    [
        ({"tau": 0.0}, "tau"),
        ({"tau": -1.0}, "tau"),
        ({"normalize": "softmax"}, "normalize"),
        ({"teacher": "inverse"}, "teacher"),
    ],
)
def test_bad_options_name_the_argument(kwargs, needle):
    with pytest.raises(ValueError, match=needle):
        _w([True, False], [-1, NAN], [NAN, -1], [0, 0], **kwargs)


def test_bad_inputs_name_the_argument():
    c = torch.tensor([True, False])
    with pytest.raises(ValueError, match="student_mean_logp"):
        scope_weights(c, torch.zeros(3), torch.zeros(2), torch.zeros(2, dtype=torch.long))
    with pytest.raises(ValueError, match="group_index"):
        scope_weights(c, torch.zeros(2), torch.zeros(2), torch.zeros(2))
    with pytest.raises(ValueError, match="correct"):
        scope_weights(torch.tensor([1, 0]), torch.zeros(2), torch.zeros(2), torch.zeros(2, dtype=torch.long))
    with pytest.raises(ValueError, match="teacher_mean_logp"):
        scope_weights(c, torch.zeros(2), torch.tensor([0.0, NAN]), torch.zeros(2, dtype=torch.long))
    with pytest.raises(ValueError, match="student_mean_logp"):
        scope_weights(c, torch.tensor([float("inf"), 0.0]), torch.zeros(2), torch.zeros(2, dtype=torch.long))
    with pytest.raises(ValueError, match="mask row 1"):
        sequence_mean_logprob(torch.zeros(2, 3), torch.tensor([[1, 1, 0], [0, 0, 0]]))
    with pytest.raises(ValueError, match="token_logp"):
        sequence_mean_logprob(torch.tensor([[0.0, NAN]]), torch.ones(1, 2))
