"""How a remote failure is told in one line.

A Ray task error's ``str`` is the whole remote traceback (and vLLM appends a dump of its
scheduler state, ~50 KB, to some engine errors): the full text belongs in ``train.log``
and the exception chain, the terminal gets the remote exception's type and first line.
"""

from __future__ import annotations

import sys


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
