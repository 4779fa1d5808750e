"""Stream one step's prompts through generation, verification and teacher scoring.

Prompts go to the rollout workers in small requests (``prompts_per_request``). As soon
as a request returns, its groups are verified; the rollouts that need a teacher signal
go to a teacher replica while other groups are still generating. A step's groups are
complete when every generation and scoring call has come back.

Every wait has a timeout from config; a call that does not return in time becomes an
error naming the actor and the call, instead of a silent hang.
"""

from __future__ import annotations

import itertools
import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import ray

from scope_ray.algo import AlgorithmSpec
from scope_ray.controller.groups import attach_teacher, teacher_requests
from scope_ray.types import GenerationRequest, RolloutGroup

logger = logging.getLogger(__name__)


class RemoteCallError(RuntimeError):
    """A remote call failed or timed out; the message names the actor and the call."""


@dataclass
class PromptItem:
    uid: str
    group_index: int
    prompt_ids: list[int]
    ground_truth: str
    data_source: str


@dataclass
class StageClock:
    """Wall-clock spans of the stages of one step (seconds since its start)."""

    start: float = field(default_factory=time.perf_counter)
    first_submit: float = 0.0
    generate_done: float = 0.0
    score_done: float = 0.0
    generate_calls: float = 0.0  # summed call durations (busy time across workers)
    score_calls: float = 0.0
    verify_s: float = 0.0

    def now(self) -> float:
        return time.perf_counter() - self.start


@dataclass
class _Pending:
    kind: str  # "generate" | "score"
    actor_name: str
    submitted: float
    payload: Any


Verifier = Callable[[list[str], list[str]], list[Any]]


