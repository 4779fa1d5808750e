"""A pool of verifier worker processes with a hard per-task timeout.

Why not ``concurrent.futures.ProcessPoolExecutor`` or ``multiprocessing.Pool``:
neither can stop one running task. Killing a worker breaks the executor, and
``Pool`` leaves the task running. Here every worker has its own pipe, the
parent tracks one deadline per busy worker, and a worker that overruns is
SIGKILLed and replaced while the other workers keep serving. The caller's
thread only blocks in ``multiprocessing.connection.wait``, so this works in
any thread (no signals), which math-verify's own SIGALRM timeout does not.
"""

from __future__ import annotations

import logging
import math
import multiprocessing
import os
import threading
import time
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass
from multiprocessing.connection import Connection, wait
from multiprocessing.process import BaseProcess
from types import TracebackType
from typing import Final, Literal

from scope_ray.reward.result import REASONS, Reason, VerifyResult
from scope_ray.reward.triage import verify_many
from scope_ray.reward.worker import Judge, worker_main

logger = logging.getLogger(__name__)

DEFAULT_TIMEOUT_S: Final[float] = 5.0
MAX_DEFAULT_WORKERS: Final[int] = 8
# A worker that has not imported math-verify by then is considered broken.
DEFAULT_START_TIMEOUT_S: Final[float] = 60.0
# Address space a worker may grow by beyond its size after imports.
DEFAULT_MEMORY_HEADROOM: Final[int] = 2 * 1024**3
# A task whose worker dies is retried this many times on a fresh worker:
# an external kill (OOM killer, operator) should not cost a verdict, while an
# answer that crashes the parser every time still ends as parse_error.
MAX_CRASH_RETRIES: Final[int] = 1
# Consecutive workers dying before "ready" after which we stop respawning
# and raise: the cause (bad environment) will not fix itself.
MAX_START_FAILURES: Final[int] = 3

StartMethod = Literal["spawn", "forkserver"]


def default_num_workers() -> int:
    """Workers for a default pool: the CPUs this process may use, capped."""
    try:
        cpus = len(os.sched_getaffinity(0))
    except AttributeError:  # pragma: no cover - non-Linux
        cpus = os.cpu_count() or 1
    return max(1, min(MAX_DEFAULT_WORKERS, cpus))


@dataclass(eq=False)
class _Slot:
    """One worker process and what it is doing."""

    process: BaseProcess
    conn: Connection
    spawned_at: float
    ready: bool = False
    task: int | None = None  # index in the current batch
    task_id: int = -1
    deadline: float = math.inf


@dataclass(eq=False)
class _Batch:
    """Verdicts of one judge_batch call, filled in as workers answer."""

    results: list[Reason | None]
    remaining: int
    queue: deque[int]
    crashes: dict[int, int]

    def finish(self, slot: _Slot, reason: Reason) -> None:
        assert slot.task is not None
        self.results[slot.task] = reason
        self.remaining -= 1
        slot.task = None
        slot.deadline = math.inf


