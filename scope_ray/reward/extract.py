r"""Locate the final ``\boxed{...}`` answer in a model response.

Model text is untrusted and may be megabytes long, so everything here is a
bounded linear scan: ``str.rfind`` over a capped tail of the text to find the
last box command, then a brace-matching pass that stops after
``max_answer_chars``. No regular expression here can backtrack.

Decisions (the tests pin them down):

* The LAST box command wins (``\boxed`` or ``\fbox``); models often box
  intermediate results before the final one.
* If the last box command is never closed, the response was cut off before
  its answer ended: status ``"unbalanced"``, which the verifier reports as
  ``no_answer``. We do not fall back to an earlier box, which would reward an
  intermediate result.
* An argument longer than ``max_answer_chars`` is ``"too_long"`` (reported as
  ``parse_error``): the model did answer, but nothing that long is worth
  handing to a parser.
* ``\boxed 42`` (no braces) is accepted: the answer runs to the next
  whitespace or ``$``.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Final, Literal

ExtractionStatus = Literal["found", "missing", "unbalanced", "too_long"]

BOX_COMMANDS: Final[tuple[str, ...]] = ("\\boxed", "\\fbox")

# Only the tail of a response is searched: the final answer sits at the end,
# and capping the scan keeps a multi-megabyte response cheap.
DEFAULT_MAX_SCAN_CHARS: Final[int] = 100_000
DEFAULT_MAX_ANSWER_CHARS: Final[int] = 1_000

# One token per escaped character or brace. Escapes are consumed whole so that
# ``\{`` / ``\}`` (literal set braces) do not count, while ``\\{`` (a line break
# then a group) does. Fixed-width alternatives: no backtracking is possible.
_BRACE_TOKEN: Final[re.Pattern[str]] = re.compile(r"\\.|[{}]", re.DOTALL)
# Bare argument of ``\boxed 42``: a run of non-space, non-``$`` characters.
_BARE_ARGUMENT: Final[re.Pattern[str]] = re.compile(r"[^\s$]+")


@dataclass(frozen=True, slots=True)
class Extraction:
    """Where extraction ended up; ``answer`` is set only when ``found``."""

    status: ExtractionStatus
    answer: str | None = None


def _last_box_command(text: str, start: int) -> tuple[int, int] | None:
    """Return ``(command_start, argument_start)`` of the last box command.

    A command name followed by a letter (``\\fboxsep``) is a different
    command and is skipped.
    """
    best: tuple[int, int] | None = None
    for command in BOX_COMMANDS:
        end = len(text)
        while True:
            pos = text.rfind(command, start, end)
            if pos < 0:
                break
            after = pos + len(command)
            if after < len(text) and text[after].isalpha():
                end = pos
                continue
            if best is None or pos > best[0]:
                best = (pos, after)
            break
    return best


def extract_boxed(
    text: str,
    *,
    max_scan_chars: int = DEFAULT_MAX_SCAN_CHARS,
    max_answer_chars: int = DEFAULT_MAX_ANSWER_CHARS,
) -> Extraction:
    """Extract the content of the last box command in ``text``."""
    start = max(0, len(text) - max_scan_chars)
    found = _last_box_command(text, start)
    if found is None:
        return Extraction("missing")
    _, pos = found

    # Skip spaces between the command and its argument (``\boxed {5}``).
    limit = min(len(text), pos + max_answer_chars)
    while pos < limit and text[pos].isspace():
        pos += 1
    if pos >= len(text):
        return Extraction("unbalanced")

    if text[pos] != "{":
        if pos == found[1]:
            # ``\boxed5`` or ``\boxed$``: TeX would take one token, but this
            # spelling is too rare and ambiguous to guess at.
            return Extraction("missing")
        bare = _BARE_ARGUMENT.match(text, pos, pos + max_answer_chars + 1)
        if bare is None:
            return Extraction("missing")
        if len(bare.group()) > max_answer_chars:
            return Extraction("too_long")
        return Extraction("found", bare.group())

    # Brace matching, bounded: scan at most max_answer_chars + 2 characters
    # (the argument plus its two braces).
    content_start = pos + 1
    scan_end = min(len(text), content_start + max_answer_chars + 1)
    depth = 1
    for token in _BRACE_TOKEN.finditer(text, content_start, scan_end):
        char = token.group()
        if char == "{":
            depth += 1
        elif char == "}":
            depth -= 1
            if depth == 0:
                return Extraction("found", text[content_start : token.start()])
    if scan_end < len(text):
        return Extraction("too_long")
    return Extraction("unbalanced")
