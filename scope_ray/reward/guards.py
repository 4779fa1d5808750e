r"""Cheap refusals for answers no parser should be asked to evaluate.

These run in the caller, before anything reaches the worker pool. They do not
have to catch every slow input (the pool's timeout is the last line of
defence); they turn the common hostile shapes into an immediate
``parse_error`` instead of a worker that burns ``timeout_s`` and is killed.

Every check is a single pass over an answer that extraction already capped
at ~1000 characters.
"""

from __future__ import annotations

import re
from typing import Final

from scope_ray.reward.extract import DEFAULT_MAX_ANSWER_CHARS
# The LaTeX parser's prediction is exponential in nesting depth (measured:
# depth 10 ~0.5 s, depth 14 ~5 s); real answers such as
# \left(\frac{\sqrt{3}}{2}, \frac{1}{2}\right) stay around depth 3-4.
DEFAULT_MAX_NESTING: Final[int] = 10
# 10^{999999} evaluates in ~0.3 s; a seven-digit exponent is where exact
# integer powers start to cost seconds and hundreds of megabytes.
MAX_EXPONENT_DIGITS: Final[int] = 6
# sympy evaluates n! eagerly: 10^6! takes ~5 s.
MAX_FACTORIAL_DIGITS: Final[int] = 5

_OPENERS: Final[frozenset[str]] = frozenset("{([")
_CLOSERS: Final[frozenset[str]] = frozenset("})]")
# Same tokenisation as extraction: escaped characters are consumed whole.
_BRACE_TOKEN: Final[re.Pattern[str]] = re.compile(r"\\.|[{}]", re.DOTALL)
_LONG_DIGITS: Final[re.Pattern[str]] = re.compile(r"\d{%d,}" % (MAX_EXPONENT_DIGITS + 1))
_BIG_FACTORIAL: Final[re.Pattern[str]] = re.compile(
    r"\d{%d,}\s*!" % (MAX_FACTORIAL_DIGITS + 1)
)


def _nesting_depth(answer: str) -> int:
    """Maximum bracket depth, counting {, ( and [ alike.

    Intervals such as ``[0, 1)`` mix bracket kinds, so only the count matters;
    stray closers clamp at zero rather than going negative.
    """
    depth = deepest = 0
    for char in answer:
        if char in _OPENERS:
            depth += 1
            deepest = max(deepest, depth)
        elif char in _CLOSERS:
            depth = max(0, depth - 1)
    return deepest


def _exponent_operand(answer: str, caret: int) -> tuple[str, int]:
    """Return the operand of the ``^`` at ``caret`` and the index after it.

    The operand is a braced group, a control word (``\\pi``) or one character,
    which is how TeX reads a superscript.
    """
    pos = caret + 1
    while pos < len(answer) and answer[pos].isspace():
        pos += 1
    if pos >= len(answer):
        return "", pos
    if answer[pos] == "{":
        depth = 0
        for token in _BRACE_TOKEN.finditer(answer, pos):
            if token.group() == "{":
                depth += 1
            elif token.group() == "}":
                depth -= 1
                if depth == 0:
                    return answer[pos + 1 : token.start()], token.end()
        return answer[pos + 1 :], len(answer)
    if answer[pos] == "\\":
        end = pos + 1
        while end < len(answer) and answer[end].isalpha():
            end += 1
        return answer[pos : max(end, pos + 2)], max(end, pos + 2)
    return answer[pos], pos + 1


def _power_refusal(answer: str) -> str | None:
    """Refuse power towers and huge exponents, which sympy evaluates exactly."""
    if "**" in answer:
        # Not LaTeX; ``9**9**9**9`` is Python, and refusing it is cheaper
        # than explaining it to the LaTeX parser.
        return "python-style power"
    caret = answer.find("^")
    while caret >= 0:
        operand, after = _exponent_operand(answer, caret)
        if "^" in operand or "**" in operand:
            return "exponent tower"
        if _LONG_DIGITS.search(operand):
            return "exponent too large"
        rest = answer[after:].lstrip()
        if rest.startswith("^"):
            # a^b^c: TeX rejects a double superscript; a parser might read a
            # tower.
            return "exponent tower"
        caret = answer.find("^", caret + 1)
    return None


def refusal_reason(
    answer: str,
    *,
    max_answer_chars: int = DEFAULT_MAX_ANSWER_CHARS,
    max_nesting: int = DEFAULT_MAX_NESTING,
) -> str | None:
    """Return why ``answer`` must not be parsed, or ``None`` if it may be."""
    if len(answer) > max_answer_chars:
        return f"answer longer than {max_answer_chars} characters"
    if "\x00" in answer:
        return "NUL character"
    if _nesting_depth(answer) > max_nesting:
        return f"nesting deeper than {max_nesting}"
    power = _power_refusal(answer)
    if power is not None:
        return power
    if _BIG_FACTORIAL.search(answer):
        return "factorial too large"
    return None