class StepStream:
    """One step's stream of groups. Create with :func:`start`, then :meth:`collect`."""

    def __init__(
        self,
        rollout_workers: Sequence[Any],
        teachers: Sequence[Any],
        verify: Verifier,
        spec: AlgorithmSpec,
        *,
        prompts_per_request: int,
        group_size: int,
        generate_timeout_s: float,
        score_timeout_s: float,
        sequential: bool = False,
        sampling: dict[str, Any] | None = None,
    ) -> None:
        self.workers = list(rollout_workers)
        self.teachers = list(teachers)
        self.verify = verify
        self.spec = spec
        self.prompts_per_request = prompts_per_request
        self.group_size = group_size
        self.generate_timeout_s = generate_timeout_s
        self.score_timeout_s = score_timeout_s
        # sequential: generate everything, then score everything (benchmark baseline).
        self.sequential = sequential
        self.sampling = sampling
        self.clock = StageClock()
        self._pending: dict[ray.ObjectRef, _Pending] = {}
        self._groups: list[RolloutGroup] = []
        self._held_for_teacher: list[RolloutGroup] = []
        self._teacher_rr = itertools.cycle(range(max(1, len(self.teachers))))

    # ------------------------------------------------------------------ submit
    def start(self, items: Sequence[PromptItem], seed: int) -> StepStream:
        self.clock = StageClock()
        self.clock.first_submit = self.clock.now()
        chunks = [items[i : i + self.prompts_per_request] for i in range(0, len(items), self.prompts_per_request)]
        for j, chunk in enumerate(chunks):
            w = j % len(self.workers)
            reqs = [
                GenerationRequest(uid=it.uid, prompt_ids=it.prompt_ids, n=self.group_size, seed=_request_seed(seed, it.group_index))
                for it in chunk
            ]
            ref = self.workers[w].generate.remote(reqs, self.sampling)
            self._pending[ref] = _Pending("generate", f"rollout worker {w}", time.perf_counter(), list(chunk))
        return self

    # ------------------------------------------------------------------ collect
    def collect(self) -> list[RolloutGroup]:
        """Block until every group of the step is verified and scored."""
        self.pump()
        return sorted(self._groups, key=lambda g: g.group_index)

    def pump(self, stop_when: Callable[[], bool] | None = None, poll_s: float = 0.05) -> bool:
        """Move groups along until the step is complete (True) or ``stop_when()`` (False).

        The trainer pumps the *next* step's stream while the learner trains, so teacher
        scoring of freshly generated groups overlaps the gradient step.
        """
        while self._pending:
            if stop_when is not None and stop_when():
                return False
            timeout = poll_s if stop_when is not None else 1.0
            ready, _ = ray.wait(list(self._pending), num_returns=1, timeout=timeout)
            if not ready:
                self._check_timeouts()
                continue
            for ref in ready:
                self._finish(ref)
            if self.sequential and not any(p.kind == "generate" for p in self._pending.values()):
                for g in self._held_for_teacher:
                    self._submit_score(g)
                self._held_for_teacher = []
        return True

    @property
    def done(self) -> bool:
        return not self._pending

    def _check_timeouts(self) -> None:
        now = time.perf_counter()
        for p in self._pending.values():
            limit = self.generate_timeout_s if p.kind == "generate" else self.score_timeout_s
            if now - p.submitted > limit:
                call = "generate" if p.kind == "generate" else "score"
                raise RemoteCallError(f"{p.actor_name}: {call}() did not return within {limit:.0f} s")

    def _finish(self, ref: ray.ObjectRef) -> None:
        p = self._pending.pop(ref)
        try:
            result = ray.get(ref)
        except Exception as exc:  # noqa: BLE001 - re-raised with the actor's name
            call = "generate" if p.kind == "generate" else "score"
            raise RemoteCallError(f"{p.actor_name}: {call}() failed: {exc}") from exc
        elapsed = time.perf_counter() - p.submitted
        if p.kind == "generate":
            self.clock.generate_calls += elapsed
            self._on_generated(p.payload, result)
            if not any(q.kind == "generate" for q in self._pending.values()):
                self.clock.generate_done = self.clock.now()
        else:
            self.clock.score_calls += elapsed
            group, indices = p.payload
            attach_teacher(group, indices, result)
            self._groups.append(group)
            if not self._pending:
                self.clock.score_done = self.clock.now()

    def _on_generated(self, items: list[PromptItem], results: list[list[Any]]) -> None:
        if len(results) != len(items):
            raise RemoteCallError(f"rollout worker returned {len(results)} groups for {len(items)} prompts")
        groups = [
            RolloutGroup(
                uid=it.uid, group_index=it.group_index, prompt_ids=it.prompt_ids,
                ground_truth=it.ground_truth, data_source=it.data_source, rollouts=list(rollouts),
            )
            for it, rollouts in zip(items, results)
        ]
        t0 = time.perf_counter()
        texts = [r.text for g in groups for r in g.rollouts]
        truths = [g.ground_truth for g in groups for _ in g.rollouts]
        verdicts = self.verify(texts, truths)
        self.clock.verify_s += time.perf_counter() - t0
        k = 0
        for g in groups:
            g.rewards = [float(v.reward) for v in verdicts[k : k + len(g.rollouts)]]
            g.reasons = [str(v.reason) for v in verdicts[k : k + len(g.rollouts)]]
            k += len(g.rollouts)
            if self.sequential:
                self._held_for_teacher.append(g)
            else:
                self._submit_score(g)

    def _submit_score(self, group: RolloutGroup) -> None:
        indices, reqs = teacher_requests(self.spec, group)
        if not reqs:
            group.teacher_logp = [None] * len(group.rollouts)
            self._groups.append(group)
            return
        t = next(self._teacher_rr)
        ref = self.teachers[t].score.remote(reqs)
        self._pending[ref] = _Pending("score", f"teacher replica {t}", time.perf_counter(), (group, indices))


def _request_seed(seed: int, group_index: int) -> int:
    """A sampling seed per prompt: reproducible whatever worker or batch it lands in."""
    return (seed * 1_000_003 + group_index * 7919) % (2**31 - 1)
