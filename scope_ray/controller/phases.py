"""Named, timed phases of a training step, so the loop reads as the order of things
and each phase's time lands in the step's metrics (``time/phase_<name>_s``: rollouts,
weigh, train, push; the finer ``time/generate_s``, ``time/train_s``, ``time/sync_s`` ...
stay as they were)."""

from __future__ import annotations

import logging
import time
from collections.abc import Iterator
from contextlib import contextmanager

logger = logging.getLogger(__name__)


class Phases:
    def __init__(self, step: int) -> None:
        self.step = step
        self.seconds: dict[str, float] = {}

    @contextmanager
    def __call__(self, name: str) -> Iterator[None]:
        t0 = time.perf_counter()
        try:
            yield
        finally:
            self.seconds[name] = self.seconds.get(name, 0.0) + time.perf_counter() - t0
            logger.debug("step %d: %s %.3f s", self.step, name, self.seconds[name])

    def metrics(self) -> dict[str, float]:
        return {f"time/phase_{name}_s": s for name, s in self.seconds.items()}
