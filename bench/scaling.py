"""Scaling on this machine: rollout tokens per second with 1 / 2 rollout workers and
1 / 2 learner workers, side by side.

    .venv/bin/python bench/scaling.py                              # 4 layouts x 3 reps
    .venv/bin/python bench/scaling.py --reps 3 --steps 6 trainer.max_staleness=1

One local Ray holds two rollout workers, one teacher and two learner groups (1 and 2
ZeRO-2 ranks, same initial student); a layout uses the first 1 or 2 rollout workers and
one of the groups, and every trial is reset to the same start (see ``_common.Cluster``).
Layouts alternate r1l1 r2l1 r1l2 r2l2 / reversed. Per layout: rollout tokens per second
(steady state: the first and last step of each trial left out), its ratio to r1l1 (per
repetition, then the median), and each stage's busy time per actor, which is what the
GPU projection in RESULTS.md starts from.

On this 2-core machine the actors share two cores, so a second worker of a stage only
helps while the other stages leave a core idle; that, not the controller, bounds these
ratios.
"""

from __future__ import annotations

import argparse
import logging
import sys
from typing import Any

from _common import (
    SMALL_STEP, Cluster, attach_spans, interleave, load_line, machine_info, median,
    add_trial_args, medians,
    prepare_inputs, setup_logging, trial_summary, write_result,
)

logger = logging.getLogger("bench.scaling")
LAYOUTS: dict[str, tuple[int, str]] = {"r1l1": (1, "default"), "r2l1": (2, "default"), "r1l2": (1, "l2"),
                                       "r2l2": (2, "l2")}


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_trial_args(ap)
    ap.add_argument("--layouts", nargs="+", default=list(LAYOUTS), choices=list(LAYOUTS))
    return ap.parse_args(argv)


def figures(summaries: list[dict[str, Any]], layouts: list[str], reps: int) -> dict[str, Any]:
    by = {(s["rep"], s["name"]): s["mean"] for s in summaries}
    base = layouts[0]
    out = {}
    for name in layouts:
        ms = [by[(r, name)] for r in range(reps)]
        out[name] = {
            "tokens_per_s": median([m["tokens_per_s"] for m in ms]),
            "speedup_vs_" + base: median([m["tokens_per_s"] / by[(r, base)]["tokens_per_s"] for r, m in enumerate(ms)]),
            "speedup_per_rep": [m["tokens_per_s"] / by[(r, base)]["tokens_per_s"] for r, m in enumerate(ms)],
            **medians(ms, ("step_s", "generate_busy_s", "score_busy_s", "train_busy_s", "sync_busy_s",
                           "rollout_tokens")),
        }
    return out


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    setup_logging(args.verbose)
    info_before = machine_info()
    logger.info("%s", load_line("start"))
    inputs = prepare_inputs(args.work_dir)
    cluster = Cluster(inputs, [*SMALL_STEP, "rollout.num_workers=2", *args.overrides], args.work_dir / "scaling",
                      num_cpus=args.num_cpus)
    trials, reps = [], []
    try:
        cluster.add_learner("l2", ["learner.num_workers=2"])
        if args.warmup_steps:
            for key in ("default", "l2"):
                cluster.trial(f"warmup-{key}", [f"trainer.total_steps={args.warmup_steps}"], learner=key)
        for rep, name in interleave(args.layouts, args.reps):
            n_roll, learner = LAYOUTS[name]
            logger.info("rep %d %s  %s", rep, name, load_line("now"))
            trials.append(cluster.trial(name, [f"trainer.total_steps={args.steps}", f"rollout.num_workers={n_roll}"],
                                        learner=learner, rollout_workers=n_roll))
            reps.append(rep)
    finally:
        attach_spans(trials)
        cluster.close()
    info_after = machine_info()
    summaries = [dict(trial_summary(t, args.skip_first, args.skip_last), rep=r) for t, r in zip(trials, reps)]
    fig = figures(summaries, args.layouts, args.reps)
    base = args.layouts[0]
    print(f"\nscaling (steady-state medians; per-actor busy seconds per step); {info_before['cpus']} CPUs, load "
          f"{info_before['loadavg']} -> {info_after['loadavg']}")
    print(f"{'layout':<6} {'tok/s':>7} {'x ' + base:>8} {'per rep':>12} {'step s':>7} {'gen':>6} {'score':>6} "
          f"{'train':>6} {'sync':>6}")
    for name, f in fig.items():
        print(f"{name:<6} {f['tokens_per_s']:7.0f} {f['speedup_vs_' + base]:8.2f} "
              f"{' '.join(f'{x:.2f}' for x in f['speedup_per_rep']):>12} {f['step_s']:7.2f} "
              f"{f['generate_busy_s']:6.2f} {f['score_busy_s']:6.2f} {f['train_busy_s']:6.2f} {f['sync_busy_s']:6.2f}")
    write_result("scaling", {
        "command": " ".join(["bench/scaling.py", *(argv if argv is not None else sys.argv[1:])]),
        "machine_before": info_before, "machine_after": info_after, "inputs": inputs.meta,
        "settings": vars(args) | {"work_dir": str(args.work_dir), "out": str(args.out)},
        "figures": fig, "trials": summaries,
    }, args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
