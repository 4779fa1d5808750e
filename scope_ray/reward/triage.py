"""Everything decided in the caller, before (and instead of) the worker pool.

``triage`` extracts the boxed answer, applies the cheap guards and the
plain-number fast path. Only what survives all three becomes a ``Pending``
pair for the pool. All of it is bounded string work, so it is safe to run
on untrusted text in the controller process.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from scope_ray.reward.extract import extract_boxed
from scope_ray.reward.fastpath import fast_verdict
from scope_ray.reward.guards import refusal_reason
from scope_ray.reward.result import Reason, VerifyResult

logger = logging.getLogger(__name__)

# Judges a list of (answer, ground_truth) pairs, one verdict per pair in order.
JudgeMany = Callable[[list[tuple[str, str]]], list[Reason]]


@dataclass(frozen=True, slots=True)
class Pending:
    """An answer that needs the full (worker-side) math comparison."""

    answer: str
    ground_truth: str


def normalize_ground_truth(ground_truth: str) -> str:
    """Accept either a bare answer or a solution text ending in ``\\boxed``."""
    extraction = extract_boxed(ground_truth)
    if extraction.status == "found" and extraction.answer is not None:
        return extraction.answer.strip()
    return ground_truth.strip()


def triage(response: str, ground_truth: str) -> VerifyResult | Pending:
    """Return the final verdict if it can be decided cheaply, else ``Pending``."""
    extraction = extract_boxed(response)
    if extraction.status in ("missing", "unbalanced"):
        return VerifyResult.of("no_answer")
    if extraction.status == "too_long" or extraction.answer is None:
        return VerifyResult.of("parse_error")
    answer = extraction.answer.strip()
    if not answer:
        # \boxed{} : the model committed to no answer at all.
        return VerifyResult.of("no_answer", answer)

    refusal = refusal_reason(answer)
    if refusal is not None:
        logger.debug("refusing to parse answer (%s): %.100r", refusal, answer)
        return VerifyResult.of("parse_error", answer)

    gold = normalize_ground_truth(ground_truth)
    if not gold:
        logger.warning("empty ground truth %r; verdict parse_error", ground_truth)
        return VerifyResult.of("parse_error", answer)

    fast = fast_verdict(answer, gold)
    if fast is not None:
        return VerifyResult.of(fast, answer)
    return Pending(answer, gold)


def verify_many(
    responses: Sequence[str],
    ground_truths: Sequence[str],
    judge_many: JudgeMany,
) -> list[VerifyResult]:
    """Triage every pair; send only the undecided ones to ``judge_many``.

    ``judge_many`` is not called at all when nothing is pending, so a batch
    of plain integers never touches (or even creates) a worker pool.
    """
    if len(responses) != len(ground_truths):
        raise ValueError(
            f"{len(responses)} responses but {len(ground_truths)} ground truths"
        )
    triaged = [triage(r, g) for r, g in zip(responses, ground_truths, strict=True)]
    pending = [(i, t) for i, t in enumerate(triaged) if isinstance(t, Pending)]
    if not pending:
        return [t for t in triaged if isinstance(t, VerifyResult)]

    reasons = judge_many([(p.answer, p.ground_truth) for _, p in pending])
    if len(reasons) != len(pending):
        raise RuntimeError("judge returned the wrong number of verdicts")
    results: list[VerifyResult] = []
    verdicts = {i: VerifyResult.of(reason, p.answer) for (i, p), reason in zip(pending, reasons)}
    for i, t in enumerate(triaged):
        results.append(t if isinstance(t, VerifyResult) else verdicts[i])
    return results
