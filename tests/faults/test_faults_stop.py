"""Every way a run stops, on one set of real components (one start-up for the file):
a hung remote call becomes an error naming the actor and the call within its timeout
(trainer.*_timeout_s) on every path (generation, scoring, the learner step, weight
export, the weight update on the rollout workers); repeated non-finite steps are skipped
and then stop the run with its checkpoint intact; a killed learner rank stops it with a
message naming the failure and the last checkpoint.

Hangs are real: the test makes the actor itself sleep through Ray's ``__ray_call__`` (a
sync actor runs one call at a time; on the async teacher a blocking call stalls its
event loop), so the call under test queues behind it. No production code is patched.
The tests run in file order; the last one kills the learner.
"""

from __future__ import annotations

import dataclasses
import logging
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import ray
import torch
from safetensors.torch import load_file

from actors.learner import LearnerFailure, LearnerGroup
from faults_support import fault_cfg, rows
from scope_ray.config import RunConfig
from scope_ray.controller import checkpoint as ckpt
from scope_ray.controller.stream import RemoteCallError, StepStream
from scope_ray.controller.trainer import Trainer, TrainingStopped


@pytest.fixture(scope="module")
def parts(ray_session, tiny_bootstrap, tmp_path_factory) -> Iterator[Any]:
    from scope_ray.controller import cluster
    from scope_ray.controller.launch import start_components

    cfg = fault_cfg(tiny_bootstrap, tmp_path_factory.mktemp("timeouts"), steps=1)
    parts = start_components(cfg)
    yield parts
    cluster.shutdown(parts)


def _sleep_in(actor: Any, seconds: float) -> ray.ObjectRef:
    return actor.__ray_call__.remote(lambda self: time.sleep(seconds))


def _trainer(boot: Any, parts: Any, run_dir: Path, steps: int = 1, extra: tuple[str, ...] = ("trainer.save_every=0",),
             **timeouts: float) -> Trainer:
    """A fresh trainer (policy version 0) on the shared components, with short timeouts."""
    cfg: RunConfig = fault_cfg(boot, run_dir, steps=steps, extra=extra)
    trainer = Trainer(cfg, run_dir, parts, None)
    # Earlier tests moved the learner and the workers on: start everyone from the
    # learner's current weights as version 0 (with the default, generous timeouts).
    trainer.sync_weights()
    trainer.cfg.trainer = dataclasses.replace(cfg.trainer, **timeouts)
    return trainer


def test_hung_generate(parts, tiny_bootstrap, tmp_path) -> None:
    trainer = _trainer(tiny_bootstrap, parts, tmp_path, generate_timeout_s=2.0)
    sleep = _sleep_in(parts.rollout_workers[0], 6.0)
    t0 = time.monotonic()
    with pytest.raises(RemoteCallError, match=r"rollout worker 0: generate\(\) did not return within 2 s"):
        trainer._start_stream().collect()
    assert time.monotonic() - t0 < 5.0
    ray.get(sleep)


def test_a_failed_rollout_call_stops_the_run_in_one_line(parts, tiny_bootstrap, tmp_path) -> None:
    """Through Trainer.run: the stop names the step, the worker, the call and where to
    continue from, in one line (the remote traceback stays chained, for train.log)."""
    trainer = _trainer(tiny_bootstrap, parts, tmp_path, generate_timeout_s=2.0)
    sleep = _sleep_in(parts.rollout_workers[0], 6.0)
    with pytest.raises(TrainingStopped) as info:
        trainer.run()
    ray.get(sleep)
    text = str(info.value)
    assert text == ("step 1: rollout worker 0: generate() did not return within 2 s. Stopped; "
                    "no checkpoint written yet")
    assert isinstance(info.value.__cause__, RemoteCallError)


def test_a_hung_worker_before_the_first_step_stops_the_run_in_one_line(parts, tiny_bootstrap, tmp_path) -> None:
    """The start evaluation (before step 1) waits on a hung rollout worker: the same
    one-line stop as inside the loop, never a bare RemoteCallError traceback."""
    trainer = _trainer(tiny_bootstrap, parts, tmp_path, extra=("trainer.save_every=0", "trainer.eval_at_end=true"),
                       generate_timeout_s=2.0)
    sleep = _sleep_in(parts.rollout_workers[0], 6.0)
    with pytest.raises(TrainingStopped) as info:
        trainer.run()
    ray.get(sleep)
    assert str(info.value) == "before step 1: rollout worker 0: not back within 2 s. Stopped; no checkpoint written yet"


