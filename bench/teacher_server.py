"""Teacher server benchmark: scored tokens per second, batched vs one sequence per forward.

    .venv/bin/python bench/teacher_server.py                     # 1, 8, 32 callers x 3 reps
    .venv/bin/python bench/teacher_server.py --callers 1 8 32 64 --sequences 512 --reps 3

A fixed workload (``--sequences`` sequences, prompts of 24-48 tokens, responses of
20-120 tokens, seeded) is scored by ``N`` concurrent callers: N ``score()`` calls are
kept in flight (each of ``--seqs-per-call`` sequences), a new one submitted as each
returns, i.e. N closed-loop callers. Two servers run side by side (same random teacher,
the embedded teacher's shape by default: hidden 256, 4 layers), each with the Ray
resources the trainer gives a replica:

- ``batched``: ``max_batch_tokens`` large (default 16384), ``max_wait_ms`` 5;
- ``single``: ``max_batch_tokens=1``, ``max_wait_ms=0`` -- the packer puts every sequence
  in a forward of its own (one request at a time).

Trials alternate batched / single (single / batched on odd repetitions). Reported:
scored (response) tokens per second, the batched / single ratio per caller count
(target: >= 4x at 32 callers), and padding waste from the server's ``stats()``
(1 - real tokens / padded slots).
"""

from __future__ import annotations

import argparse
import logging
import random
import sys
import time
from pathlib import Path
from typing import Any

from _common import (
    DEFAULT_WORK_DIR, init_ray, interleave, load_line, machine_info, median, prepare_inputs, teacher_spec,
    setup_logging, write_result,
)

logger = logging.getLogger("bench.teacher_server")
TARGET = 4.0


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--callers", type=int, nargs="+", default=[1, 8, 32])
    ap.add_argument("--sequences", type=int, default=192, help="sequences scored per trial")
    ap.add_argument("--seqs-per-call", type=int, default=1, help="sequences in one score() call")
    ap.add_argument("--min-response", type=int, default=20)
    ap.add_argument("--max-response", type=int, default=120)
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--max-batch-tokens", type=int, default=16384, help="the batched server's budget")
    ap.add_argument("--max-wait-ms", type=float, default=5.0, help="the batched server's wait")
    ap.add_argument("--teacher", type=int, nargs=3, default=[256, 4, 8], metavar=("HIDDEN", "LAYERS", "HEADS"))
    ap.add_argument("--num-cpus", type=float, default=0.5, help="Ray num_cpus of each server (as the trainer)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--work-dir", type=Path, default=DEFAULT_WORK_DIR)
    ap.add_argument("--out", type=Path)
    ap.add_argument("-v", "--verbose", action="store_true")
    return ap.parse_args(argv)


def make_workload(n: int, lo: int, hi: int, vocab: int, seed: int) -> list[Any]:
    from scope_ray.types import ScoreRequest

    rng = random.Random(seed)
    out = []
    for _ in range(n):
        prompt = [rng.randrange(3, vocab) for _ in range(rng.randint(24, 48))]
        response = [rng.randrange(3, vocab) for _ in range(rng.randint(lo, hi))]
        out.append(ScoreRequest(prompt_ids=prompt, response_ids=response))
    return out


def run_callers(server: Any, calls: list[list[Any]], callers: int) -> float:
    """Seconds to score every call with ``callers`` calls in flight at all times."""
    import ray

    t0 = time.perf_counter()
    pending = [server.score.remote(c) for c in calls[:callers]]
    nxt = len(pending)
    while pending:
        done, pending = ray.wait(pending, num_returns=1)
        ray.get(done)
        if nxt < len(calls):
            pending.append(server.score.remote(calls[nxt]))
            nxt += 1
    return time.perf_counter() - t0


