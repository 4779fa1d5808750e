"""The actors of one job started once, whole trainer trials run on them, and each step's
stage busy times."""

from __future__ import annotations

import argparse
import logging
import os
import shutil
import time
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from _common.inputs import Inputs
from _common.results import DEFAULT_WORK_DIR
from _common.spans import Interval, clip, init_ray, measure, settle_timeline, spans_of, subtract, timeline_spans

logger = logging.getLogger("bench")

# Small steps so a script's default run fits in a few minutes on a loaded 2-core CPU.
SMALL_STEP = [
    "trainer.prompts_per_step=8", "rollout.group_size=4", "model.max_response_tokens=48",
    "trainer.eval_every=0", "trainer.eval_at_end=false", "trainer.save_every=0",
]

@dataclass
class StepRecord:
    step: int
    start: float  # wall clock (time.time())
    end: float
    metrics: dict[str, Any]
    teacher_forward_s: float  # teacher compute during this step (stats() delta)
    teacher_tokens: int  # real tokens the teacher scored during this step


@dataclass
class Trial:
    name: str
    overrides: list[str]
    steps: list[StepRecord]
    wall_s: float
    rollout_workers: int
    learner_workers: int
    teacher_padded_tokens: int = 0
    teacher_real_tokens: int = 0
    teacher_batches: int = 0
    spans: dict[tuple[str, str], list[Interval]] = field(default_factory=dict)
    load: list[float] = field(default_factory=list)


class Cluster:
    """One job's actors, started once; trials run whole trainers on them."""

    def __init__(self, inputs: Inputs, overrides: Sequence[str], work_dir: Path, *, num_cpus: int = 16) -> None:
        from scope_ray.config import load_config
        from scope_ray.controller.launch import start_components

        self.inputs = inputs
        self.base = [*inputs.overrides(), *overrides]
        self.work_dir = work_dir
        self.cfg = load_config(None, self.base)
        init_ray(num_cpus)
        t0 = time.perf_counter()
        self.parts = start_components(self.cfg)
        logger.info("actors up in %.1fs (%d rollout, %d teacher, %d learner)", time.perf_counter() - t0,
                    len(self.parts.rollout_workers), len(self.parts.teachers), self.parts.learner.world_size)
        self._sampler_state = self.parts.train_sampler.state_dict()
        self._learners: dict[str, Any] = {"default": self.parts.learner}
        self._initial: dict[str, Path] = {}
        self._save_initial("default")
        self._runs = 0

    def add_learner(self, key: str, overrides: Sequence[str]) -> None:
        """Another learner group on the same rollout workers and teacher (e.g. another
        algorithm, or another number of ranks), from the same initial student."""
        from actors.learner import LearnerGroup
        from scope_ray.config import load_config
        from scope_ray.learner import LearnerOptions

        cfg = load_config(None, [*self.base, *overrides])
        self._learners[key] = LearnerGroup(
            str(self.inputs.student_dir), LearnerOptions.from_run_config(cfg), num_workers=cfg.learner.num_workers,
            timeout_s=cfg.trainer.train_timeout_s, resources=dict(cfg.learner.resources))
        self._save_initial(key)

    def _save_initial(self, key: str) -> None:
        path = self.work_dir / "initial" / key
        shutil.rmtree(path, ignore_errors=True)
        self._learners[key].save_checkpoint(str(path), timeout_s=600)
        self._initial[key] = path

    def _reset(self, key: str) -> None:
        """Learner back to the initial checkpoint, workers to its weights (version 0),
        sampler rewound: the next trial repeats the same work."""
        import ray

        learner = self._learners[key]
        learner.load_checkpoint(str(self._initial[key]), timeout_s=600)
        blobs = ray.put(learner.export_weights(self.cfg.rollout.weight_bucket_mb, timeout_s=600))
        ray.get([w.update_weights.remote(blobs, 0) for w in self.parts.rollout_workers], timeout=600)
        self.parts.train_sampler.load_state_dict(dict(self._sampler_state))

    def teacher_stats(self) -> dict[str, float]:
        import ray

        total: dict[str, float] = {}
        for t in self.parts.teachers:
            for k, v in ray.get(t.stats.remote(), timeout=60).items():
                total[k] = total.get(k, 0.0) + float(v)
        return total

    def trial(self, name: str, overrides: Sequence[str], *, learner: str = "default",
              rollout_workers: int | None = None) -> Trial:
        import ray

        from scope_ray.config import load_config
        from scope_ray.controller.trainer import Trainer

        self._reset(learner)
        self._runs += 1
        run_dir = self.work_dir / "runs" / f"{self._runs:03d}-{name}"
        shutil.rmtree(run_dir, ignore_errors=True)
        cfg = load_config(None, [*self.base, *overrides, f"trainer.run_dir={run_dir}"])
        workers = self.parts.rollout_workers[: rollout_workers or len(self.parts.rollout_workers)]
        # The engines were built from the cluster's base config; this setting of theirs is
        # the one a trial may change, on the live workers.
        from scope_ray.engines.rollout_engine import calls_in_flight_limit

        k = cfg.rollout.max_calls_in_flight
        ray.get([w.__ray_call__.remote(lambda self: setattr(self.engine, "max_calls_in_flight", calls_in_flight_limit(k)))
                 for w in workers])
        parts = replace(self.parts, learner=self._learners[learner], rollout_workers=workers)
        records: list[StepRecord] = []
        before = self.teacher_stats() if self.parts.teachers else {}
        last = {"t": time.time(), "stats": before}

        def on_step(step: int, metrics: dict[str, Any]) -> None:
            now = time.time()
            stats = self.teacher_stats() if self.parts.teachers else {}
            prev = last["stats"]
            records.append(StepRecord(step, last["t"], now, dict(metrics),
                                      stats.get("forward_s", 0.0) - prev.get("forward_s", 0.0),
                                      int(stats.get("real_tokens", 0) - prev.get("real_tokens", 0))))
            last["t"], last["stats"] = time.time(), stats

        load0 = os.getloadavg()[0]
        t0 = time.time()
        Trainer(cfg, run_dir, parts, None).run(on_step)
        wall = time.time() - t0
        after = self.teacher_stats() if self.parts.teachers else {}
        logger.info("trial %s: %d steps in %.1fs", name, len(records), wall)
        return Trial(
            name=name, overrides=list(overrides), steps=records, wall_s=wall, rollout_workers=len(workers),
            learner_workers=self._learners[learner].world_size,
            teacher_padded_tokens=int(after.get("padded_tokens", 0) - before.get("padded_tokens", 0)),
            teacher_real_tokens=int(after.get("real_tokens", 0) - before.get("real_tokens", 0)),
            teacher_batches=int(after.get("batches", 0) - before.get("batches", 0)),
            load=[load0, os.getloadavg()[0]],
        )

    def close(self) -> None:
        import ray

        from scope_ray.controller import cluster

        for key, lg in self._learners.items():
            if key != "default":
                try:
                    lg.shutdown()
                except Exception as exc:  # noqa: BLE001 - best effort at exit
                    logger.warning("learner %s shutdown: %s", key, exc)
        cluster.shutdown(self.parts)
        ray.shutdown()


