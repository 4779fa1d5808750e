"""Perplexity weights with group-level normalisation (SCOPE Eq. 4 and 5).

Each prompt's group of rollouts splits into a correct subset and an incorrect subset.
Inside each subset the weights are a softmax over a length-normalised log-likelihood:

* correct rollouts:   w_i = softmax_j(-ell_S(y_j) / tau)  (unlikely-to-student -> more weight)
* incorrect rollouts: w_i = softmax_j( ell_T(y_j) / tau)  (unlikely-to-teacher -> less weight)

The softmax runs over one (prompt, branch) segment at a time, so weights sum to 1 inside
each branch of each prompt. Everything is computed in float64 with the segment maximum
subtracted, which keeps it exact for mean log-probs of -1e4 and for tiny temperatures.
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
    check_tau,
)

Normalize = Literal["sum", "mean"]
StudentWeighting = Literal["ppl", "uniform"]
TeacherWeighting = Literal["ppl", "uniform", "reversed"]

NORMALIZE_MODES: tuple[str, ...] = ("sum", "mean")
STUDENT_WEIGHTINGS: tuple[str, ...] = ("ppl", "uniform")
TEACHER_WEIGHTINGS: tuple[str, ...] = ("ppl", "uniform", "reversed")


def sequence_mean_logprob(token_logp: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Length-normalised sequence log-likelihood ell(y) = (1/|y|) sum_t log pi(a_t).

    ``token_logp`` and ``mask`` are [N, T]; padded positions (mask 0) may hold anything,
    NaN included. Summation is in float64 so a 10k-token sequence loses no precision.
    Returns float64 [N].
    """
    check_2d("token_logp", token_logp)
    check_2d("mask", mask, tuple(token_logp.shape))
    used = mask.bool()
    lengths = used.sum(dim=1)
    if bool((lengths == 0).any()):
        row = int((lengths == 0).nonzero()[0])
        raise ValueError(f"mask row {row} has no response tokens; ell(y) is undefined")
    check_finite_where("token_logp", token_logp, used)
    total = torch.where(used, token_logp.double(), torch.zeros((), dtype=torch.float64)).sum(dim=1)
    return total / lengths.double()


def segment_ids(*keys: torch.Tensor) -> tuple[torch.Tensor, int]:
    """Contiguous ids 0..S-1 for the distinct tuples of ``keys`` (any integers, any order)."""
    stacked = torch.stack([k.long() for k in keys], dim=1)
    _, inverse = torch.unique(stacked, dim=0, return_inverse=True)
    num = int(inverse.max()) + 1 if inverse.numel() else 0
    return inverse, num


def segment_softmax(logits: torch.Tensor, seg: torch.Tensor, num_segments: int) -> torch.Tensor:
    """Softmax of ``logits`` inside each segment; stable (segment max subtracted)."""
    neg_inf = torch.full((num_segments,), float("-inf"), dtype=logits.dtype)
    seg_max = neg_inf.scatter_reduce(0, seg, logits, reduce="amax", include_self=True)
    expd = torch.exp(logits - seg_max[seg])
    denom = torch.zeros(num_segments, dtype=logits.dtype).index_add(0, seg, expd)
    return expd / denom[seg]


def segment_sizes(seg: torch.Tensor, num_segments: int) -> torch.Tensor:
    return torch.bincount(seg, minlength=num_segments)


@torch.no_grad()
def scope_weights(
    correct: torch.Tensor,
    student_mean_logp: torch.Tensor,
    teacher_mean_logp: torch.Tensor,
    group_index: torch.Tensor,
    tau: float = 1.0,
    normalize: Normalize = "sum",
    *,
    student: StudentWeighting = "ppl",
    teacher: TeacherWeighting = "ppl",
) -> torch.Tensor:
    """Per-rollout SCOPE weights, normalised inside each prompt's correct / incorrect subset.

    Args:
        correct: bool [N], the verifier's verdict (routing only).
        student_mean_logp: [N], ell_S(y_i); read only where ``correct`` is True.
        teacher_mean_logp: [N], ell_T(y_i); read only where ``correct`` is False (NaN
            elsewhere is fine: the teacher never scores correct rollouts).
        group_index: int [N], the prompt each rollout belongs to (any integers).
        tau: temperature > 0. Large tau -> uniform; tau -> 0 -> all weight on one rollout.
        normalize: ``"sum"`` (the paper): weights sum to 1 per branch per prompt.
            ``"mean"`` (the authors' released code): weights average 1 instead.
        student: ``"ppl"`` (Eq. 4) or ``"uniform"`` (ablation: no student weight).
        teacher: ``"ppl"`` (Eq. 5), ``"uniform"`` (ablation) or ``"reversed"``
            (ablation: softmax of -ell_T / tau, favouring teacher-unlikely rollouts).

    Returns:
        float32 [N] weights, detached. A one-member subset gets 1; an empty subset
        simply has no members.
    """
    check_1d("correct", correct)
    n = correct.shape[0]
    check_bool("correct", correct)
    check_1d("student_mean_logp", student_mean_logp, n)
    check_1d("teacher_mean_logp", teacher_mean_logp, n)
    check_group_index(group_index, n)
    check_tau(tau)
    if normalize not in NORMALIZE_MODES:
        raise ValueError(f"normalize must be one of {NORMALIZE_MODES}, got {normalize!r}")
    if student not in STUDENT_WEIGHTINGS:
        raise ValueError(f"student must be one of {STUDENT_WEIGHTINGS}, got {student!r}")
    if teacher not in TEACHER_WEIGHTINGS:
        raise ValueError(f"teacher must be one of {TEACHER_WEIGHTINGS}, got {teacher!r}")
    if n == 0:
        return torch.zeros(0)
    if student == "ppl":
        check_finite_where("student_mean_logp", student_mean_logp, correct)
    if teacher != "uniform":
        check_finite_where("teacher_mean_logp", teacher_mean_logp, ~correct)

    zero = torch.zeros((), dtype=torch.float64)
    s = student_mean_logp.double()
    t = teacher_mean_logp.double()
    student_logit = -s / tau if student == "ppl" else zero.expand(n)
    teacher_sign = {"ppl": 1.0, "reversed": -1.0, "uniform": 0.0}[teacher]
    teacher_logit = teacher_sign * t / tau if teacher != "uniform" else zero.expand(n)
    # torch.where selects before anything is summed, so NaN in the unused branch is inert.
    logits = torch.where(correct, student_logit, teacher_logit)

    seg, num = segment_ids(group_index, correct)
    w = segment_softmax(logits, seg, num)
    if normalize == "mean":
        w = w * segment_sizes(seg, num).double()[seg]
    return w.float()
