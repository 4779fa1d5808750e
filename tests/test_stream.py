"""StepStream (scope_ray/controller/stream.py) on real Ray, with small stand-in actors.

The stream is the thing under test; the rollout worker and teacher here are real Ray
actors whose timing and failures the test controls (a yield every 0.4 s, a process that
exits half-way through a call), which the vLLM-backed actors cannot give on demand. The
end-to-end runs with the real actors are in test_trainer.py and test_faults_actors.py.
"""

from __future__ import annotations

import logging
import os
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import ray

from scope_ray.algo import get_algorithm
from scope_ray.controller.stream import PromptItem, StepStream
from scope_ray.types import GenerationRequest, Rollout, ScoreRequest

# Ray's workers cannot import test modules: ship this one's actors by value.
ray.cloudpickle.register_pickle_by_value(sys.modules[__name__])

GROUPS = 4
G = 2
GAP_S = 0.4  # between two groups a stand-in worker yields


def _group(req: GenerationRequest, version: int) -> list[Rollout]:
    return [Rollout(response_ids=[7, 8, 9], response_logp=np.zeros(3, np.float32), text="wrong",
                    finish_reason="stop", policy_version=version) for _ in range(req.n)]


@ray.remote(num_cpus=0, max_restarts=1, max_task_retries=0)
class PacedWorker:
    """Yields one group every GAP_S; in its first life (no ``marker`` file yet) it exits
    after ``die_after`` groups when that is set."""

    def __init__(self, marker: str = "", die_after: int = -1) -> None:
        self.first_life = bool(marker) and not os.path.exists(marker)
        if marker:
            Path(marker).touch()
        self.die_after = die_after
        self.calls: list[tuple[str, int, float]] = []  # (method, prompts, end time)

    def generate_stream(self, requests: list[GenerationRequest], sampling=None):
        for i, req in enumerate(requests):
            if self.first_life and i == self.die_after:
                os._exit(1)
            time.sleep(GAP_S)
            yield i, _group(req, 0)
        self.calls.append(("generate_stream", len(requests), time.time()))

    def generate(self, requests: list[GenerationRequest], sampling=None):
        out = [group for _, group in self.generate_stream(requests, sampling)]
        self.calls[-1] = ("generate", len(requests), time.time())
        return out

    def get_calls(self) -> list[tuple[str, int, float]]:
        return self.calls


@ray.remote(num_cpus=0)
class RecordingTeacher:
    def __init__(self) -> None:
        self.arrivals: list[float] = []

    def score(self, reqs: list[ScoreRequest]) -> list[np.ndarray]:
        self.arrivals.append(time.time())
        return [np.full(len(r.response_ids), -1.0, np.float32) for r in reqs]

    def get_arrivals(self) -> list[float]:
        return self.arrivals


@dataclass
class Verdict:
    reward: float
    reason: str


def _verify(texts: list[str], truths: list[str]) -> list[Verdict]:
    return [Verdict(float(t == "right"), "ok") for t in texts]


def _items() -> list[PromptItem]:
    return [PromptItem(uid=f"p{i}", group_index=i, prompt_ids=[1, 2, 3 + i], ground_truth="right",
                       data_source="test") for i in range(GROUPS)]


def _stream(workers, teacher, **kw) -> StepStream:
    return StepStream(workers, [teacher], _verify, get_algorithm("scope"), prompts_per_request=GROUPS,
                      group_size=G, generate_timeout_s=60, score_timeout_s=60, **kw)


@pytest.mark.parametrize("stream_groups", [True, False])
def test_groups_reach_the_teacher_while_their_request_is_still_decoding(ray_session, stream_groups) -> None:
    worker, teacher = PacedWorker.remote(), RecordingTeacher.remote()
    try:
        groups = _stream([worker], teacher, stream_groups=stream_groups).start(_items(), seed=0).collect()
        (_, prompts, generation_end), = ray.get(worker.get_calls.remote())
        arrivals = ray.get(teacher.get_arrivals.remote())
    finally:
        ray.kill(worker)
        ray.kill(teacher)
    assert prompts == GROUPS and [g.group_index for g in groups] == list(range(GROUPS))
    assert all(t is not None and (t == -1.0).all() for g in groups for t in g.teacher_logp)
    if stream_groups:
        # One score call per group, the first about 3 gaps before the call returns.
        assert len(arrivals) == GROUPS
        assert generation_end - arrivals[0] > 2 * GAP_S
    else:
        assert min(arrivals) >= generation_end


def test_a_worker_dying_mid_stream_gets_only_its_undelivered_prompts_again(ray_session, tmp_path, caplog) -> None:
    worker = PacedWorker.remote(str(tmp_path / "lived"), die_after=2)
    teacher = RecordingTeacher.remote()
    recovered = []

    def recover(index: int) -> int:
        # What Trainer.recover_rollout_worker does first: wait until the worker is back.
        ray.get(worker.get_calls.remote(), timeout=60)
        recovered.append(index)
        return 0

    try:
        stream = _stream([worker], teacher, recover_worker=recover)
        with caplog.at_level(logging.WARNING, logger="scope_ray.controller"):
            groups = stream.start(_items(), seed=0).collect()
        calls = ray.get(worker.get_calls.remote())
    finally:
        ray.kill(worker)
        ray.kill(teacher)
    assert recovered == [0] and stream.retries == 1
    assert any("generate_stream() failed, the actor died" in r.getMessage()
               and "re-issuing its 2 prompt(s)" in r.getMessage() for r in caplog.records)
    # The restarted worker was asked for the 2 groups it had not sent, not all 4.
    assert [(name, prompts) for name, prompts, _ in calls] == [("generate_stream", 2)]
    assert sorted(g.group_index for g in groups) == list(range(GROUPS))
    assert [g.uid for g in groups] == [f"p{i}" for i in range(GROUPS)]
