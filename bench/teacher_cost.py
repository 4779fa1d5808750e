"""Teacher cost per step: SCOPE vs OPD on the same run settings, side by side.

    .venv/bin/python bench/teacher_cost.py                      # 6 steps x 3 reps x {s0, s1}
    .venv/bin/python bench/teacher_cost.py --steps 10 --reps 3 --student-sft-steps 300

SCOPE sends only the *incorrect* rollouts to the teacher; OPD sends all of them. So the
student must get some rollouts right for the comparison to mean anything: by default it
is a random-init student trained ``--student-sft-steps`` SFT steps on the task (a random
one gets everything wrong, and SCOPE then costs exactly what OPD costs).

One set of rollout workers and one teacher serve both algorithms (two learner groups,
one per algorithm, both from the same initial student, reset before every trial);
trials alternate scope / opd (opd / scope on odd repetitions), under
``trainer.max_staleness=0`` and ``=1`` (``--staleness``: any of 0-4; schedule ``stream``). Per step (means over the
steps of each trial without its first and last, i.e. pipeline fill and drain):

- teacher tokens: ``teacher/scored_tokens`` (response tokens scored, from metrics.jsonl)
  and the server's real tokens (prompt + response, ``stats()``);
- teacher seconds: teacher forward time (``stats()['forward_s']``) and the trainer's
  ``time/score_busy_s`` (sum of score() call latencies, which counts queueing and
  overlapping calls, so it is larger);
- teacher share of step time: wall time in which a ``score()`` call is in flight but no
  ``generate()`` runs (share_vs_generation, the brief's definition), and in which no
  generate / train / weight-sync call runs either (share_alone: the teacher alone on the
  critical path), both divided by the step time. Score-call spans include batching
  waits, so both shares are upper bounds. Target: share <= 10%.

``--ppr 4 1`` adds ``rollout.prompts_per_request`` as a third axis (side by side too):
smaller requests let scoring start sooner and leave a shorter unscored tail after the
last generation, at the price of smaller generation batches. ``--stream-rollouts 1 0``
adds ``rollout.stream_rollouts`` as a fourth: workers yield each sample as it finishes
decoding (1, the default) or return whole requests (0, variants suffixed ``_whole``).
"""

from __future__ import annotations

import argparse
import logging
import sys
from typing import Any

from _common import (
    SMALL_STEP, Cluster, attach_spans, interleave, load_line, machine_info, median,
    add_trial_args, medians, teacher_spec,
    prepare_inputs, setup_logging, trial_summary, write_result,
)

logger = logging.getLogger("bench.teacher_cost")
SHARE_TARGET = 0.10
ALGOS = ("scope", "opd")


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_trial_args(ap)
    ap.add_argument("--staleness", type=int, nargs="+", default=[0, 1], choices=[0, 1, 2, 3, 4])
    ap.add_argument("--ppr", type=int, nargs="+", default=[4],
                    help="rollout.prompts_per_request values to compare (smaller: scoring streams sooner)")
    ap.add_argument("--stream-rollouts", type=int, nargs="+", default=[1], choices=[1, 0],
                    help="rollout.stream_rollouts values to compare (1: samples stream as they finish)")
    ap.add_argument("--teacher", type=int, nargs=3, default=None, metavar=("HIDDEN", "LAYERS", "HEADS"),
                    help="teacher shape (default: hidden 256, 4 layers, 8 heads, 3.1M parameters). On a CPU "
                         "a forward costs the same per token whether it scores or decodes, so a teacher 7x the "
                         "student costs more than generation; on a GPU prefill is far cheaper per token than "
                         "decode. A smaller teacher gives the GPU's stage ratio.")
    ap.add_argument("--student-sft-steps", type=int, default=200,
                    help="SFT steps for the student so some rollouts are correct (0: random student)")
    return ap.parse_args(argv)


Case = tuple[int, int, int]  # (max_staleness, prompts_per_request, stream_rollouts)


def variant(algo: str, staleness: int, ppr: int, stream: int = 1) -> str:
    return f"{algo}_s{staleness}_ppr{ppr}" + ("" if stream else "_whole")


def case_name(s: int, p: int, g: int) -> str:
    return f"s{s}_ppr{p}" + ("" if g else "_whole")


def settings(staleness: list[int], pprs: list[int], streams: list[int] = (1,)) -> list[Case]:
    return [(s, p, g) for s in staleness for p in pprs for g in streams]


