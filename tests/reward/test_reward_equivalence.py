r"""The math-verify judge, called in-process (the pool runs the same function)."""

from __future__ import annotations

import logging

import pytest

import math_verify  # noqa: E402 - the test extra installs it: missing is a broken set-up

from scope_ray.reward import equivalence  # noqa: E402
from scope_ray.reward.equivalence import judge  # noqa: E402


@pytest.mark.parametrize(
    ("answer", "gold"),
    [
        (r"\frac{1}{2}", "0.5"),
        ("0.5", r"\frac{1}{2}"),
        ("1/2", r"\frac{1}{2}"),
        (r"\frac{1}{\sqrt{2}}", r"\frac{\sqrt{2}}{2}"),
        (r"\dfrac{3}{4}", "0.75"),
        ("[0, 1)", "[0,1)"),
        (r"\{1, 2, 3\}", r"\{3, 2, 1\}"),
        (r"2\sqrt{2}", r"\sqrt{8}"),
        ("x = 3", "3"),
        (r"50\%", "50"),
        (r"\text{Monday}", r"\text{Monday}"),
        (r"\pi", r"\pi"),
        ("x^2 + 2x + 1", "(x+1)^2"),
        (r"\begin{pmatrix} 1 \\ 2 \end{pmatrix}", r"\begin{pmatrix} 1 \\ 2 \end{pmatrix}"),
    ],
)
def test_equivalent_forms_are_correct(answer: str, gold: str) -> None:
    assert judge(answer, gold) == "correct"


@pytest.mark.parametrize(
    ("answer", "gold"),
    [
        (r"\frac{1}{3}", "0.5"),
        ("(0, 1]", "[0, 1)"),
        ("[0, 1]", "[0, 1)"),
        (r"\{1, 2\}", r"\{1, 2, 3\}"),
        (r"\sqrt{3}", r"\sqrt{2}"),
        ("x^2 + 1", "(x+1)^2"),
    ],
)
def test_different_values_are_wrong(answer: str, gold: str) -> None:
    assert judge(answer, gold) == "wrong"


@pytest.mark.parametrize(
    "answer",
    [
        "x.__class__",
        "__import__('os').system('true')",
        "9**9**9**9",
    ],
)
def test_unparseable_answers_are_parse_errors(answer: str) -> None:
    assert judge(answer, "3") == "parse_error"


def test_unparseable_ground_truth_is_logged(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING, logger="scope_ray.reward.equivalence"):
        assert judge("3", "") == "parse_error"
    assert "ground truth could not be parsed" in caplog.text


def test_model_text_reaches_sympy_parse_expr_only_as_number_tokens(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # math-verify's ExprExtractionConfig feeds raw text to sympy.parse_expr
    # (an eval); the judge must use the LaTeX parser only. That parser does
    # call sympy.Number(token) -> parse_expr for NUMBER tokens of its lexer,
    # which is harmless: assert nothing but such literals ever gets there.
    import math_verify.parser as parser
    import sympy.parsing.sympy_parser as sympy_parser

    real_parse_expr = sympy_parser.parse_expr
    seen: list[str] = []

    def spy(text: str, *args: object, **kwargs: object) -> object:
        seen.append(text)
        return real_parse_expr(text, *args, **kwargs)  # type: ignore[arg-type]

    def forbidden(*args: object, **kwargs: object) -> None:
        raise AssertionError("ExprExtractionConfig path used")

    monkeypatch.setattr(sympy_parser, "parse_expr", spy)
    monkeypatch.setattr(parser, "parse_expr_cached", forbidden)
    equivalence._parse_gold.cache_clear()
    answers = [
        "1/2",
        "3*4",
        "(1+2)*3",
        r"\frac{1}{2}",
        "x.__class__",
        "__import__('os').getcwd()",
        "eval('1+1')",
        "lambda: 0",
        r"\text{__import__('os')}",
        "Symbol('x')",
    ]
    for answer in answers:
        assert judge(answer, "1/2") in {"correct", "wrong", "parse_error"}
    assert seen, "spy not reached: the test no longer observes the parser"
    assert all(text.strip().replace(".", "", 1).isdigit() for text in seen), seen
