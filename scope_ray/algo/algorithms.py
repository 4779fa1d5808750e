"""SCOPE, its ablations and the baselines behind one switch (``algorithm.name``).

Each algorithm is a small frozen spec, and everything that depends on the algorithm is
asked of it: which scoring server a run starts (:meth:`AlgorithmSpec.scorer`), which
rollouts it scores (:meth:`~AlgorithmSpec.scored`), the checks a batch must pass before a
learner step (:meth:`~AlgorithmSpec.check_batch`), the per-rollout weights, the
advantages and the loss, and the family's own metrics
(:meth:`~AlgorithmSpec.signal_metrics`). No code outside ``scope_ray/algo/`` branches on
an algorithm. Everything runs through the same two loss functions in
:mod:`scope_ray.algo.losses`.
"""

from __future__ import annotations

import difflib
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

import torch

from scope_ray.algo.losses import Aggregation, grpo_advantages, grpo_loss, scope_loss
from scope_ray.algo.metrics import mean_reverse_kl, reference_kl, weight_stats
from scope_ray.algo.weights import Normalize, scope_weights


@dataclass(frozen=True)
class AlgorithmSpec:
    name: str
    loss: Literal["scope", "grpo"]
    # True: correct rollouts take the MLE path and only incorrect ones go to the teacher.
    # False (opd): every rollout takes the distillation path.
    route_by_reward: bool
    student_weighting: Literal["ppl", "uniform"] = "ppl"
    teacher_weighting: Literal["ppl", "uniform", "reversed"] = "ppl"
    weighted: bool = True
    description: str = ""

    @property
    def needs_teacher(self) -> bool:
        return self.loss == "scope"

    @property
    def needs_reference(self) -> bool:
        return self.loss == "grpo"

    def advantages(self, rewards: torch.Tensor, group_index: torch.Tensor) -> torch.Tensor | None:
        """Group-relative advantages for a policy-gradient loss (GRPO), None for the
        distillation family. Needs whole groups: the learner computes them per shard."""
        return grpo_advantages(rewards, group_index) if self.loss == "grpo" else None

    def scorer(self, kl_beta: float) -> Literal["teacher", "reference"] | None:
        """The scoring server a run starts: the teacher, the frozen initial student
        (GRPO's KL reference, only with ``kl_beta > 0``), or none."""
        if self.needs_teacher:
            return "teacher"
        return "reference" if self.needs_reference and kl_beta > 0 else None

    def scored(self, correct: torch.Tensor, kl_beta: float = 0.0) -> torch.Tensor:
        """Which rollouts the scoring server scores (bool, like ``correct``): SCOPE the
        incorrect ones and OPD all, by the teacher; GRPO all by the reference policy when
        ``kl_beta > 0``, else none."""
        if self.needs_reference:
            return torch.full_like(correct, kl_beta > 0, dtype=torch.bool)
        return needs_teacher_score(self, correct)

    def check_batch(self, correct: torch.Tensor, response_mask: torch.Tensor, teacher_logp: torch.Tensor,
                    ref_logp: torch.Tensor | None, kl_beta: float,
                    teacher_topk_logp: torch.Tensor | None = None) -> None:
        """What the loss would reject, checked before a learner step starts (a rank
        raising mid-step would leave the others waiting). Raises ValueError."""
        if self.needs_teacher:
            distilled = (~distill_path(self, correct))[:, None] & response_mask.bool()
            if not bool(torch.isfinite(teacher_logp[distilled]).all()):
                raise ValueError(f"{self.name}: teacher_logp is missing (NaN) on a response token of a distilled rollout")
            if teacher_topk_logp is not None and not bool(torch.isfinite(teacher_topk_logp[distilled]).all()):
                raise ValueError(f"{self.name}: teacher top-k log-probs are missing on a response token of a "
                                 "distilled rollout")
        elif teacher_topk_logp is not None:
            raise ValueError(f"{self.name} has no distillation path for top-k teacher log-probs")
        elif kl_beta > 0 and ref_logp is None:
            raise ValueError(f"{self.name}: ref_logp is required when kl_beta > 0")

    def signal_metrics(self, weights: torch.Tensor, correct: torch.Tensor, group_index: torch.Tensor,
                       log_ratios: Sequence[Sequence[float]]) -> dict[str, float]:
        """The family's own per-step statistics. ``log_ratios``: per scored rollout,
        log pi_old - log pi_scorer at each response token.

        Distillation: the weights of each path (ESS, entropy, largest weight) and the
        sampled reverse KL to the teacher with the scored rollouts and tokens. GRPO: the
        KL to the reference with the loss's own estimator exp(d) - d - 1.
        """
        out: dict[str, float] = {}
        if self.needs_teacher:
            mle = distill_path(self, correct)
            for path, members in (("correct", mle), ("incorrect", ~mle)):
                for k, v in weight_stats(weights, members, group_index).items():
                    if k != "size":
                        out[f"weights/{path}_{k}"] = v
            if log_ratios:
                out["teacher/reverse_kl"] = mean_reverse_kl(log_ratios)
            out["teacher/scored_rollouts"] = float(len(log_ratios))
            out["teacher/scored_tokens"] = float(sum(len(d) for d in log_ratios))
        elif self.needs_reference and log_ratios:
            out["reference/kl"] = reference_kl(log_ratios)
        return out


