"""Plain-number comparison done in the caller, without sympy or a worker.

The controller verifies thousands of answers per step and most ground
truths are integers, so ``42`` vs ``42`` must cost microseconds. Everything
here is string work on inputs capped at ``MAX_FAST_CHARS``, with regexes that
have no nested quantifiers, so it cannot hang on model text.
"""

from __future__ import annotations

import re
from decimal import Decimal, InvalidOperation
from typing import Final

from scope_ray.reward.result import Reason

# Longer strings are not "plain numbers" worth special-casing; they go to
# the worker pool, where time is bounded.
MAX_FAST_CHARS: Final[int] = 64

_NUMBER: Final[re.Pattern[str]] = re.compile(r"[+-]?(?:\d+(?:\.\d*)?|\.\d+)")
# 1,000 or 12,345,678.9: thousands separators only in groups of three, so
# that "1,2" (a pair) is not read as 12.
_GROUPED: Final[re.Pattern[str]] = re.compile(r"[+-]?\d{1,3}(?:,\d{3})+(?:\.\d+)?")
# TeX spacing and grouping that models put inside numbers: 1{,}000, 1\,000.
_TEX_NOISE: Final[tuple[str, ...]] = ("{,}", "\\,", "\\!", "\\ ", "~")


def parse_plain_number(text: str) -> Decimal | None:
    """Return the value of ``text`` if it is a plain decimal literal."""
    if len(text) > MAX_FAST_CHARS:
        return None
    candidate = text.strip()
    if len(candidate) >= 2 and candidate[0] == "$" and candidate[-1] == "$":
        candidate = candidate.strip("$").strip()
    for noise in _TEX_NOISE:
        if noise == "{,}":
            candidate = candidate.replace(noise, ",")
        else:
            candidate = candidate.replace(noise, "")
    if _GROUPED.fullmatch(candidate):
        candidate = candidate.replace(",", "")
    if not _NUMBER.fullmatch(candidate):
        return None
    try:
        return Decimal(candidate)
    except InvalidOperation:  # pragma: no cover - the regex admits only valid literals
        return None


def _is_integer_literal(text: str) -> bool:
    return "." not in text


def fast_verdict(answer: str, ground_truth: str) -> Reason | None:
    """Decide ``answer`` vs ``ground_truth`` if both are plain numbers.

    Returns ``None`` when the pair needs the full math-verify comparison:
    either side is not a plain number, or two unequal decimals (math-verify
    compares those with rounding, and we must not contradict it).
    """
    predicted = parse_plain_number(answer)
    if predicted is None:
        return None
    gold = parse_plain_number(ground_truth)
    if gold is None:
        return None
    if predicted == gold:
        return "correct"
    if _is_integer_literal(answer) and _is_integer_literal(ground_truth):
        return "wrong"
    return None