def test_hung_score(parts, tiny_bootstrap, tmp_path, monkeypatch) -> None:
    trainer = _trainer(tiny_bootstrap, parts, tmp_path, score_timeout_s=2.0)
    sleeps: list[tuple[float, ray.ObjectRef]] = []
    original = StepStream._send_score

    def stall_teacher_then_send(self: StepStream, t: int, *args: Any, **kwargs: Any) -> None:
        if not sleeps:
            sleeps.append((time.monotonic(), _sleep_in(self.teachers[t], 6.0)))
        original(self, t, *args, **kwargs)

    monkeypatch.setattr(StepStream, "_send_score", stall_teacher_then_send)
    with pytest.raises(RemoteCallError, match=r"teacher replica 0: score\(\) did not return within 2 s"):
        trainer._start_stream().collect()
    assert sleeps and time.monotonic() - sleeps[0][0] < 5.0
    ray.get(sleeps[0][1])


def test_hung_train_step(parts, tiny_bootstrap, tmp_path, monkeypatch) -> None:
    trainer = _trainer(tiny_bootstrap, parts, tmp_path, train_timeout_s=2.0)
    sleeps: list[tuple[float, ray.ObjectRef]] = []
    original = LearnerGroup.train_step

    def stall_rank0_then_train(self: LearnerGroup, batch: Any, *args: Any, **kwargs: Any) -> Any:
        sleeps.append((time.monotonic(), _sleep_in(self.workers[0], 6.0)))
        return original(self, batch, *args, **kwargs)

    monkeypatch.setattr(LearnerGroup, "train_step", stall_rank0_then_train)
    with pytest.raises(TrainingStopped, match=r"learner worker 0: train_step\(\) did not return within 2 s"):
        trainer.run()
    assert sleeps and time.monotonic() - sleeps[0][0] < 5.0
    ray.get(sleeps[0][1])


def _sync_against_a_sleeping(actor: Any, trainer: Trainer, error: type[Exception], message: str) -> None:
    """``actor`` sleeps 4 s; the sync must fail with ``message`` within its 1 s timeout."""
    sleep = _sleep_in(actor, 4.0)
    t0 = time.monotonic()
    with pytest.raises(error, match=message):
        trainer.sync_weights()
    assert time.monotonic() - t0 < 4.0
    ray.get(sleep)


def test_hung_weight_export(parts, tiny_bootstrap, tmp_path) -> None:
    trainer = _trainer(tiny_bootstrap, parts, tmp_path, sync_timeout_s=1.0)
    _sync_against_a_sleeping(parts.learner.workers[0], trainer, LearnerFailure,
                             r"learner worker 0: export_weights\(\) did not return within 1 s")


def test_hung_weight_update(parts, tiny_bootstrap, tmp_path) -> None:
    trainer = _trainer(tiny_bootstrap, parts, tmp_path, sync_timeout_s=1.0)
    _sync_against_a_sleeping(parts.rollout_workers[0], trainer, RemoteCallError,
                             r"rollout worker 0: update_weights\(\) did not return within 1 s")


def test_hung_broadcast_receiver(parts, tiny_bootstrap, tmp_path) -> None:
    """rollout.weight_sync=broadcast: a worker that does not take part in the broadcast
    is named within the sync timeout; once it answers again the next sync goes through
    (nothing was sent, so the group it is in is still whole)."""
    trainer = _trainer(tiny_bootstrap, parts, tmp_path, extra=("trainer.save_every=0", "rollout.weight_sync=broadcast"),
                       sync_timeout_s=1.0)
    first_group = ray.get(parts.rollout_workers[0].weight_group.remote())
    assert first_group is not None
    # Asked first whether it is still in the group (a restarted worker is not), which it
    # does not answer either.
    _sync_against_a_sleeping(parts.rollout_workers[0], trainer, RemoteCallError,
                             r"rollout worker 0: weight_group\(\) did not return within 1 s")
    trainer.cfg.trainer = dataclasses.replace(trainer.cfg.trainer, sync_timeout_s=60.0)
    trainer.sync_weights()
    assert ray.get(parts.rollout_workers[0].weight_group.remote()) == first_group
    assert ray.get(parts.rollout_workers[0].version.remote()) == trainer.version


def test_broadcast_with_staleness_1_sends_held_back_pushes_before_new_work(parts, tiny_bootstrap, tmp_path) -> None:
    """max_staleness 1: the push after each step is held back while the workers generate
    the next one, and sent before they get the step after (or an evaluation); every
    rollout is then at most one version old and the workers end on the final weights."""
    trainer = _trainer(tiny_bootstrap, parts, tmp_path, steps=3,
                       extra=("trainer.save_every=0", "rollout.weight_sync=broadcast", "trainer.max_staleness=1",
                              "trainer.eval_every=2"))
    summary = trainer.run()
    assert summary.steps == 3
    steps = [r for r in rows(tmp_path) if "learner/loss" in r]
    # The evaluation after step 2 (step 3 generating beside it) ran on the step-2 weights.
    assert "eval/avg@2" in steps[1] and "eval/avg@2" not in steps[0]
    assert [r["policy_version"] for r in steps] == [1.0, 2.0, 3.0]
    assert [r["rollout/staleness_max"] for r in steps] == [0.0, 1.0, 1.0]
    assert steps[0]["learner/logp_gap"] <= 1e-5  # step 1 sampled with the synced version-0 weights
    assert ray.get(parts.rollout_workers[0].version.remote()) == 3


