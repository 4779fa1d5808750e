"""Module-level ``verify`` / ``verify_batch`` backed by a lazily created pool.

The default pool is created on the first answer that needs the full math
comparison, never for plain-number answers, so a process that only sees
integer answers never starts a worker.
"""

from __future__ import annotations

import atexit
import logging
import threading
from collections.abc import Sequence

from scope_ray.reward.pool import DEFAULT_TIMEOUT_S, VerifierPool, default_num_workers
from scope_ray.reward.result import VerifyResult
from scope_ray.reward.triage import verify_many

logger = logging.getLogger(__name__)

_default_pool: VerifierPool | None = None
_default_pool_lock = threading.Lock()


def get_default_pool(num_workers: int | None = None) -> VerifierPool:
    """Return the shared pool, creating it on first use.

    ``num_workers=None`` keeps whatever pool exists. A different explicit
    ``num_workers`` replaces the pool (its workers are stopped), so pass it
    consistently or build your own :class:`VerifierPool`.
    """
    global _default_pool
    with _default_pool_lock:
        pool = _default_pool
        wanted = num_workers or (pool.num_workers if pool else default_num_workers())
        if pool is not None and not pool.closed and pool.num_workers == wanted:
            return pool
        if pool is not None:
            logger.info("resizing default verifier pool to %d workers", wanted)
            pool.close()
        _default_pool = VerifierPool(wanted)
        return _default_pool


def close_default_pool() -> None:
    """Stop the shared pool's workers (it is recreated on next use)."""
    global _default_pool
    with _default_pool_lock:
        if _default_pool is not None:
            _default_pool.close()
            _default_pool = None


atexit.register(close_default_pool)


def verify(
    response: str, ground_truth: str, *, timeout_s: float = DEFAULT_TIMEOUT_S
) -> VerifyResult:
    r"""Check the last ``\boxed{}`` answer of ``response`` against ``ground_truth``.

    Never raises on model text and never evaluates it as code. Plain numbers
    are compared in this process; anything else is compared with math-verify
    in a worker process that is killed after ``timeout_s`` seconds (verdict
    ``"timeout"``).
    """
    return verify_batch([response], [ground_truth], timeout_s=timeout_s)[0]


def verify_batch(
    responses: Sequence[str],
    ground_truths: Sequence[str],
    *,
    timeout_s: float = DEFAULT_TIMEOUT_S,
    num_workers: int | None = None,
) -> list[VerifyResult]:
    """Verify many responses in parallel on the default pool, preserving order.

    ``timeout_s`` bounds each answer's time in a worker; ``num_workers``
    sizes the default pool (see :func:`get_default_pool`).
    """
    if not timeout_s > 0:
        raise ValueError(f"timeout_s must be positive, got {timeout_s}")
    return verify_many(
        responses,
        ground_truths,
        lambda pairs: get_default_pool(num_workers).judge_batch(pairs, timeout_s=timeout_s),
    )