def attach_spans(trials: Sequence[Trial]) -> None:
    """Read Ray's task timeline once and give every trial its own spans."""
    if not trials:
        return
    settle_timeline()
    lo = min(t.steps[0].start for t in trials if t.steps) - 1.0
    hi = max(t.steps[-1].end for t in trials if t.steps) + 1.0
    allspans = timeline_spans(lo, hi)
    for t in trials:
        if not t.steps:
            continue
        a, b = t.steps[0].start, t.steps[-1].end
        t.spans = {k: clip(v, a, b) for k, v in allspans.items() if clip(v, a, b)}


# Whole calls (collect, or generate one at a time), or streams that yield each sample as it
# finishes (rollout.stream_rollouts). Calls overlap on a worker: its busy time is their union.
GENERATE = ("RolloutWorker.generate", "RolloutWorker.stream", "RolloutWorker.collect")
UPDATE = "RolloutWorker.update_weights"
TRAIN = "LearnerWorker.train_step"
EXPORT = "LearnerWorker.export_weights"
SCORE = "TeacherServer.score"


def _per_actor_mean_busy(spans: dict[str, list[Interval]], lo: float, hi: float, n_actors: int) -> float:
    """Busy seconds per actor of a stage in [lo, hi]: summed over its actors / count."""
    if n_actors <= 0:
        return 0.0
    return sum(measure(clip(s, lo, hi)) for s in spans.values()) / n_actors


