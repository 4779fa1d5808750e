"""Plain-number comparison in the caller: no sympy, no worker."""

from __future__ import annotations

import subprocess
import sys
from decimal import Decimal

import pytest

from scope_ray.reward.fastpath import fast_verdict, parse_plain_number


@pytest.mark.parametrize(
    ("text", "value"),
    [
        ("42", Decimal(42)),
        (" -7 ", Decimal(-7)),
        ("+3", Decimal(3)),
        ("1,000", Decimal(1000)),
        ("12,345,678.5", Decimal("12345678.5")),
        ("1{,}000", Decimal(1000)),
        (r"1\,000", Decimal(1000)),
        ("0.50", Decimal("0.5")),
        (".5", Decimal("0.5")),
        ("42.", Decimal(42)),
        ("$42$", Decimal(42)),
    ],
)
def test_plain_numbers_parse(text: str, value: Decimal) -> None:
    assert parse_plain_number(text) == value


@pytest.mark.parametrize(
    "text",
    ["1,2", "1,0000", r"\frac{1}{2}", "1/2", "1e5", "NaN", "Infinity", "0x10", "4 2", "", "1" * 65],
)
def test_other_text_is_not_a_plain_number(text: str) -> None:
    assert parse_plain_number(text) is None


@pytest.mark.parametrize(
    ("answer", "gold", "verdict"),
    [
        ("42", "42", "correct"),
        ("-7", "-7", "correct"),
        ("1,000", "1000", "correct"),
        ("1000", "1,000", "correct"),
        ("42.0", "42", "correct"),
        ("41", "42", "wrong"),
        ("-42", "42", "wrong"),
        ("007", "7", "correct"),
        # Unequal decimals: math-verify rounds, so the pool decides.
        ("0.333333", "0.3333333", None),
        ("1.5", "2", None),
        # Not plain numbers: the pool decides.
        (r"\frac{84}{2}", "42", None),
        ("42", r"\frac{84}{2}", None),
        (r"42^\circ", "42", None),
    ],
)
def test_fast_verdict(answer: str, gold: str, verdict: str | None) -> None:
    assert fast_verdict(answer, gold) == verdict


def test_integer_answers_never_import_sympy_or_start_workers() -> None:
    # A fresh interpreter, so sympy imported by other tests does not count.
    code = (
        "import sys, multiprocessing\n"
        "from scope_ray.reward import verify, verify_batch\n"
        "rs = verify_batch([r'so \\boxed{%d}' % i for i in range(2000)],"
        " [str(i) for i in range(1000)] * 2)\n"
        "assert [r.reason for r in rs[:1000]] == ['correct'] * 1000, rs[:3]\n"
        "assert [r.reason for r in rs[1000:]] == ['wrong'] * 1000\n"
        "assert verify('no box', '1').reason == 'no_answer'\n"
        "assert 'sympy' not in sys.modules and 'math_verify' not in sys.modules\n"
        "assert multiprocessing.active_children() == []\n"
        "print('ok')\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=False
    )
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "ok"
