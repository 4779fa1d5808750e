"""scope_ray/algo/losses.py: Eq. 6's gradient property, aggregation, GRPO by hand."""

import pytest
import torch

from scope_ray.algo import (
    ALGORITHMS,
    LossInputs,
    compute_loss,
    get_algorithm,
    grpo_advantages,
    grpo_loss,
    rollout_weights,
    scope_loss,
    sequence_mean_logprob,
)

NAN = float("nan")


def _random_batch(seed: int, n: int = 12, t: int = 9):
    g = torch.Generator().manual_seed(seed)
    logp = -torch.rand(n, t, generator=g, dtype=torch.float64) * 3
    teacher = -torch.rand(n, t, generator=g, dtype=torch.float64) * 3
    lengths = torch.randint(1, t + 1, (n,), generator=g)
    mask = (torch.arange(t)[None, :] < lengths[:, None]).double()
    correct = torch.rand(n, generator=g) < 0.5
    group = torch.randint(0, 3, (n,), generator=g) * 10 + 4
    # NaN where the values must never be read: padding, and teacher on correct rollouts.
    logp_padded = torch.where(mask.bool(), logp, torch.full_like(logp, NAN))
    teacher = torch.where(mask.bool() & ~correct[:, None], teacher, torch.full_like(teacher, NAN))
    return logp_padded, teacher, mask, correct, group


@pytest.mark.parametrize("name", [n for n, s in ALGORITHMS.items() if s.loss == "scope"])
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_gradient_is_minus_c_w_a(name, seed):
    spec = get_algorithm(name)
    logp0, teacher, mask, correct, group = _random_batch(seed)
    used = mask.bool()
    ell_s = sequence_mean_logprob(logp0, mask)
    ell_t = sequence_mean_logprob(torch.where(used & ~correct[:, None], teacher, -1.0), mask)
    ell_t = torch.where(correct, torch.full_like(ell_t, NAN), ell_t)
    w = rollout_weights(spec, correct, ell_s, ell_t, group)
    if spec.name == "opd":
        # OPD scores every rollout, so give the teacher values everywhere.
        teacher = torch.where(used, -torch.rand_like(logp0) * 3, torch.full_like(logp0, NAN))
    logp = logp0.clone().requires_grad_(True)
    inputs = LossInputs(
        old_logp=logp0.detach(), mask=mask, correct=correct, group_index=group, weights=w,
        rewards=correct.double(), teacher_logp=teacher,
    )
    loss = compute_loss(spec, logp, inputs)
    loss.backward()
    assert torch.isfinite(loss)
    grad = logp.grad
    assert torch.isfinite(grad).all(), "NaN in unused positions leaked into the gradient"
    mle = correct if spec.route_by_reward else torch.zeros_like(correct)
    adv = torch.where(mle[:, None], torch.ones_like(logp0), teacher - logp0)
    num_prompts = torch.unique(group).numel()
    expected = torch.where(used, -w.double()[:, None] * adv / num_prompts, torch.zeros_like(logp0))
    assert torch.allclose(grad, expected, atol=1e-10)
    assert (grad[~used] == 0).all()
    if spec.name == "opd":
        assert torch.equal(w, torch.ones_like(w))


def test_loss_value_is_eq6_at_on_policy_point():
    # One prompt: correct rollout (w=0.25, 3 tokens), incorrect rollout (w=1, 2 tokens).
    logp = torch.tensor([[-1.0, -2.0, -0.5], [-1.0, -3.0, NAN]], dtype=torch.float64)
    teacher = torch.tensor([[NAN, NAN, NAN], [-0.5, -1.0, NAN]], dtype=torch.float64)
    mask = torch.tensor([[1, 1, 1], [1, 1, 0]])
    loss = scope_loss(
        logp, logp, teacher, mask, torch.tensor([True, False]), torch.tensor([0.25, 1.0]), torch.tensor([0, 0])
    )
    # L_MLE = -3 (rho = 1 on 3 tokens); L_OPD = (-1 + 0.5) + (-3 + 1) = -2.5
    assert float(loss) == pytest.approx(0.25 * -3 + 1.0 * -2.5)