def test_non_finite_steps_are_skipped_then_stop(parts, tiny_bootstrap, tmp_path, caplog) -> None:
    def poison_logprobs(worker: Any) -> None:  # nested: pickled by value for the actor
        core = worker.core
        clean = core._logprobs

        def nan_logprobs(mb: Any) -> tuple:
            logp, topk_logp = clean(mb)  # (sampled tokens, teacher's top-k: None unless distill=topk)
            return logp * float("nan"), topk_logp

        core._logprobs = nan_logprobs

    def poison_after_step_1(step: int, metrics: dict) -> None:
        if step == 1:
            # Inside the real learner actor: from now on its log-probs are NaN, as a
            # diverged model's would be. The learner must skip, not apply, the steps.
            ray.get(parts.learner.workers[0].__ray_call__.remote(poison_logprobs))

    trainer = _trainer(tiny_bootstrap, parts, tmp_path, steps=5, extra=("trainer.max_nonfinite_steps=2",))
    try:
        with caplog.at_level(logging.WARNING, logger="scope_ray.controller.trainer"):
            with pytest.raises(TrainingStopped) as info:
                trainer.run(poison_after_step_1)
    finally:
        ray.get(parts.learner.workers[0].__ray_call__.remote(lambda w: w.core.__dict__.pop("_logprobs", None) and None))

    msg = str(info.value)
    assert "2 steps in a row had a non-finite loss or gradient" in msg
    logged = rows(tmp_path)
    assert [r["step"] for r in logged] == [1, 2, 3]
    assert [r["learner/skipped"] for r in logged] == [0, 1, 1]
    assert sum("step 2 skipped: non-finite" in r.getMessage() for r in caplog.records) == 1
    # The checkpoint named in the message is complete, and the skipped step 2 left the
    # weights exactly as step 1 made them.
    last = ckpt.latest_valid(tmp_path)
    assert last is not None and last.step == 2 and str(last.path) in msg
    w1 = load_file(ckpt.checkpoints_dir(tmp_path) / "step_000001" / "hf" / "model.safetensors")
    w2 = load_file(last.hf_dir / "model.safetensors")
    assert all(torch.equal(w1[k], w2[k]) for k in w1)


def test_hung_checkpoint_save(parts, tiny_bootstrap, tmp_path) -> None:
    """Rank 0 hangs while the step-1 checkpoint is saved: the run stops naming the call
    and the step it followed, and no checkpoint is left that looks complete."""
    sleeps: list[tuple[float, ray.ObjectRef]] = []

    def hang_rank0_before_the_save(trainer: Trainer, step: int, metrics: dict) -> None:
        # Progress is reported after the step is logged and before it is checkpointed.
        trainer.cfg.trainer = dataclasses.replace(trainer.cfg.trainer, train_timeout_s=2.0)
        sleeps.append((time.monotonic(), _sleep_in(parts.learner.workers[0], 6.0)))

    trainer = _trainer(tiny_bootstrap, parts, tmp_path, extra=("trainer.save_every=1",))
    with pytest.raises(TrainingStopped) as info:
        trainer.run(lambda step, m: hang_rank0_before_the_save(trainer, step, m))
    assert sleeps and time.monotonic() - sleeps[0][0] < 5.0
    ray.get(sleeps[0][1])
    assert str(info.value) == ("learner failed after step 1: learner worker 0: save_checkpoint() did not return "
                               "within 2 s. Stopped; no checkpoint written yet")
    assert ckpt.latest_valid(tmp_path) is None
    assert not (ckpt.checkpoints_dir(tmp_path) / "step_000001").exists()


def test_hung_checkpoint_load(parts, tiny_bootstrap, tmp_path) -> None:
    """``--resume`` whose load hangs on rank 0: one line naming the call, and the
    checkpoint it tried is still the one to continue from."""
    trainer = _trainer(tiny_bootstrap, parts, tmp_path, extra=("trainer.save_every=1",))
    trainer.run()
    ref = ckpt.latest_valid(tmp_path)
    assert ref is not None and ref.step == 1
    cfg = fault_cfg(tiny_bootstrap, tmp_path, steps=2)
    cfg.trainer = dataclasses.replace(cfg.trainer, train_timeout_s=2.0)
    resumed = Trainer(cfg, tmp_path, parts, ref)
    sleep = _sleep_in(parts.learner.workers[0], 6.0)
    t0 = time.monotonic()
    with pytest.raises(TrainingStopped) as info:
        resumed.run()
    assert time.monotonic() - t0 < 5.0
    ray.get(sleep)
    assert str(info.value) == (f"before step 2: learner worker 0: load_checkpoint() did not return within 2 s. "
                               f"Stopped; last checkpoint: {ref.path}; continue with: scope-ray train --resume {tmp_path}")
    assert ckpt.latest_valid(tmp_path).path == ref.path


