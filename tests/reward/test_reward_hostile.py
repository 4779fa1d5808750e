r"""Hostile model outputs: nothing executes, nothing hangs, the pool survives."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from scope_ray.reward import REASONS, VerifyResult, close_default_pool, verify

import math_verify  # noqa: E402,F401 - the test extra installs it: missing is a broken set-up

TIMEOUT_S = 1.0
# Scheduling slack on a shared 2-core box (includes respawning a killed
# worker); far below "hangs".
MARGIN_S = 3.0


@pytest.fixture(scope="module", autouse=True)
def _default_pool() -> Iterator[None]:
    yield
    close_default_pool()


def _code_payloads(sentinel: Path) -> list[str]:
    """Answers that would create ``sentinel`` if anything evaluated them."""
    s = str(sentinel)
    return [
        rf"\boxed{{__import__('os').system('touch {s}')}}",
        rf"\boxed{{eval(\"__import__('os').system('touch {s}')\")}}",
        rf"\boxed{{exec(\"open('{s}', 'w').close()\")}}",
        rf"\boxed{{open('{s}', 'w')}}",
        rf"\boxed{{lambda: open('{s}', 'w')}}",
        rf"\boxed{{1 if open('{s}', 'w') else 0}}",
        rf"\boxed{{\text{{__import__('os').system('touch {s}')}}}}",
        rf"\boxed{{\mathrm{{eval}}(open('{s}','w'))}}",
        rf"\boxed{{\operatorname{{exec}}(open('{s}','w'))}}",
        rf"\boxed{{$(touch {s})}}",
        rf"\boxed{{`touch {s}`}}",
        rf"\boxed{{\input{{{s}}}}}",
        rf"\boxed{{\write18{{touch {s}}}}}",
        rf"Answer: {s} \boxed{{__import__('pathlib').Path('{s}').touch()}}",
        # Outside any box too: only the boxed content is ever parsed.
        f"__import__('os').system('touch {s}') and no box",
    ]


SYMPY_INJECTION = [
    r"\boxed{x.__class__}",
    r"\boxed{x.__class__.__mro__[-1].__subclasses__()}",
    r"\boxed{().__class__.__bases__[0].__subclasses__()}",
    r"\boxed{Symbol('x').__reduce__()}",
    r"\boxed{sympy.core.sympify('1')}",
    r"\boxed{\def\x{\x}\x}",
]

RESOURCE_BOMBS = [
    "A" * 5_000_000,
    "A" * 5_000_000 + r"\boxed{\frac{1}{2}}",
    r"\boxed{" + "1" * 5_000_000 + "}",
    r"\boxed{" + "1" * 50_000 + "}",
    r"\boxed{" + "{" * 100_000 + "1" + "}" * 100_000 + "}",
    "x " + r"\boxed{" + "{" * 30_000 + "1" + "}" * 30_001,
    "{" * 100_000,
    r"\boxed{" * 100_000,
    r"\boxed{10^{10^{10^{10}}}}",
    r"\boxed{9^{9^{9^{9}}}}",
    r"\boxed{2^{2^{2^{2^{2^{2}}}}}}",
    r"\boxed{9**9**9**9}",
    r"\boxed{10^{1000000000}}",
    r"\boxed{1" + "0" * 999 + "}",
    r"\boxed{\underbrace{99\cdots9}_{10^{9}\text{ digits}}}",
    r"\boxed{1000000!}",
    r"\boxed{(10^{99999})^{99999}}",  # passes the guards: the pool kills it
    r"\boxed{(10^{99999})!}",
    r"\boxed{\sum_{k=1}^{99999} k^{k}}",
    r"\boxed{" + r"\frac{1}{" * 9 + "2" + "}" * 9 + "}",
    r"\boxed{" + "(" * 50 + "1" + ")" * 50 + "}",
    "\x00" * 1000 + r"\boxed{\x00}",
    "\u202e" + r"\boxed{\u202e3}",
    r"\boxed{" + "\ud800" + "}",  # lone surrogate
]


def _check(result: VerifyResult, elapsed: float) -> None:
    assert isinstance(result, VerifyResult)
    assert result.reason in REASONS
    assert result.reward == (1.0 if result.reason == "correct" else 0.0)
    assert elapsed < TIMEOUT_S + MARGIN_S, f"took {elapsed:.2f}s"


def _timed_verify(response: str, gold: str) -> tuple[VerifyResult, float]:
    start = time.monotonic()
    result = verify(response, gold, timeout_s=TIMEOUT_S)
    return result, time.monotonic() - start


def test_code_payloads_never_execute(tmp_path: Path) -> None:
    sentinel = tmp_path / "pwned"
    for payload in _code_payloads(sentinel):
        result, elapsed = _timed_verify(payload, "3")
        _check(result, elapsed)
        assert result.reason != "correct"
        assert not sentinel.exists(), f"payload executed: {payload!r}"
    assert verify(r"\boxed{\frac{6}{2}}", "3").reason == "correct"


@pytest.mark.parametrize("payload", SYMPY_INJECTION)
def test_sympy_injection_is_not_evaluated(payload: str) -> None:
    result, elapsed = _timed_verify(payload, "3")
    _check(result, elapsed)
    assert result.reason in {"wrong", "parse_error"}


def test_resource_bombs_return_promptly() -> None:
    verdicts = []
    for bomb in RESOURCE_BOMBS:
        result, elapsed = _timed_verify(bomb, "3")
        _check(result, elapsed)
        assert result.reason != "correct"
        verdicts.append(result.reason)
    # Spot-check the intended defence for a few of them.
    by_bomb = dict(zip(RESOURCE_BOMBS, verdicts, strict=True))
    assert by_bomb["A" * 5_000_000] == "no_answer"
    # The box command itself lies before the scanned tail of the response.
    assert by_bomb[r"\boxed{" + "1" * 5_000_000 + "}"] == "no_answer"
    assert by_bomb[r"\boxed{" + "1" * 50_000 + "}"] == "parse_error"  # too long
    assert by_bomb[r"\boxed{10^{10^{10^{10}}}}"] == "parse_error"
    assert by_bomb[r"\boxed{9**9**9**9}"] == "parse_error"
    assert by_bomb[r"\boxed{\sum_{k=1}^{99999} k^{k}}"] == "timeout"
    # ... and the pool still answers a normal case correctly afterwards.
    assert verify(r"So $\boxed{\frac{1}{\sqrt{2}}}$", r"\frac{\sqrt{2}}{2}").reason == "correct"
    assert verify(r"\boxed{7}", "7").reason == "correct"


def test_huge_response_with_real_answer_is_still_verified() -> None:
    response = "Let me think. " * 400_000 + r"So the answer is $\boxed{\frac{3}{4}}$."
    result, elapsed = _timed_verify(response, "0.75")
    assert result.reason == "correct"
    assert elapsed < TIMEOUT_S + MARGIN_S


_LATEX_BITS = st.sampled_from(
    [
        r"\boxed{", r"\fbox{", "{", "}", "^", "_", r"\frac", r"\sqrt", "(", ")", "[", "]",
        r"\{", r"\}", r"\left(", r"\right)", r"\text{", r"\pi", r"\infty", r"\cdot",
        "1", "3", "9", "0", "x", "y", ".", ",", "-", "+", "*", "/", "!", "=", "%", "$",
        " ", "\n", "\\\\", "\\", "__import__", "'", '"', "**", "10^{", "e",
    ]
)
_LATEX_TEXT = st.lists(_LATEX_BITS, max_size=40).map("".join)
_RANDOM_RESPONSE = st.one_of(
    st.text(max_size=300),
    _LATEX_TEXT,
    _LATEX_TEXT.map(lambda body: r"The answer is $\boxed{" + body + "}$."),
    st.tuples(st.text(max_size=50), _LATEX_TEXT).map(lambda t: t[0] + r"\boxed{" + t[1] + "}"),
)


@settings(
    max_examples=100,
    deadline=None,  # we assert our own bound below
    suppress_health_check=[HealthCheck.too_slow],
)
@given(response=_RANDOM_RESPONSE)
def test_fuzz_always_returns_a_valid_verdict_in_time(response: str) -> None:
    result, elapsed = _timed_verify(response, "3")
    _check(result, elapsed)
    if result.reason == "correct":
        assert result.extracted is not None and "3" in result.extracted