def figures(summaries: list[dict[str, Any]], cases: list[Case], reps: int) -> dict[str, Any]:
    by = {(s["rep"], s["name"]): s["mean"] for s in summaries}
    out: dict[str, Any] = {}
    for s, p, g in cases:
        for algo in ALGOS:
            ms = [by[(r, variant(algo, s, p, g))] for r in range(reps)]
            out[variant(algo, s, p, g)] = {
                **medians(ms, ("step_s", "accuracy", "rollout_tokens", "scored_tokens", "logged_score_busy_s")),
                "teacher_real_tokens": median([m["teacher_tokens"] for m in ms]),
                "teacher_forward_s": median([m["score_busy_s"] for m in ms]),
                "share_vs_generation": median([m["score_not_overlapped_gen_s"] / m["step_s"] for m in ms]),
                "share_alone": median([m["score_alone_s"] / m["step_s"] for m in ms]),
                "forward_share": median([m["score_busy_s"] / m["step_s"] for m in ms]),
            }
        pairs = [(by[(r, variant("scope", s, p, g))], by[(r, variant("opd", s, p, g))]) for r in range(reps)]
        out[f"ratio_{case_name(s, p, g)}"] = {
            "scored_tokens_scope_over_opd": median([a["scored_tokens"] / max(b["scored_tokens"], 1) for a, b in pairs]),
            "teacher_s_scope_over_opd": median([a["score_busy_s"] / max(b["score_busy_s"], 1e-9) for a, b in pairs]),
            "step_s_scope_over_opd": median([a["step_s"] / b["step_s"] for a, b in pairs]),
        }
    return out


def print_table(fig: dict[str, Any], cases: list[Case], info: dict[str, Any],
                info_after: dict[str, Any]) -> None:
    print(f"\nteacher cost per step (medians over reps of steady-state means); {info['cpus']} CPUs, load "
          f"{info['loadavg']} -> {info_after['loadavg']}")
    print(f"{'variant':<20} {'acc':>5} {'rollout tok':>11} {'scored tok':>10} {'teacher s':>9} {'logged s':>8} "
          f"{'step s':>6} {'fwd/step':>8} {'share vs gen':>12} {'share alone':>11}")
    for s, p, g in cases:
        for algo in ALGOS:
            f = fig[variant(algo, s, p, g)]
            print(f"{variant(algo, s, p, g):<20} {f['accuracy']:5.2f} {f['rollout_tokens']:11.0f} "
                  f"{f['scored_tokens']:10.0f} "
                  f"{f['teacher_forward_s']:9.3f} {f['logged_score_busy_s']:8.3f} {f['step_s']:6.2f} "
                  f"{f['forward_share']:8.1%} {f['share_vs_generation']:12.1%} {f['share_alone']:11.1%}")
        r = fig[f"ratio_{case_name(s, p, g)}"]
        print(f"  {case_name(s, p, g)}: SCOPE/OPD scored tokens {r['scored_tokens_scope_over_opd']:.2f}, teacher seconds "
              f"{r['teacher_s_scope_over_opd']:.2f}, step time {r['step_s_scope_over_opd']:.2f}")
    for s, p, g in cases:
        share = fig[variant("scope", s, p, g)]["share_vs_generation"]
        print(f"target SCOPE teacher share <= {SHARE_TARGET:.0%} ({case_name(s, p, g)}, score not overlapped with "
              f"generation): {share:.1%} ({'met' if share <= SHARE_TARGET else 'NOT met'}); teacher alone "
              f"{fig[variant('scope', s, p, g)]['share_alone']:.1%}")


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    setup_logging(args.verbose)
    info_before = machine_info()
    logger.info("%s", load_line("start"))
    cases = settings(args.staleness, args.ppr, args.stream_rollouts)
    teacher = teacher_spec(*args.teacher) if args.teacher else None
    inputs = prepare_inputs(args.work_dir, student_sft_steps=args.student_sft_steps, teacher=teacher)
    base = [*SMALL_STEP, "trainer.schedule=stream", *args.overrides]
    cluster = Cluster(inputs, [*base, "algorithm.name=scope"], args.work_dir / "teacher_cost", num_cpus=args.num_cpus)
    trials, reps = [], []
    try:
        cluster.add_learner("opd", ["algorithm.name=opd"])
        learner_of = {"scope": "default", "opd": "opd"}
        if args.warmup_steps:
            cluster.trial("warmup", [f"trainer.total_steps={args.warmup_steps}"])
        names = [(algo, s, p, g) for s, p, g in cases for algo in ALGOS]
        for rep, (algo, s, p, g) in interleave(names, args.reps):
            logger.info("rep %d %s  %s", rep, variant(algo, s, p, g), load_line("now"))
            trials.append(cluster.trial(variant(algo, s, p, g), [
                f"algorithm.name={algo}", f"trainer.max_staleness={s}", f"rollout.prompts_per_request={p}",
                f"rollout.stream_rollouts={'true' if g else 'false'}",
                f"trainer.total_steps={args.steps}"], learner=learner_of[algo]))
            reps.append(rep)
    finally:
        attach_spans(trials)
        cluster.close()
    info_after = machine_info()
    summaries = [dict(trial_summary(t, args.skip_first, args.skip_last), rep=r) for t, r in zip(trials, reps)]
    fig = figures(summaries, cases, args.reps)
    print_table(fig, cases, info_before, info_after)
    write_result("teacher_cost", {
        "command": " ".join(["bench/teacher_cost.py", *(argv if argv is not None else sys.argv[1:])]),
        "machine_before": info_before, "machine_after": info_after, "inputs": inputs.meta,
        "settings": vars(args) | {"work_dir": str(args.work_dir), "out": str(args.out)},
        "share_target": SHARE_TARGET, "figures": fig, "trials": summaries,
    }, args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
