"""Main loop of a verifier worker process.

Protocol over one duplex pipe per worker (all tuples, pickled by
multiprocessing):

* worker -> parent ``("ready",)`` once imports and warm-up are done, so the
  parent never starts a task's clock while sympy is still importing;
* parent -> worker ``(task_id, answer, ground_truth)``, or ``None`` to exit;
* worker -> parent ``(task_id, reason)``.

The worker is disposable: the parent kills it when a task overruns, so no
state here needs to survive an interruption.
"""

from __future__ import annotations

import logging
import os
import resource
import signal
from collections.abc import Callable
from multiprocessing.connection import Connection

from scope_ray.reward.result import REASONS, Reason

logger = logging.getLogger(__name__)

Judge = Callable[[str, str], Reason]


def _current_address_space() -> int | None:
    try:
        with open("/proc/self/statm", encoding="ascii") as statm:
            pages = int(statm.read().split()[0])
    except (OSError, ValueError, IndexError):
        return None
    return pages * os.sysconf("SC_PAGE_SIZE")


def _limit_memory(extra_bytes: int | None) -> None:
    """Cap the worker's address space at its current size plus ``extra_bytes``.

    A hostile answer that escapes the guards can make sympy build enormous
    integers; with a cap it fails fast with MemoryError (a parse_error)
    instead of pushing the host into swap before the timeout fires. The cap
    is relative because a spawned child re-imports the caller's ``__main__``
    module, whose imports (torch, ...) we do not control.
    """
    if extra_bytes is None:
        return
    current = _current_address_space()
    if current is None:
        return
    _, hard = resource.getrlimit(resource.RLIMIT_AS)
    soft = current + extra_bytes
    if hard != resource.RLIM_INFINITY:
        soft = min(soft, hard)
    try:
        resource.setrlimit(resource.RLIMIT_AS, (soft, hard))
    except (ValueError, OSError):
        logger.warning("could not limit verifier worker memory", exc_info=True)


def _load_judge(judge: Judge | None) -> Judge:
    if judge is not None:
        return judge
    # Imported here, not at module level: the parent imports this module to
    # name the process target and must not pay for sympy.
    from scope_ray.reward.equivalence import judge as default_judge

    return default_judge


def worker_main(conn: Connection, judge: Judge | None, memory_headroom: int | None) -> None:
    """Serve tasks from ``conn`` until told to stop or the parent goes away."""
    # Ctrl-C is delivered to the whole process group; the parent decides
    # when workers stop.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    judge_fn = _load_judge(judge)
    _limit_memory(memory_headroom)
    # Warm-up: the first math-verify call compiles regexes and loads the
    # ANTLR parser (~50 ms); do it before reporting ready.
    judge_fn("1", "1")
    conn.send(("ready",))
    while True:
        try:
            message = conn.recv()
        except (EOFError, OSError):
            return  # parent closed the pipe or died
        if message is None:
            return
        task_id, answer, ground_truth = message
        try:
            reason = judge_fn(answer, ground_truth)
        except Exception:  # noqa: BLE001 - a judge bug must not kill the worker
            logger.exception("verifier judge raised")
            reason = "parse_error"
        if reason not in REASONS:
            logger.error("verifier judge returned invalid reason %r", reason)
            reason = "parse_error"
        try:
            conn.send((task_id, reason))
        except (BrokenPipeError, OSError):
            return
