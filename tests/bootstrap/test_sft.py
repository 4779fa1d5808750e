"""The SFT trainer: response-only loss, prompt rendering shared with RL, loss goes down."""

from __future__ import annotations

import pytest
import torch

from scope_ray.bootstrap.models import TinyModelSpec, init_model
from scope_ray.bootstrap.sft import (
    SFTOptions,
    collate,
    lr_factor,
    problem_examples,
    response_nll,
    train_sft,
)
from scope_ray.bootstrap.tokenizer import build_tokenizer
from scope_ray.data.prompts import render_prompt
from scope_ray.data.synthetic import generate_problems
from scope_ray.learner.logprobs import token_logprobs

SMALL = TinyModelSpec(hidden_size=64, num_layers=1, num_heads=2, num_kv_heads=1, intermediate_size=128)


@pytest.fixture(scope="module")
def tokenizer():
    return build_tokenizer()


@pytest.fixture(scope="module")
def problems():
    return generate_problems(24, [1, 2], seed=0)


@torch.no_grad()
def mean_loss(model: torch.nn.Module, examples, pad_id: int, batch_size: int = 64) -> float:
    """Token-weighted mean response NLL over ``examples`` (a held-out check)."""
    was_training = model.training
    model.eval()
    total, count = 0.0, 0.0
    for start in range(0, len(examples), batch_size):
        batch = collate(examples[start:start + batch_size], pad_id)
        n = batch.loss_mask.sum().item()
        total += response_nll(model, batch).item() * n
        count += n
    model.train(was_training)
    return total / max(count, 1.0)


def test_examples_use_the_loader_rendering_and_the_chat_template(tokenizer, problems):
    examples = problem_examples(problems, tokenizer)
    for p, e in zip(problems, examples):
        messages = [{"role": "user", "content": p.question}]
        assert list(e.prompt_ids) == render_prompt(messages, tokenizer).token_ids
        assert e.response_ids[-1] == tokenizer.eos_token_id
        # prompt + response is exactly the chat template of the finished conversation.
        full = tokenizer.apply_chat_template(
            [{"role": "user", "content": p.question + " Put your final answer within \\boxed{}."},
             {"role": "assistant", "content": p.solution}], tokenize=False)
        assert tokenizer.decode(list(e.prompt_ids + e.response_ids)) == full


def test_targets_replace_the_reference_solutions(tokenizer, problems):
    examples = problem_examples(problems[:2], tokenizer, targets=["x", "\\boxed{1}"])
    assert tokenizer.decode(list(examples[0].response_ids)) == "x<|endoftext|>"
    with pytest.raises(ValueError, match="responses"):
        problem_examples(problems[:2], tokenizer, targets=["only one"])


def test_loss_mask_covers_exactly_the_response_tokens(tokenizer, problems):
    examples = problem_examples(problems[:5], tokenizer)
    batch = collate(examples, tokenizer.pad_token_id)
    for i, e in enumerate(examples):
        p, n = len(e.prompt_ids), len(e.prompt_ids) + len(e.response_ids)
        mask = batch.loss_mask[i]
        assert mask[:p].sum() == 0 and mask[n:].sum() == 0
        assert bool((mask[p:n] == 1).all())
        assert int(batch.attention_mask[i].sum()) == n


def test_response_nll_ignores_prompt_and_padding(tokenizer, problems):
    torch.manual_seed(0)
    model = init_model(SMALL, seed=0).eval()
    examples = problem_examples(problems[:4], tokenizer)
    with torch.no_grad():
        batched = response_nll(model, collate(examples, tokenizer.pad_token_id)).item()
        # The same quantity from unpadded single forwards over response positions only.
        total, count = 0.0, 0
        for e in examples:
            ids = torch.tensor([e.prompt_ids + e.response_ids])
            logp = token_logprobs(model, ids, torch.ones_like(ids))[0, len(e.prompt_ids):]
            total -= logp.sum().item()
            count += logp.numel()
    assert batched == pytest.approx(total / count, rel=1e-4)


def test_prompt_tokens_get_no_gradient_signal(tokenizer, problems):
    """Changing a prompt token's *target* must not change the loss: the loss never
    scores prompt positions (it only conditions on them)."""
    model = init_model(SMALL, seed=0).eval()
    example = problem_examples(problems[:1], tokenizer)[0]
    batch = collate([example], tokenizer.pad_token_id)
    logits = model(input_ids=batch.input_ids, attention_mask=batch.attention_mask).logits
    logits.retain_grad()
    from scope_ray.learner.logprobs import gather_token_logprobs

    logp = gather_token_logprobs(logits, batch.input_ids)
    loss = -(logp * batch.loss_mask).sum() / batch.loss_mask.sum()
    loss.backward()
    p = len(example.prompt_ids)
    # logits at position t predict token t+1: positions before p-1 predict prompt tokens.
    assert logits.grad[0, : p - 1].abs().sum() == 0
    assert logits.grad[0, p - 1 :].abs().sum() > 0


def test_a_few_steps_lower_the_loss(tokenizer, problems):
    model = init_model(SMALL, seed=0)
    examples = problem_examples(problems, tokenizer)
    before = mean_loss(model, examples, tokenizer.pad_token_id)
    result = train_sft(model, examples, SFTOptions(steps=15, batch_size=8, lr=3e-3, warmup_steps=2,
                                                   log_every=0), tokenizer.pad_token_id)
    after = mean_loss(model, examples, tokenizer.pad_token_id)
    assert len(result.losses) == 15 and result.tokens > 0
    assert after < before - 0.5, (before, after)
    assert not model.training


def test_lr_schedule_warms_up_then_decays_to_the_floor():
    opts = SFTOptions(steps=100, warmup_steps=10, min_lr_ratio=0.1)
    assert lr_factor(0, opts) == pytest.approx(0.1)
    assert lr_factor(9, opts) == pytest.approx(1.0)
    assert lr_factor(10, opts) == pytest.approx(1.0)
    assert lr_factor(55, opts) < lr_factor(30, opts)
    assert lr_factor(100, opts) == pytest.approx(0.1)


def test_distill_offline_trains_on_teacher_samples(tiny_bootstrap, tmp_path, monkeypatch):
    """Offline KD: the student is fine-tuned on what the teacher wrote (vLLM sampling is
    stubbed; tests/bootstrap/test_bootstrap.py covers serving the models)."""
    import scope_ray.bootstrap.sft as sft
    from scope_ray.data.synthetic import read_problems

    problems = read_problems(tiny_bootstrap.train_file)[:4]
    samples = [(p, t) for p in problems for t in (p.solution, "I think \\boxed{-1}")]
    monkeypatch.setattr(sft, "sample_targets", lambda *a, **k: samples)
    seen: list = []
    real_train = sft.train_sft

    def spy(model, examples, opts, pad_id):
        seen.extend(examples)
        return real_train(model, examples, opts, pad_id)

    monkeypatch.setattr(sft, "train_sft", spy)
    out = sft.distill_offline(tiny_bootstrap.teacher_dir, tiny_bootstrap.student_dir, problems,
                              tmp_path / "kd", SFTOptions(steps=2, batch_size=4, log_every=0),
                              only_correct=True)
    tok = build_tokenizer()
    texts = [tok.decode(list(e.response_ids), skip_special_tokens=True) for e in seen]
    assert sorted(texts) == sorted(p.solution for p in problems)  # wrong samples dropped
    assert (out / "model.safetensors").is_file() and (out / "tokenizer_config.json").is_file()
