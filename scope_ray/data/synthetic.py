r"""A built-in synthetic reasoning task with a verifiable integer answer.

Left-nested multi-step arithmetic, e.g. ``Compute ((3+4)*2)-5.`` with the
chain-of-thought solution ``3+4=7. 7*2=14. 14-5=9. \boxed{9}``.

Why this shape: every step reads one operator and one operand from the question and
one running value from the previous step, so a tiny transformer can learn it, while the
number of steps (the level) controls how often a weak model slips. Running values stay
in ``[0, max_value]`` and ``*`` is a single-digit times table, so each step is one of a
few hundred arithmetic facts rather than long multiplication (a CPU-trained model
learns those in minutes; with values up to 99 it does not). No spaces inside
expressions: the byte-level tokenizer spends one token per character, so this keeps
prompts and responses short and rollouts cheap.

Rows are written in verl's column layout (``prompt`` / ``reward_model`` /
``data_source`` / ``extra_info``). The question carries no instruction suffix: the data
loader appends it when rendering, and SFT renders through the same path.
"""

from __future__ import annotations

import logging
import random
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

logger = logging.getLogger(__name__)

DATA_SOURCE = "synthetic_arith"
OPS = ("+", "-", "*")


@dataclass(frozen=True)
class Level:
    """Difficulty: how many operations and how large the numbers get."""

    n_ops: int
    max_operand: int = 9
    max_value: int = 9
    ops: tuple[str, ...] = OPS
    # '*' only when both factors are <= this, so it stays a times-table lookup.
    max_factor: int = 9

    def validate(self) -> None:
        if self.n_ops < 1:
            raise ValueError(f"n_ops must be >= 1, got {self.n_ops}")
        if not 1 <= self.max_operand <= self.max_value:
            raise ValueError("need 1 <= max_operand <= max_value")
        if not self.ops or any(op not in OPS for op in self.ops):
            raise ValueError(f"ops must be a non-empty subset of {OPS}, got {self.ops}")


# Levels 1-3 add steps over single-digit values; 4-5 allow running values up to 19.
LEVELS: dict[int, Level] = {
    1: Level(n_ops=2),
    2: Level(n_ops=3),
    3: Level(n_ops=4),
    4: Level(n_ops=4, max_value=19),
    5: Level(n_ops=6, max_value=19),
}


@dataclass(frozen=True)
class Problem:
    question: str
    answer: int
    solution: str  # chain of thought ending in \boxed{answer}
    level: int

    @property
    def ground_truth(self) -> str:
        return str(self.answer)


def get_level(level: int, specs: Mapping[int, Level] | None = None) -> Level:
    table = LEVELS if specs is None else specs
    if level not in table:
        raise ValueError(f"unknown level {level!r}; known: {sorted(table)}")
    return table[level]


def apply_op(a: int, op: str, b: int) -> int:
    if op == "+":
        return a + b
    if op == "-":
        return a - b
    if op == "*":
        return a * b
    raise ValueError(f"unknown operator {op!r}")


def _allowed(level: Level, value: int, op: str, operand: int) -> bool:
    if op == "*" and (value > level.max_factor or operand > level.max_factor):
        return False
    return 0 <= apply_op(value, op, operand) <= level.max_value


def _next_step(rng: random.Random, level: Level, value: int) -> tuple[str, int]:
    # Rejection sampling: from any value in [0, max_value] "+1" or "-1" fits, so a valid
    # step is always a few draws away.
    for _ in range(1000):
        op = rng.choice(level.ops)
        operand = rng.randint(1, level.max_operand)
        if _allowed(level, value, op, operand):
            return op, operand
    raise RuntimeError(f"no valid step from value {value} at {level}")


def format_expression(first: int, steps: Sequence[tuple[str, int]]) -> str:
    """Left-nested with explicit parentheses: ``((3+4)*2)-5``."""
    expr = str(first)
    for i, (op, operand) in enumerate(steps):
        inner = f"({expr})" if i > 0 else expr
        expr = f"{inner}{op}{operand}"
    return expr


def solve(first: int, steps: Sequence[tuple[str, int]]) -> tuple[int, str]:
    """The answer and its chain-of-thought solution text."""
    value, parts = first, []
    for op, operand in steps:
        result = apply_op(value, op, operand)
        parts.append(f"{value}{op}{operand}={result}.")
        value = result
    parts.append(f"\\boxed{{{value}}}")
    return value, " ".join(parts)


def chain_of(problem: Problem) -> tuple[int, list[tuple[str, int]]]:
    """The first value and the (operator, operand) steps of a problem, read back from
    its question (``((3+4)*2)-5`` -> 3, [("+", 4), ("*", 2), ("-", 5)])."""
    import re

    expr = problem.question.removeprefix("Compute ").removesuffix(".").replace("(", "").replace(")", "")
    first, *rest = re.split(r"([+\-*])", expr)
    return int(first), [(rest[i], int(rest[i + 1])) for i in range(0, len(rest), 2)]


