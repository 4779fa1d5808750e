"""Learner faults on local Ray with the real DeepSpeed learner: a rank killed mid-run
(stop with a message, or restore from the last checkpoint and continue) and repeated
non-finite steps (skipped, then a clean stop with the checkpoint intact)."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import pytest
import ray
import torch
from safetensors.torch import load_file

from actors.learner import LearnerGroup
from faults_support import assert_same_steps, baseline_dir, fault_cfg, rows, run_trainer, train_rows
from scope_ray.controller import checkpoint as ckpt
from scope_ray.controller.trainer import TrainingStopped


@pytest.fixture(scope="module")
def baseline(ray_session, tiny_bootstrap, tmp_path_factory) -> Path:
    return baseline_dir(tmp_path_factory, tiny_bootstrap)


def _kill_rank0_on_call(monkeypatch: pytest.MonkeyPatch, n: int) -> dict[str, int]:
    """Kill learner rank 0 as the ``n``-th train_step is sent to it."""
    calls = {"n": 0}
    original = LearnerGroup.train_step

    def kill_then_train(self: LearnerGroup, batch: Any, *args: Any, **kwargs: Any) -> Any:
        calls["n"] += 1
        if calls["n"] == n:
            ray.kill(self.workers[0], no_restart=False)
        return original(self, batch, *args, **kwargs)

    monkeypatch.setattr(LearnerGroup, "train_step", kill_then_train)
    return calls


def test_learner_killed_stops_with_failure_and_checkpoint(ray_session, tiny_bootstrap, tmp_path,
                                                         monkeypatch) -> None:
    _kill_rank0_on_call(monkeypatch, 2)
    with pytest.raises(TrainingStopped) as info:
        run_trainer(fault_cfg(tiny_bootstrap, tmp_path), tmp_path)
    msg = str(info.value)
    assert "learner failed at step 2" in msg
    assert "learner worker 0: train_step() failed, the actor died" in msg
    last = ckpt.latest_valid(tmp_path)
    assert last is not None and last.step == 1 and str(last.path) in msg
    assert f"--resume {tmp_path}" in msg
    assert [r["step"] for r in rows(tmp_path)] == [1]  # nothing logged for the failed step


def test_learner_killed_is_restored_from_checkpoint(ray_session, tiny_bootstrap, baseline, tmp_path,
                                                    monkeypatch) -> None:
    calls = _kill_rank0_on_call(monkeypatch, 2)
    cfg = fault_cfg(tiny_bootstrap, tmp_path, extra=["trainer.on_learner_failure=restore"])
    trainer, summary = run_trainer(cfg, tmp_path)

    assert summary.steps == 3 and trainer.learner_restores == 1
    assert calls["n"] == 4  # step 2 ran twice: once into the dead rank, once restored
    # Restored from step 1 (weights, optimizer, data position): the run goes on exactly
    # as if nothing had happened.
    assert_same_steps(train_rows(tmp_path), train_rows(baseline))
    a = load_file(ckpt.latest_valid(baseline).hf_dir / "model.safetensors")
    b = load_file(ckpt.latest_valid(tmp_path).hf_dir / "model.safetensors")
    for k in a:
        torch.testing.assert_close(a[k], b[k], rtol=0, atol=1e-6)


def test_non_finite_steps_are_skipped_then_stop(ray_session, tiny_bootstrap, tmp_path, caplog) -> None:
    def poison_logprobs(worker: Any) -> None:  # nested: pickled by value for the actor
        core = worker.core
        clean = core._logprobs
        core._logprobs = lambda mb: clean(mb) * float("nan")

    def poison_after_step_1(trainer: Any, step: int, metrics: dict) -> None:
        if step == 1:
            # Inside the real learner actor: from now on its log-probs are NaN, as a
            # diverged model's would be. The learner must skip, not apply, the steps.
            ray.get(trainer.parts.learner.workers[0].__ray_call__.remote(poison_logprobs))

    cfg = fault_cfg(tiny_bootstrap, tmp_path, steps=5, extra=["trainer.max_nonfinite_steps=2"])
    with caplog.at_level(logging.WARNING, logger="scope_ray.controller.trainer"):
        with pytest.raises(TrainingStopped) as info:
            run_trainer(cfg, tmp_path, poison_after_step_1)

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
