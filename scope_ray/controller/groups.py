"""Pure per-group steps of the controller: route, collect teacher work, weigh, measure.

No Ray here: the stream hands finished groups to these functions, and the tests call
them directly.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

from typing import Any

import numpy as np
import torch

from scope_ray.algo import AlgorithmSpec, rollout_weights
from scope_ray.types import RolloutGroup, ScoreRequest, TeacherScore

NAN = float("nan")


def teacher_requests(
    spec: AlgorithmSpec, group: RolloutGroup, kl_beta: float = 0.0, among: Sequence[int] | None = None,
    topk: int = 0,
) -> tuple[list[int], list[ScoreRequest]]:
    """Which rollouts of a verified group go to the scoring server, and the requests.

    ``among``: decide only for these rollout indices (the controller asks per sample as
    samples arrive: routing depends on a rollout's own verdict, not on its group's).
    ``topk``: ask the teacher for its k most likely tokens too (algorithm.distill=topk;
    a reference scorer is never asked).
    """
    k = topk if spec.scorer(kl_beta) == "teacher" else 0
    candidates = range(len(group.rollouts)) if among is None else among
    correct = torch.tensor([group.rewards[i] > 0.5 for i in candidates], dtype=torch.bool)
    need = spec.scored(correct, kl_beta).tolist()
    idx = [i for i, n in zip(candidates, need) if n]
    reqs = [ScoreRequest(prompt_ids=group.prompt_ids, response_ids=group.rollouts[i].response_ids, topk=k)
            for i in idx]
    return idx, reqs


def attach_teacher(group: RolloutGroup, indices: Sequence[int], scores: Sequence[np.ndarray | TeacherScore]) -> None:
    """Store the scores of rollouts ``indices`` (the top-k too, for a TeacherScore); the
    others keep what they have (None)."""
    if len(group.teacher_logp) != len(group.rollouts):
        group.teacher_logp = [None] * len(group.rollouts)
    for i, s in zip(indices, scores):
        top = s.topk if isinstance(s, TeacherScore) else None
        logp = s.logp if isinstance(s, TeacherScore) else s
        n = len(group.rollouts[i].response_ids)
        where = f"a {n}-token response (prompt {group.uid}, rollout {i})"
        if len(logp) != n:
            raise ValueError(f"teacher returned {len(logp)} log-probs for {where}")
        if top is not None and (top.ids.shape[0] != n or top.ids.shape != top.logp.shape):
            raise ValueError(f"teacher returned top-k ids {tuple(top.ids.shape)} and log-probs "
                             f"{tuple(top.logp.shape)} for {where}")
        group.teacher_logp[i] = np.asarray(logp, dtype=np.float32)
        if top is not None:
            if len(group.teacher_topk) != len(group.rollouts):
                group.teacher_topk = [None] * len(group.rollouts)
            group.teacher_topk[i] = top


def _mean(x: np.ndarray) -> float:
    return float(np.mean(x, dtype=np.float64)) if len(x) else NAN


@dataclass
class WeightedBatch:
    """Flat per-rollout view of B groups plus their SCOPE weights."""

    groups: list[RolloutGroup]
    correct: torch.Tensor  # bool [N]
    rewards: torch.Tensor  # [N]
    group_index: torch.Tensor  # long [N]
    student_mean_logp: torch.Tensor  # [N] ell_S under the rollout policy
    teacher_mean_logp: torch.Tensor  # [N] ell_T, NaN where not scored
    weights: torch.Tensor  # [N]


def weigh_groups(
    spec: AlgorithmSpec, groups: Sequence[RolloutGroup], *, tau: float, normalize: str
) -> WeightedBatch:
    """Group-level weight normalisation over complete groups (Eq. 4-5).

    ell_S comes from the rollout engine's log-probs of its own samples: that *is* pi_old,
    available the moment a group finishes, with no learner round trip.
    """
    correct, rewards, gidx, ell_s, ell_t = [], [], [], [], []
    for g in groups:
        if len(g.rewards) != len(g.rollouts):
            raise ValueError(f"group {g.uid} is not verified")
        for i, r in enumerate(g.rollouts):
            correct.append(g.rewards[i] > 0.5)
            rewards.append(g.rewards[i])
            gidx.append(g.group_index)
            ell_s.append(_mean(r.response_logp))
            t = g.teacher_logp[i] if g.teacher_logp else None
            ell_t.append(_mean(t) if t is not None else NAN)
    c = torch.tensor(correct, dtype=torch.bool)
    batch = WeightedBatch(
        groups=list(groups),
        correct=c,
        rewards=torch.tensor(rewards, dtype=torch.float32),
        group_index=torch.tensor(gidx, dtype=torch.long),
        student_mean_logp=torch.tensor(ell_s, dtype=torch.float64),
        teacher_mean_logp=torch.tensor(ell_t, dtype=torch.float64),
        weights=torch.ones(len(correct)),
    )
    batch.weights = rollout_weights(  # 1 for the unweighted algorithms (OPD, GRPO)
        spec, c, batch.student_mean_logp, batch.teacher_mean_logp, batch.group_index,
        tau=tau, normalize=normalize,  # type: ignore[arg-type]
    )
    return batch


def batch_metrics(spec: AlgorithmSpec, wb: WeightedBatch, learner_version: int) -> dict[str, float]:
    """Per-step statistics of the rollouts, routing and weights."""
    groups = wb.groups
    n = len(wb.correct)
    lengths = [len(r.response_ids) for g in groups for r in g.rollouts]
    versions = [r.oldest_version for g in groups for r in g.rollouts]  # a resumed sample: its oldest tokens
    truncated = [r.finish_reason == "length" for g in groups for r in g.rollouts]
    per_group_acc = [float(np.mean(g.rewards)) for g in groups]
    out: dict[str, float] = {
        "rollout/reward_mean": float(wb.rewards.mean()),
        "rollout/accuracy": float(wb.correct.float().mean()),
        "rollout/groups_all_correct": float(np.mean([a == 1.0 for a in per_group_acc])),
        "rollout/groups_all_wrong": float(np.mean([a == 0.0 for a in per_group_acc])),
        "rollout/response_len_mean": float(np.mean(lengths)),
        "rollout/truncated_fraction": float(np.mean(truncated)),
        "rollout/tokens": float(sum(lengths)),
        "rollout/staleness_mean": float(np.mean([learner_version - v for v in versions])),
        "rollout/staleness_max": float(max(learner_version - v for v in versions)),
        "branch/correct_size": float(wb.correct.sum()),
        "branch/incorrect_size": float(n - int(wb.correct.sum())),
    }
    reasons: dict[str, int] = {}
    for g in groups:
        for r in g.reasons:
            reasons[r] = reasons.get(r, 0) + 1
    for r, k in reasons.items():
        out[f"verifier/{r}"] = k / n
    out.update(spec.signal_metrics(wb.weights, wb.correct, wb.group_index, _scored_log_ratios(groups)))
    topk = [t for g in groups for t in g.teacher_topk if t is not None]
    if topk:  # algorithm.distill=topk: what the teacher sent beyond the sampled tokens' log-probs
        out["teacher/topk_payload_mb"] = sum(t.nbytes for t in topk) / 2**20
    return {k: v for k, v in out.items() if not (isinstance(v, float) and math.isnan(v))}


def _scored_log_ratios(groups: Sequence[RolloutGroup]) -> list[np.ndarray]:
    """Per scored rollout, log pi_old - log pi_scorer of each response token (the
    scorer being the teacher, or GRPO's reference policy)."""
    return [
        r.response_logp.astype(np.float64) - t.astype(np.float64)
        for g in groups
        for r, t in zip(g.rollouts, g.teacher_logp or [])
        if t is not None
    ]


def step_metrics(spec: AlgorithmSpec, wb: WeightedBatch, learner_metrics: dict[str, Any], clock: Any, *,
                 learner_version: int, skipped: bool, step_s: float, train_s: float, sync_s: float,
                 phases: dict[str, float]) -> dict[str, float]:
    """One step's row of ``metrics.jsonl``: :func:`batch_metrics`, the learner's numbers
    (``learner/*``), where the time went (``time/*``: the stream's clock, the learner
    step, the weight push and each named phase) and the policy version after the step.
    ``learner_version`` counts the step's own update unless it was ``skipped``."""
    out = batch_metrics(spec, wb, learner_version=learner_version - (0 if skipped else 1))
    out.update({f"learner/{k}": float(v) for k, v in learner_metrics.items() if _is_number(v)})
    out.update({
        "time/step_s": step_s,
        "time/generate_s": clock.generate_done - clock.first_submit,
        "time/generate_busy_s": clock.generate_calls,
        "time/score_busy_s": clock.score_calls,
        "time/score_tail_s": clock.score_tail_s,
        "time/verify_s": clock.verify_s,
        # rollout.partial_rollouts: samples this step paused, and paused ones it resumed
        "rollout/paused_samples": float(clock.paused_samples),
        "rollout/resumed_samples": float(clock.resumed_samples),
        "time/train_s": train_s,
        "time/sync_s": sync_s,
        "perf/rollout_tokens_per_s": out["rollout/tokens"] / max(step_s, 1e-9),
        "policy_version": float(learner_version),
        **phases,
    })
    return out


def _is_number(v: Any) -> bool:
    return isinstance(v, (int, float, np.floating, np.integer)) or (isinstance(v, torch.Tensor) and v.numel() == 1)
