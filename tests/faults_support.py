"""Shared set-up of the fault tests (tests/faults/test_faults_*.py): the tiny recipe, a run that
exposes its Trainer, and one fault-free baseline run per test session.

Faults are injected from the tests through real Ray APIs (``ray.kill`` on live actors,
``__ray_call__`` to make an actor sleep or to poison its state), at a chosen point of the
run: a progress callback (between steps) or a wrapper around a controller method that
calls the real method first (mid-step). Nothing here replaces the code under test.
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import pytest

from scope_ray.config import RunConfig, load_config

STEPS = 3
# Compared between a faulty run and the baseline: what the step saw and what it did.
COMPARED = ("rollout/tokens", "rollout/reward_mean", "branch/correct_size", "teacher/scored_tokens",
            "teacher/reverse_kl", "learner/loss", "learner/grad_norm", "learner/skipped")


def fault_cfg(boot: Any, run_dir: Path, steps: int = STEPS, extra: Sequence[str] = ()) -> RunConfig:
    """The tiny recipe, small steps, no evaluation; one prompt per generate() call so a
    step has several calls in flight on a worker when it is killed."""
    return load_config(None, [
        f"model.student={boot.student_dir}", f"model.teacher={boot.teacher_dir}",
        f"data.train_files=[{boot.train_file}]", f"data.eval_files=[{boot.test_file}]",
        "data.max_eval_prompts=8", "trainer.eval_k=2", "trainer.eval_every=0", "trainer.eval_at_end=false",
        "trainer.prompts_per_step=4", "rollout.group_size=4", "rollout.prompts_per_request=1",
        "model.max_response_tokens=48", "trainer.save_every=1", "learner.lr=1e-3",
        f"trainer.total_steps={steps}", f"trainer.run_dir={run_dir}", *extra,
    ])


def run_trainer(cfg: RunConfig, run_dir: Path, progress: Callable[[Any, int, dict], None] | None = None,
                resume_from: Any = None) -> tuple[Any, Any]:
    """Start the real components, run the Trainer with ``progress(trainer, step,
    metrics)`` after each step, shut everything down. Returns (trainer, summary);
    an exception from the run propagates (with ``.trainer`` attached for inspection)."""
    from scope_ray.controller import cluster
    from scope_ray.controller.launch import start_components
    from scope_ray.controller.trainer import Trainer

    parts = start_components(cfg)
    trainer = Trainer(cfg, run_dir, parts, resume_from)
    try:
        summary = trainer.run(None if progress is None else (lambda step, m: progress(trainer, step, m)))
        return trainer, summary
    except Exception as exc:
        exc.trainer = trainer  # type: ignore[attr-defined]
        raise
    finally:
        cluster.shutdown(parts)


def rows(run_dir: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines() if line.strip()]


def train_rows(run_dir: Path) -> list[dict[str, Any]]:
    return [{k: r.get(k) for k in ("step", *COMPARED)} for r in rows(run_dir) if "learner/loss" in r]


def assert_same_steps(got: list[dict[str, Any]], want: list[dict[str, Any]], rel: float = 1e-5) -> None:
    """Same steps, same counts, floats equal to ``rel`` (exact on CPU float32 in practice)."""
    assert [r["step"] for r in got] == [r["step"] for r in want]
    for g, w in zip(got, want):
        for k in COMPARED:
            if isinstance(w[k], float) and not math.isnan(w[k]):
                assert g[k] == pytest.approx(w[k], rel=rel, abs=1e-7), (g["step"], k, g[k], w[k])
            else:
                assert g[k] == w[k], (g["step"], k)


def baseline_dir(tmp_path_factory: pytest.TempPathFactory, boot: Any) -> Path:
    """A fault-free ``STEPS``-step run of :func:`fault_cfg`, run once per test session
    (cached in the session's temp root, so every fault test file shares it)."""
    run_dir = tmp_path_factory.getbasetemp() / "faults_baseline"
    if run_dir.is_dir() and (run_dir / "metrics.jsonl").is_file() and len(train_rows(run_dir)) == STEPS:
        return run_dir
    run_trainer(fault_cfg(boot, run_dir), run_dir)
    assert len(train_rows(run_dir)) == STEPS
    return run_dir


def actor_pid(actor: Any, timeout_s: float = 300.0) -> int:
    import os

    import ray

    return int(ray.get(actor.__ray_call__.remote(lambda self: os.getpid()), timeout=timeout_s))


def wait_restarted(actor: Any, old_pid: int, timeout_s: float = 300.0) -> int:
    """Block until a killed actor answers from a new process (``ray.kill`` returns before
    the old one is gone, and Ray refuses calls while the new one starts); its pid."""
    import ray

    deadline = time.monotonic() + timeout_s
    while True:
        try:
            pid = actor_pid(actor, timeout_s)
            if pid != old_pid:
                return pid
        except ray.exceptions.ActorUnavailableError:
            pass
        assert time.monotonic() < deadline, "actor did not come back"
        time.sleep(0.5)
