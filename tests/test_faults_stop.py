"""A hung remote call becomes an error naming the actor and the call, within its timeout
from config (trainer.*_timeout_s), on every path: generation, scoring, the learner step,
weight export, and the weight update on the rollout workers.

The hang is real: the test makes the actor itself sleep through Ray's ``__ray_call__``
(a sync actor runs one call at a time; on the async teacher a blocking call stalls its
event loop), so the call under test queues behind it. No production code is patched.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import ray

from actors.learner import LearnerFailure, LearnerGroup
from faults_support import fault_cfg
from scope_ray.config import RunConfig
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


def _trainer(boot: Any, parts: Any, run_dir: Path, **timeouts: float) -> Trainer:
    cfg: RunConfig = fault_cfg(boot, run_dir, steps=1, extra=["trainer.save_every=0"])
    cfg.trainer = dataclasses.replace(cfg.trainer, **timeouts)
    return Trainer(cfg, run_dir, parts, None)


def test_hung_generate(parts, tiny_bootstrap, tmp_path) -> None:
    trainer = _trainer(tiny_bootstrap, parts, tmp_path, generate_timeout_s=2.0)
    sleep = _sleep_in(parts.rollout_workers[0], 6.0)
    t0 = time.monotonic()
    with pytest.raises(RemoteCallError, match=r"rollout worker 0: generate\(\) did not return within 2 s"):
        trainer._start_stream().collect()
    assert time.monotonic() - t0 < 5.0
    ray.get(sleep)


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


def test_hung_weight_export(parts, tiny_bootstrap, tmp_path) -> None:
    trainer = _trainer(tiny_bootstrap, parts, tmp_path, sync_timeout_s=1.0)
    sleep = _sleep_in(parts.learner.workers[0], 4.0)
    t0 = time.monotonic()
    with pytest.raises(LearnerFailure, match=r"learner worker 0: export_weights\(\) did not return within 1 s"):
        trainer.sync_weights()
    assert time.monotonic() - t0 < 4.0
    ray.get(sleep)


def test_hung_weight_update(parts, tiny_bootstrap, tmp_path) -> None:
    trainer = _trainer(tiny_bootstrap, parts, tmp_path, sync_timeout_s=1.0)
    sleep = _sleep_in(parts.rollout_workers[0], 4.0)
    t0 = time.monotonic()
    with pytest.raises(RemoteCallError, match=r"rollout worker 0: update_weights\(\) did not return within 1 s"):
        trainer.sync_weights()
    assert time.monotonic() - t0 < 4.0
    ray.get(sleep)
