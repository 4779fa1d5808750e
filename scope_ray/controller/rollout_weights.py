"""The policy weights the rollout workers hold: pushing each new version, and bringing a
restarted worker up to date before it generates again (docs/RELIABILITY.md).

Ray restarts a dead rollout worker from the initial model dir (policy version 0). The
newest weights sent out are kept as one object-store ref, so a restarted worker can be
given them without asking the learner again.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Sequence
from typing import Any

import ray

from scope_ray.errors import RemoteCallError, first_line

logger = logging.getLogger(__name__)


class RolloutWeights:
    """``workers`` and ``timeouts`` are read at each call (the trainer's live handles and
    its ``TrainerConfig``, with ``sync_timeout_s`` and ``generate_timeout_s``)."""

    def __init__(self, workers: Callable[[], Sequence[Any]], timeouts: Callable[[], Any]) -> None:
        self._workers = workers
        self._timeouts = timeouts
        self._pending: list[ray.ObjectRef] = []
        self.latest: ray.ObjectRef | None = None  # None: the workers still hold the initial model
        self.latest_version = 0  # the version those weights carry
        self.recoveries = 0  # weight re-syncs of restarted workers

    def push(self, learner: Any, version: int, bucket_mb: float, wait: bool) -> None:
        """Send the learner's weights (as ``version``) to every worker.

        Ray runs an actor's calls in submission order, so generation submitted after this
        sees the new weights even when we do not wait. Under ``max_staleness = 1`` we do
        not wait (the workers are busy with the next step); the calls are checked at the
        next push instead, so a failure still surfaces with the worker's name.
        """
        self.check_pending()
        # The buckets go from the learner's object store to the workers, not via the driver
        # (at 100M parameters this took 0.52-0.62x the time of fetching and re-putting them).
        self.latest = learner.publish_weights(bucket_mb, timeout_s=self._timeouts().sync_timeout_s)
        self.latest_version = version
        self._pending = [w.update_weights.remote(self.latest, version) for w in self._workers()]
        if wait:
            self.check_pending()

    def check_pending(self) -> None:
        timeout = self._timeouts().sync_timeout_s
        pending, self._pending = self._pending, []
        for i, ref in enumerate(pending):
            try:
                ray.get(ref, timeout=timeout)
            except ray.exceptions.GetTimeoutError as exc:
                raise RemoteCallError(f"rollout worker {i}: update_weights() did not return within {timeout:.0f} s") from exc
            except ray.exceptions.RayActorError as exc:
                # Died while loading: Ray restarts it from the initial model; catch it up.
                logger.warning("rollout worker %d died during update_weights(): %s", i, first_line(exc))
                self.recover(i)
            except Exception as exc:  # noqa: BLE001 - named and re-raised
                raise RemoteCallError(f"rollout worker {i}: update_weights() failed: {first_line(exc)}") from exc

    def recover(self, i: int) -> int:
        """Wait for worker ``i`` to be up (Ray restarts a dead one), give it the newest
        weights if it lacks them, and return the policy version it holds.

        A restarted worker loads the initial model dir, i.e. version 0; it must not
        generate again before it has the weights the learner has moved on to.
        """
        t = self._timeouts()
        w = self._workers()[i]
        t0 = time.perf_counter()
        held = self._wait_until_up(i, t.generate_timeout_s)
        if held == self.latest_version:
            return held
        if self.latest is None:
            raise RemoteCallError(f"rollout worker {i} holds policy version {held}, the newest sent is "
                                  f"{self.latest_version}, and there are no weights to send it")
        try:
            ray.get(w.update_weights.remote(self.latest, self.latest_version), timeout=t.sync_timeout_s)
        except Exception as exc:  # noqa: BLE001 - named and re-raised
            raise RemoteCallError(f"rollout worker {i}: update_weights() after a restart failed: {first_line(exc)}") from exc
        self.recoveries += 1
        logger.warning("rollout worker %d restarted; gave it the current weights (policy version %d) after %.1f s",
                       i, self.latest_version, time.perf_counter() - t0)
        return self.latest_version

    def _wait_until_up(self, i: int, limit: float) -> int:
        """Worker ``i``'s policy version once it answers; a restarting actor refuses
        calls ("unavailable") until its __init__ is done, a dead one for good."""
        w = self._workers()[i]
        deadline = time.monotonic() + limit
        while True:
            remaining = deadline - time.monotonic()
            try:
                return int(ray.get(w.version.remote(), timeout=max(remaining, 0.1)))
            except ray.exceptions.GetTimeoutError as exc:
                raise RemoteCallError(f"rollout worker {i}: not back within {limit:.0f} s") from exc
            except ray.exceptions.ActorUnavailableError as exc:
                if remaining <= 0:
                    raise RemoteCallError(f"rollout worker {i}: not back within {limit:.0f} s") from exc
                time.sleep(0.5)
            except ray.exceptions.RayActorError as exc:
                raise RemoteCallError(f"rollout worker {i}: dead and not restarted ({first_line(exc)})") from exc
