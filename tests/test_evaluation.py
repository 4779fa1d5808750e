"""avg@K / pass@K summaries by hand, and ``scope-ray eval --json`` end to end on a tiny model."""

from __future__ import annotations

import argparse
import json

import pytest

from scope_ray.evaluation import add_eval_arguments, run_eval, summarize


def test_summarize_hand_counts():
    counts = {"b": [(8, 4)], "a": [(8, 8), (8, 0)]}
    out = summarize(counts, k=8)
    # avg@8: per-problem accuracy 1, 0, 0.5; pass@8 with n == k is "any correct": 1, 0, 1.
    assert out["avg@8"] == pytest.approx(0.5)
    assert out["pass@8"] == pytest.approx(2 / 3)
    assert out["per_source"] == {
        "a": {"avg@8": pytest.approx(0.5), "pass@8": pytest.approx(0.5), "n": 2},
        "b": {"avg@8": pytest.approx(0.5), "pass@8": pytest.approx(1.0), "n": 1},
    }
    assert list(out["per_source"]) == ["a", "b"]


def test_summarize_uses_the_unbiased_pass_at_k():
    # n=4, c=1, k=2: 1 - C(3,2)/C(4,2) = 1 - 3/6.
    out = summarize({"s": [(4, 1)]}, k=2)
    assert out["pass@2"] == pytest.approx(0.5)
    assert out["avg@2"] == pytest.approx(0.25)


def test_summarize_rejects_no_problems():
    with pytest.raises(ValueError):
        summarize({"s": []}, k=1)


def test_eval_cli_json_end_to_end(tiny_bootstrap, capfd):
    parser = add_eval_arguments(argparse.ArgumentParser())
    args = parser.parse_args(["--model", str(tiny_bootstrap.student_dir), "--data",
                              str(tiny_bootstrap.test_file), "--k", "2", "--max-tokens", "24",
                              "--json"])
    assert run_eval(args) == 0
    out = capfd.readouterr().out
    # Exactly one JSON object on stdout: vLLM's own logging must have gone to stderr.
    assert len(out.strip().splitlines()) == 1, out
    report = json.loads(out)
    assert set(report) == {"avg@2", "pass@2", "per_source"}
    assert 0.0 <= report["avg@2"] <= report["pass@2"] <= 1.0
    (source, stats), = report["per_source"].items()
    assert source.startswith("synthetic_arith")
    assert stats["n"] == 16 and set(stats) == {"avg@2", "pass@2", "n"}


def test_eval_arguments_defaults():
    args = add_eval_arguments(argparse.ArgumentParser()).parse_args(
        ["--model", "m", "--data", "a.parquet", "b.jsonl"])
    assert (args.k, args.temperature, args.top_p, args.top_k, args.json) == (8, 0.6, 1.0, -1, False)
    assert args.data == ["a.parquet", "b.jsonl"]


class _StubLLM:
    """Stands in for vllm.LLM: answers problem i correctly in the first ``i`` samples."""

    def __init__(self, tokenizer, answers: list[str]):
        self.tokenizer, self.answers, self.prompts = tokenizer, answers, []

    def get_tokenizer(self):
        return self.tokenizer

    def generate(self, prompts, params, use_tqdm=False):
        from types import SimpleNamespace as NS

        self.prompts = prompts
        return [NS(outputs=[NS(text=f"so \\boxed{{{ans if j < i else 'nope'}}}") for j in range(params.n)])
                for i, (_, ans) in enumerate(zip(prompts, self.answers))]


def test_evaluate_counts_verified_samples_per_source(tmp_path):
    from scope_ray.bootstrap.tokenizer import build_tokenizer
    from scope_ray.data import load_prompts
    from scope_ray.data.synthetic import generate_problems, write_parquet
    from scope_ray.evaluation import evaluate

    problems = generate_problems(3, [1, 2], seed=0)  # levels 1, 2, 1
    records = list(load_prompts([write_parquet(problems, tmp_path / "t.parquet")]))
    tok = build_tokenizer()
    llm = _StubLLM(tok, [p.ground_truth for p in problems])
    report = evaluate(llm, records, k=4)
    # Problem i has i of 4 correct: l1 -> (4,0), (4,2); l2 -> (4,1).
    assert report.counts_by_source == {"synthetic_arith_l1": [(4, 0), (4, 2)],
                                       "synthetic_arith_l2": [(4, 1)]}
    assert report.avg_at_k == pytest.approx((0 + 0.5 + 0.25) / 3)
    assert report.reasons == {"correct": 3, "wrong": 9}
    # The prompts went through the loader's rendering (instruction suffix included).
    first = tok.decode(llm.prompts[0]["prompt_token_ids"])
    assert first.endswith("Put your final answer within \\boxed{}.<|assistant|>")
