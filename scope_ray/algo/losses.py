"""Policy losses: SCOPE's dual-path objective (Eq. 6) and the GRPO baseline.

All losses take per-token log-probs ``logp`` [N, T] of the policy being trained (with
grad), the rollout policy's ``old_logp`` [N, T], and a response ``mask`` [N, T]. Padded
positions may hold anything (NaN included); they never reach a value or a gradient.

Aggregation (``aggregation``):

* ``"sum"`` (default, Eq. 6 as written): sum over a rollout's tokens, weighted sum over
  rollouts, mean over prompts. d loss / d logp[i, t] = -w_i * A_{i,t} / P with P the
  number of prompts, the same constant for every token of the batch.
* ``"token-mean"``: the same weighted sum divided by the number of response tokens in
  the batch (verl's default style); the per-token constant is then 1 / #tokens.

``denominator`` overrides P (or #tokens) so that micro-batches and data-parallel ranks
can all divide by the global count of the step and their gradients simply add up.
"""

from __future__ import annotations

from typing import Literal

import torch

from scope_ray.algo._checks import (
    check_1d,
    check_2d,
    check_bool,
    check_finite_where,
    check_group_index,
)
from scope_ray.algo.weights import segment_ids, segment_sizes

Aggregation = Literal["sum", "token-mean"]
AGGREGATIONS: tuple[str, ...] = ("sum", "token-mean")


