"""avg@K / pass@K summaries by hand, and ``scope-ray eval --json`` end to end on a tiny model."""

from __future__ import annotations

import argparse
import json

import pytest

from scope_ray.cli import add_eval_arguments
from scope_ray.evaluation import summarize


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


def _constant_answer_model(out_dir, problems) -> str:
    """A tiny model fine-tuned to answer every prompt with \\boxed{7} (seconds of SFT),
    so that a test set whose ground truths are 7 or 8 has a known, mixed accuracy."""
    from scope_ray.bootstrap.models import TinyModelSpec, init_model, save_model_dir
    from scope_ray.bootstrap.sft import SFTOptions, problem_examples, train_sft
    from scope_ray.bootstrap.tokenizer import build_tokenizer

    tok = build_tokenizer()
    model = init_model(TinyModelSpec(), seed=0)
    examples = problem_examples(problems, tok, targets=["\\boxed{7}"] * len(problems))
    train_sft(model, examples, SFTOptions(steps=60, batch_size=16, lr=3e-3, warmup_steps=2, log_every=1000),
              pad_id=tok.pad_token_id)
    return str(save_model_dir(model, out_dir))


def test_eval_cli_json_is_exactly_the_greedy_accuracy(tmp_path):
    """``scope-ray eval --json`` as a user runs it (its own process, the real vLLM engine):
    at temperature 0 its avg@1 is exactly the share of problems that transformers'
    greedy decoding of the same weights answers correctly, per source too."""
    import dataclasses
    import os
    import subprocess
    import sys

    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from scope_ray.data import load_prompts
    from scope_ray.data.synthetic import generate_problems, write_parquet
    from scope_ray.reward import verify_batch

    n, max_tokens = 16, 24
    problems = [dataclasses.replace(p, answer=7 if i % 3 else 8)
                for i, p in enumerate(generate_problems(n, [1, 2], seed=3))]
    data_file = write_parquet(problems, tmp_path / "test.parquet", split="test")
    model_dir = _constant_answer_model(tmp_path / "model", problems)
    proc = subprocess.run(
        [sys.executable, "-m", "scope_ray.cli", "eval", "--model", model_dir, "--data", str(data_file),
         "--k", "1", "--temperature", "0", "--max-tokens", str(max_tokens), "--limit", str(n), "--json"],
        capture_output=True, text=True, timeout=600, env={k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"})
    assert proc.returncode == 0, proc.stderr[-3000:]
    # Exactly one JSON object on stdout: vLLM's own logging must have gone to stderr.
    assert len(proc.stdout.strip().splitlines()) == 1, proc.stdout
    report = json.loads(proc.stdout)
    assert set(report) == {"avg@1", "pass@1", "per_source"}

    tok = AutoTokenizer.from_pretrained(model_dir)
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32).eval()
    ds = load_prompts([data_file], tokenizer=tok)
    records = list(ds)[:n]
    texts = []
    for r in ds.render_many(records):
        x = torch.tensor([list(r.token_ids)])
        out = model.generate(x, attention_mask=torch.ones_like(x), do_sample=False, max_new_tokens=max_tokens)
        texts.append(tok.decode(out[0, x.shape[1]:], skip_special_tokens=True))
    verdicts = verify_batch(texts, [r.ground_truth for r in records])
    by_source: dict[str, list[float]] = {}
    for r, v in zip(records, verdicts):
        by_source.setdefault(r.data_source, []).append(float(v.reward > 0))
    expected = sum(sum(v) for v in by_source.values()) / n
    assert 0 < expected < 1  # a test that could tell a broken engine from a working one
    assert report["avg@1"] == pytest.approx(expected, abs=1e-9)
    assert report["pass@1"] == pytest.approx(expected, abs=1e-9)  # k = n = 1
    assert {src: m["n"] for src, m in report["per_source"].items()} == {s: len(v) for s, v in by_source.items()}
    for src, values in by_source.items():
        assert report["per_source"][src]["avg@1"] == pytest.approx(sum(values) / len(values), abs=1e-9)


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
