"""``scope-ray`` command line: train, bootstrap, eval, plan, verify-checkpoint."""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import os
import sys
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any


def _add_train(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("train", help="train a student with SCOPE (or a baseline); no --config = embedded default")
    p.add_argument("--config", help="recipe YAML (launch/configs/*.yaml)")
    p.add_argument("--resume", metavar="RUN_DIR", help="continue the run in RUN_DIR from its last valid checkpoint")
    p.add_argument("overrides", nargs="*", help="dotted overrides, e.g. learner.lr=1e-5 trainer.total_steps=50")
    # Also after the subcommand, so `bash launch/train.sh -v ...` works; SUPPRESS keeps
    # the subparser from resetting a -v given before it.
    p.add_argument("-v", "--verbose", action="store_true", default=argparse.SUPPRESS,
                   help="show every library's output on the terminal (default: in train.log only)")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="scope-ray", description=__doc__)
    parser.add_argument("-v", "--verbose", action="store_true",
                        help="show every library's output on the terminal (default: in train.log only)")
    sub = parser.add_subparsers(dest="command", required=True)
    _add_train(sub)
    add_bootstrap_arguments(sub.add_parser("bootstrap", help="build the embedded tiny task, teacher and student"))
    add_eval_arguments(sub.add_parser("eval", help="avg@k / pass@k of a model on a dataset (vLLM)"))
    plan = sub.add_parser("plan", help="where every actor of a recipe would go on a cluster, and whether it fits")
    plan.add_argument("--config", help="recipe YAML (launch/configs/*.yaml); none = the embedded default")
    plan.add_argument("--layout", help="layout overlay (launch/configs/layouts/*.yaml)")
    plan.add_argument("--cluster", required=True, help="cluster file (launch/clusters/*.yaml)")
    plan.add_argument("--json", action="store_true", help="print the placements as JSON")
    plan.add_argument("overrides", nargs="*", help="dotted overrides, as for train")
    check = sub.add_parser("verify-checkpoint", help="check a checkpoint's (or a run's) files against its manifest")
    check.add_argument("path", help="a checkpoints/step_NNNNNN directory, or a run directory")
    args = parser.parse_args(argv)
    from scope_ray.log_routing import setup_driver_logging

    setup_driver_logging(args.verbose)

    from scope_ray.config import ConfigError

    try:
        if args.command == "train":
            from scope_ray.controller.launch import train_command

            return train_command(args.config, args.overrides, args.resume)
        if args.command == "verify-checkpoint":
            return _verify_checkpoint(args.path)
        if args.command == "plan":
            return _plan(args)
        if args.command == "bootstrap":
            return run_bootstrap(args)
        return run_eval(args)
    except ConfigError as exc:
        # Bad input: one line naming the key or file, no traceback.
        print(f"scope-ray: config error: {exc}", file=sys.stderr)
        return 2
    except Exception as exc:
        from scope_ray.controller.trainer import TrainingStopped

        if not isinstance(exc, TrainingStopped):
            raise
        # A deliberate stop (learner failure, non-finite steps): the cause and the last
        # checkpoint in one line, no traceback.
        print(f"scope-ray: training stopped: {exc}", file=sys.stderr)
        return 3


def _plan(args: argparse.Namespace) -> int:
    """The placement table; exit 0 when everything fits, 1 naming the first actor that
    does not, 2 for a bad config or cluster file."""
    from scope_ray.config import ConfigError, load_config, overlay_overrides
    from scope_ray.planning import format_plan, load_cluster, plan_run
    from scope_ray.planning.placement import to_json

    layout = overlay_overrides(args.layout) if args.layout else []
    cfg = load_config(args.config, [*layout, *args.overrides], check_paths=False)
    try:
        nodes = load_cluster(args.cluster)
        placed, sources = plan_run(cfg, nodes)
    except (OSError, ValueError) as exc:
        raise ConfigError(str(exc)) from exc
    print(to_json(placed) if args.json else format_plan(placed, sources))
    return 1 if any(p.problem for p in placed) else 0


def _verify_checkpoint(path: str) -> int:
    """One line per checkpoint; exit 0 when all are intact, 1 otherwise."""
    from scope_ray.controller.checkpoint import verify_path

    try:
        results = verify_path(path)
    except FileNotFoundError as exc:
        print(f"scope-ray: {exc}", file=sys.stderr)
        return 2
    for ckpt_dir, problem in results:
        print(f"ok       {ckpt_dir}" if problem is None else f"INVALID  {ckpt_dir}: {problem}")
    return 0 if all(problem is None for _, problem in results) else 1


# ----------------------------------------------------------------------------- eval, bootstrap


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
    from scope_ray.engines.vllm_engine import make_eval_llm, shutdown_llm
    from scope_ray.evaluation import evaluate, load_for_eval
    from scope_ray.model_source import ModelNotFound, resolve_model

    try:
        args.model = resolve_model(args.model)
    except ModelNotFound as exc:
        raise ConfigError(f"--model: {exc}") from None
    with stdout_to_stderr() if args.json else contextlib.nullcontext():
        records, longest = load_for_eval(args.model, args.data, args.limit)
        llm = make_eval_llm(args.model, seed=args.seed, dtype=args.dtype, max_model_len=longest + args.max_tokens)
        try:
            report = evaluate(llm, records, args.k, temperature=args.temperature,
                              top_p=args.top_p, top_k=args.top_k, max_tokens=args.max_tokens)
        finally:
            shutdown_llm(llm)
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
    parser.add_argument("--preset", choices=("default", "tiny", "imperfect-teacher"), default="default",
                        help="'tiny' is the reduced preset the tests use; 'imperfect-teacher' has a teacher "
                             "that is systematically wrong on one problem type (README)")
    return parser


def run_bootstrap(args: argparse.Namespace) -> int:
    """``scope-ray bootstrap``: build (or reuse) the embedded task and models, print paths
    and the accuracies measured when they were built."""
    from rich.console import Console
    from rich.table import Table

    from scope_ray.bootstrap.build import BootstrapOptions, bootstrap, default_cache_dir

    opts = BootstrapOptions.preset(args.preset)
    cache = Path(args.cache_dir) if args.cache_dir else default_cache_dir()
    art = bootstrap(opts, cache, force=args.force)
    table = Table(title=f"scope-ray bootstrap ({args.preset})", show_header=False)
    for name in ("cache_dir", "teacher_dir", "student_dir", "train_file", "test_file"):
        table.add_row(name, str(getattr(art, name)))
    for name, value in sorted(art.metrics.items()):
        table.add_row(name, f"{value:.3f}" if isinstance(value, float) else str(value))
    Console().print(table)
    return 0


if __name__ == "__main__":
    sys.exit(main())
