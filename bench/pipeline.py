"""Pipeline benchmark: the same work under three controller schedules, side by side.

    .venv/bin/python bench/pipeline.py                       # default: 6 steps x 3 reps
    .venv/bin/python bench/pipeline.py --steps 8 --reps 3 trainer.prompts_per_step=16

Schedules (``trainer.schedule`` / ``trainer.max_staleness``):

- ``sequential``: generate every group, then score every group, then train, then sync;
- ``stream_s0``: teacher scoring streams behind generation, strictly on-policy;
- ``stream_s1``: as stream_s0, and the next step generates (and is scored) while the
  learner trains (one policy version of lag);
- ``stream_s0_whole`` / ``stream_s1_whole``: the same with ``rollout.stream_rollouts=false``,
  i.e. a worker returns a whole request (``prompts_per_request`` groups) at once instead
  of yielding each sample as it finishes decoding.

One set of actors serves every trial (the learner is reloaded from its initial
checkpoint and the rollout workers get those weights back before each trial), trials
alternate A B C / C B A, and the first and last step of every trial (pipeline fill and
drain) are left out of the means. Stage busy time is measured on the actor side (Ray task timeline; teacher
forward time from its ``stats()``); the trainer's own ``time/*`` metrics are reported
next to it. Targets: streamed step time within 1.25x of the busiest stage;
stream_s1 >= 1.3x faster than sequential.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from typing import Any

from _common import (
    SMALL_STEP, Cluster, attach_spans, interleave, load_line, machine_info, median,
    add_trial_args, medians,
    prepare_inputs, setup_logging, trial_summary, write_result,
)

logger = logging.getLogger("bench.pipeline")

SCHEDULES: dict[str, list[str]] = {
    "sequential": ["trainer.schedule=sequential", "trainer.max_staleness=0"],
    "stream_s0": ["trainer.schedule=stream", "trainer.max_staleness=0"],
    "stream_s1": ["trainer.schedule=stream", "trainer.max_staleness=1"],
    "stream_s0_whole": ["trainer.schedule=stream", "trainer.max_staleness=0", "rollout.stream_rollouts=false"],
    "stream_s1_whole": ["trainer.schedule=stream", "trainer.max_staleness=1", "rollout.stream_rollouts=false"],
    # Generation further ahead (trainer.max_staleness up to 4); not in the default set.
    "stream_s2": ["trainer.schedule=stream", "trainer.max_staleness=2"],
    "stream_s4": ["trainer.schedule=stream", "trainer.max_staleness=4"],
    # rollout.partial_rollouts: a quarter more groups in flight, the stragglers paused
    # once the step has its groups and finished in the next stream; not in the default set.
    "stream_s1_partial": ["trainer.schedule=stream", "trainer.max_staleness=1", "rollout.partial_rollouts=true"],
    "stream_s2_partial": ["trainer.schedule=stream", "trainer.max_staleness=2", "rollout.partial_rollouts=true"],
    "stream_s4_partial": ["trainer.schedule=stream", "trainer.max_staleness=4", "rollout.partial_rollouts=true"],
}
DEFAULT_SCHEDULES = ["sequential", "stream_s0", "stream_s1", "stream_s0_whole", "stream_s1_whole"]
RATIO_TARGET = 1.25
SPEEDUP_TARGET = 1.3


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_trial_args(ap, warmup_steps=2)
    ap.add_argument("--schedules", nargs="+", choices=list(SCHEDULES), default=DEFAULT_SCHEDULES,
                    help="which to run (sequential is always run: the ratios are against it)")
    args = ap.parse_args(argv)
    args.schedules = ["sequential", *[s for s in args.schedules if s != "sequential"]]
    return args


def _core_bound(m: dict[str, float]) -> float:
    busy = m["generate_busy_s"] + m["score_busy_s"] + m["train_busy_s"] + m["sync_busy_s"]
    return busy / (os.cpu_count() or 1)


def compare(summaries: list[dict[str, Any]], reps: int) -> dict[str, Any]:
    """Per-repetition ratios (side by side), then their medians."""
    by = {(s["rep"], s["name"]): s for s in summaries}
    out: dict[str, Any] = {}
    for name in dict.fromkeys(s["name"] for s in summaries):
        mine = [by[(r, name)]["mean"] for r in range(reps)]
        speedups = [by[(r, "sequential")]["mean"]["step_s"] / m["step_s"] for r, m in enumerate(mine)]
        out[name] = {
            **medians(mine, ("step_s", "generate_busy_s", "score_busy_s", "train_busy_s", "sync_busy_s",
                             "busiest_stage_s", "step_over_busiest")),
            "step_over_busiest_per_rep": [m["step_over_busiest"] for m in mine],
            # All stages' busy time spread over every core: on a machine with fewer cores
            # than busy actors this, not the busiest stage, is the floor.
            "core_bound_s": median([_core_bound(m) for m in mine]),
            "step_over_bound": median([m["step_s"] / max(m["busiest_stage_s"], _core_bound(m)) for m in mine]),
            "speedup_vs_sequential": median(speedups),
            "speedup_vs_sequential_per_rep": speedups,
            "logged": medians(mine, [k for k in mine[0] if k.startswith("logged_")]),
            **medians(mine, ("score_not_overlapped_gen_s", "tokens_per_s")),
            "busiest_stage": [by[(r, name)]["busiest_stage"] for r in range(reps)],
        }
    return out


def print_table(cmp: dict[str, Any], info_before: dict[str, Any], info_after: dict[str, Any]) -> None:
    print(f"\npipeline: medians over reps of per-trial steady-state means; machine {info_before['cpus']} CPUs, "
          f"load {info_before['loadavg']} -> {info_after['loadavg']}")
    print(f"{'schedule':<15} {'step s':>7} {'gen':>6} {'score':>6} {'train':>6} {'sync':>6} "
          f"{'step/busiest':>12} {'step/bound':>10} {'x vs seq':>8}   logged: {'gen_busy':>8} {'score_busy':>10} "
          f"{'train':>6} {'sync':>6}")
    for name, c in cmp.items():
        lg = c["logged"]
        print(f"{name:<15} {c['step_s']:7.2f} {c['generate_busy_s']:6.2f} {c['score_busy_s']:6.2f} "
              f"{c['train_busy_s']:6.2f} {c['sync_busy_s']:6.2f} {c['step_over_busiest']:12.2f} "
              f"{c['step_over_bound']:10.2f} "
              f"{c['speedup_vs_sequential']:8.2f}   {'':8}{lg['logged_generate_busy_s']:8.2f} "
              f"{lg['logged_score_busy_s']:10.2f} {lg['logged_train_s']:6.2f} {lg['logged_sync_s']:6.2f}")
    print("gen/score/train/sync: actor-side busy seconds per step (teacher: forward time); step/bound: step time over "
          "max(busiest stage, all stages' busy time / CPU count)")
    if "stream_s0" not in cmp or "stream_s1" not in cmp:
        return
    s0, s1 = cmp["stream_s0"], cmp["stream_s1"]
    print(f"target streamed step/busiest <= {RATIO_TARGET}: stream_s0 {s0['step_over_busiest']:.2f} "
          f"({'met' if s0['step_over_busiest'] <= RATIO_TARGET else 'NOT met'}), stream_s1 "
          f"{s1['step_over_busiest']:.2f} ({'met' if s1['step_over_busiest'] <= RATIO_TARGET else 'NOT met'})")
    print(f"target stream_s1 >= {SPEEDUP_TARGET}x vs sequential: {s1['speedup_vs_sequential']:.2f}x "
          f"({'met' if s1['speedup_vs_sequential'] >= SPEEDUP_TARGET else 'NOT met'}); per rep "
          + ", ".join(f"{x:.2f}" for x in s1["speedup_vs_sequential_per_rep"]))


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    setup_logging(args.verbose)
    info_before = machine_info()
    logger.info("%s", load_line("start"))
    inputs = prepare_inputs(args.work_dir)
    cluster = Cluster(inputs, [*SMALL_STEP, *args.overrides], args.work_dir / "pipeline", num_cpus=args.num_cpus)
    trials, reps = [], []
    try:
        if args.warmup_steps:
            cluster.trial("warmup", [*SCHEDULES["stream_s1"], f"trainer.total_steps={args.warmup_steps}"])
        for rep, name in interleave(args.schedules, args.reps):
            logger.info("rep %d: %s  %s", rep, name, load_line("now"))
            trials.append(cluster.trial(name, [*SCHEDULES[name], f"trainer.total_steps={args.steps}"]))
            reps.append(rep)
    finally:
        attach_spans(trials)
        cluster.close()
    info_after = machine_info()
    summaries = [dict(trial_summary(t, args.skip_first, args.skip_last), rep=r) for t, r in zip(trials, reps)]
    cmp = compare(summaries, args.reps)
    print_table(cmp, info_before, info_after)
    write_result("pipeline", {
        "command": " ".join(["bench/pipeline.py", *(argv if argv is not None else sys.argv[1:])]),
        "machine_before": info_before, "machine_after": info_after, "inputs": inputs.meta,
        "settings": vars(args) | {"work_dir": str(args.work_dir), "out": str(args.out)},
        "targets": {"step_over_busiest_max": RATIO_TARGET, "stream_s1_speedup_min": SPEEDUP_TARGET},
        "comparison": cmp, "trials": summaries,
    }, args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
