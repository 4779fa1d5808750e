"""Offline evaluation: sample K responses per problem with vLLM, verify, report avg@K / pass@K.

pass@K is the unbiased estimator of Chen et al. (2021) from :mod:`scope_ray.algo`
(the SCOPE authors report a bootstrap estimate instead). :func:`summarize` is the one
place per-source avg@K / pass@K are computed: ``scope-ray eval`` (``scope_ray.cli``), the
bootstrap's evaluation and the trainer's held-out evaluation
(``controller/evaluation_loop.py``) all use it. Engines come from
:mod:`scope_ray.engines.vllm_engine`.

Sampling defaults (T 0.6, top-p 1, top-k off) match the trainer's held-out evaluation
and the rollouts, so numbers from ``scope-ray eval`` and from a run are comparable. The
paper evaluates with ``--top-p 0.95 --top-k 20``.
"""

from __future__ import annotations

import logging
import time
from collections import Counter, defaultdict
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from scope_ray.algo import mean_avg_at_k, mean_pass_at_k

if TYPE_CHECKING:
    from scope_ray.data.rows import PromptRecord

logger = logging.getLogger(__name__)

Counts = Sequence[tuple[int, int]]  # (n samples, c correct) per problem


@dataclass
class EvalReport:
    k: int
    avg_at_k: float
    pass_at_k: float
    # source -> {"avg@K", "pass@K", "n"}; n counts problems.
    per_source: dict[str, dict[str, float]]
    counts_by_source: dict[str, list[tuple[int, int]]]
    n_problems: int
    reasons: dict[str, int] = field(default_factory=dict)  # verifier verdicts, all samples
    seconds: float = 0.0

    def to_json(self) -> dict[str, Any]:
        """The ``--json`` object: ``avg@K``, ``pass@K`` and ``per_source``."""
        return summarize(self.counts_by_source, self.k)


def _metrics(counts: Counts, k: int) -> dict[str, float]:
    return {f"avg@{k}": mean_avg_at_k(counts), f"pass@{k}": mean_pass_at_k(counts, k),
            "n": len(counts)}


def summarize(counts_by_source: Mapping[str, Counts], k: int) -> dict[str, Any]:
    """``{"avg@K", "pass@K", "per_source": {source: {"avg@K", "pass@K", "n"}}}``.

    Overall numbers are means over problems (not over sources), so a source weighs in
    proportion to its size.
    """
    every = [c for counts in counts_by_source.values() for c in counts]
    if not every:
        raise ValueError("no problems to summarize")
    overall = _metrics(every, k)
    return {
        f"avg@{k}": overall[f"avg@{k}"],
        f"pass@{k}": overall[f"pass@{k}"],
        "per_source": {src: _metrics(counts, k) for src, counts in sorted(counts_by_source.items())
                       if counts},
    }


def flat_metrics(counts_by_source: Mapping[str, Counts], k: int, prefix: str = "eval/") -> dict[str, float]:
    """:func:`summarize` as flat metric names: ``eval/avg@K``, ``eval/pass@K`` and, with
    more than one source, ``eval/<source>/avg@K`` / ``pass@K``."""
    summary = summarize(counts_by_source, k)
    out = {f"{prefix}avg@{k}": summary[f"avg@{k}"], f"{prefix}pass@{k}": summary[f"pass@{k}"]}
    if len(summary["per_source"]) > 1:
        for src, m in summary["per_source"].items():
            out[f"{prefix}{src}/avg@{k}"] = m[f"avg@{k}"]
            out[f"{prefix}{src}/pass@{k}"] = m[f"pass@{k}"]
    return out


def evaluate(llm: Any, records: Sequence[PromptRecord], k: int, temperature: float = 0.6,
             top_p: float = 1.0, top_k: int = -1, max_tokens: int = 96, seed: int | None = None,
             instruction_suffix: str | None = None) -> EvalReport:
    """Sample ``k`` responses per record with ``llm`` (a ``vllm.LLM``) and verify them.

    ``temperature=0`` is greedy (then use ``k=1``: the samples would be identical).
    Prompts are rendered with the data loader's renderer and the engine's tokenizer.

    ``seed=None`` samples from the engine's own seeded stream (seed it when creating the
    engine, as :func:`~scope_ray.engines.vllm_engine.make_eval_llm` does); a per-request seed is safe too, since CPU engines
    run without chunked prefill (:mod:`scope_ray.engines.vllm_engine`).
    """
    from vllm import SamplingParams

    from scope_ray.data.prompts import DEFAULT_INSTRUCTION_SUFFIX, PromptRenderer
    from scope_ray.reward import verify_batch

    if k < 1:
        raise ValueError(f"k must be >= 1, got {k}")
    if not records:
        raise ValueError("no records to evaluate")
    start = time.perf_counter()
    suffix = DEFAULT_INSTRUCTION_SUFFIX if instruction_suffix is None else instruction_suffix
    rendered = PromptRenderer(llm.get_tokenizer(), suffix).render_many(
        [r.messages for r in records])
    params = SamplingParams(n=k, temperature=temperature, top_p=top_p, top_k=top_k,
                            max_tokens=max_tokens, seed=seed)  # see the docstring on seed
    outputs = llm.generate([{"prompt_token_ids": r.token_ids} for r in rendered], params,
                           use_tqdm=False)
    texts = [c.text for out in outputs for c in out.outputs]
    truths = [r.ground_truth for r, out in zip(records, outputs) for _ in out.outputs]
    verdicts = verify_batch(texts, truths)
    counts: dict[str, list[tuple[int, int]]] = defaultdict(list)
    pos = 0
    for record, out in zip(records, outputs):
        n = len(out.outputs)
        correct = sum(v.reward > 0 for v in verdicts[pos:pos + n])
        counts[record.data_source].append((n, correct))
        pos += n
    summary = summarize(counts, k)
    return EvalReport(k=k, avg_at_k=summary[f"avg@{k}"], pass_at_k=summary[f"pass@{k}"],
                      per_source=summary["per_source"], counts_by_source=dict(counts),
                      n_problems=len(records), reasons=dict(Counter(v.reason for v in verdicts)),
                      seconds=time.perf_counter() - start)


def load_for_eval(model_dir: str | Path, data_files: Sequence[str | Path],
                  limit: int = 0) -> tuple[list[PromptRecord], int]:
    """The records to evaluate and their longest rendered prompt, in tokens (the engine's
    context must hold it plus the response budget)."""
    from transformers import AutoTokenizer

    from scope_ray.data import load_prompts

    ds = load_prompts([str(f) for f in data_files],
                      tokenizer=AutoTokenizer.from_pretrained(str(model_dir)))
    n = limit or len(ds)
    counts = ds.prompt_token_counts or (0,)
    return list(ds)[:n], max(counts[:n])


def evaluate_model_dir(model_dir: str | Path, data_files: Sequence[str | Path], k: int,
                       engine_seed: int = 0, **kwargs: Any) -> EvalReport:
    """Load the prompts and a fresh engine (seeded ``engine_seed``) for ``model_dir``, then
    :func:`evaluate` with ``kwargs``."""
    from scope_ray.engines.vllm_engine import make_eval_llm, shutdown_llm

    records, longest = load_for_eval(model_dir, data_files)
    llm = make_eval_llm(model_dir, seed=engine_seed, max_model_len=longest + kwargs.get("max_tokens", 96))
    try:
        return evaluate(llm, records, k, **kwargs)
    finally:
        shutdown_llm(llm)
