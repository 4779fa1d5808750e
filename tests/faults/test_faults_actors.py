"""Rollout workers and teacher replicas killed mid-run (real Ray, vLLM, teacher, DeepSpeed).

Each faulty run must end exactly like the fault-free baseline (tests/faults_support.py):
same groups, counted once, same teacher scores, same losses. That holds only if a
restarted rollout worker got the current weights before generating again and if lost
teacher calls were scored again.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any

import pytest
import ray

from faults_support import (actor_pid, assert_same_steps, baseline_dir, fault_cfg, rows, run_trainer,
                            train_rows, wait_restarted)
from scope_ray.controller.stream import StepStream


@pytest.fixture(scope="module")
def baseline(ray_session, tiny_bootstrap, tmp_path_factory) -> Path:
    return baseline_dir(tmp_path_factory, tiny_bootstrap)


@pytest.mark.parametrize("weight_sync", ["safetensors", "broadcast"])
def test_rollout_worker_killed_mid_step_and_between_steps(ray_session, tiny_bootstrap, baseline, tmp_path,
                                                          monkeypatch, caplog, weight_sync) -> None:
    accepted = {"samples": 0, "killed": False}
    original = StepStream._on_generated

    def taken(stream: StepStream) -> int:
        return sum(r is not None for g in stream._groups.values() for r in g.rollouts)

    def kill_in_step_two(self: StepStream, samples: list) -> None:
        before = taken(self)
        original(self, samples)
        accepted["samples"] += taken(self) - before
        # Step 1 is 4 one-prompt calls x 4 samples; once a sample of step 2 is in, the
        # worker is inside that call with 3 more queued: kill it under them.
        if accepted["samples"] > 16 and not accepted["killed"]:
            accepted["killed"] = True
            ray.kill(self.workers[0], no_restart=False)

    groups: dict[int, Any] = {}

    def kill_between_steps(trainer: Any, step: int, metrics: dict) -> None:
        groups[step] = ray.get(trainer.parts.rollout_workers[0].weight_group.remote())
        if step == 2:
            # Killed while idle, and back (from the initial model) before step 3 starts:
            # only the policy version on its rollouts can tell.
            w = trainer.parts.rollout_workers[0]
            pid = actor_pid(w)
            ray.kill(w, no_restart=False)
            wait_restarted(w, pid)

    monkeypatch.setattr(StepStream, "_on_generated", kill_in_step_two)
    with caplog.at_level(logging.WARNING, logger="scope_ray.controller"):
        # The broadcast run also decodes every call of a step together (the GPU default):
        # the calls lost with the worker are then all of the step's, not one.
        together = ["rollout.max_calls_in_flight=0"] if weight_sync == "broadcast" else []
        cfg = fault_cfg(tiny_bootstrap, tmp_path, extra=[f"rollout.weight_sync={weight_sync}", *together])
        trainer, summary = run_trainer(cfg, tmp_path, kill_between_steps)
    warnings = [r.getMessage() for r in caplog.records]
    # Both ways of noticing: calls lost with the actor (step 2), and rollouts that come
    # back from the initial model (step 3: no call was lost, the version gives it away).
    assert any("generate_stream() failed, the actor died" in m for m in warnings)
    assert any("returned policy version 0, expected 2" in m for m in warnings)

    assert summary.steps == 3
    # Lost and stale samples were re-issued, and each of the 3 x 4 x 4 taken once.
    assert accepted["samples"] == 48
    assert trainer.rollout_recoveries == 2  # one weight re-sync per restart, not per lost call
    assert_same_steps(train_rows(tmp_path), train_rows(baseline))
    steps = [r for r in rows(tmp_path) if "learner/loss" in r]
    for r in steps:
        # Every group of the step exactly once (the stream also checks the indices).
        assert r["branch/correct_size"] + r["branch/incorrect_size"] == 16
        # The learner recomputes what vLLM sampled: a worker on stale weights shows here.
        assert r["learner/logp_gap"] < 1e-3
    if weight_sync == "broadcast":
        # The baseline synced as safetensors: the same steps, so the same weights arrived.
        assert all(r["learner/logp_gap"] <= 1e-5 for r in steps)
        # Each restart left the group; the next broadcast rebuilt it with the worker in.
        assert None not in groups.values() and len(set(groups.values())) == 3, groups
    else:
        assert set(groups.values()) == {None}


@pytest.mark.parametrize("partial", [False, True], ids=["whole", "partial"])
def test_rollout_worker_killed_with_two_steps_ahead(ray_session, tiny_bootstrap, tmp_path, monkeypatch,
                                                   caplog, partial) -> None:
    """max_staleness 2: two steps' calls are queued on the worker when it is killed. Its
    lost calls of both streams are re-issued once it has the newest weights; the run
    ends with every group of every step taken once and no rollout more than 2 versions
    old. (Not equal to a fault-free run: the re-issued samples come from newer weights.)
    With partial rollouts (2 extra groups a step, paused samples in flight) every sample
    is still taken once: the trained ones and those of the groups still carried at the
    end, and no token is more than 2 x 2 versions old."""
    accepted = {"samples": 0, "killed": False}
    original = StepStream._on_generated

    def kill_once_two_streams_are_out(self: StepStream, samples: list) -> None:
        before = sum(r is not None for g in self._groups.values() for r in g.rollouts)
        original(self, samples)
        accepted["samples"] += sum(r is not None for g in self._groups.values() for r in g.rollouts) - before
        if accepted["samples"] > 20 and not accepted["killed"]:  # inside step 2, step 3 queued behind it
            accepted["killed"] = True
            ray.kill(self.workers[0], no_restart=False)

    monkeypatch.setattr(StepStream, "_on_generated", kill_once_two_streams_are_out)
    extra = ["rollout.partial_rollouts=true", "rollout.extra_prompts=2"] if partial else []
    cfg = fault_cfg(tiny_bootstrap, tmp_path, steps=4, extra=["trainer.max_staleness=2", "trainer.save_every=0", *extra])
    with caplog.at_level(logging.WARNING, logger="scope_ray.controller"):
        trainer, summary = run_trainer(cfg, tmp_path)
    assert accepted["killed"] and summary.steps == 4
    assert any("the actor died" in r.getMessage() for r in caplog.records)
    assert trainer.rollout_recoveries >= 1
    # Every sample of every step taken exactly once (and those of the groups still carried).
    left = sum(r.finish_reason != "paused" for g in trainer._carried for r in g.rollouts)
    assert accepted["samples"] == 4 * 16 + left
    steps = [r for r in rows(tmp_path) if "learner/loss" in r]
    assert [r["step"] for r in steps] == [1, 2, 3, 4]
    assert (sum(r["rollout/paused_samples"] for r in steps) > 0) == partial
    for r in steps:
        assert r["branch/correct_size"] + r["branch/incorrect_size"] == 16
        assert r["rollout/staleness_max"] <= (4 if partial else 2)


def test_teacher_replicas_killed_while_scoring(ray_session, tiny_bootstrap, baseline, tmp_path,
                                               monkeypatch) -> None:
    """Two replicas. Step 2: replica 0 is killed under a scoring call and restarted by
    Ray, which re-runs the call there. Step 3: replica 1 is killed for good; its call
    goes to replica 0, and so does all later scoring."""
    state: dict[str, Any] = {"step": 0, "killed": {}, "pid_after": None}
    original = StepStream._send_score

    def send_then_kill(self: StepStream, t: int, *args: Any, **kwargs: Any) -> None:
        original(self, t, *args, **kwargs)
        target = {2: 0, 3: 1}.get(state["step"] + 1)  # the step now running -> replica
        if target == t and t not in state["killed"]:
            teacher = self.teachers[t]
            state["killed"][t] = ray.get(teacher.__ray_call__.remote(lambda self: os.getpid()))
            ray.kill(teacher, no_restart=(t == 1))

    def after_step(trainer: Any, step: int, metrics: dict) -> None:
        state["step"] = step
        if step == 2:
            state["pid_after"] = ray.get(trainer.parts.teachers[0].__ray_call__.remote(lambda self: os.getpid()))

    monkeypatch.setattr(StepStream, "_send_score", send_then_kill)
    cfg = fault_cfg(tiny_bootstrap, tmp_path, extra=["teacher.num_replicas=2", "teacher.num_cpus=0.25"])
    trainer, summary = run_trainer(cfg, tmp_path, after_step)

    assert summary.steps == 3 and set(state["killed"]) == {0, 1}
    # Replica 0 answered step 2's scores from a new process (restarted, not a survivor) ...
    assert state["pid_after"] not in (None, state["killed"][0])
    # ... and replica 1, dead for good, is skipped from then on.
    assert trainer._dead_teachers == {1}
    # Same scores, same losses as the fault-free run (one replica: batching differs, so
    # floats are compared to 1e-5 relative).
    assert_same_steps(train_rows(tmp_path), train_rows(baseline))


def test_rollout_worker_past_its_restarts_stops_the_run_naming_it(ray_session, tiny_bootstrap, tmp_path) -> None:
    """actor_max_restarts=0: a rollout worker killed after step 1 is dead for good. The
    run stops at step 2 in one line naming the worker, the call and the checkpoint of
    step 1 to continue from; that checkpoint is intact."""
    from scope_ray.controller import checkpoint as ckpt
    from scope_ray.controller.trainer import TrainingStopped

    def kill_after_step_one(trainer: Any, step: int, metrics: dict) -> None:
        if step == 1:
            ray.kill(trainer.parts.rollout_workers[0], no_restart=False)

    cfg = fault_cfg(tiny_bootstrap, tmp_path, steps=3, extra=["trainer.actor_max_restarts=0"])
    with pytest.raises(TrainingStopped) as info:
        run_trainer(cfg, tmp_path, kill_after_step_one)
    text = str(info.value)
    first = ckpt.checkpoints_dir(tmp_path) / "step_000001"
    assert "\n" not in text and text.startswith("step 2: rollout worker 0: generate")
    assert f"last checkpoint: {first}; continue with: scope-ray train --resume {tmp_path}" in text
    assert ckpt.latest_valid(tmp_path).step == 1
