"""StepStream (scope_ray/controller/stream.py) on real Ray, with small stand-in actors.

The stream is the thing under test; the rollout worker and teacher here are real Ray
actors whose timing and failures the test controls (a sample every 0.2 s, a process
that exits half-way through a call), which the vLLM-backed actors cannot give on demand. The
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
GAP_S = 0.2  # between two samples a stand-in worker yields


def _sample(j: int) -> Rollout:
    # Sample 0 of each group is correct (SCOPE: no teacher), sample 1 is not.
    return Rollout(response_ids=[7, 8, 9][: 2 + j], response_logp=np.zeros(2 + j, np.float32),
                   text="right" if j == 0 else "wrong", finish_reason="stop", policy_version=0)


@ray.remote(num_cpus=0, max_restarts=1, max_task_retries=0)
class PacedWorker:
    """Yields one sample every GAP_S; in its first life (no ``marker`` file yet) it exits
    after ``die_after`` samples when that is set."""

    def __init__(self, marker: str = "", die_after: int = -1) -> None:
        self.first_life = bool(marker) and not os.path.exists(marker)
        if marker:
            Path(marker).touch()
        self.die_after = die_after
        self.calls: list[tuple[str, int, float]] = []  # (method, prompts, end time)

    # The RolloutWorker protocol (actors/rollout.py): submit queues a call, stream/collect
    # read it back. Here the "call id" is the call itself, and reading it runs it.
    def submit(self, requests: list[GenerationRequest], sampling=None):
        return requests

    def stream(self, requests: list[GenerationRequest]):
        # Samples finish interleaved across the prompts, as in a vLLM batch.
        for k, (j, i) in enumerate((j, i) for j in range(G) for i in range(len(requests))):
            if self.first_life and k == self.die_after:
                os._exit(1)
            time.sleep(GAP_S)
            yield [(i, j, _sample(j))]
        self.calls.append(("stream", len(requests), time.time()))

    def collect(self, requests: list[GenerationRequest]):
        out = [[None] * G for _ in requests]
        for done in self.stream(requests):
            for i, j, rollout in done:
                out[i][j] = rollout
        self.calls[-1] = ("collect", len(requests), time.time())
        return out

    def get_calls(self) -> list[tuple[str, int, float]]:
        return self.calls


@ray.remote(num_cpus=0)
class RecordingTeacher:
    def __init__(self) -> None:
        self.arrivals: list[float] = []

    def score(self, reqs: list[ScoreRequest]) -> list[np.ndarray]:
        self.arrivals.append((time.time(), len(reqs)))
        return [np.full(len(r.response_ids), -1.0, np.float32) for r in reqs]

    def get_arrivals(self) -> list[tuple[float, int]]:
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


@pytest.mark.parametrize("stream_rollouts", [True, False])
def test_incorrect_samples_reach_the_teacher_while_their_request_is_still_decoding(ray_session,
                                                                                  stream_rollouts) -> None:
    worker, teacher = PacedWorker.remote(), RecordingTeacher.remote()
    try:
        groups = _stream([worker], teacher, stream_rollouts=stream_rollouts).start(_items(), seed=0).collect()
        (_, prompts, generation_end), = ray.get(worker.get_calls.remote())
        arrivals = ray.get(teacher.get_arrivals.remote())
    finally:
        ray.kill(worker)
        ray.kill(teacher)
    assert prompts == GROUPS and [g.group_index for g in groups] == list(range(GROUPS))
    for g in groups:
        # SCOPE: the correct sample is not scored, the incorrect one is.
        assert g.rewards == [1.0, 0.0] and g.teacher_logp[0] is None
        assert g.teacher_logp[1] is not None and (g.teacher_logp[1] == -1.0).all()
    assert sum(n for _, n in arrivals) == GROUPS
    if stream_rollouts:
        # The incorrect samples arrive one gap apart, each sent on arrival; the first
        # about 3 gaps before generation ends.
        assert len(arrivals) == GROUPS
        assert generation_end - arrivals[0][0] > 2 * GAP_S
    else:
        assert min(t for t, _ in arrivals) >= generation_end


def test_a_worker_dying_mid_stream_gets_only_its_undelivered_prompts_again(ray_session, tmp_path, caplog) -> None:
    # Dies after 5 of 8 samples: every prompt's sample 0 and prompt 0's sample 1 are in.
    worker = PacedWorker.remote(str(tmp_path / "lived"), die_after=5)
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
        arrivals = ray.get(teacher.get_arrivals.remote())
    finally:
        ray.kill(worker)
        ray.kill(teacher)
    assert recovered == [0] and stream.retries == 1
    assert any("generate_stream() failed, the actor died" in r.getMessage()
               and "re-issuing its 3 prompt(s)" in r.getMessage() for r in caplog.records)
    # The restarted worker was asked for the 3 prompts with a sample missing, not all 4.
    assert [(name, prompts) for name, prompts, _ in calls] == [("stream", 3)]
    assert [g.uid for g in groups] == [f"p{i}" for i in range(GROUPS)]
    # Samples that came twice (sample 0 of the re-issued prompts) were taken once.
    assert all(g.rewards == [1.0, 0.0] and g.teacher_logp[0] is None for g in groups)
    assert sum(n for _, n in arrivals) == GROUPS


@ray.remote(num_cpus=0, max_concurrency=8)
class PausableWorker:
    """The RolloutWorker protocol with pause. Sample j of group i takes i + j + 1 ticks,
    one token a tick; a paused sample comes back with the tokens it has; a resumed
    sample ends one tick later with one more token, tagged with both versions, wrong."""

    def __init__(self) -> None:
        self.calls: dict[int, list[GenerationRequest]] = {}
        self.paused: set[int] = set()
        self.resumed: list[GenerationRequest] = []

    def submit(self, requests: list[GenerationRequest], sampling=None) -> int:
        self.calls[len(self.calls)] = requests
        return len(self.calls) - 1

    def pause(self, call_id: int) -> None:
        self.paused.add(call_id)

    def stream(self, call_id: int):
        reqs = self.calls[call_id]
        self.resumed += [r for r in reqs if r.resume is not None]
        left = {(i, j) for i, r in enumerate(reqs) for j in range(r.n)}
        for tick in range(1, GROUPS + G + 1):
            time.sleep(GAP_S)
            if call_id in self.paused:
                yield [(i, j, _tokens(tick - 1, "paused")) for i, j in sorted(left)]
                return
            done = [(i, j) for i, j in sorted(left) if _ticks(reqs[i], j) == tick]
            left -= set(done)
            if done:
                yield [(i, j, _finished(reqs[i], j, tick)) for i, j in done]
            if not left:
                return

    def get_resumed(self) -> list[GenerationRequest]:
        return self.resumed


def _ticks(req: GenerationRequest, j: int) -> int:
    return 1 if req.resume is not None else int(req.prompt_ids[-1]) - 3 + j + 1  # group i: prompt [1, 2, 3 + i]


def _tokens(n: int, reason: str, version: int = 0) -> Rollout:
    return Rollout(response_ids=[9] * n, response_logp=np.full(n, -0.5, np.float32), text="", finish_reason=reason,
                   policy_version=version)


def _finished(req: GenerationRequest, j: int, tick: int) -> Rollout:
    text = "right" if j == 0 else "wrong"
    if req.resume is None:
        return Rollout([7] * tick, np.zeros(tick, np.float32), text, "stop", 0)
    before = req.resume
    return Rollout(before.response_ids + [7], np.append(before.response_logp, 0.0).astype(np.float32),
                   "wrong", "stop", 0, first_version=-1)


def test_partial_rollouts_train_the_first_groups_and_carry_the_rest_into_the_next_stream(ray_session) -> None:
    """rollout.partial_rollouts, the controller side. Four groups in flight, two
    needed: once groups 0 and 1 are generated the call is paused, they are trained, and
    groups 2 and 3 are carried, each sample paused with its tokens so far, but group 2's
    sample 0, which had finished, with its verdict. The next stream resumes exactly the
    paused samples first, from their tokens, and must train groups 2 and 3 whatever else
    it holds; its new prompts are paused and carried in turn. No group is trained twice
    or lost, and no sample scored twice."""
    worker, teacher = PausableWorker.remote(), RecordingTeacher.remote()
    items = [*_items(), *(PromptItem(f"p{i}", i, [1, 2, 3 + i - GROUPS], "right", "test") for i in (4, 5))]
    try:
        first = _stream([worker], teacher, partial=True).start(items[:4], seed=0, needed=2)
        groups = first.collect()
        carried = first.take_carried()
        assert [g.group_index for g in groups] == [0, 1] and first.take_carried() == []
        assert [g.group_index for g in carried] == [2, 3]
        assert [[r.finish_reason for r in g.rollouts] for g in carried] == [["stop", "paused"], ["paused", "paused"]]
        assert carried[0].rewards[0] == 1.0
        paused = [(g.uid, r) for g in carried for r in g.rollouts if r.finish_reason == "paused"]
        assert [len(r.response_ids) for _, r in paused] == [3, 3, 3]  # paused in the 4th tick
        assert first.clock.paused_samples == 3

        second = _stream([worker], teacher, partial=True).start(items[4:], seed=0, carried=carried, needed=2)
        trained = second.collect()
        resumed = ray.get(worker.get_resumed.remote())
        arrivals = ray.get(teacher.get_arrivals.remote())
    finally:
        ray.kill(worker)
        ray.kill(teacher)
    assert [g.group_index for g in trained] == [2, 3]
    assert sorted((r.uid, r.resume.response_ids) for r in resumed) == sorted((u, r.response_ids) for u, r in paused)
    assert [g.rewards for g in trained] == [[1.0, 0.0], [0.0, 0.0]]
    assert [[t is not None for t in g.teacher_logp] for g in trained] == [[False, True], [True, True]]
    for g, before in zip(trained, carried):
        for r, b in zip(g.rollouts, before.rollouts):
            if b.finish_reason == "paused":
                assert r.response_ids == b.response_ids + [7] and r.first_version == -1
            else:
                assert r.response_ids == b.response_ids and r.first_version is None
    assert [g.group_index for g in second.take_carried()] == [4, 5]
    assert sum(n for _, n in arrivals) == 2 + 3  # groups 0 and 1's incorrect sample, the 3 resumed ones
