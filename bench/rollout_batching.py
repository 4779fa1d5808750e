"""Rollout batching benchmark, side by side on the same prompts and seeds:

* ``one_at_a_time``: a step as 4 back-to-back calls per worker, each decoded start to
  end before the next (``rollout.max_calls_in_flight=1``, the default on a CPU);
* ``continuous``: the same 4 calls, all decoding together in one engine
  (``rollout.max_calls_in_flight=0``, the default on a GPU);
* ``whole_share``: one call per worker per step (``rollout.prompts_per_request=0``).

    .venv/bin/python bench/rollout_batching.py                          # 6 steps x 3 reps
    .venv/bin/python bench/rollout_batching.py model.max_response_tokens=256   # longer tails

One set of actors serves every trial (the engines are sized for a worker's whole share,
``max_num_seqs`` = B x G), the learner and workers are reset to the same initial weights
and the sampler rewound before each trial, and trials alternate A B / B A, so both
variants generate the same prompts with the same seeds. Reported per variant (medians
over repetitions of the steady steps' means): step time, generation wall time, rollout
tokens per second of generation wall time, the learner's padded fraction, the mean
response length and the fraction cut at the token limit; and each variant's ratios to
``one_at_a_time``. On this 2-core machine the tokens/s ratio is what
one engine kept full buys over one that drains between calls; GPU figures need a GPU.
"""

from __future__ import annotations

import argparse
import logging
import sys
from typing import Any

from _common import (Cluster, add_trial_args, attach_spans, interleave, load_line, machine_info, median,
                     prepare_inputs, setup_logging, trial_summary, write_result)

logger = logging.getLogger("bench.rollout_batching")
VARIANTS = {
    "one_at_a_time": ["rollout.prompts_per_request=4", "rollout.max_calls_in_flight=1"],
    "continuous": ["rollout.prompts_per_request=4", "rollout.max_calls_in_flight=0"],
    "whole_share": ["rollout.prompts_per_request=0", "rollout.max_calls_in_flight=0"],
}
BASELINE = "one_at_a_time"
BASE = ["algorithm.name=scope", "trainer.eval_every=0", "trainer.eval_at_end=false", "trainer.save_every=0",
        "trainer.max_staleness=0"]


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_trial_args(ap)
    args = ap.parse_args(argv)
    setup_logging(args.verbose)
    info = machine_info()
    inputs = prepare_inputs(args.work_dir)
    cluster = Cluster(inputs, [*BASE, *args.overrides], args.work_dir / "rollout_batching", num_cpus=args.num_cpus)
    trials = []
    try:
        if args.warmup_steps:
            cluster.trial("warmup", [f"trainer.total_steps={args.warmup_steps}"])
        for rep, name in interleave(list(VARIANTS), args.reps):
            logger.info("rep %d %s  %s", rep, name, load_line("now"))
            t = cluster.trial(name, [*VARIANTS[name], f"trainer.total_steps={args.steps}"])
            trials.append((rep, name, t))
    finally:
        attach_spans([t for _, _, t in trials])
        cluster.close()
    rows = []
    for rep, name, t in trials:
        s = trial_summary(t, args.skip_first, args.skip_last)
        m = s["mean"]
        padded = [r.metrics.get("learner/padded_fraction", float("nan")) for r in t.steps]
        lengths = [r.metrics.get("rollout/response_len_mean", float("nan")) for r in t.steps]
        truncated = [r.metrics.get("rollout/truncated_fraction", float("nan")) for r in t.steps]
        rows.append({"rep": rep, "variant": name, "step_s": m["step_s"], "generate_s": m["logged_generate_s"],
                     "rollout_tokens": m["rollout_tokens"],
                     "gen_tokens_per_s": m["rollout_tokens"] / max(m["logged_generate_s"], 1e-9),
                     "padded_fraction": median(padded), "response_len_mean": median(lengths),
                     "truncated_fraction": median(truncated), "load": t.load})
    summary = summarize(rows)
    print_table(summary, info, machine_info())
    write_result("rollout_batching", {
        "command": " ".join(["bench/rollout_batching.py", *(argv if argv is not None else sys.argv[1:])]),
        "machine_before": info, "machine_after": machine_info(), "settings": vars(args) | {"work_dir": str(args.work_dir),
                                                                                           "out": str(args.out)},
        "base_overrides": BASE, "variants": VARIANTS, "summary": summary, "rows": rows,
    }, args.out)
    return 0


def summarize(rows: list[dict[str, Any]]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for name in VARIANTS:
        mine = [r for r in rows if r["variant"] == name]
        out[name] = {k: median([r[k] for r in mine]) for k in
                     ("step_s", "generate_s", "rollout_tokens", "gen_tokens_per_s", "padded_fraction",
                      "response_len_mean", "truncated_fraction")}
    reps = sorted({r["rep"] for r in rows})

    def ratio(name: str, key: str) -> list[float]:  # name over the baseline, per repetition
        by = {(r["rep"], r["variant"]): r[key] for r in rows}
        return [by[k, name] / by[k, BASELINE] for k in reps]

    for name in VARIANTS:
        if name != BASELINE:
            out[name]["tokens_per_s_ratio"] = ratio(name, "gen_tokens_per_s")
            out[name]["step_s_ratio"] = ratio(name, "step_s")
    return out


def print_table(s: dict[str, Any], info: dict[str, Any], after: dict[str, Any]) -> None:
    print(f"\nrollout batching (medians over reps of steady-step means); {info['cpus']} CPUs, load "
          f"{info['loadavg']} -> {after['loadavg']}")
    print(f"{'variant':<14} {'step s':>7} {'gen s':>7} {'tokens':>7} {'gen tok/s':>10} {'padded':>7} "
          f"{'mean len':>8} {'at limit':>8}")
    for name in VARIANTS:
        m = s[name]
        print(f"{name:<14} {m['step_s']:7.2f} {m['generate_s']:7.2f} {m['rollout_tokens']:7.0f} "
              f"{m['gen_tokens_per_s']:10.0f} {m['padded_fraction']:7.1%} {m['response_len_mean']:8.1f} "
              f"{m['truncated_fraction']:8.1%}")
    for name in VARIANTS:
        if name == BASELINE:
            continue
        tps, step = s[name]["tokens_per_s_ratio"], s[name]["step_s_ratio"]
        print(f"{name} / {BASELINE}: generation tokens/s x{median(tps):.2f} (per rep "
              f"{', '.join(f'{x:.2f}' for x in tps)}), step time x{median(step):.2f} (per rep "
              f"{', '.join(f'{x:.2f}' for x in step)})")


if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO)
    sys.exit(main())
