"""Top-k distillation (algorithm.distill=topk): the per-token forward KL over the
teacher's top-k tokens, and its place in SCOPE's loss (routing and weights unchanged)."""

from __future__ import annotations

import math

import pytest
import torch

from scope_ray.algo import get_algorithm
from scope_ray.algo.algorithms import LossInputs, compute_loss
from scope_ray.algo.losses import scope_loss, topk_forward_kl


def test_topk_kl_by_hand() -> None:
    """Vocabulary of 4; the teacher's top 2 are tokens 2 (p 0.5) and 0 (p 0.3)."""
    teacher = torch.log(torch.tensor([0.3, 0.1, 0.5, 0.1]))
    student = torch.log(torch.tensor([0.25, 0.25, 0.25, 0.25]))
    top = teacher.topk(2)
    kl = topk_forward_kl(student[top.indices].view(1, 1, 2), top.values.view(1, 1, 2), torch.ones(1, 1, dtype=torch.bool))
    by_hand = 0.5 * math.log(0.5 / 0.25) + 0.3 * math.log(0.3 / 0.25)
    assert float(kl) == pytest.approx(by_hand, rel=1e-6)


def test_topk_kl_with_k_the_vocabulary_is_the_full_forward_kl() -> None:
    g = torch.Generator().manual_seed(0)
    vocab = 50
    t_logits, s_logits = torch.randn(3, 7, vocab, generator=g), torch.randn(3, 7, vocab, generator=g)
    t, s = t_logits.log_softmax(-1), s_logits.log_softmax(-1)
    top = t.topk(vocab, dim=-1)
    kl = topk_forward_kl(s.gather(-1, top.indices), top.values, torch.ones(3, 7, dtype=torch.bool))
    full = (t.exp() * (t - s)).sum(-1)
    torch.testing.assert_close(kl, full, atol=1e-5, rtol=0)
    # Smaller k: the sum over fewer tokens, each term the same as in the full sum.
    top5 = t.topk(5, dim=-1)
    kl5 = topk_forward_kl(s.gather(-1, top5.indices), top5.values, torch.ones(3, 7, dtype=torch.bool))
    torch.testing.assert_close(kl5, (t.exp() * (t - s)).gather(-1, top5.indices).sum(-1), atol=1e-6, rtol=0)


def test_scope_with_topk_distils_the_incorrect_path_only() -> None:
    """Rows 0, 2 correct (MLE, unchanged), rows 1, 3 incorrect (top-k KL, weighted);
    padding and NaN outside the distilled positions never reach the value or gradient."""
    g = torch.Generator().manual_seed(1)
    n, length, k, vocab = 4, 6, 3, 11
    logits = torch.randn(n, length, vocab, generator=g, requires_grad=True)
    student = logits.log_softmax(-1)
    teacher_full = torch.randn(n, length, vocab, generator=g).log_softmax(-1)
    top = teacher_full.topk(k, dim=-1)
    ids = torch.randint(0, vocab, (n, length), generator=g)
    logp = student.gather(-1, ids[..., None])[..., 0]
    mask = torch.tensor([[0, 1, 1, 1, 1, 0]] * n)
    correct = torch.tensor([True, False, True, False])
    weights = torch.tensor([0.7, 0.4, 0.3, 0.6])
    teacher_logp = teacher_full.gather(-1, ids[..., None])[..., 0]
    teacher_topk = torch.where(correct[:, None, None], torch.nan, top.values)  # the teacher scores incorrect rows only
    group_index = torch.tensor([0, 0, 1, 1])
    loss = scope_loss(logp, logp.detach(), teacher_logp, mask, correct, weights, group_index,
                      student_topk_logp=student.gather(-1, top.indices), teacher_topk_logp=teacher_topk)
    used = mask.bool()
    kl = ((top.values.exp() * (top.values - student.gather(-1, top.indices))).sum(-1) * used).sum(1)
    mle = -(used.float()).sum(1)  # rho = 1 at the old policy
    want = (weights * torch.where(correct, mle, kl)).sum() / 2  # 2 prompts
    torch.testing.assert_close(loss, want, atol=1e-6, rtol=0)
    loss.backward()
    assert torch.isfinite(logits.grad).all() and float(logits.grad[1].abs().sum()) > 0
    # Through compute_loss: the spec routes, opd distils every row, grpo refuses top-k.
    inputs = LossInputs(old_logp=logp.detach(), mask=mask, correct=correct, group_index=group_index, weights=weights,
                        rewards=correct.float(), teacher_logp=teacher_logp, teacher_topk_ids=top.indices,
                        teacher_topk_logp=top.values)
    s_top = student.detach().gather(-1, top.indices)
    opd = compute_loss(get_algorithm("opd"), logp.detach(), inputs, topk_logp=s_top)
    kl_all = ((top.values.exp() * (top.values - s_top)).sum(-1) * used).sum(1)
    torch.testing.assert_close(opd, (weights * kl_all).sum() / 2, atol=1e-6, rtol=0)
    with pytest.raises(ValueError, match="grpo has no distillation path"):
        compute_loss(get_algorithm("grpo"), logp.detach(), inputs, topk_logp=s_top)
