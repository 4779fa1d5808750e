"""The verdict type shared by every part of the verifier."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Final, Literal, get_args

Reason = Literal["correct", "wrong", "no_answer", "parse_error", "timeout"]

# Kept as a frozenset so callers (and the pool, which receives reasons from
# another process) can validate a string cheaply.
REASONS: Final[frozenset[str]] = frozenset(get_args(Reason))


@dataclass(frozen=True, slots=True)
class VerifyResult:
    """Outcome of checking one model response against its ground truth.

    ``reward`` is 1.0 exactly when ``reason == "correct"``; every other reason
    is a 0.0 reward, but the reason is kept so the controller can log *why*
    (format failures and timeouts are worth watching separately).
    ``extracted`` is the boxed answer that was judged, or ``None`` when no
    answer could be located.
    """

    reward: float
    reason: Reason
    extracted: str | None = None

    def __post_init__(self) -> None:
        # Guard the invariant here so no code path can emit a mismatched pair.
        if self.reason not in REASONS:
            raise ValueError(f"unknown verdict reason {self.reason!r}")
        expected = 1.0 if self.reason == "correct" else 0.0
        if self.reward != expected:
            raise ValueError(
                f"reward {self.reward} does not match reason {self.reason!r}"
            )

    @classmethod
    def of(cls, reason: Reason, extracted: str | None = None) -> VerifyResult:
        """Build a result whose reward is derived from ``reason``."""
        return cls(1.0 if reason == "correct" else 0.0, reason, extracted)
