"""Plain data passed between the controller and the actors (picklable, no tensors).

Token-level values are lists/arrays of the *response* tokens only; prompt tokens carry
no signal. Batches for the learner are built from these by :mod:`scope_ray.learner.batch`.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np


@dataclass
class Rollout:
    """One sampled response of the student."""

    response_ids: list[int]
    # log pi_old(a_t) under the distribution that sampled it (vLLM processed log-probs: tempered).
    response_logp: np.ndarray
    text: str
    finish_reason: str  # "stop", "length", or "paused" (rollout.partial_rollouts: unfinished, to resume)
    policy_version: int  # the weights that generated its tokens (its last segment, if it was resumed)
    # rollout.partial_rollouts: a sample paused in one step and resumed under newer weights
    # in a later one has tokens of two versions; this is the older one (None: one version).
    # response_logp stays exact per token either way (each token's own behaviour policy).
    first_version: int | None = None

    @property
    def oldest_version(self) -> int:
        """The policy version of its oldest token (what staleness is measured from)."""
        return self.policy_version if self.first_version is None else self.first_version


@dataclass
class GenerationRequest:
    """One prompt to sample G responses for."""

    uid: str
    prompt_ids: list[int]
    n: int
    # Sampling seed for this prompt's group (None: the engine's own stream). A per-prompt
    # seed makes a group reproducible whichever worker or batch it lands in (resume).
    seed: int | None = None
    # rollout.partial_rollouts: a paused sample to continue (n must be 1). The engine
    # decodes on from prompt + its tokens, for the max_tokens it has left, and returns the
    # whole sample: its tokens and log-probs followed by the new ones.
    resume: Rollout | None = None


@dataclass
class RolloutGroup:
    """A prompt and its G rollouts, filled in stage by stage by the controller."""

    uid: str
    group_index: int  # unique per prompt within a run; the softmax segment key
    prompt_ids: list[int]
    ground_truth: str
    data_source: str
    rollouts: list[Rollout]
    rewards: list[float] = field(default_factory=list)
    reasons: list[str] = field(default_factory=list)
    # Teacher log-probs of each response token; None where the teacher did not score it.
    teacher_logp: list[np.ndarray | None] = field(default_factory=list)
    # algorithm.distill=topk: the teacher's top-k tokens at each response position.
    teacher_topk: list[TeacherTopK | None] = field(default_factory=list)


@dataclass
class ScoreRequest:
    """Teacher scoring of one sequence: log pi_T of each response token given its prefix."""

    prompt_ids: list[int]
    response_ids: list[int]
    # > 0: also the teacher's k most likely tokens at each response position (top-k
    # distillation); the answer is then a TeacherScore instead of the log-prob array.
    topk: int = 0

    @property
    def num_tokens(self) -> int:
        return len(self.prompt_ids) + len(self.response_ids)


@dataclass
class TeacherTopK:
    """The teacher's k most likely tokens at each response position, most likely first,
    and their log-probs (the teacher's full softmax, at its scoring temperature)."""

    ids: np.ndarray  # int32 [L, k]
    logp: np.ndarray  # float32 [L, k]

    @property
    def nbytes(self) -> int:
        return int(self.ids.nbytes + self.logp.nbytes)


@dataclass
class TeacherScore:
    """What scoring a ScoreRequest with ``topk > 0`` returns."""

    logp: np.ndarray  # float32 [L], the sampled tokens' log-probs (SCOPE's weights use them)
    topk: TeacherTopK
