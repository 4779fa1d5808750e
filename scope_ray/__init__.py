"""scope-ray: SCOPE (signal-calibrated on-policy distillation) on Ray.

The algorithm lives in :mod:`scope_ray.algo` as pure torch functions; the data path in
:mod:`scope_ray.data`; answer checking in :mod:`scope_ray.reward`; the controller that
orders rollouts, teacher scoring and learner steps in :mod:`scope_ray.controller`.
"""

__version__ = "0.1.0"
