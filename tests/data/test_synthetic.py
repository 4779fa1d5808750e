"""The built-in arithmetic task: determinism, disjoint splits, correct answers, verl layout."""

from __future__ import annotations

import re

import pyarrow.parquet as pq
import pytest

from scope_ray.data.synthetic import (
    DATA_SOURCE,
    LEVELS,
    Level,
    apply_op,
    generate_problems,
    make_splits,
    read_problems,
    solve,
    write_parquet,
)

_STEP = re.compile(r"(\d+)([-+*])(\d+)=(\d+)\.")


def _eval_question(question: str) -> int:
    """Recompute the answer from the question text alone (independent of the generator)."""
    expr = question.removeprefix("Compute ").removesuffix(".")
    assert re.fullmatch(r"[0-9()+\-* ]+", expr), expr
    return int(eval(expr, {"__builtins__": {}}))  # noqa: S307 - digits, parens, + - * only


def test_same_seed_same_problems_and_different_seed_differs():
    a = generate_problems(50, [1, 2, 3], seed=7)
    b = generate_problems(50, [1, 2, 3], seed=7)
    c = generate_problems(50, [1, 2, 3], seed=8)
    assert a == b
    assert [p.question for p in a] != [p.question for p in c]


def test_problems_are_distinct_and_levels_cycle():
    problems = generate_problems(90, [1, 2, 3], seed=0)
    assert len({p.question for p in problems}) == 90
    assert [p.level for p in problems[:6]] == [1, 2, 3, 1, 2, 3]


@pytest.mark.parametrize("level", sorted(LEVELS))
def test_answers_and_solution_steps_are_correct(level: int):
    spec = LEVELS[level]
    for p in generate_problems(200, level, seed=level):
        assert _eval_question(p.question) == p.answer
        steps = _STEP.findall(p.solution)
        assert len(steps) == spec.n_ops
        for a, op, b, result in steps:
            assert apply_op(int(a), op, int(b)) == int(result)
            assert 0 <= int(result) <= spec.max_value
            if op == "*":
                assert int(a) <= spec.max_factor and int(b) <= spec.max_factor
        assert p.solution.endswith(f"\\boxed{{{p.answer}}}")
        assert p.ground_truth == str(p.answer)


def test_question_has_no_instruction_suffix():
    for p in generate_problems(20, [1, 3], seed=0):
        assert "boxed" not in p.question
        assert p.question.startswith("Compute ") and p.question.endswith(".")


def test_splits_are_disjoint_and_test_split_is_stable():
    train, test = make_splits(2000, 200, [1, 2], seed=3)
    assert len(train) == 2000 and len(test) == 200
    assert not {p.question for p in train} & {p.question for p in test}
    _, test_again = make_splits(500, 200, [1, 2], seed=3)
    assert test_again == test  # the held-out set does not move with n_train


def test_unknown_level_is_rejected():
    with pytest.raises(ValueError, match="unknown level"):
        generate_problems(5, [99], seed=0)


def test_too_many_problems_for_a_tiny_space_fails_loudly():
    tiny = Level(n_ops=1, max_operand=2, max_value=4, ops=("+",))
    with pytest.raises(ValueError, match="distinct"):
        generate_problems(50, [9], seed=0, specs={9: tiny})


def test_parquet_layout_matches_verl(tmp_path):
    problems = generate_problems(12, [1, 2], seed=0)
    path = write_parquet(problems, tmp_path / "train.parquet", split="train")
    table = pq.read_table(path)
    assert {"prompt", "reward_model", "data_source", "extra_info"} <= set(table.column_names)
    rows = table.to_pylist()
    for i, (row, p) in enumerate(zip(rows, problems)):
        assert row["prompt"] == [{"role": "user", "content": p.question}]
        assert row["reward_model"] == {"style": "rule", "ground_truth": p.ground_truth}
        assert row["data_source"] == f"{DATA_SOURCE}_l{p.level}"
        assert row["extra_info"] == {"index": i, "split": "train", "level": p.level,
                                     "solution": p.solution}
    assert read_problems(path) == problems


def test_parquet_loads_through_the_data_loader(tmp_path):
    from scope_ray.bootstrap.tokenizer import build_tokenizer
    from scope_ray.data import load_prompts

    problems = generate_problems(8, [2], seed=0)
    path = write_parquet(problems, tmp_path / "test.parquet", split="test")
    ds = load_prompts([path], tokenizer=build_tokenizer())
    assert [r.ground_truth for r in ds] == [p.ground_truth for p in problems]
    rendered = ds.render(ds[0]).text
    assert rendered.startswith(f"<|user|>{problems[0].question} Put your final answer")
    assert rendered.endswith("<|assistant|>")


def test_the_misconception_changes_exactly_the_problems_of_its_type():
    """imperfect-teacher: every multiplication by 3 or more written as an addition, the
    rest of the chain carried on correctly from there; problems without one unchanged;
    data_source tags the type."""
    from scope_ray.data.synthetic import chain_of, data_source, has_big_multiplication, misconceived_solution

    train, _ = make_splits(2000, 10, (2, 3), seed=0)
    kinds = [has_big_multiplication(p, 3) for p in train]
    assert 0.2 < sum(kinds) / len(kinds) < 0.45
    for p, big in zip(train, kinds):
        first, steps = chain_of(p)
        assert solve(first, steps) == (p.answer, p.solution)
        wrong = misconceived_solution(p, 3)
        assert (wrong != p.solution) == big
        assert data_source(p, 3) == f"synthetic_arith_l{p.level}_{'bigmul' if big else 'rest'}"
        assert data_source(p) == f"synthetic_arith_l{p.level}"
    p = next(p for p, big in zip(train, kinds) if big)
    a, b = re.search(r"(\d+)\*(\d+)=", p.solution).groups()
    assert f"{a}*{b}={int(a) + int(b)}." in misconceived_solution(p, 3)
