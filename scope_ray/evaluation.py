"""Offline evaluation: sample K responses per problem with vLLM, verify, report avg@K / pass@K.

pass@K is the unbiased estimator of Chen et al. (2021) from :mod:`scope_ray.algo`
(the SCOPE authors report a bootstrap estimate instead). Also the ``scope-ray eval``
and ``scope-ray bootstrap`` command bodies; ``scope_ray.cli`` wires them in.

Sampling defaults (T 0.6, top-p 1, top-k off) match the trainer's held-out evaluation
and the rollouts, so numbers from ``scope-ray eval`` and from a run are comparable. The
paper evaluates with ``--top-p 0.95 --top-k 20``.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import os
import sys
import time
from collections import Counter, defaultdict
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

from scope_ray.algo import mean_avg_at_k, mean_pass_at_k

if TYPE_CHECKING:
    from scope_ray.data.rows import PromptRecord

logger = logging.getLogger(__name__)

T = TypeVar("T")
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


def evaluate(llm: Any, records: Sequence[PromptRecord], k: int, temperature: float = 0.6,
             top_p: float = 1.0, top_k: int = -1, max_tokens: int = 96, seed: int | None = None,
             instruction_suffix: str | None = None) -> EvalReport:
    """Sample ``k`` responses per record with ``llm`` (a ``vllm.LLM``) and verify them.

    ``temperature=0`` is greedy (then use ``k=1``: the samples would be identical).
    Prompts are rendered with the data loader's renderer and the engine's tokenizer.

    ``seed=None`` samples from the engine's own seeded stream (seed it when creating the
    engine, as :func:`make_llm` does); a per-request seed is safe too, since CPU engines
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


def make_llm(model_dir: str | Path, seed: int = 0, max_model_len: int = 512,
             dtype: str | None = None) -> Any:
    """An in-process vLLM engine for evaluation (no weight-sync extension needed).

    ``dtype=None``: float32 on CPU, like the rollout engines (vLLM-CPU would otherwise
    downcast to bfloat16 and score a slightly different model); "auto" on GPUs.
    """
    from scope_ray.engines.vllm_engine import EngineOptions, create_llm, cuda_available

    dtype = dtype or ("auto" if cuda_available() else "float32")
    return create_llm(EngineOptions(model_dir=str(model_dir), seed=seed, max_model_len=max_model_len,
                                    dtype=dtype, enable_weight_sync=False))


def run_isolated(fn: Callable[..., T], *args: Any) -> T:
    """``fn(*args)`` in a spawned child process (``fn`` must be importable, args picklable).

    For anything that starts an in-process vLLM-CPU engine from a process that will train
    afterwards: the engine pins the process's OpenMP threads and caps torch at one thread
    for the rest of its life.
    """
    import multiprocessing
    from concurrent.futures import ProcessPoolExecutor

    from scope_ray.log_routing import capture_process_output

    with ProcessPoolExecutor(max_workers=1, mp_context=multiprocessing.get_context("spawn"),
                             initializer=capture_process_output) as pool:
        return pool.submit(fn, *args).result()


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
    records, longest = load_for_eval(model_dir, data_files)
    llm = make_llm(model_dir, seed=engine_seed,
                   max_model_len=longest + kwargs.get("max_tokens", 96))
    try:
        return evaluate(llm, records, k, **kwargs)
    finally:
        _shutdown(llm)


def _shutdown(llm: Any) -> None:
    # Free the engine's KV cache now rather than at interpreter exit (bootstrap evaluates
    # two models back to back in one process).
    engine = getattr(llm, "llm_engine", None)
    with contextlib.suppress(Exception):
        if engine is not None and hasattr(engine, "engine_core"):
            engine.engine_core.shutdown()
    del llm
    import gc

    gc.collect()


# ----------------------------------------------------------------------------- CLI


def _vllm_stream_handlers() -> list[logging.StreamHandler]:
    return [h for h in logging.getLogger("vllm").handlers
            if isinstance(h, logging.StreamHandler) and not isinstance(h, logging.FileHandler)]


@contextlib.contextmanager
def stdout_to_stderr() -> Iterator[None]:
    """Send everything that would reach stdout to stderr, so that ``--json`` output is
    the only thing on stdout: vLLM's log handler (configured at import to write to
    stdout, or re-pointed here if vLLM is already imported), Python prints, and fd 1
    itself (C extensions)."""
    previous_env = os.environ.get("VLLM_LOGGING_STREAM")
    os.environ["VLLM_LOGGING_STREAM"] = "ext://sys.stderr"
    swapped = [(h, h.setStream(sys.stderr)) for h in _vllm_stream_handlers()]
    sys.stdout.flush()
    saved = os.dup(1)
    try:
        os.dup2(2, 1)
        with contextlib.redirect_stdout(sys.stderr):
            yield
    finally:
        sys.stdout.flush()
        os.dup2(saved, 1)
        os.close(saved)
        for handler, stream in swapped:
            if stream is not None:
                handler.setStream(stream)
        if previous_env is None:
            os.environ.pop("VLLM_LOGGING_STREAM", None)
        else:
            os.environ["VLLM_LOGGING_STREAM"] = previous_env


