"""The learner's step logic, Ray-free: DeepSpeed engine set-up, the SCOPE train step
with exact data-parallel / micro-batch gradient equivalence, weight export and saving.

:mod:`actors.learner` wraps :class:`LearnerCore` in a Ray actor and groups N of them
into one ZeRO data-parallel group.
"""

from scope_ray.learner.core import LearnerCore
from scope_ray.learner.metrics import merge_step_metrics
from scope_ray.learner.options import LearnerOptions

__all__ = ["LearnerCore", "LearnerOptions", "merge_step_metrics"]
