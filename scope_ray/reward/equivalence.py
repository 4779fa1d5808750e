r"""Mathematical equivalence through math-verify. Runs ONLY in pool workers.

This module imports sympy (slow to import, and its evaluation is unbounded in
time), so the caller never imports it: the worker process does, and the pool
bounds each call by killing the worker.

Safety: both sides are parsed with math-verify's *LaTeX* extraction only.
Its default extraction config also enables ``ExprExtractionConfig``, which
hands text to ``sympy.parse_expr`` (an ``eval``); that must never see model
text, so it is not used, for the ground truth either.
"""

from __future__ import annotations

import functools
import logging
from typing import Any, Final

from math_verify import LatexExtractionConfig, parse, verify
from sympy import Basic, MatrixBase

from scope_ray.reward.result import Reason

logger = logging.getLogger(__name__)

# boxed_match_priority=0: we hand over exactly one \boxed{...} that we built,
# so the boxed pattern is the one that should match.
_LATEX_ONLY: Final[tuple[LatexExtractionConfig, ...]] = (
    LatexExtractionConfig(boxed_match_priority=0),
)


def _silence_timeout_warning() -> None:
    """Mark math-verify's "timeout disabled" warning as already shown.

    We pass ``parsing_timeout=None`` / ``timeout_seconds=None`` on purpose:
    math-verify's timeouts use SIGALRM, which only works in the main thread,
    and our pool enforces time limits by killing the worker instead. The flag
    is module state in math-verify; if a future version renames it, the only
    effect is one warning per worker.
    """
    import math_verify.grader as grader
    import math_verify.parser as parser

    grader.TIMEOUT_WARNING_SHOWN = True
    parser.TIMEOUT_WARNING_SHOWN = True


_silence_timeout_warning()


def _parse_latex(latex: str) -> list[Any]:
    # first_match fallback keeps the raw string next to the sympy object, so
    # two identical strings that sympy cannot read (\text{Monday}) still
    # compare equal; the judge below treats a string-only parse as an error.
    return parse(
        f"\\boxed{{{latex}}}",
        extraction_config=_LATEX_ONLY,
        fallback_mode="first_match",
        parsing_timeout=None,  # type: ignore[arg-type]  # None disables SIGALRM
    )


@functools.lru_cache(maxsize=1024)
def _parse_gold(ground_truth: str) -> tuple[Any, ...]:
    # Ground truths repeat across the samples of one prompt; parse once.
    return tuple(_parse_latex(ground_truth))


def _has_math(parsed: list[Any] | tuple[Any, ...]) -> bool:
    return any(isinstance(item, (Basic, MatrixBase)) for item in parsed)


def judge(answer: str, ground_truth: str) -> Reason:
    """Compare an extracted answer with the ground truth.

    Returns ``"correct"``, ``"wrong"`` or ``"parse_error"``. Never raises for
    bad input: any parser failure is a ``parse_error``.
    """
    try:
        gold = _parse_gold(ground_truth)
        if not gold:
            logger.warning("ground truth could not be parsed: %.200r", ground_truth)
            return "parse_error"
        predicted = _parse_latex(answer)
        if not predicted:
            return "parse_error"
        if verify(list(gold), predicted, timeout_seconds=None):
            return "correct"
        return "wrong" if _has_math(predicted) else "parse_error"
    except Exception:  # noqa: BLE001 - untrusted input: every failure is a verdict
        logger.debug("math-verify failed on %.200r", answer, exc_info=True)
        return "parse_error"