def step_breakdown(trial: Trial, rec: StepRecord) -> dict[str, float]:
    """Wall step time and the actor-side busy time of each stage within one step."""
    lo, hi = rec.start, rec.end
    gen = spans_of(trial.spans, GENERATE)
    upd = spans_of(trial.spans, UPDATE)
    train = spans_of(trial.spans, TRAIN)
    export = spans_of(trial.spans, EXPORT)
    score = spans_of(trial.spans, SCORE)
    all_gen = [s for v in gen.values() for s in v]
    all_train = [s for v in train.values() for s in v]
    all_sync = [s for v in (*upd.values(), *export.values()) for s in v]
    all_score = [s for v in score.values() for s in v]
    m = rec.metrics
    out = {
        "step_s": hi - lo,
        "generate_busy_s": _per_actor_mean_busy(gen, lo, hi, trial.rollout_workers),
        "score_busy_s": rec.teacher_forward_s,  # teacher compute (forward passes)
        "score_occupancy_s": measure(clip(all_score, lo, hi)),  # some score() call in flight
        "train_busy_s": _per_actor_mean_busy(train, lo, hi, trial.learner_workers),
        "sync_busy_s": measure(clip(all_sync, lo, hi)),  # export on the learner + load on the workers
        "score_not_overlapped_gen_s": measure(subtract(clip(all_score, lo, hi), all_gen)),
        "score_alone_s": measure(subtract(clip(all_score, lo, hi), all_gen + all_train + all_sync)),
        "teacher_tokens": float(rec.teacher_tokens),
        # what the trainer itself logs for this step
        "logged_step_s": float(m.get("time/step_s", float("nan"))),
        "logged_generate_s": float(m.get("time/generate_s", float("nan"))),
        "logged_generate_busy_s": float(m.get("time/generate_busy_s", float("nan"))),
        "logged_score_busy_s": float(m.get("time/score_busy_s", float("nan"))),
        "logged_train_s": float(m.get("time/train_s", float("nan"))),
        "logged_sync_s": float(m.get("time/sync_s", float("nan"))),
        "logged_verify_s": float(m.get("time/verify_s", float("nan"))),
        "rollout_tokens": float(m.get("rollout/tokens", float("nan"))),
        "scored_tokens": float(m.get("teacher/scored_tokens", float("nan"))),
        "accuracy": float(m.get("rollout/accuracy", float("nan"))),
    }
    stages = {k: out[k] for k in ("generate_busy_s", "score_busy_s", "train_busy_s", "sync_busy_s")}
    out["busiest_stage_s"] = max(stages.values())
    out["busiest_stage"] = max(stages, key=stages.__getitem__)  # type: ignore[assignment]
    return out


def trial_summary(trial: Trial, skip_first: int = 1, skip_last: int = 1) -> dict[str, Any]:
    """Means over the trial's steady steps: without the first ``skip_first`` (pipeline
    fill) and the last ``skip_last`` (drain: under max_staleness=1 the last step has no
    next step generating beside it, so it is shorter than a steady one)."""
    rows = [step_breakdown(trial, r) for r in trial.steps]
    steady = rows[skip_first : len(rows) - skip_last] or rows
    keys = [k for k, v in steady[0].items() if isinstance(v, (int, float))]
    mean = {k: sum(r[k] for r in steady) / len(steady) for k in keys}
    stages = {k: mean[k] for k in ("generate_busy_s", "score_busy_s", "train_busy_s", "sync_busy_s")}
    mean["busiest_stage_s"] = max(stages.values())
    busiest = max(stages, key=stages.__getitem__)
    mean["step_over_busiest"] = mean["step_s"] / max(mean["busiest_stage_s"], 1e-9)
    mean["tokens_per_s"] = mean["rollout_tokens"] / max(mean["step_s"], 1e-9)
    return {"name": trial.name, "overrides": trial.overrides, "steps": len(trial.steps),
            "steady_steps": len(steady), "busiest_stage": busiest, "mean": mean, "per_step": rows,
            "wall_s": trial.wall_s, "load": trial.load, "rollout_workers": trial.rollout_workers,
            "learner_workers": trial.learner_workers, "teacher_padded_tokens": trial.teacher_padded_tokens,
            "teacher_real_tokens": trial.teacher_real_tokens, "teacher_batches": trial.teacher_batches}


def add_trial_args(ap: argparse.ArgumentParser, *, warmup_steps: int = 1) -> None:
    """The options shared by the benchmarks that run whole trainer trials side by side
    (pipeline, teacher_cost, scaling); each script adds its own axes."""
    ap.add_argument("--steps", type=int, default=6, help="steps per trial")
    ap.add_argument("--reps", type=int, default=3, help="repetitions of each variant (alternating order)")
    ap.add_argument("--warmup-steps", type=int, default=warmup_steps, help="a discarded warm-up trial first (0: none)")
    ap.add_argument("--skip-first", type=int, default=1, help="first steps of a trial left out of the means (fill)")
    ap.add_argument("--skip-last", type=int, default=1, help="last steps of a trial left out of the means (drain)")
    ap.add_argument("--work-dir", type=Path, default=DEFAULT_WORK_DIR)
    ap.add_argument("--out", type=Path, help="JSON path (default bench/results/<benchmark>.json)")
    ap.add_argument("--num-cpus", type=int, default=16, help="logical CPUs of the private local Ray")
    ap.add_argument("-v", "--verbose", action="store_true")
    ap.add_argument("overrides", nargs="*", help="dotted config overrides for every trial")
