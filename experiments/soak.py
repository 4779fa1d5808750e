"""Soak run: the tiny recipe for many steps, memory measured after every step.

Records, per step: the driver's RSS, each actor's RSS (rollout workers, teacher
replicas, learner ranks), the RSS of all Ray processes together, and the bytes in Ray's
object store. Prints the curve and a verdict: after warm-up, no series may grow by more
than ``--max-growth`` (10 %) from its level just after warm-up to its level at the end.

    .venv/bin/python experiments/soak.py --steps 200 --out experiments/results/soak.json \\
        trainer.prompts_per_step=4 rollout.group_size=4 model.max_response_tokens=48 \\
        trainer.eval_every=0 trainer.save_every=50

Too slow for the test suite (minutes); the figures of one run are in docs/RELIABILITY.md.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import psutil

logger = logging.getLogger("soak")
MIB = 1 << 20


def _actor_pids(parts: Any) -> dict[str, int]:
    import ray

    def pid_of(handle: Any) -> int:
        return int(ray.get(handle.__ray_call__.remote(lambda self: os.getpid()), timeout=60))

    pids = {f"rollout{i}": pid_of(h) for i, h in enumerate(parts.rollout_workers)}
    pids |= {f"teacher{i}": pid_of(h) for i, h in enumerate(parts.teachers)}
    pids |= {f"learner{i}": pid_of(h) for i, h in enumerate(parts.learner.workers)}
    return pids


def _rss(pid: int) -> int:
    try:
        return psutil.Process(pid).memory_info().rss
    except psutil.Error:
        return 0


def _ray_processes() -> list[psutil.Process]:
    """Every process of the local Ray this driver started (its descendants)."""
    return psutil.Process().children(recursive=True)


def _object_store_used() -> int:
    import ray

    total = ray.cluster_resources().get("object_store_memory", 0.0)
    free = ray.available_resources().get("object_store_memory", total)
    return int(total - free)


class Recorder:
    """Samples every series after each training step."""

    def __init__(self, pids: dict[str, int], ray_procs: list[psutil.Process]) -> None:
        self.pids = pids
        self.ray_procs = ray_procs
        self.series: dict[str, list[float]] = {}
        self.step_s: list[float] = []
        self._t = time.perf_counter()

    def sample(self, step: int, metrics: dict[str, Any]) -> None:
        now = time.perf_counter()
        self.step_s.append(now - self._t)
        self._t = now
        values = {"driver": _rss(os.getpid()) / MIB}
        values |= {name: _rss(pid) / MIB for name, pid in self.pids.items()}
        values["ray_all"] = sum(_rss(p.pid) for p in self.ray_procs) / MIB
        values["object_store"] = _object_store_used() / MIB
        for k, v in values.items():
            self.series.setdefault(k, []).append(v)
        if step == 1 or step % 10 == 0:
            shown = "  ".join(f"{k}={v:7.1f}" for k, v in values.items())
            print(f"step {step:4d}  {self.step_s[-1]:5.2f}s  MiB: {shown}", flush=True)


def growth(values: list[float], warmup: int, window: int) -> tuple[float, float, float]:
    """(level after warm-up, level at the end, relative growth): medians over ``window``
    steps, so one step's transient (a checkpoint, a GC pause) does not decide."""
    early = statistics.median(values[warmup : warmup + window])
    late = statistics.median(values[-window:])
    base = max(early, 1.0)  # MiB; keeps a near-empty object store from dividing by ~0
    return early, late, (late - early) / base


def verdict(rec: Recorder, warmup: int, window: int, max_growth: float) -> tuple[bool, list[dict[str, Any]]]:
    table, ok = [], True
    for name, values in rec.series.items():
        early, late, g = growth(values, warmup, window)
        passed = g <= max_growth
        ok &= passed
        table.append({"series": name, "after_warmup_mib": round(early, 1), "end_mib": round(late, 1),
                      "max_mib": round(max(values[warmup:]), 1), "growth": round(g, 4), "ok": passed})
    return ok, table


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--steps", type=int, default=200)
    ap.add_argument("--warmup", type=int, default=20, help="steps excluded from the verdict")
    ap.add_argument("--window", type=int, default=10, help="steps per median (early / late level)")
    ap.add_argument("--max-growth", type=float, default=0.10)
    ap.add_argument("--out", type=Path, help="write the series and the verdict here (JSON)")
    ap.add_argument("--run-dir", type=Path, help="default: a temporary directory")
    ap.add_argument("overrides", nargs="*", help="dotted config overrides (as for scope-ray train)")
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(levelname)s %(name)s: %(message)s")

    from scope_ray.config import load_config
    from scope_ray.controller import cluster
    from scope_ray.controller.launch import start_components
    from scope_ray.controller.trainer import Trainer

    run_dir = args.run_dir or Path(tempfile.mkdtemp(prefix="scope-soak-"))
    defaults = ["bootstrap.preset=tiny", "trainer.eval_at_end=false"]
    cfg = load_config(None, [*defaults, *args.overrides, f"trainer.total_steps={args.steps}",
                             f"trainer.run_dir={run_dir}"])
    t0 = time.perf_counter()
    parts = start_components(cfg)
    try:
        rec = Recorder(_actor_pids(parts), _ray_processes())
        print(f"started in {time.perf_counter() - t0:.1f}s; actors {rec.pids}; run dir {run_dir}", flush=True)
        Trainer(cfg, run_dir, parts, None).run(rec.sample)
    finally:
        cluster.shutdown(parts)
    ok, table = verdict(rec, args.warmup, args.window, args.max_growth)
    print(f"\n{args.steps} steps, median {statistics.median(rec.step_s):.2f} s/step; levels are medians "
          f"of {args.window} steps after warm-up ({args.warmup}) and at the end")
    for row in table:
        print(f"  {row['series']:>12}: {row['after_warmup_mib']:8.1f} -> {row['end_mib']:8.1f} MiB "
              f"(max {row['max_mib']:8.1f}, growth {row['growth']:+.1%}) {'ok' if row['ok'] else 'GROWS'}")
    print(f"verdict: {'PASS' if ok else 'FAIL'} (no series grows more than {args.max_growth:.0%} after warm-up)")
    if args.out:
        args.out.write_text(json.dumps({"steps": args.steps, "warmup": args.warmup, "window": args.window,
                                        "overrides": args.overrides, "pass": ok, "table": table,
                                        "step_s": rec.step_s, "series": rec.series}, indent=1))
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