def test_restore_policy_without_a_checkpoint_stops_saying_so(parts, tiny_bootstrap, tmp_path, monkeypatch) -> None:
    """``on_learner_failure: restore`` with nothing saved yet: no restore is tried (a
    fresh group from the initial model would silently drop the trained steps)."""
    trainer = _trainer(tiny_bootstrap, parts, tmp_path, extra=("trainer.save_every=0",
                                                               "trainer.on_learner_failure=restore"),
                       train_timeout_s=2.0)
    learner = parts.learner
    sleeps: list[ray.ObjectRef] = []
    original = LearnerGroup.train_step

    def stall_rank0_then_train(self: LearnerGroup, batch: Any, *args: Any, **kwargs: Any) -> Any:
        sleeps.append(_sleep_in(self.workers[0], 5.0))
        return original(self, batch, *args, **kwargs)

    monkeypatch.setattr(LearnerGroup, "train_step", stall_rank0_then_train)
    with pytest.raises(TrainingStopped) as info:
        trainer.run()
    ray.get(sleeps)
    assert str(info.value) == ("learner failed at step 1: learner worker 0: train_step() did not return within 2 s. "
                               "Stopped (no checkpoint to restore from); no checkpoint written yet")
    assert trainer.learner_restores == 0 and parts.learner is learner


def test_an_evaluation_that_loses_a_worker_resyncs_and_runs_again(parts, tiny_bootstrap, tmp_path, caplog) -> None:
    """Rollout worker 0 is killed while the second of its two evaluation calls is queued:
    Ray restarts it from the initial model, the trainer gives it the current weights and
    evaluates again, and the figures equal those of an evaluation without a fault."""
    # 16 held-out prompts: two evaluation calls of 8 on the one worker.
    doubled = [*parts.eval_items, *(dataclasses.replace(it, group_index=it.group_index + 1000)
                                    for it in parts.eval_items)]
    trainer = _trainer(tiny_bootstrap, parts, tmp_path)
    # As after a step: the workers hold version 1, so a worker restarted from the
    # initial model (version 0) is told apart.
    trainer.version = 1
    trainer.sync_weights()
    trainer.parts = dataclasses.replace(parts, eval_items=doubled)
    want = trainer.evaluate()

    killed: list[int] = []

    def verify_then_kill(texts: list[str], truths: list[str]) -> Any:
        out = parts.verify(texts, truths)
        if not killed:
            killed.append(1)
            ray.kill(parts.rollout_workers[0], no_restart=False)
        return out

    trainer.parts = dataclasses.replace(parts, eval_items=doubled, verify=verify_then_kill)
    with caplog.at_level(logging.WARNING, logger="scope_ray.controller.trainer"):
        got = trainer.evaluate()
    assert killed and trainer.rollout_recoveries == 1
    assert any("evaluation lost a rollout worker" in r.getMessage() for r in caplog.records)
    want.pop("time/eval_s")
    got.pop("time/eval_s")
    assert got == want and f"eval/avg@{trainer.cfg.trainer.eval_k}" in got


def test_learner_killed_stops_with_failure_and_checkpoint(parts, tiny_bootstrap, tmp_path, monkeypatch) -> None:
    """Last in the file: the learner stays dead."""
    calls = {"n": 0}
    original = LearnerGroup.train_step

    def kill_then_train(self: LearnerGroup, batch: Any, *args: Any, **kwargs: Any) -> Any:
        calls["n"] += 1
        if calls["n"] == 2:
            ray.kill(self.workers[0], no_restart=False)
        return original(self, batch, *args, **kwargs)

    monkeypatch.setattr(LearnerGroup, "train_step", kill_then_train)
    trainer = _trainer(tiny_bootstrap, parts, tmp_path, steps=3, extra=())
    with pytest.raises(TrainingStopped) as info:
        trainer.run()
    msg = str(info.value)
    assert "learner failed at step 2" in msg
    assert "learner worker 0: train_step() failed, the actor died" in msg
    last = ckpt.latest_valid(tmp_path)
    assert last is not None and last.step == 1 and str(last.path) in msg
    assert f"--resume {tmp_path}" in msg
    assert [r["step"] for r in rows(tmp_path)] == [1]  # nothing logged for the failed step