ALGORITHMS: dict[str, AlgorithmSpec] = {
    spec.name: spec
    for spec in (
        AlgorithmSpec("scope", "scope", True, description="SCOPE: dual-path, perplexity-weighted (paper)"),
        AlgorithmSpec("opd", "scope", False, weighted=False, description="uniform on-policy distillation"),
        AlgorithmSpec("grpo", "grpo", False, weighted=False, description="GRPO: PPO-clip, group advantage, KL"),
        AlgorithmSpec(
            "scope-no-teacher-weight", "scope", True, teacher_weighting="uniform",
            description="ablation: uniform weights on the incorrect path",
        ),
        AlgorithmSpec(
            "scope-no-student-weight", "scope", True, student_weighting="uniform",
            description="ablation: uniform weights on the correct path",
        ),
        AlgorithmSpec(
            "scope-reversed-teacher", "scope", True, teacher_weighting="reversed",
            description="ablation: teacher weight reversed (favours teacher-unlikely rollouts)",
        ),
        AlgorithmSpec(
            "scope-no-weight", "scope", True, student_weighting="uniform", teacher_weighting="uniform",
            description="ablation: dual path, all weighting removed",
        ),
    )
}


def get_algorithm(name: str) -> AlgorithmSpec:
    try:
        return ALGORITHMS[name]
    except KeyError:
        close = difflib.get_close_matches(name, list(ALGORITHMS), n=1)
        hint = f" (did you mean {close[0]!r}?)" if close else ""
        raise ValueError(f"unknown algorithm {name!r}{hint}; choose from {sorted(ALGORITHMS)}") from None


def needs_teacher_score(spec: AlgorithmSpec, correct: torch.Tensor) -> torch.Tensor:
    """Which rollouts the teacher must score: SCOPE only the incorrect, OPD all, GRPO none."""
    if not spec.needs_teacher:
        return torch.zeros_like(correct, dtype=torch.bool)
    if spec.route_by_reward:
        return ~correct
    return torch.ones_like(correct, dtype=torch.bool)


def distill_path(spec: AlgorithmSpec, correct: torch.Tensor) -> torch.Tensor:
    """The routing the loss sees: True = MLE path. OPD sends everything to distillation."""
    return correct if spec.route_by_reward else torch.zeros_like(correct, dtype=torch.bool)


@torch.no_grad()
def rollout_weights(
    spec: AlgorithmSpec,
    correct: torch.Tensor,
    student_mean_logp: torch.Tensor,
    teacher_mean_logp: torch.Tensor,
    group_index: torch.Tensor,
    *,
    tau: float = 1.0,
    normalize: Normalize = "sum",
) -> torch.Tensor:
    """Per-rollout weights for this algorithm (1 for the unweighted baselines)."""
    if not spec.weighted:
        return torch.ones(correct.shape[0])
    return scope_weights(
        distill_path(spec, correct), student_mean_logp, teacher_mean_logp, group_index,
        tau=tau, normalize=normalize,
        student=spec.student_weighting, teacher=spec.teacher_weighting,
    )


@dataclass
class LossInputs:
    """Everything but the trainable log-probs that a loss needs, for one (micro-)batch."""

    old_logp: torch.Tensor  # [N, T]
    mask: torch.Tensor  # [N, T]
    correct: torch.Tensor  # bool [N], the verifier's verdict
    group_index: torch.Tensor  # int [N]
    weights: torch.Tensor  # [N], from rollout_weights (ignored by grpo)
    rewards: torch.Tensor  # [N]
    teacher_logp: torch.Tensor | None = None  # [N, T], NaN where not scored
    ref_logp: torch.Tensor | None = None  # [N, T], grpo only
    advantages: torch.Tensor | None = None  # [N], grpo only (group stats need the whole group)
    # algorithm.distill=topk: the teacher's k most likely tokens and their log-probs at
    # every response position [N, T, k] (distilled rollouts; anything elsewhere).
    teacher_topk_ids: torch.Tensor | None = None
    teacher_topk_logp: torch.Tensor | None = None


def compute_loss(
    spec: AlgorithmSpec,
    logp: torch.Tensor,
    inputs: LossInputs,
    *,
    aggregation: Aggregation = "sum",
    denominator: float | None = None,
    clip_eps: float = 0.2,
    kl_beta: float = 1e-4,
    topk_logp: torch.Tensor | None = None,
) -> torch.Tensor:
    """The algorithm's loss of ``logp`` (the trained policy's log-probs of the sampled
    tokens); ``topk_logp``: its log-probs at ``inputs.teacher_topk_ids`` (top-k
    distillation, from the same forward pass)."""
    if (topk_logp is None) != (inputs.teacher_topk_logp is None):
        raise ValueError("top-k distillation needs both the teacher's top-k log-probs and the policy's at those ids")
    if spec.loss == "grpo":
        if topk_logp is not None:
            raise ValueError(f"{spec.name} has no distillation path for top-k teacher log-probs")
        adv = inputs.advantages
        if adv is None:
            adv = grpo_advantages(inputs.rewards, inputs.group_index)
        return grpo_loss(
            logp, inputs.old_logp, inputs.ref_logp, inputs.mask, adv, inputs.group_index,
            clip_eps=clip_eps, kl_beta=kl_beta, aggregation=aggregation, denominator=denominator,
        )
    if inputs.teacher_logp is None:
        raise ValueError(f"teacher_logp is required for algorithm {spec.name!r}")
    return scope_loss(
        logp, inputs.old_logp, inputs.teacher_logp, inputs.mask, distill_path(spec, inputs.correct),
        inputs.weights, inputs.group_index, aggregation=aggregation, denominator=denominator,
        student_topk_logp=topk_logp, teacher_topk_logp=inputs.teacher_topk_logp,
    )