class VerifierPool:
    """Long-lived worker processes that judge answers under a timeout.

    Thread-safe: calls from several threads are served one batch at a time.
    Use as a context manager, or call :meth:`close`.

    ``judge`` replaces the math-verify comparison in the workers; it must be
    a picklable module-level function. It exists for tests and for callers
    with their own equivalence; model text cannot reach it.
    """

    def __init__(
        self,
        num_workers: int | None = None,
        *,
        start_method: StartMethod = "spawn",
        start_timeout_s: float = DEFAULT_START_TIMEOUT_S,
        memory_headroom_bytes: int | None = DEFAULT_MEMORY_HEADROOM,
        judge: Judge | None = None,
    ) -> None:
        if num_workers is not None and num_workers < 1:
            raise ValueError(f"num_workers must be >= 1, got {num_workers}")
        if start_method not in ("spawn", "forkserver"):
            # fork would copy the caller's threads' locks (Ray, torch) into
            # the child in whatever state they are in.
            raise ValueError(f"start_method must be spawn or forkserver, got {start_method!r}")
        self._ctx = multiprocessing.get_context(start_method)
        self._num_workers = num_workers or default_num_workers()
        self._start_timeout_s = start_timeout_s
        self._memory_headroom = memory_headroom_bytes
        self._judge = judge
        self._lock = threading.Lock()
        self._closed = False
        self._next_task_id = 0
        self._start_failures = 0
        self._slots: list[_Slot] = [self._spawn() for _ in range(self._num_workers)]

    # -- public API -------------------------------------------------------

    @property
    def num_workers(self) -> int:
        return self._num_workers

    @property
    def closed(self) -> bool:
        return self._closed

    def worker_pids(self) -> list[int]:
        """PIDs of the current workers (they change when one is replaced)."""
        with self._lock:
            return [slot.process.pid for slot in self._slots if slot.process.pid is not None]

    def wait_ready(self, timeout_s: float | None = None) -> bool:
        """Block until every worker has started (imports done, warmed up).

        Optional: requests wait for workers anyway. Useful to pay the start-up
        cost before the first training step. Returns ``False`` if
        ``timeout_s`` elapsed first.
        """
        deadline = math.inf if timeout_s is None else time.monotonic() + timeout_s
        with self._lock:
            if self._closed:
                raise RuntimeError("VerifierPool is closed")
            return self._wait_ready(deadline)

    def verify(
        self, response: str, ground_truth: str, *, timeout_s: float = DEFAULT_TIMEOUT_S
    ) -> VerifyResult:
        """Verify one response; see :func:`scope_ray.reward.verify`."""
        return self.verify_batch([response], [ground_truth], timeout_s=timeout_s)[0]

    def verify_batch(
        self,
        responses: Sequence[str],
        ground_truths: Sequence[str],
        *,
        timeout_s: float = DEFAULT_TIMEOUT_S,
    ) -> list[VerifyResult]:
        """Verify many responses in parallel, preserving order."""
        if not timeout_s > 0:
            raise ValueError(f"timeout_s must be positive, got {timeout_s}")
        return verify_many(
            responses,
            ground_truths,
            lambda pairs: self.judge_batch(pairs, timeout_s=timeout_s),
        )

    def judge_batch(
        self, pairs: Sequence[tuple[str, str]], *, timeout_s: float = DEFAULT_TIMEOUT_S
    ) -> list[Reason]:
        """Judge ``(answer, ground_truth)`` pairs in the workers.

        ``timeout_s`` bounds each pair's time in a worker, counted from when
        a ready worker receives it; waiting for a free worker is not counted.
        A pair that overruns is ``"timeout"`` and its worker is replaced. A
        pair whose worker dies is retried once on a fresh worker, then is
        ``"parse_error"``. Raises ``RuntimeError`` if workers cannot start.
        """
        if not timeout_s > 0:
            raise ValueError(f"timeout_s must be positive, got {timeout_s}")
        if not pairs:
            return []
        with self._lock:
            if self._closed:
                raise RuntimeError("VerifierPool is closed")
            try:
                return self._run(pairs, timeout_s)
            except BaseException:
                # Busy workers would answer this abandoned batch later and
                # be misread as answering the next one: replace them.
                for index, slot in enumerate(self._slots):
                    if slot.task is not None:
                        self._replace(index)
                raise

    def close(self) -> None:
        """Stop all workers. Idempotent."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
            for slot in self._slots:
                try:
                    slot.conn.send(None)
                except (OSError, ValueError):
                    pass
            deadline = time.monotonic() + 2.0
            for slot in self._slots:
                slot.process.join(max(0.0, deadline - time.monotonic()))
                self._dispose(slot)
            self._slots = []

    def __enter__(self) -> VerifierPool:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.close()

    # -- worker management --------------------------------------------------

    def _spawn(self) -> _Slot:
        parent_conn, child_conn = self._ctx.Pipe(duplex=True)
        process = self._ctx.Process(
            target=worker_main,
            args=(child_conn, self._judge, self._memory_headroom),
            name="scope-ray-verifier",
            daemon=True,  # never outlive the caller
        )
        process.start()
        # Drop our copy of the child's end so its death reads as EOF.
        child_conn.close()
        return _Slot(process=process, conn=parent_conn, spawned_at=time.monotonic())

    @staticmethod
    def _dispose(slot: _Slot) -> None:
        if slot.process.is_alive():
            slot.process.kill()
            slot.process.join(5.0)
        slot.conn.close()
        try:
            slot.process.close()
        except ValueError:  # still running after SIGKILL + 5 s: leave it to the OS
            logger.warning("verifier worker %s did not exit", slot.process.pid)

    def _replace(self, index: int) -> None:
        self._dispose(self._slots[index])
        self._slots[index] = self._spawn()

    # -- dispatch loop ------------------------------------------------------

    def _run(self, pairs: Sequence[tuple[str, str]], timeout_s: float) -> list[Reason]:
        batch = _Batch(
            results=[None] * len(pairs),
            remaining=len(pairs),
            queue=deque(range(len(pairs))),
            crashes={},
        )
        while batch.remaining:
            self._dispatch(batch, pairs, timeout_s)
            self._poll(batch, until=self._next_wake())
            self._expire(batch, timeout_s)
        verdicts = [reason for reason in batch.results if reason is not None]
        assert len(verdicts) == len(pairs)
        return verdicts

    def _wait_ready(self, deadline: float) -> bool:
        while not all(slot.ready for slot in self._slots):
            if time.monotonic() >= deadline:
                return False
            self._poll(None, until=min(deadline, self._next_wake()))
            self._expire(None, 0.0)
        return True

    def _dispatch(
        self, batch: _Batch, pairs: Sequence[tuple[str, str]], timeout_s: float
    ) -> None:
        """Hand queued pairs to idle, ready workers and start their clocks."""
        for index, slot in enumerate(self._slots):
            if not batch.queue:
                return
            if not slot.ready or slot.task is not None:
                continue
            task = batch.queue.popleft()
            self._next_task_id += 1
            try:
                slot.conn.send((self._next_task_id, *pairs[task]))
            except (OSError, ValueError):
                batch.queue.appendleft(task)  # the worker died while idle
                self._replace(index)
                continue
            slot.task, slot.task_id = task, self._next_task_id
            slot.deadline = time.monotonic() + timeout_s

    def _next_wake(self) -> float:
        """Earliest task deadline or start deadline among the workers."""
        return min(
            slot.deadline if slot.ready else slot.spawned_at + self._start_timeout_s
            for slot in self._slots
        )

    def _poll(self, batch: _Batch | None, *, until: float) -> None:
        """Wait until ``until`` for workers to speak; handle what they say.

        ``batch`` is ``None`` when no task is in flight (only readiness and
        deaths can arrive).
        """
        timeout = None if math.isinf(until) else max(0.0, until - time.monotonic())
        readable = wait([slot.conn for slot in self._slots], timeout=timeout)
        for index, slot in enumerate(list(self._slots)):
            if slot.conn not in readable:
                continue
            try:
                message = slot.conn.recv()
            except (EOFError, OSError):
                self._on_death(index, slot, batch)
                continue
            if message == ("ready",):
                slot.ready = True
                self._start_failures = 0
                continue
            task_id, reason = message
            if batch is None or slot.task is None or task_id != slot.task_id:
                # Cannot happen with one pipe per worker; if it ever does,
                # trust neither the reply nor the worker.
                logger.error("verifier worker sent a stale reply; replacing it")
                if batch is not None and slot.task is not None:
                    batch.queue.appendleft(slot.task)
                self._replace(index)
                continue
            if reason not in REASONS:
                logger.error("verifier worker sent invalid reason %r", reason)
                reason = "parse_error"
            batch.finish(slot, reason)

    def _expire(self, batch: _Batch | None, timeout_s: float) -> None:
        """Kill workers whose task overran, or that never became ready."""
        now = time.monotonic()
        for index, slot in enumerate(list(self._slots)):
            if batch is not None and slot.task is not None and now >= slot.deadline:
                logger.warning(
                    "verification exceeded %.3g s; killing worker %s",
                    timeout_s,
                    slot.process.pid,
                )
                batch.finish(slot, "timeout")
                self._replace(index)
            elif not slot.ready and now >= slot.spawned_at + self._start_timeout_s:
                logger.error(
                    "verifier worker %s not ready after %.0f s",
                    slot.process.pid,
                    self._start_timeout_s,
                )
                self._replace(index)
                self._count_start_failure()

    def _on_death(self, index: int, slot: _Slot, batch: _Batch | None) -> None:
        if batch is not None and slot.task is not None:
            task = slot.task
            crashes = batch.crashes.get(task, 0) + 1
            batch.crashes[task] = crashes
            slot.process.join(1.0)  # reap it so the exit code is known
            logger.warning(
                "verifier worker %s died while verifying (exit code %s, crash %d)",
                slot.process.pid,
                slot.process.exitcode,
                crashes,
            )
            if crashes > MAX_CRASH_RETRIES:
                batch.finish(slot, "parse_error")
            else:
                slot.task = None
                batch.queue.appendleft(task)
            self._replace(index)
        elif not slot.ready:
            self._replace(index)
            self._count_start_failure()
        else:
            self._replace(index)

    def _count_start_failure(self) -> None:
        self._start_failures += 1
        if self._start_failures >= MAX_START_FAILURES:
            self._start_failures = 0
            raise RuntimeError(
                "verifier workers keep failing to start; see their stderr "
                "(is math-verify installed? does the main module guard its "
                "code with `if __name__ == '__main__'`, as spawn requires?)"
            )
