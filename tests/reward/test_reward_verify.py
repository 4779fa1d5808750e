r"""End-to-end verdicts through the public API, on realistic model outputs."""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Iterator

import pytest

from scope_ray.reward import REASONS, VerifyResult, close_default_pool, verify, verify_batch

import math_verify  # noqa: E402,F401 - the test extra installs it: missing is a broken set-up


@pytest.fixture(scope="module", autouse=True)
def _default_pool() -> Iterator[None]:
    # The module-level API starts a shared pool lazily; stop it after this
    # file so its workers do not idle through the rest of the session.
    yield
    close_default_pool()


SOLUTION_INT = r"""We need the number of positive divisors of $2^3 \cdot 3^2$.
Each divisor is $2^a 3^b$ with $0 \le a \le 3$ and $0 \le b \le 2$, so there are
$4 \cdot 3 = 12$ of them.

**Final answer:** $\boxed{12}$"""

SOLUTION_NESTED = r"""Rationalising, $\sin 45^\circ = \frac{\sqrt{2}}{2}$, which we may also
write as
\[
\boxed{\frac{1}{\sqrt{2}}}
\]"""

SOLUTION_SEVERAL = r"""Trying $x = 2$ gives \boxed{4}. Hmm, that violates the constraint.
Wait, let me redo this. With $x = 3$ we get $\boxed{9}$. Actually the domain
excludes 3 too, so the answer is \boxed{16}."""

SOLUTION_INTERVAL = r"""The function is defined when $0 \le x < 1$.
So the domain is $\boxed{[0, 1)}$."""

SOLUTION_TRUNCATED = r"""Summing the series we obtain $\frac{1}{1-r}$, so the answer is $\boxed{\frac{1}{"""


@pytest.mark.parametrize(
    ("response", "gold", "reason", "extracted"),
    [
        (SOLUTION_INT, "12", "correct", "12"),
        (SOLUTION_INT, "13", "wrong", "12"),
        (r"The total is $\boxed{1,000}$ apples.", "1000", "correct", "1,000"),
        (r"So $x = \boxed{-7}$.", "-7", "correct", "-7"),
        (SOLUTION_NESTED, r"\frac{\sqrt{2}}{2}", "correct", r"\frac{1}{\sqrt{2}}"),
        (r"The probability is $\boxed{\frac{1}{2}}$.", "0.5", "correct", r"\frac{1}{2}"),
        (r"The probability is $\boxed{0.5}$.", r"\frac{1}{2}", "correct", "0.5"),
        (r"The probability is $\boxed{1/2}$.", "0.5", "correct", "1/2"),
        (r"The probability is $\boxed{\frac{1}{3}}$.", "0.5", "wrong", r"\frac{1}{3}"),
        (SOLUTION_INTERVAL, "[0,1)", "correct", "[0, 1)"),
        (SOLUTION_INTERVAL, "[0,1]", "wrong", "[0, 1)"),
        (SOLUTION_SEVERAL, "16", "correct", "16"),
        (SOLUTION_SEVERAL, "9", "wrong", "16"),
        (r"Roots: $\boxed{\{-1, 2\}}$", r"\{2, -1\}", "correct", r"\{-1, 2\}"),
        (r"\boxed{x = 5}", "5", "correct", "x = 5"),
        (r"The answer is \boxed 42.", "42", "correct", "42."),
        (r"\fbox{3}", "3", "correct", "3"),
        # Ground truth given as a solution ending in a box.
        (r"\boxed{3}", r"so it is $\boxed{3}$", "correct", "3"),
        ("I think the answer is 12.", "12", "no_answer", None),
        (r"Final answer: $\boxed{}$", "12", "no_answer", ""),
        (r"Final answer: $\boxed{ }$", "12", "no_answer", ""),
        # Documented choice: an unclosed last box means the model was cut off
        # before finishing its answer -> no_answer, not parse_error.
        (SOLUTION_TRUNCATED, "2", "no_answer", None),
        (r"\boxed{7} and finally \boxed{8", "7", "no_answer", None),
        (r"\boxed{\text{the number of apples}}", "12", "wrong", r"\text{the number of apples}"),
        (r"\boxed{@#&}", "12", "parse_error", "@#&"),
    ],
)
def test_verdicts(response: str, gold: str, reason: str, extracted: str | None) -> None:
    result = verify(response, gold)
    assert result == VerifyResult(1.0 if reason == "correct" else 0.0, reason, extracted)  # type: ignore[arg-type]


def test_result_is_frozen_and_consistent() -> None:
    result = verify(r"\boxed{1}", "1")
    with pytest.raises(dataclasses.FrozenInstanceError):
        result.reward = 0.0  # type: ignore[misc]
    with pytest.raises(ValueError):
        VerifyResult(1.0, "wrong")
    with pytest.raises(ValueError):
        VerifyResult(0.0, "maybe")  # type: ignore[arg-type]
    assert REASONS == {"correct", "wrong", "no_answer", "parse_error", "timeout"}


def test_batch_preserves_order_and_mixes_paths() -> None:
    responses = [
        r"\boxed{1}",
        r"\boxed{\frac{1}{2}}",
        "no box",
        r"\boxed{2}",
        r"\boxed{\sqrt{4}}",
        r"\boxed{10^{10^{10}}}",
        r"\boxed{(0, 1]}",
    ]
    golds = ["1", "0.5", "3", "3", "2", "1", "(0,1]"]
    reasons = [r.reason for r in verify_batch(responses, golds, num_workers=2)]
    assert reasons == ["correct", "correct", "no_answer", "wrong", "correct", "parse_error", "correct"]


def test_batch_rejects_mismatched_lengths() -> None:
    with pytest.raises(ValueError):
        verify_batch(["a", "b"], ["1"])
    with pytest.raises(ValueError):
        verify_batch(["a"], ["1"], timeout_s=0)
    assert verify_batch([], []) == []


def test_integer_fast_path_throughput() -> None:
    # The controller verifies thousands of integer answers per step.
    responses = [f"... so the count is $\\boxed{{{i}}}$." for i in range(10_000)]
    golds = [str(i if i % 3 else i + 1) for i in range(10_000)]
    start = time.perf_counter()
    results = verify_batch(responses, golds)
    elapsed = time.perf_counter() - start
    assert sum(r.reward for r in results) == sum(1 for i in range(10_000) if i % 3)
    assert elapsed < 2.0, f"{elapsed:.2f}s for 10k integer answers"