def _check_common(logp: torch.Tensor, old_logp: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    check_2d("logp", logp)
    shape = tuple(logp.shape)
    check_2d("old_logp", old_logp, shape)
    check_2d("mask", mask, shape)
    used = mask.bool()
    check_finite_where("logp", logp.detach(), used)
    check_finite_where("old_logp", old_logp, used)
    return used


def loss_denominator(aggregation: str, num_prompts: int, num_tokens: float) -> float:
    """What a loss divides by (the one rule): the prompts of the whole batch ("sum", Eq.
    6's 1/P) or its response tokens ("token-mean"); global over micro-batches and ranks."""
    if aggregation not in AGGREGATIONS:
        raise ValueError(f"aggregation must be one of {AGGREGATIONS}, got {aggregation!r}")
    value = num_prompts if aggregation == "sum" else num_tokens
    if not value > 0:
        raise ValueError(f"the {aggregation!r} loss denominator must be > 0, got {value!r}")
    return float(value)


def _aggregate(
    per_rollout: torch.Tensor,
    used: torch.Tensor,
    group_index: torch.Tensor,
    aggregation: str,
    denominator: float | None,
) -> torch.Tensor:
    if denominator is None:  # this batch is the whole batch
        denominator = loss_denominator(aggregation, int(torch.unique(group_index).numel()), float(used.sum()))
    elif not denominator > 0:
        raise ValueError(f"denominator must be > 0, got {denominator!r}")
    if aggregation not in AGGREGATIONS:
        raise ValueError(f"aggregation must be one of {AGGREGATIONS}, got {aggregation!r}")
    return per_rollout.sum() / denominator


def importance_ratio(logp: torch.Tensor, old_logp: torch.Tensor, used: torch.Tensor) -> torch.Tensor:
    """rho = pi_theta / pi_old per token; exactly 1 on padding (and no NaN there)."""
    diff = torch.where(used, logp - old_logp, torch.zeros((), dtype=logp.dtype))
    return torch.exp(diff)


def scope_advantages(
    logp: torch.Tensor, teacher_logp: torch.Tensor, correct: torch.Tensor, used: torch.Tensor
) -> torch.Tensor:
    """Per-token signal A: 1 on correct rollouts (MLE), log pi_T - sg(log pi_theta) on
    incorrect ones (sampled-token reverse KL). Finite everywhere, detached."""
    distill = teacher_logp.to(logp.dtype) - logp.detach()
    use_teacher = (~correct)[:, None] & used
    # where() before any arithmetic with grad: NaN teacher values on correct rollouts
    # or padding must not leak into the backward pass as 0 * NaN.
    return torch.where(use_teacher, distill, torch.ones((), dtype=logp.dtype))


def topk_forward_kl(student_topk_logp: torch.Tensor, teacher_topk_logp: torch.Tensor,
                    used: torch.Tensor) -> torch.Tensor:
    """Per-token forward KL(pi_T || pi_theta) over the teacher's top-k tokens [N, T, k]:
    sum_j p_T(j) (log p_T(j) - log pi_theta(j)), 0 where not ``used``.

    Forward, because the teacher's probabilities are known exactly on its top-k support
    and nowhere else: the forward KL restricted to that support needs nothing more, and
    its gradient -sum_j p_T(j) grad log pi_theta(j) is a teacher-weighted cross-entropy
    (verl and NeMo-RL distil with the same top-k forward KL). The reverse KL would need
    pi_T on every token the student puts mass on. Not renormalised: with k = the
    vocabulary it is the full forward KL, and the teacher mass outside the top k (its
    tail) simply carries no signal.
    """
    mask = used.unsqueeze(-1)
    zero = torch.zeros((), dtype=student_topk_logp.dtype)
    teacher = torch.where(mask, teacher_topk_logp.to(student_topk_logp.dtype), zero)
    student = torch.where(mask, student_topk_logp, zero)
    return (teacher.exp() * (teacher - student)).sum(dim=-1) * used


def scope_loss(
    logp: torch.Tensor,
    old_logp: torch.Tensor,
    teacher_logp: torch.Tensor,
    mask: torch.Tensor,
    correct: torch.Tensor,
    weights: torch.Tensor,
    group_index: torch.Tensor,
    *,
    aggregation: Aggregation = "sum",
    denominator: float | None = None,
    student_topk_logp: torch.Tensor | None = None,
    teacher_topk_logp: torch.Tensor | None = None,
) -> torch.Tensor:
    """SCOPE objective (Eq. 6) with rho = exp(logp - old_logp).

    Correct rollouts: w_i * L_MLE = -w_i * sum_t rho.
    Incorrect rollouts: w_i * L_OPD = w_i * sum_t rho * (sg(logp) - teacher_logp), the
    sampled-token estimate of the reverse KL; or, given the top-k log-probs of the
    teacher and of the policy at the teacher's top-k tokens ([N, T, k],
    ``algorithm.distill=topk``), w_i * sum_t of :func:`topk_forward_kl`.
    ``teacher_logp`` is read only on incorrect rollouts. Uniform on-policy distillation
    (the ``opd`` baseline) is this function with ``correct`` all False and weights 1.
    """
    used = _check_common(logp, old_logp, mask)
    n = logp.shape[0]
    check_2d("teacher_logp", teacher_logp, tuple(logp.shape))
    check_1d("correct", correct, n)
    check_bool("correct", correct)
    check_1d("weights", weights, n)
    check_group_index(group_index, n)
    check_finite_where("weights", weights, torch.ones(n, dtype=torch.bool))
    check_finite_where("teacher_logp", teacher_logp, (~correct)[:, None] & used)

    rho = importance_ratio(logp, old_logp, used)
    adv = scope_advantages(logp, teacher_logp, correct, used)
    per_token = torch.where(used, -rho * adv, torch.zeros((), dtype=logp.dtype))
    if (student_topk_logp is None) != (teacher_topk_logp is None):
        raise ValueError("student_topk_logp and teacher_topk_logp go together")
    if teacher_topk_logp is not None:
        distilled = (~correct)[:, None] & used
        for name, t in (("student_topk_logp", student_topk_logp), ("teacher_topk_logp", teacher_topk_logp)):
            if t.dim() != 3 or tuple(t.shape[:2]) != tuple(logp.shape) or t.shape[2] != teacher_topk_logp.shape[2]:
                raise ValueError(f"{name} must be [N, T, k] with [N, T] = {tuple(logp.shape)}, got {tuple(t.shape)}")
            check_finite_where(name, t.detach(), distilled.unsqueeze(-1).expand_as(t))
        kl = topk_forward_kl(student_topk_logp, teacher_topk_logp, distilled)
        per_token = torch.where(distilled, kl, per_token)
    per_rollout = weights.to(logp.dtype) * per_token.sum(dim=1)
    return _aggregate(per_rollout, used, group_index, aggregation, denominator)


def grpo_advantages(rewards: torch.Tensor, group_index: torch.Tensor, eps: float = 1e-6) -> torch.Tensor:
    """Group-relative advantage (R_i - mean_g) / (std_g + eps), std unbiased as in verl.

    A group of one rollout has no baseline and gets advantage 0.
    """
    check_1d("rewards", rewards)
    n = rewards.shape[0]
    check_group_index(group_index, n)
    check_finite_where("rewards", rewards, torch.ones(n, dtype=torch.bool))
    seg, num = segment_ids(group_index)
    r = rewards.double()
    size = segment_sizes(seg, num).double()
    mean = torch.zeros(num, dtype=torch.float64).index_add(0, seg, r) / size
    sq = torch.zeros(num, dtype=torch.float64).index_add(0, seg, (r - mean[seg]) ** 2)
    std = torch.sqrt(sq / (size - 1).clamp(min=1))
    adv = (r - mean[seg]) / (std[seg] + eps)
    return torch.where(size[seg] > 1, adv, torch.zeros((), dtype=torch.float64)).float()


def grpo_loss(
    logp: torch.Tensor,
    old_logp: torch.Tensor,
    ref_logp: torch.Tensor | None,
    mask: torch.Tensor,
    advantages: torch.Tensor,
    group_index: torch.Tensor,
    *,
    clip_eps: float = 0.2,
    kl_beta: float = 1e-4,
    aggregation: Aggregation = "sum",
    denominator: float | None = None,
) -> torch.Tensor:
    """PPO-clip surrogate with a group-relative advantage plus beta * KL(pi_theta || ref).

    KL uses the k3 estimator exp(ref - logp) - (ref - logp) - 1 (non-negative, unbiased),
    as GRPO does. ``ref_logp`` may be None only when ``kl_beta`` is 0.
    """
    used = _check_common(logp, old_logp, mask)
    n = logp.shape[0]
    check_1d("advantages", advantages, n)
    check_group_index(group_index, n)
    if not clip_eps > 0:
        raise ValueError(f"clip_eps must be > 0, got {clip_eps!r}")
    if kl_beta < 0:
        raise ValueError(f"kl_beta must be >= 0, got {kl_beta!r}")
    rho = importance_ratio(logp, old_logp, used)
    adv = advantages.to(logp.dtype)[:, None]
    surrogate = torch.minimum(rho * adv, torch.clamp(rho, 1 - clip_eps, 1 + clip_eps) * adv)
    per_token = -surrogate
    if kl_beta > 0:
        if ref_logp is None:
            raise ValueError("ref_logp is required when kl_beta > 0")
        check_2d("ref_logp", ref_logp, tuple(logp.shape))
        check_finite_where("ref_logp", ref_logp, used)
        delta = torch.where(used, ref_logp.to(logp.dtype) - logp, torch.zeros((), dtype=logp.dtype))
        per_token = per_token + kl_beta * (torch.exp(delta) - delta - 1)
    per_token = torch.where(used, per_token, torch.zeros((), dtype=logp.dtype))
    return _aggregate(per_token.sum(dim=1), used, group_index, aggregation, denominator)
