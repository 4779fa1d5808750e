"""``scope-ray`` command line: train, bootstrap, eval, plan, verify-checkpoint."""

from __future__ import annotations

import argparse
import sys


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
    from scope_ray.evaluation import add_bootstrap_arguments, add_eval_arguments

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
            from scope_ray.evaluation import run_bootstrap

            return run_bootstrap(args)
        from scope_ray.evaluation import run_eval

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


if __name__ == "__main__":
    sys.exit(main())
