"""Cheap refusals applied in the caller before anything reaches a worker."""

from __future__ import annotations


import pytest

from scope_ray.reward.guards import refusal_reason


@pytest.mark.parametrize(
    "answer",
    [
        "42",
        r"\frac{1}{\sqrt{2}}",
        r"\left(\frac{\sqrt{3}}{2}, \frac{1}{2}\right)",
        "[0, 1)",
        r"\{1, 2, 3\}",
        "x^2 + 2x + 1",
        "(x^2+1)^2",
        r"2^{10}",
        r"10^{999999}",
        r"e^{i\pi}",
        r"\sqrt{\frac{1+\sqrt{5}}{2}}",
        "5!",
        "99999!",
        r"\begin{pmatrix} 1 & 2 \\ 3 & 4 \end{pmatrix}",
    ],
)
def test_ordinary_answers_pass(answer: str) -> None:
    assert refusal_reason(answer) is None


@pytest.mark.parametrize(
    ("answer", "why"),
    [
        (r"10^{10^{10^{10}}}", "tower"),
        (r"9^{9^{9^{9}}}", "tower"),
        ("2^3^4", "tower"),
        ("2 ^ 3 ^ 4", "tower"),
        (r"2^{3}^{4}", "tower"),
        (r"e^{e^{x}}", "tower"),
        ("9**9**9**9", "python-style power"),
        ("2**3", "python-style power"),
        (r"10^{1000000000}", "exponent too large"),
        (r"2^{-12345678}", "exponent too large"),
        ("1000000!", "factorial"),
        ("{" * 11 + "1" + "}" * 11, "nesting"),
        ("(" * 20 + "1" + ")" * 20, "nesting"),
        ("1" * 1001, "longer than"),
        ("1\x002", "NUL"),
    ],
)
def test_hostile_shapes_are_refused(answer: str, why: str) -> None:
    reason = refusal_reason(answer)
    assert reason is not None
    assert why in reason


def test_limits_are_configurable() -> None:
    assert refusal_reason("1" * 20, max_answer_chars=10) is not None
    assert refusal_reason("((1))", max_nesting=1) is not None
    assert refusal_reason("((1))", max_nesting=2) is None


def test_many_exponents_are_accepted() -> None:
    # 200 exponents in one answer: within the limits (each is scanned once; the cost is
    # a benchmark's business, not a timed test's).
    assert refusal_reason("x^{2}" * 200) is None
