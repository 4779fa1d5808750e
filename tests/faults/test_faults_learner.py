"""A learner rank killed mid-run with ``trainer.on_learner_failure: restore``: the group
is rebuilt from the last checkpoint and the run goes on as if nothing had happened
(real DeepSpeed learner on local Ray). The ``stop`` policy, hangs and non-finite steps
are in tests/faults/test_faults_stop.py."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import ray
import torch
from safetensors.torch import load_file

from actors.learner import LearnerGroup
from scope_ray.controller.trainer import TrainingStopped
from faults_support import assert_same_steps, baseline_dir, fault_cfg, run_trainer, train_rows
from scope_ray.controller import checkpoint as ckpt


@pytest.fixture(scope="module")
def baseline(ray_session, tiny_bootstrap, tmp_path_factory) -> Path:
    return baseline_dir(tmp_path_factory, tiny_bootstrap)


def _kill_rank0_on_call(monkeypatch: pytest.MonkeyPatch, *n: int) -> dict[str, int]:
    """Kill learner rank 0 as the ``n``-th train_step is sent to it (each ``n`` given)."""
    calls = {"n": 0}
    original = LearnerGroup.train_step

    def kill_then_train(self: LearnerGroup, batch: Any, *args: Any, **kwargs: Any) -> Any:
        calls["n"] += 1
        if calls["n"] in n:
            ray.kill(self.workers[0], no_restart=False)
        return original(self, batch, *args, **kwargs)

    monkeypatch.setattr(LearnerGroup, "train_step", kill_then_train)
    return calls


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


def test_learner_restores_stop_at_the_cap(ray_session, tiny_bootstrap, tmp_path, monkeypatch) -> None:
    """``actor_max_restarts=1``: the first kill (step 2) is restored, the second (step 3)
    stops the run, naming the cap and the step-2 checkpoint, which is intact."""
    calls = _kill_rank0_on_call(monkeypatch, 2, 4)
    cfg = fault_cfg(tiny_bootstrap, tmp_path, extra=["trainer.on_learner_failure=restore",
                                                     "trainer.actor_max_restarts=1"])
    with pytest.raises(TrainingStopped) as info:
        run_trainer(cfg, tmp_path)
    assert info.value.trainer.learner_restores == 1 and calls["n"] == 4
    second = ckpt.checkpoints_dir(tmp_path) / "step_000002"
    msg = str(info.value)
    assert msg.startswith("learner failed at step 3: learner worker 0: train_step() failed, the actor died")
    assert msg.endswith(f"Stopped (no restore left: trainer.actor_max_restarts is 1); last checkpoint: "
                        f"{second}; continue with: scope-ray train --resume {tmp_path}")
    assert ckpt.latest_valid(tmp_path).step == 2
    assert [r["step"] for r in train_rows(tmp_path)] == [1, 2]