def test_token_mean_and_denominator():
    logp, teacher, mask, correct, group = _random_batch(3)
    w = torch.rand(logp.shape[0])
    s = scope_loss(logp, logp, teacher, mask, correct, w, group)
    tm = scope_loss(logp, logp, teacher, mask, correct, w, group, aggregation="token-mean")
    p = torch.unique(group).numel()
    assert float(tm) == pytest.approx(float(s) * p / float(mask.sum()))
    d = scope_loss(logp, logp, teacher, mask, correct, w, group, denominator=7.0)
    assert float(d) == pytest.approx(float(s) * p / 7.0)
    # Micro-batches with a global denominator add up to the full-batch loss.
    half = logp.shape[0] // 2
    parts = [
        scope_loss(logp[sl], logp[sl], teacher[sl], mask[sl], correct[sl], w[sl], group[sl], denominator=float(p))
        for sl in (slice(0, half), slice(half, None))
    ]
    assert float(sum(parts)) == pytest.approx(float(s))


def test_off_policy_ratio_enters_loss():
    logp = torch.tensor([[-1.0, -1.0]], dtype=torch.float64, requires_grad=True)
    old = torch.tensor([[-1.5, -0.5]], dtype=torch.float64)
    loss = scope_loss(logp, old, torch.full((1, 2), NAN), torch.ones(1, 2), torch.tensor([True]),
                      torch.ones(1), torch.tensor([0]))
    rho = torch.exp(logp.detach() - old)
    assert float(loss) == pytest.approx(-float(rho.sum()))
    loss.backward()
    assert torch.allclose(logp.grad, -rho)


def test_grpo_advantages_by_hand():
    r = torch.tensor([1.0, 0.0, 0.0, 1.0, 1.0, 0.5])
    g = torch.tensor([0, 0, 0, 0, 1, 2])
    a = grpo_advantages(r, g)
    std = torch.tensor([1.0, 0.0, 0.0, 1.0]).std()  # unbiased, = 0.5774
    assert a[:4].tolist() == pytest.approx([0.5 / float(std), -0.5 / float(std)] * 1 + [-0.5 / float(std), 0.5 / float(std)], rel=1e-4)
    assert a[4:].tolist() == [0.0, 0.0]  # single-member groups have no baseline


def test_grpo_loss_against_hand_computed_clipped_objective():
    logp = torch.tensor([[-0.5, -1.0], [-2.0, -0.1]], dtype=torch.float64, requires_grad=True)
    old = torch.tensor([[-1.0, -1.0], [-1.0, -0.1]], dtype=torch.float64)
    ref = torch.tensor([[-0.7, -1.2], [-1.5, -0.3]], dtype=torch.float64)
    mask = torch.tensor([[1, 1], [1, 0]])
    adv = torch.tensor([1.0, -1.0])
    loss = grpo_loss(logp, old, ref, mask, adv, torch.tensor([0, 0]), clip_eps=0.2, kl_beta=0.1)
    expected = 0.0
    for i, j in [(0, 0), (0, 1), (1, 0)]:
        rho = float(torch.exp(logp[i, j] - old[i, j]))
        a = float(adv[i])
        clipped = min(max(rho, 0.8), 1.2)
        pg = -min(rho * a, clipped * a)
        d = float(ref[i, j] - logp[i, j])
        kl = torch.exp(torch.tensor(d)).item() - d - 1
        expected += pg + 0.1 * kl
    assert float(loss) == pytest.approx(expected / 1)  # one prompt, "sum" aggregation
    loss.backward()
    # rho = e^0.5 > 1.2 with A > 0: clipped, so only the KL term has gradient there.
    kl_grad = 0.1 * (1 - torch.exp(ref[0, 0] - logp[0, 0].detach()))
    assert float(logp.grad[0, 0]) == pytest.approx(float(kl_grad))
    assert float(logp.grad[1, 1]) == 0.0


def test_bad_inputs_name_the_argument():
    logp = torch.zeros(2, 3)
    ok = dict(teacher_logp=torch.zeros(2, 3), mask=torch.ones(2, 3), correct=torch.tensor([True, False]),
              weights=torch.ones(2), group_index=torch.tensor([0, 0]))
    with pytest.raises(ValueError, match="old_logp"):
        scope_loss(logp, torch.zeros(2, 4), **ok)
    with pytest.raises(ValueError, match="weights"):
        scope_loss(logp, logp, **{**ok, "weights": torch.ones(3)})
    with pytest.raises(ValueError, match="teacher_logp"):
        scope_loss(logp, logp, **{**ok, "teacher_logp": torch.full((2, 3), NAN)})
    with pytest.raises(ValueError, match="logp"):
        scope_loss(torch.full((2, 3), float("inf")), logp, **ok)
    with pytest.raises(ValueError, match="aggregation"):
        scope_loss(logp, logp, **ok, aggregation="seq-mean")
    with pytest.raises(ValueError, match="algorithm"):
        get_algorithm("scop")
    with pytest.raises(ValueError, match="did you mean 'scope'"):
        get_algorithm("scop")