def misconceived_solution(problem: Problem, mul_as_add_from: int) -> str:
    """The problem's chain of thought by a solver that writes every multiplication by
    ``mul_as_add_from`` or more as an addition (a*b=a+b), then carries on from that
    value: a systematic misconception on one type of problem (see
    :func:`has_big_multiplication`), the same wrong way every time."""
    first, steps = chain_of(problem)
    value, parts = first, []
    for op, operand in steps:
        result = value + operand if op == "*" and operand >= mul_as_add_from else apply_op(value, op, operand)
        parts.append(f"{value}{op}{operand}={result}.")
        value = result
    parts.append(f"\\boxed{{{value}}}")
    return " ".join(parts)


def has_big_multiplication(problem: Problem, mul_from: int) -> bool:
    """Whether the misconception of :func:`misconceived_solution` changes the answer path:
    a multiplication by ``mul_from`` or more whose product is not the sum."""
    value, steps = chain_of(problem)
    for op, operand in steps:
        if op == "*" and operand >= mul_from and value * operand != value + operand:
            return True
        value = apply_op(value, op, operand)
    return False


def random_problem(rng: random.Random, level_id: int, level: Level) -> Problem:
    first = rng.randint(1, level.max_operand)
    steps, value = [], first
    for _ in range(level.n_ops):
        op, operand = _next_step(rng, level, value)
        steps.append((op, operand))
        value = apply_op(value, op, operand)
    answer, solution = solve(first, steps)
    question = f"Compute {format_expression(first, steps)}."
    return Problem(question=question, answer=answer, solution=solution, level=level_id)


def generate_problems(n: int, levels: int | Iterable[int], seed: int,
                      exclude: Iterable[str] = (),
                      specs: Mapping[int, Level] | None = None) -> list[Problem]:
    """``n`` distinct problems, levels cycled in order, deterministic by ``seed``.

    Questions in ``exclude`` are never produced; that is how the splits stay disjoint.
    ``specs`` replaces the built-in :data:`LEVELS` table (custom difficulties).
    """
    level_ids = [levels] if isinstance(levels, int) else list(levels)
    if not level_ids:
        raise ValueError("no levels given")
    table = {k: get_level(k, specs) for k in level_ids}
    for spec in table.values():
        spec.validate()
    rng = random.Random(f"synthetic_arith:{seed}")
    seen = set(exclude)
    out: list[Problem] = []
    # Bounded so an over-asked tiny level space fails loudly instead of looping.
    budget = 50 * n + 1000
    while len(out) < n:
        if budget == 0:
            raise ValueError(f"could not find {n} distinct problems at levels {level_ids}")
        budget -= 1
        level_id = level_ids[len(out) % len(level_ids)]
        problem = random_problem(rng, level_id, table[level_id])
        if problem.question in seen:
            continue
        seen.add(problem.question)
        out.append(problem)
    return out


def make_splits(n_train: int, n_test: int, levels: int | Iterable[int], seed: int,
                specs: Mapping[int, Level] | None = None) -> tuple[list[Problem], list[Problem]]:
    """Disjoint train/test problems. The test split depends only on (n_test, levels,
    seed), so growing the training set never changes what is evaluated."""
    level_ids = [levels] if isinstance(levels, int) else list(levels)
    test = generate_problems(n_test, level_ids, seed=seed * 2 + 1, specs=specs)
    train = generate_problems(n_train, level_ids, seed=seed * 2,
                              exclude=(p.question for p in test), specs=specs)
    return train, test


def data_source(problem: Problem, mul_type_from: int = 0) -> str:
    """``synthetic_arith_l<level>``; with ``mul_type_from`` > 0 also the problem's type,
    ``_bigmul`` (a multiplication by that much or more, see :func:`has_big_multiplication`)
    or ``_rest``, so evaluations report each type (the imperfect-teacher preset)."""
    base = f"{DATA_SOURCE}_l{problem.level}"
    if not mul_type_from:
        return base
    return f"{base}_{'bigmul' if has_big_multiplication(problem, mul_type_from) else 'rest'}"


def to_rows(problems: Sequence[Problem], split: str, mul_type_from: int = 0) -> list[dict[str, Any]]:
    """verl rows: prompt messages, rule reward with the ground truth, source, extras."""
    return [
        {
            "data_source": data_source(p, mul_type_from),
            "prompt": [{"role": "user", "content": p.question}],
            "ability": "math",
            "reward_model": {"style": "rule", "ground_truth": p.ground_truth},
            "extra_info": {"index": i, "split": split, "level": p.level, "solution": p.solution},
        }
        for i, p in enumerate(problems)
    ]


def write_parquet(problems: Sequence[Problem], path: str | Path, split: str = "train", mul_type_from: int = 0) -> Path:
    import pyarrow as pa
    import pyarrow.parquet as pq

    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(pa.Table.from_pylist(to_rows(problems, split, mul_type_from)), out)
    logger.info("wrote %d %s problems to %s", len(problems), split, out)
    return out


def read_problems(path: str | Path) -> list[Problem]:
    """Back from a parquet written by :func:`write_parquet` (SFT needs the solutions)."""
    import pyarrow.parquet as pq

    rows = pq.read_table(Path(path)).to_pylist()
    return [
        Problem(question=r["prompt"][-1]["content"], answer=int(r["reward_model"]["ground_truth"]),
                solution=r["extra_info"]["solution"], level=int(r["extra_info"]["level"]))
        for r in rows
    ]
