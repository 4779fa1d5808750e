"""What the trainer does when a learner call fails (``trainer.on_learner_failure``,
docs/RELIABILITY.md): stop with one line naming the failure and the last checkpoint, or
(``restore``) replace the learner group, load that checkpoint and carry on, at most
``trainer.actor_max_restarts`` times."""

from __future__ import annotations

import logging
import time
from typing import Any

from scope_ray.controller import checkpoint as ckpt
from scope_ray.errors import TrainingStopped

logger = logging.getLogger(__name__)


def handle_learner_failure(trainer: Any, exc: Exception) -> None:
    """Stop with a message naming the failure and the last checkpoint, or (policy
    ``restore``) replace the learner group and continue from that checkpoint."""
    t = trainer.cfg.trainer
    last = ckpt.latest_valid(trainer.run_dir)
    where = f"last checkpoint: {last.path}" if last is not None else "no checkpoint written yet"
    can_restore = last is not None and trainer.parts.make_learner is not None
    if t.on_learner_failure == "restore" and can_restore and trainer.learner_restores < t.actor_max_restarts:
        assert last is not None and trainer.parts.make_learner is not None
        trainer.learner_restores += 1
        logger.error("%s; restoring the learner group from %s (restore %d of at most %d)",
                     exc, last.path, trainer.learner_restores, t.actor_max_restarts)
        t0 = time.perf_counter()
        try:
            trainer.parts.learner.shutdown()
        except Exception as down:  # noqa: BLE001 - the old group is being discarded anyway
            logger.warning("shutting down the failed learner group: %s", down)
        trainer._fresh_executor()
        try:
            trainer.parts.learner = trainer.parts.make_learner()
            trainer._restore(last)
        except Exception as again:  # noqa: BLE001 - becomes the stop message
            raise TrainingStopped(f"learner failed ({exc}) and restoring it from {last.path} failed too: "
                                  f"{again}") from again
        trainer.log.truncate(last.step)
        logger.warning("learner group restored at step %d in %.1f s", trainer.step, time.perf_counter() - t0)
        return
    why = ""
    if t.on_learner_failure == "restore":
        why = (" (no checkpoint to restore from)" if not can_restore
               else f" (no restore left: trainer.actor_max_restarts is {t.actor_max_restarts})")
    hint = f"; continue with: scope-ray train --resume {trainer.run_dir}" if last is not None else ""
    # The step counter moves on once the learner has trained; the weight export and the
    # checkpoint come after that, so they failed *after* the step, not in the next one.
    during_step = getattr(exc, "call", "train_step") in ("train_step", "compute_logprobs")
    when = f"at step {trainer.step + 1}" if during_step else f"after step {trainer.step}"
    raise TrainingStopped(f"learner failed {when}: {exc}. Stopped{why}; {where}{hint}") from exc
