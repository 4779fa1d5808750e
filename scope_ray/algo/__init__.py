"""The SCOPE algorithm as pure torch functions (no Ray, no model code).

Start here: :func:`scope_weights` (Eq. 4-5), :func:`scope_loss` (Eq. 6) and the
:data:`ALGORITHMS` registry that puts SCOPE, its ablations, OPD and GRPO behind one
switch.
"""

from scope_ray.algo.algorithms import (
    ALGORITHMS,
    AlgorithmSpec,
    LossInputs,
    compute_loss,
    distill_path,
    get_algorithm,
    needs_teacher_score,
    rollout_weights,
)
from scope_ray.algo.losses import (AGGREGATIONS, grpo_advantages, grpo_loss, importance_ratio, loss_denominator,
                                   scope_loss)
from scope_ray.algo.metrics import (mean_avg_at_k, mean_pass_at_k, mean_reverse_kl, pass_at_k, reference_kl,
                                    weight_stats)
from scope_ray.algo.weights import NORMALIZE_MODES, scope_weights, sequence_mean_logprob

__all__ = [
    "loss_denominator",
    "AGGREGATIONS", "ALGORITHMS", "AlgorithmSpec", "LossInputs", "NORMALIZE_MODES",
    "compute_loss", "distill_path", "get_algorithm", "grpo_advantages", "grpo_loss",
    "importance_ratio", "mean_avg_at_k", "mean_pass_at_k", "mean_reverse_kl", "reference_kl",
    "needs_teacher_score", "pass_at_k", "rollout_weights", "scope_loss", "scope_weights",
    "sequence_mean_logprob", "weight_stats",
]
