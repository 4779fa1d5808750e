"""Shared plumbing of the bench scripts (not a benchmark itself), one job per module.

- :func:`prepare_inputs`: random-init tiny Qwen2 student and teacher
  (:mod:`scope_ray.bootstrap.models`) and a synthetic task (:mod:`scope_ray.data.synthetic`),
  cached under the work directory by their options, so every script and every repetition
  does the same work with the same models, prompts and seeds.
- :class:`Cluster`: the actors of one job started *once* (local Ray, in this process), and
  :meth:`Cluster.trial` runs a whole ``Trainer`` on them. Before every trial the learner
  is reloaded from a checkpoint taken at start (weights and optimizer), the rollout
  workers get those weights back as policy version 0, and the prompt sampler is rewound:
  every trial does the same work, and A/B/A/B repetitions cost no actor start-up.
- Busy time per stage, measured on the actor side: Ray's task timeline gives the
  execution span of every ``generate`` / ``update_weights`` / ``train_step`` /
  ``export_weights`` call, and the teacher's ``stats()['forward_s']`` (polled after each
  step) its compute time. Step boundaries are the times the trainer's progress callback
  fires.
- :func:`machine_info`: cores and ``uptime`` load, recorded with every figure (this is a
  shared machine: only ratios measured side by side in one run mean anything).

Modules: ``results`` (paths, machine info, JSON output, medians), ``inputs`` (models and
task), ``spans`` (intervals, Ray's timeline), ``trials`` (the cluster, trials, stage busy
times). The scripts import every name from this package.
"""

from _common.inputs import *  # noqa: F403
from _common.results import *  # noqa: F403
from _common.spans import *  # noqa: F403
from _common.trials import *  # noqa: F403
