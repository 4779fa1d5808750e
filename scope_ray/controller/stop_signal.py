"""SIGTERM / SIGINT on the driver: finish the step in progress, checkpoint, stop.

A scheduler that preempts a job (Kubernetes, Slurm, ``ray job stop``) sends SIGTERM and
kills a little later; a user presses Ctrl-C. Either way the steps already trained must
not be lost: the trainer checks :attr:`StopRequest.signal` after each step, saves a
checkpoint and stops with exit code 3 and the ``--resume`` command. A second signal
while that happens goes to the handler that was there before (Ray's SIGTERM handler
exits, SIGINT raises KeyboardInterrupt), so an impatient user is never stuck.
"""

from __future__ import annotations

import logging
import signal
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from types import FrameType
from typing import Any

logger = logging.getLogger(__name__)

SIGNALS = (signal.SIGTERM, signal.SIGINT)


class StopRequest:
    """The first stop signal received (its name), or None."""

    def __init__(self) -> None:
        self.signal: str | None = None
        self._previous: dict[int, Any] = {}

    def _handle(self, signum: int, frame: FrameType | None) -> None:
        name = signal.Signals(signum).name
        if self.signal is not None:
            # Second signal: stop waiting for the step to end.
            signal.signal(signum, self._previous.get(signum, signal.SIG_DFL))
            signal.raise_signal(signum)
            return
        self.signal = name
        logger.warning("%s received: finishing the current step, then saving a checkpoint and stopping "
                       "(send it again to stop at once)", name)


@contextmanager
def catch_stop_signals() -> Iterator[StopRequest]:
    """Install the handlers for the duration of a run (main thread only: elsewhere,
    e.g. a run started from a notebook thread, signals keep their handlers)."""
    request = StopRequest()
    if threading.current_thread() is not threading.main_thread():
        yield request
        return
    request._previous = {s: signal.signal(s, request._handle) for s in SIGNALS}
    try:
        yield request
    finally:
        for s, handler in request._previous.items():
            signal.signal(s, handler)
