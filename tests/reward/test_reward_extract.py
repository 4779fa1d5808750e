r"""Boxed-answer extraction: pure string work, no pool."""

from __future__ import annotations

import time

import pytest

from scope_ray.reward.extract import Extraction, extract_boxed


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        (r"So $x = 7$ and the answer is $\boxed{42}$.", "42"),
        (r"Therefore \boxed{\frac{1}{\sqrt{2}}}", r"\frac{1}{\sqrt{2}}"),
        (r"First \boxed{3}, wait, recheck: \boxed{5}. Final: \boxed{7}", "7"),
        (r"The set is \boxed{\{1, 2\}}", r"\{1, 2\}"),  # escaped braces do not nest
        (r"\boxed{\left\{ x \right\}}", r"\left\{ x \right\}"),
        (r"\boxed{a\\{b}}", r"a\\{b}"),  # \\ is a line break, then a real group
        (r"The answer: \fbox{12}", "12"),
        (r"\boxed{1} then \fbox{2}", "2"),
        (r"\fbox{1} then \boxed{2}", "2"),
        (r"The answer is \boxed 42 dollars", "42"),
        (r"The answer is $\boxed 42$", "42"),
        (r"\boxed {9}", "9"),
        (r"\boxed{[0, 1)}", "[0, 1)"),
        ("\\boxed{\n  x^2 + 1\n}", "\n  x^2 + 1\n"),
    ],
)
def test_found(text: str, expected: str) -> None:
    assert extract_boxed(text) == Extraction("found", expected)


@pytest.mark.parametrize(
    "text",
    [
        "The answer is 42.",
        "",
        r"\boxedfoo{3}",  # a different command
        r"\fboxsep=3pt no box here",
        r"I will put it in \boxed5",  # no braces and no space: too ambiguous
    ],
)
def test_missing(text: str) -> None:
    assert extract_boxed(text).status == "missing"


def test_empty_boxed_is_found_but_empty() -> None:
    # The verifier turns this into no_answer with extracted == "".
    assert extract_boxed(r"\boxed{}") == Extraction("found", "")


@pytest.mark.parametrize(
    "text",
    [
        r"The answer is \boxed{\frac{1}{2}",  # cut off before the closing brace
        r"\boxed{",
        r"\boxed{5} but then \boxed{6",  # last box is open: no fallback to 5
        "\\boxed   ",
    ],
)
def test_unbalanced_is_reported(text: str) -> None:
    assert extract_boxed(text).status == "unbalanced"


def test_nested_box_inside_last_box() -> None:
    # rfind finds the inner command; that is still the final boxed value.
    assert extract_boxed(r"\boxed{\boxed{3}}").answer == "3"


def test_answer_longer_than_cap_is_too_long() -> None:
    text = r"\boxed{" + "1" * 50 + "}"
    assert extract_boxed(text, max_answer_chars=50).status == "found"
    assert extract_boxed(text, max_answer_chars=49).status == "too_long"
    bare = r"\boxed " + "1" * 50
    assert extract_boxed(bare, max_answer_chars=49).status == "too_long"


def test_only_the_tail_is_scanned() -> None:
    text = r"\boxed{1}" + " " * 200
    assert extract_boxed(text, max_scan_chars=300).answer == "1"
    assert extract_boxed(text, max_scan_chars=100).status == "missing"


@pytest.mark.parametrize(
    ("text", "status"),
    [
        ("x" * 5_000_000 + r"\boxed{42}", "found"),
        (r"\boxed{" + "{" * 50_000, "too_long"),
        (r"\boxed{" + "{" * 40_000 + "}" * 40_001, "too_long"),
        # The box command itself lies before the scanned tail.
        (r"\boxed{" + "{" * 100_000, "missing"),
        ("{" * 2_000_000 + r"\boxed{1}" + "}" * 2_000_000, "missing"),
        (r"\boxed{" * 200_000, "unbalanced"),
        (r"\boxed{" * 1_000_000 + "}", "found"),
        ("\\" * 3_000_000 + r"\boxed{7}", "found"),
    ],
)
def test_huge_inputs_are_cheap(text: str, status: str) -> None:
    start = time.perf_counter()
    result = extract_boxed(text)
    elapsed = time.perf_counter() - start
    assert result.status == status
    assert elapsed < 0.5, f"extraction took {elapsed:.3f}s"
