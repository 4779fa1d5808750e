"""The errors a run can stop with, in one place, and how a remote failure is told in one line.

- :class:`ConfigError`: bad input, found before Ray starts (CLI exit 2);
- :class:`RemoteCallError`: a rollout worker or teacher call failed or hung past its timeout;
- :class:`LearnerFailure`: a learner call failed, hung, or a rank died;
- :class:`TrainingStopped`: the run stopped on purpose, naming the cause and the
  checkpoint to continue from (CLI exit 3).

A Ray task error's ``str`` is the whole remote traceback (and vLLM appends a dump of its
scheduler state, ~50 KB, to some engine errors): the full text belongs in ``train.log``
and the exception chain, the terminal gets the remote exception's type and first line
(:func:`first_line`).
"""

from __future__ import annotations

import sys


class ConfigError(ValueError):
    """A configuration problem; the message names the key (or file)."""


class RemoteCallError(RuntimeError):
    """A remote call failed or timed out; the message names the actor and the call."""


class LearnerFailure(RuntimeError):
    """A learner call failed, hung past its timeout, or a rank died.

    The message names the rank and the call. The group is unusable afterwards (the
    surviving ranks may be stuck in a collective): stop, or build a new group and load
    a checkpoint (``trainer.on_learner_failure``).
    """

    def __init__(self, message: str, *, rank: int | None, call: str) -> None:
        super().__init__(message)
        self.rank = rank
        self.call = call


class TrainingStopped(RuntimeError):
    """The run stopped on purpose (e.g. repeated non-finite steps, a learner failure, a
    stop signal); the message names the cause and the last checkpoint, which is intact."""


def first_line(exc: BaseException) -> str:
    """``"ValueError: what went wrong"`` for a Ray task error (the remote exception, not
    Ray's header naming the actor), else the exception's own first line."""
    ray = sys.modules.get("ray")
    prefix = ""
    if (ray is not None and isinstance(exc, ray.exceptions.RayActorError) and exc.args
            and isinstance(exc.args[0], ray.exceptions.RayTaskError)):
        exc = exc.args[0]  # an actor whose __init__ raised: the error it raised
    if ray is not None and isinstance(exc, ray.exceptions.RayTaskError) and exc.cause is not None:
        exc = exc.cause
        prefix = f"{type(exc).__name__}: "
    text = str(exc).strip().splitlines()
    line = text[0] if text else type(exc).__name__
    return prefix + (line if len(line) <= 500 else line[:500] + " ...")
