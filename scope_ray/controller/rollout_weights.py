"""The policy weights the rollout workers hold: pushing each new version, and bringing a
restarted worker up to date before it generates again (docs/RELIABILITY.md).

Two transports (``rollout.weight_sync``):

- ``safetensors``: the learner packs its weights into safetensors buckets in its own
  object store; every worker reads that one object. The newest is kept as a ref, so a
  restarted worker is given it without asking the learner again.
- ``broadcast``: the learner's rank 0 broadcasts buckets straight from its parameters to
  every worker's engine over a process group of their own
  (:mod:`scope_ray.engines.weight_broadcast`; gloo on CPU, NCCL on GPU). Both ends must
  be in the collective at once, so a push the trainer does not wait for (max_staleness 1:
  the workers are busy generating) is held back and sent by :meth:`flush`, which the
  trainer calls before it gives the workers new work. A worker that dies (or whose
  receive fails because a peer died) is brought up to date through the safetensors path,
  from a snapshot published for that; the group is rebuilt before the next push.

Ray restarts a dead rollout worker from the initial model dir (policy version 0); it must
not generate again before it has the weights the learner has moved on to.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Sequence
from typing import Any

import ray

from scope_ray.errors import RemoteCallError, first_line

logger = logging.getLogger(__name__)

MODES = ("safetensors", "broadcast")


class RolloutWeights:
    """``workers``, ``learner`` and ``timeouts`` are read at each call (the trainer's live
    handles and its ``TrainerConfig``, with ``sync_timeout_s`` and ``generate_timeout_s``).
    ``learner_version`` gives the policy version of the learner's weights once a train
    step in flight has finished (broadcast mode's snapshot for a restarted worker)."""

    def __init__(self, workers: Callable[[], Sequence[Any]], learner: Callable[[], Any],
                 timeouts: Callable[[], Any], mode: str = "safetensors", bucket_mb: float = 256,
                 learner_version: Callable[[], int] | None = None, tp_size: int = 1) -> None:
        if mode not in MODES:
            raise ValueError(f"unknown weight sync {mode!r} (expected one of {MODES})")
        self._workers, self._learner, self._timeouts = workers, learner, timeouts
        self.mode, self.bucket_mb, self.tp_size = mode, bucket_mb, tp_size
        self._learner_version = learner_version or (lambda: self.latest_version)
        self._pending: list[ray.ObjectRef] = []
        # safetensors: the newest weights sent out; broadcast: (version, ref) published
        # for a restarted worker, dropped at the next broadcast. None: the initial model.
        self.latest: ray.ObjectRef | None = None
        self._snapshot: tuple[int, ray.ObjectRef] | None = None
        self.latest_version = 0  # the version the workers were last sent
        self.recoveries = 0  # weight re-syncs of restarted workers
        self._deferred: int | None = None  # broadcast: a version pushed without waiting
        self._group: tuple[Any, str] | None = None  # (learner group, group id) of the live broadcast group
        self._seconds = 0.0
        self.last_broadcast: dict[str, Any] = {}

    def push(self, version: int, wait: bool) -> None:
        """Send the learner's weights (as ``version``) to every worker.

        safetensors: Ray runs an actor's calls in submission order, so generation submitted
        after this sees the new weights even when we do not wait. Under ``max_staleness =
        1`` we do not wait (the workers are busy with the next step); the calls are checked
        at the next push instead, so a failure still surfaces with the worker's name.
        broadcast: sent now when ``wait``, else at the next :meth:`flush`.
        """
        if self.mode == "broadcast":  # flush() counts its own time
            self.check_pending()
            self._deferred = version
            if wait:
                self.flush()
            return
        t0 = time.perf_counter()
        self.check_pending()
        # The buckets go from the learner's object store to the workers, not via the
        # driver (at 100M parameters 0.52-0.62x the time of fetching and re-putting them).
        self.latest = self._learner().publish_weights(self.bucket_mb, timeout_s=self._timeouts().sync_timeout_s)
        self.latest_version = version
        self._pending = [w.update_weights.remote(self.latest, version) for w in self._workers()]
        if wait:
            self.check_pending()
        self._seconds += time.perf_counter() - t0

    @property
    def held_back(self) -> bool:
        """A broadcast waits to be sent (:meth:`flush`)."""
        return self._deferred is not None

    def flush(self) -> None:
        """broadcast: send a push that was held back. Call it only while no generation of
        the trainer's is queued on the workers (they must all be in the collective)."""
        if self._deferred is None:
            return
        t0 = time.perf_counter()
        version, self._deferred = self._deferred, None
        self._broadcast(version)
        self._seconds += time.perf_counter() - t0

    def take_seconds(self) -> float:
        """Time spent pushing weights since the last call (the step's time/sync_s)."""
        seconds, self._seconds = self._seconds, 0.0
        return seconds

    def check_pending(self) -> None:
        self.flush()
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

    # ------------------------------------------------------------------ broadcast
    def _broadcast(self, version: int) -> None:
        limit = self._timeouts().sync_timeout_s
        learner, workers = self._learner(), list(self._workers())
        self._ensure_group(learner, workers, limit)
        receiving = [w.receive_weights.remote(version) for w in workers]
        # Rank 0's collectives time out after `limit`, so this returns by then; the margin
        # leaves a hang of the learner itself to the learner group (LearnerFailure).
        report = learner.broadcast_weights(self.bucket_mb, timeout_s=limit + 60.0)
        deadline = time.monotonic() + limit
        failed: dict[int, Exception] = {}
        for i, ref in enumerate(receiving):
            try:
                ray.get(ref, timeout=max(deadline - time.monotonic(), 0.1))
            except ray.exceptions.GetTimeoutError as exc:
                self._group = None
                raise RemoteCallError(f"rollout worker {i}: receive_weights() did not return within {limit:.0f} s") from exc
            except Exception as exc:  # noqa: BLE001 - sorted below
                failed[i] = exc
        self.latest_version = version
        self._snapshot = None
        self.last_broadcast = report
        if not failed and "error" not in report:
            return
        self._group = None  # rebuilt before the next push
        died = [i for i, e in failed.items() if isinstance(e, ray.exceptions.RayActorError)]
        if not died:
            i, exc = next(iter(failed.items()), (None, None))
            what = (f"rollout worker {i}: receive_weights() failed: {first_line(exc)}" if exc is not None
                    else f"learner rank 0: broadcast_weights() failed: {report['error']}")
            raise RemoteCallError(what) from exc
        # A worker died mid-update; the others may have lost the sender with it. Each one
        # that did not finish gets the full update through the safetensors path.
        for i in sorted(failed):
            logger.warning("rollout worker %d: receive_weights() failed (%s); sending it the weights as safetensors",
                           i, first_line(failed[i]))
            self.recover(i)

    def _ensure_group(self, learner: Any, workers: list[Any], limit: float) -> None:
        """Every worker and the learner in one live group; (re)built when the learner
        group is not the one it was made with (restored) or a worker has left it
        (restarted, or its last receive failed)."""
        ids = []
        for i, w in enumerate(workers):
            try:
                ids.append(ray.get(w.weight_group.remote(), timeout=limit))
            except ray.exceptions.GetTimeoutError as exc:
                raise RemoteCallError(f"rollout worker {i}: weight_group() did not return within {limit:.0f} s "
                                      "(asked before a weight broadcast)") from exc
            except (ray.exceptions.RayActorError, ray.exceptions.ActorUnavailableError) as exc:
                # Dead or restarting: wait for it; the broadcast that follows brings it up to date.
                logger.warning("rollout worker %d is down before a weight broadcast: %s", i, first_line(exc))
                self._wait_until_up(i, self._timeouts().generate_timeout_s)
                ids.append(None)
        if self._group is not None and self._group[0] is learner and all(i == self._group[1] for i in ids):
            return
        t0 = time.perf_counter()
        self._group = None
        world = 1 + len(workers) * self.tp_size  # every engine rank receives (and loads its shard)
        host, port, backend = learner.host_weight_group(world, timeout_s=limit)
        connecting = learner.connect_weight_group()
        joins = [w.join_weight_group.remote(host, port, 1 + i * self.tp_size, world, backend, limit)
                 for i, w in enumerate(workers)]
        for i, ref in enumerate(joins):
            try:
                ray.get(ref, timeout=limit)
            except ray.exceptions.GetTimeoutError as exc:
                raise RemoteCallError(f"rollout worker {i}: join_weight_group() did not return within {limit:.0f} s") from exc
            except Exception as exc:  # noqa: BLE001 - named and re-raised
                raise RemoteCallError(f"rollout worker {i}: join_weight_group() failed: {first_line(exc)}") from exc
        learner.await_call(connecting, "connect_weight_group", timeout_s=limit)
        self._group = (learner, f"{host}:{port}")
        logger.info("weight-broadcast group of %d ranks ready at %s:%d in %.2f s", world, host, port,
                    time.perf_counter() - t0)

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
        ref, version = self._weights_for_restarted(i, held)
        try:
            ray.get(w.update_weights.remote(ref, version), timeout=t.sync_timeout_s)
        except Exception as exc:  # noqa: BLE001 - named and re-raised
            raise RemoteCallError(f"rollout worker {i}: update_weights() after a restart failed: {first_line(exc)}") from exc
        self.recoveries += 1
        logger.warning("rollout worker %d restarted; gave it the current weights (policy version %d) after %.1f s",
                       i, version, time.perf_counter() - t0)
        return version

    def _weights_for_restarted(self, i: int, held: int) -> tuple[ray.ObjectRef, int]:
        """Safetensors weights of the newest version and that version: the ref every
        worker was sent (safetensors), or a snapshot of the learner's weights published
        for this (broadcast; one per version, however many workers restart)."""
        if self.mode == "safetensors":
            if self.latest is None:
                raise RemoteCallError(f"rollout worker {i} holds policy version {held}, the newest sent is "
                                      f"{self.latest_version}, and there are no weights to send it")
            return self.latest, self.latest_version
        # The learner may be in a train step (max_staleness 1): its weights are read once
        # it is done, as the version they then have (never older than the ones sent out).
        version = self._learner_version()
        if self._snapshot is None or self._snapshot[0] != version:
            ref = self._learner().publish_weights(self.bucket_mb, timeout_s=self._timeouts().sync_timeout_s)
            self._snapshot = (version, ref)
        return self._snapshot[1], version

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