def add_eval_arguments(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    parser.add_argument("--model", required=True,
                        help="HF model directory, or a Hugging Face id org/name[@revision] (scope_ray/model_source.py)")
    parser.add_argument("--data", required=True, nargs="+",
                        help="parquet/JSONL file(s) in verl's layout")
    parser.add_argument("--k", type=int, default=8, help="samples per problem (avg@K, pass@K)")
    parser.add_argument("--temperature", type=float, default=0.6)
    parser.add_argument("--top-p", type=float, default=1.0)
    parser.add_argument("--top-k", type=int, default=-1)
    parser.add_argument("--max-tokens", type=int, default=96, help="max response tokens")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--limit", type=int, default=0, help="evaluate the first N problems only")
    parser.add_argument("--dtype", default=None,
                        help="vLLM dtype (default: float32 on CPU, auto on GPU)")
    parser.add_argument("--json", action="store_true",
                        help="print exactly one JSON object (avg@K, pass@K, per_source)")
    return parser


def _print_table(title: str, summary: Mapping[str, Any], k: int) -> None:
    from rich.console import Console
    from rich.table import Table

    table = Table(title=title)
    for col in ("source", "problems", f"avg@{k}", f"pass@{k}"):
        table.add_column(col, justify="left" if col == "source" else "right")
    for src, m in summary["per_source"].items():
        table.add_row(src, str(int(m["n"])), f"{m[f'avg@{k}']:.3f}", f"{m[f'pass@{k}']:.3f}")
    n_all = sum(int(m["n"]) for m in summary["per_source"].values())
    table.add_row("[bold]all[/bold]", str(n_all), f"[bold]{summary[f'avg@{k}']:.3f}[/bold]",
                  f"[bold]{summary[f'pass@{k}']:.3f}[/bold]")
    Console().print(table)


def run_eval(args: argparse.Namespace) -> int:
    """``scope-ray eval``; returns the process exit code."""
    from scope_ray.config import ConfigError
    from scope_ray.model_source import ModelNotFound, resolve_model

    try:
        args.model = resolve_model(args.model)
    except ModelNotFound as exc:
        raise ConfigError(f"--model: {exc}") from None
    with stdout_to_stderr() if args.json else contextlib.nullcontext():
        records, longest = load_for_eval(args.model, args.data, args.limit)
        llm = make_llm(args.model, seed=args.seed, dtype=args.dtype,
                       max_model_len=longest + args.max_tokens)
        try:
            report = evaluate(llm, records, args.k, temperature=args.temperature,
                              top_p=args.top_p, top_k=args.top_k, max_tokens=args.max_tokens)
        finally:
            _shutdown(llm)
    if args.json:
        print(json.dumps(report.to_json()), flush=True)
    else:
        _print_table(f"{args.model} (T={args.temperature}, K={args.k}; pass@K unbiased)",
                     report.to_json(), args.k)
    return 0


def add_bootstrap_arguments(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    parser.add_argument("--cache-dir", default=None,
                        help="cache root (default: $SCOPE_RAY_CACHE or ~/.cache/scope-ray)")
    parser.add_argument("--force", action="store_true", help="rebuild even if a cache exists")
    parser.add_argument("--preset", choices=("default", "tiny"), default="default",
                        help="'tiny' is the reduced preset the tests use")
    return parser


def run_bootstrap(args: argparse.Namespace) -> int:
    """``scope-ray bootstrap``: build (or reuse) the embedded task and models, print paths
    and the accuracies measured when they were built."""
    from rich.console import Console
    from rich.table import Table

    from scope_ray.bootstrap.build import BootstrapOptions, bootstrap, default_cache_dir

    opts = BootstrapOptions.tiny_for_tests() if args.preset == "tiny" else BootstrapOptions()
    cache = Path(args.cache_dir) if args.cache_dir else default_cache_dir()
    art = bootstrap(opts, cache, force=args.force)
    table = Table(title=f"scope-ray bootstrap ({args.preset})", show_header=False)
    for name in ("cache_dir", "teacher_dir", "student_dir", "train_file", "test_file"):
        table.add_row(name, str(getattr(art, name)))
    for name, value in sorted(art.metrics.items()):
        table.add_row(name, f"{value:.3f}" if isinstance(value, float) else str(value))
    Console().print(table)
    return 0