def stats_delta(server: Any, before: dict[str, float]) -> dict[str, float]:
    import ray

    now = ray.get(server.stats.remote())
    return {k: float(now[k]) - float(before.get(k, 0.0)) for k in now}


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    setup_logging(args.verbose)
    info_before = machine_info()
    logger.info("%s", load_line("start"))
    import ray

    from actors.teacher import TeacherServer
    from scope_ray.bootstrap.tokenizer import vocab_size

    hidden, layers, _ = args.teacher
    inputs = prepare_inputs(args.work_dir, teacher=teacher_spec(*args.teacher))
    init_ray(8)
    servers = {
        "batched": TeacherServer.options(num_cpus=args.num_cpus).remote(
            str(inputs.teacher_dir), max_batch_tokens=args.max_batch_tokens, max_wait_ms=args.max_wait_ms),
        "single": TeacherServer.options(num_cpus=args.num_cpus).remote(
            str(inputs.teacher_dir), max_batch_tokens=1, max_wait_ms=0.0),
    }
    ray.get([s.ready.remote() for s in servers.values()])
    threads = ray.get(servers["batched"].__ray_call__.remote(lambda self: __import__("torch").get_num_threads()))
    reqs = make_workload(args.sequences, args.min_response, args.max_response, vocab_size(), args.seed)
    calls = [reqs[i : i + args.seqs_per_call] for i in range(0, len(reqs), args.seqs_per_call)]
    scored = sum(len(r.response_ids) for r in reqs)
    for s in servers.values():  # warm-up: first forwards allocate
        run_callers(s, calls[:16], 8)
    rows: list[dict[str, Any]] = []
    try:
        for n in args.callers:
            for rep, mode in interleave(list(servers), args.reps):
                before = ray.get(servers[mode].stats.remote())
                load = machine_info()["loadavg"][0]
                secs = run_callers(servers[mode], calls, n)
                st = stats_delta(servers[mode], before)
                rows.append({"callers": n, "rep": rep, "mode": mode, "seconds": secs, "scored_tokens": scored,
                             "scored_tokens_per_s": scored / secs, "real_tokens": st["real_tokens"],
                             "padded_tokens": st["padded_tokens"], "batches": st["batches"],
                             "forward_s": st["forward_s"], "load1": load,
                             "padding_waste": 1.0 - st["real_tokens"] / max(st["padded_tokens"], 1.0),
                             "mean_batch_seqs": st["sequences"] / max(st["batches"], 1.0)})
                logger.info("%2d callers rep %d %-7s %6.0f scored tok/s (%d batches)  %s", n, rep, mode,
                            scored / secs, st["batches"], load_line("now"))
    finally:
        for s in servers.values():
            ray.kill(s)
        ray.shutdown()
    info_after = machine_info()
    table = summarize(rows, args.callers, args.reps)
    print(f"\nteacher server: {args.sequences} sequences (responses {args.min_response}-{args.max_response} tokens, "
          f"{scored} scored tokens), teacher hidden {hidden} x {layers} layers, torch threads {threads}; "
          f"{info_before['cpus']} CPUs, load {info_before['loadavg']} -> {info_after['loadavg']}")
    print(f"{'callers':>7} {'batched tok/s':>13} {'single tok/s':>12} {'ratio':>6} {'per rep':>14} "
          f"{'pad waste':>9} {'seqs/batch':>10}")
    for r in table:
        print(f"{r['callers']:7d} {r['batched_tok_s']:13.0f} {r['single_tok_s']:12.0f} {r['ratio']:6.2f} "
              f"{' '.join(f'{x:.2f}' for x in r['ratio_per_rep']):>14} {r['batched_padding_waste']:9.1%} "
              f"{r['batched_seqs_per_batch']:10.1f}")
    at = next((r for r in table if r["callers"] == 32), None)
    if at is not None:
        verdict = "met" if at["ratio"] >= TARGET else "NOT met"
        print(f"target >= {TARGET}x at 32 callers: {at['ratio']:.2f}x ({verdict})")
    write_result("teacher_server", {
        "command": " ".join(["bench/teacher_server.py", *(argv if argv is not None else sys.argv[1:])]),
        "machine_before": info_before, "machine_after": info_after, "torch_threads": threads,
        "settings": vars(args) | {"work_dir": str(args.work_dir), "out": str(args.out)},
        "teacher_params": inputs.meta.get("teacher_params"), "scored_tokens": scored, "target_ratio_at_32": TARGET,
        "summary": table, "trials": rows,
    }, args.out)
    return 0


def summarize(rows: list[dict[str, Any]], callers: list[int], reps: int) -> list[dict[str, Any]]:
    out = []
    for n in callers:
        by = {(r["rep"], r["mode"]): r for r in rows if r["callers"] == n}
        ratios = [by[(k, "batched")]["scored_tokens_per_s"] / by[(k, "single")]["scored_tokens_per_s"]
                  for k in range(reps)]
        out.append({
            "callers": n, "ratio": median(ratios), "ratio_per_rep": ratios,
            "batched_tok_s": median([by[(k, "batched")]["scored_tokens_per_s"] for k in range(reps)]),
            "single_tok_s": median([by[(k, "single")]["scored_tokens_per_s"] for k in range(reps)]),
            "batched_padding_waste": median([by[(k, "batched")]["padding_waste"] for k in range(reps)]),
            "single_padding_waste": median([by[(k, "single")]["padding_waste"] for k in range(reps)]),
            "batched_seqs_per_batch": median([by[(k, "batched")]["mean_batch_seqs"] for k in range(reps)]),
        })
    return out


if __name__ == "__main__":
    sys.exit(main())
