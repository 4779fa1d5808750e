"""Stream one step's prompts through generation, verification and teacher scoring.

Prompts go to the rollout workers in calls of ``prompts_per_request``. A worker's engine
admits a call the moment it arrives and decodes the calls it holds together (on a GPU by
default), or one at a time (a CPU's default; ``rollout.max_calls_in_flight``).
With ``stream_rollouts`` (the default) a worker yields every sample the moment it is
finished (``RolloutWorker.stream``, a Ray streaming generator); otherwise a whole call
comes back at once (``RolloutWorker.collect``). Each sample that arrives is verified, and if it needs a teacher signal
(SCOPE: it is incorrect; OPD: always) it is sent to a teacher replica while the longer
samples are still decoding: routing needs only the sample's own verdict, so the teacher
does not wait for the group. A group is complete when its G samples are in and scored;
the step's groups are complete when every call has come back.

Every wait has a timeout from config; a call that does not return in time becomes an
error naming the actor and the call, instead of a silent hang.

Faults: a rollout worker that dies is restarted by Ray (``max_restarts``) from the
initial model, so before its prompts are re-issued the trainer's ``recover_worker``
pushes it the current weights. A worker that restarted unnoticed (between calls) is
caught by the policy version its rollouts carry. Only prompts whose group is not yet
complete are re-issued; they keep their per-prompt seeds, so they give the same samples,
and a sample that is already in is not taken twice. So every group of the step is
counted exactly once (checked in :meth:`StepStream.collect`). A scoring call whose
teacher replica died goes to the next replica (Ray itself first retries it on the
restarted replica, ``max_task_retries``).

Partial rollouts (``rollout.partial_rollouts``, as slime and AReaL do it): a stream is
given more groups than the step trains (``rollout.extra_prompts`` more) and ``needed``,
the number it trains. Once ``needed`` groups are generated, its calls are paused: the
unfinished samples come back as ``"paused"`` rollouts (tokens and log-probs so far), and
the groups that were not chosen are *carried* (:meth:`StepStream.take_carried`) into the
next stream the trainer starts, which resumes their paused samples first, under its
newer weights, and must train them (they are never paused twice). Each token keeps the
log-prob of the policy that sampled it, so rho stays exact. The step trains the groups
carried into it plus the first to be generated, so short groups are trained sooner and
long ones a step later, with older tokens (``rollout/staleness_max``): no group is dropped
or replaced, but long responses are more off-policy than short ones, and which groups
finish first depends on timing, so such a run is not bit-reproducible.
"""

from __future__ import annotations

import itertools
import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np
import ray

from actors.rollout import start_call
from scope_ray.algo import AlgorithmSpec
from scope_ray.controller.groups import attach_teacher, teacher_requests
from scope_ray.errors import RemoteCallError, first_line
from scope_ray.types import GenerationRequest, Rollout, RolloutGroup, ScoreRequest

logger = logging.getLogger(__name__)


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
    generate_calls: float = 0.0  # time each worker had a call in flight, summed over workers
    score_calls: float = 0.0  # summed scoring call durations
    verify_s: float = 0.0
    paused_samples: int = 0  # rollout.partial_rollouts: samples paused to be resumed later
    resumed_samples: int = 0  # ... and paused samples (with tokens) carried in and resumed

    # Per worker: calls in flight and when it last went from none to some. A worker's
    # calls decode together, so its busy time is the union of their spans, not the sum.
    _open: dict[int, int] = field(default_factory=dict)
    _busy_since: dict[int, float] = field(default_factory=dict)

    def now(self) -> float:
        return time.perf_counter() - self.start

    def call_started(self, worker: int) -> None:
        if not self._open.get(worker):
            self._busy_since[worker] = time.perf_counter()
        self._open[worker] = self._open.get(worker, 0) + 1

    def call_ended(self, worker: int) -> None:
        self._open[worker] -= 1
        if not self._open[worker]:
            self.generate_calls += time.perf_counter() - self._busy_since.pop(worker)

    @property
    def score_tail_s(self) -> float:
        """How long teacher scoring ran on after the last group was generated: the part
        of the teacher's work the step waited for (0 when it all overlapped decoding)."""
        return max(0.0, self.score_done - self.generate_done)


@dataclass
class _Ask:
    """What one request of a generate call is for: samples ``first .. first + n - 1`` of
    the group of ``item`` (a new prompt: all G; a resumed sample: one)."""

    item: PromptItem
    first: int
    n: int

    @property
    def group_index(self) -> int:
        return self.item.group_index


@dataclass
class _Pending:
    kind: str  # "generate" | "score"
    actor_name: str
    submitted: float
    payload: Any  # generate: (asks, requests); score: (samples, requests)
    index: int = 0  # the worker or replica it went to
    attempt: int = 0  # re-issues so far
    version: int = 0  # generate: the policy version the worker must hold
    call: Any = None  # generate: the ObjectRef of the worker's call id (to pause it)
    required: bool = False  # generate: resumes carried samples, so it is never paused


# One sample, addressed as (group_index, rollout index within the group).
Sample = tuple[int, int]


Verifier = Callable[[list[str], list[str]], list[Any]]
# Bring rollout worker ``i`` back after it died or restarted: wait until it is up, give
# it the current weights, return the policy version it now holds.
WorkerRecovery = Callable[[int], int]


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
        stream_rollouts: bool = True,
        sampling: dict[str, Any] | None = None,
        policy_version: int = 0,
        recover_worker: WorkerRecovery | None = None,
        max_retries: int = 3,
        dead_teachers: set[int] | None = None,
        kl_beta: float = 0.0,
        topk: int = 0,
        partial: bool = False,
    ) -> None:
        self.workers = list(rollout_workers)
        self.teachers = list(teachers)
        self.verify = verify
        self.spec = spec
        self.kl_beta = kl_beta  # GRPO: > 0 sends every rollout to the reference scorer
        self.topk = topk  # algorithm.distill=topk: the teacher's k most likely tokens too
        self.prompts_per_request = prompts_per_request
        self.group_size = group_size
        self.generate_timeout_s = generate_timeout_s
        self.score_timeout_s = score_timeout_s
        # sequential: generate everything, then score everything (benchmark baseline).
        self.sequential = sequential
        self.stream_rollouts = stream_rollouts
        self.sampling = sampling
        # The weights version every worker holds when this stream starts; rollouts that
        # carry another one come from a worker that restarted from the initial model.
        self.policy_version = policy_version
        self.recover_worker = recover_worker
        self.max_retries = max_retries
        # Replicas known to be dead for good (shared with later steps by the trainer).
        self.dead_teachers = dead_teachers if dead_teachers is not None else set()
        self.retries = 0  # re-issued calls, for logs and tests
        self.clock = StageClock()
        self._pending: dict[ray.ObjectRef | ray.ObjectRefGenerator, _Pending] = {}
        # group_index -> the step's groups, filled in place (a rollout slot is None until
        # its sample arrives), and how many of each group's samples are at the teacher.
        self._groups: dict[int, RolloutGroup] = {}
        self._scoring: dict[int, int] = {}
        self._to_score: list[tuple[Sample, ScoreRequest]] = []  # verified, for the next score call
        self._teacher_rr = itertools.cycle(range(max(1, len(self.teachers))))
        # rollout.partial_rollouts (module docstring): pause once `needed` groups are in.
        self.partial = partial
        self.needed = 0
        self._required: set[int] = set()  # carried into this stream: trained here, never paused
        self._generated: list[int] = []  # groups whose G samples are all in, in that order
        self._paused: dict[Sample, Rollout] = {}  # paused in this stream, to carry on
        self._pausing = False
        self._chosen: list[RolloutGroup] | None = None
        self._carried: list[RolloutGroup] = []

    # ------------------------------------------------------------------ submit
    def start(self, items: Sequence[PromptItem], seed: int, carried: Sequence[RolloutGroup] = (),
              needed: int | None = None) -> StepStream:
        """Generate ``items`` and finish the ``carried`` groups (paused in an earlier
        stream; their calls go first); with ``partial``, pause once ``needed`` groups
        (the carried ones among them) are generated."""
        self.clock = StageClock()
        self.clock.first_submit = self.clock.now()
        self.needed = len(items) + len(carried) if needed is None else needed
        resumed: list[tuple[_Ask, GenerationRequest]] = []
        for g in carried:
            # The finished samples keep their verdicts and teacher scores.
            self._groups[g.group_index] = replace(g, rollouts=[None if r.finish_reason == "paused" else r
                                                               for r in g.rollouts])
            self._scoring[g.group_index] = 0
            self._required.add(g.group_index)
            item = PromptItem(g.uid, g.group_index, g.prompt_ids, g.ground_truth, g.data_source)
            for j, r in enumerate(g.rollouts):
                if r.finish_reason == "paused":
                    resumed.append((_Ask(item, j, 1), GenerationRequest(
                        uid=g.uid, prompt_ids=g.prompt_ids, n=1, resume=r,
                        seed=_resume_seed(_request_seed(seed, g.group_index) + j, len(r.response_ids)))))
            if not any(r.finish_reason == "paused" for r in g.rollouts):
                self._generated.append(g.group_index)  # every sample had finished
        for it in items:
            self._groups[it.group_index] = RolloutGroup(
                uid=it.uid, group_index=it.group_index, prompt_ids=it.prompt_ids, ground_truth=it.ground_truth,
                data_source=it.data_source, rollouts=[None] * self.group_size,  # type: ignore[list-item]
                rewards=[0.0] * self.group_size, reasons=[""] * self.group_size,
                teacher_logp=[None] * self.group_size,
            )
            self._scoring[it.group_index] = 0
        self.clock.resumed_samples = sum(1 for _, req in resumed if req.resume.response_ids)
        calls: list[tuple[list[tuple[_Ask, GenerationRequest]], bool]] = []
        per_call = self.prompts_per_request * self.group_size  # resumed samples: about as many tokens a call
        calls += [(resumed[i : i + per_call], True) for i in range(0, len(resumed), per_call)]
        fresh = [(_Ask(it, 0, self.group_size),
                  GenerationRequest(uid=it.uid, prompt_ids=it.prompt_ids, n=self.group_size,
                                    seed=_request_seed(seed, it.group_index))) for it in items]
        calls += [(fresh[i : i + self.prompts_per_request], False) for i in range(0, len(fresh), self.prompts_per_request)]
        for j, (call, required) in enumerate(calls):
            self._submit_generate(j % len(self.workers), [a for a, _ in call], [r for _, r in call], attempt=0,
                                  version=self.policy_version, required=required)
        self._maybe_pause()  # every carried group may already be whole
        return self

    def _submit_generate(self, w: int, asks: list[_Ask], reqs: list[GenerationRequest], *,
                         attempt: int, version: int, required: bool = False) -> None:
        worker = self.workers[w]
        # Sequential holds every sample until generation ends: nothing to gain from streaming.
        stream = self.stream_rollouts and not self.sequential
        call, ref = start_call(worker, reqs, self.sampling, stream=stream)  # an ObjectRefGenerator when streaming
        self.clock.call_started(w)
        self._pending[ref] = _Pending("generate", f"rollout worker {w}", time.perf_counter(), (asks, reqs),
                                      index=w, attempt=attempt, version=version, call=call, required=required)

    # ------------------------------------------------------------------ collect
    def collect(self) -> list[RolloutGroup]:
        """Block until the step's groups are verified and scored: every group, or with
        ``partial`` the ``needed`` chosen ones (the rest are carried: take_carried)."""
        self.pump()
        if self._chosen is None:
            self._chosen, self._carried = self._choose()
        return self._chosen

    def take_carried(self) -> list[RolloutGroup]:
        """The groups this stream paused, for the next stream to finish (once)."""
        carried, self._carried = self._carried, []
        return carried

    def _choose(self) -> tuple[list[RolloutGroup], list[RolloutGroup]]:
        if not self.partial:
            incomplete = [g for g in sorted(self._groups) if not self._complete(g)]
            if incomplete:
                # Every call came back, so a re-issue must have dropped samples.
                raise RuntimeError(f"stream ended with groups {incomplete} incomplete")
            return [self._groups[g] for g in sorted(self._groups)], []
        # The carried groups, then the first others to be generated.
        others = [g for g in self._generated if g not in self._required]
        chosen = sorted(self._required) + others[: max(0, self.needed - len(self._required))]
        incomplete = [g for g in chosen if not self._complete(g)]
        if len(chosen) < self.needed or incomplete or not self._required <= set(self._generated):
            raise RuntimeError(f"stream ended with {len(chosen)} of {self.needed} groups generated "
                               f"(incomplete: {incomplete or sorted(self._required - set(self._generated))})")
        carried = []
        for g in sorted(set(self._groups) - set(chosen)):
            group = self._groups[g]
            rollouts = [r if r is not None else self._paused.get((g, j)) for j, r in enumerate(group.rollouts)]
            if any(r is None for r in rollouts):
                raise RuntimeError(f"stream ended with group {g} neither generated nor paused")
            carried.append(replace(group, rollouts=rollouts))
        return [self._groups[g] for g in sorted(chosen)], carried

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
            # Take everything that is ready now, so the samples of one round go to the
            # teacher together (one call per replica, not one per sample).
            rest = [r for r in self._pending if r not in ready]
            if rest:
                ready += ray.wait(rest, num_returns=len(rest), timeout=0)[0]
            for ref in ready:
                self._finish(ref)
            if not self.sequential or not any(p.kind == "generate" for p in self._pending.values()):
                self._flush_scores()
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

    def _finish(self, ref: ray.ObjectRef | ray.ObjectRefGenerator) -> None:
        if isinstance(ref, ray.ObjectRefGenerator):
            self._next_streamed_sample(ref)
            while ref in self._pending and ref.next_ready():
                self._next_streamed_sample(ref)
            return
        p = self._pending.pop(ref)
        call = "generate" if p.kind == "generate" else "score"
        try:
            result = ray.get(ref)
        except ray.exceptions.RayActorError as exc:
            self._lost(p, call, exc)
            return
        except Exception as exc:  # noqa: BLE001 - re-raised with the actor's name
            raise RemoteCallError(f"{p.actor_name}: {call}() failed: {first_line(exc)}") from exc
        if p.kind == "generate":
            asks = p.payload[0]
            if len(result) != len(asks):
                raise RemoteCallError(f"{p.actor_name}: generate() returned {len(result)} groups for {len(asks)} prompts")
            if not self._accept_version(p, result):
                return
            self._on_generated([(a.group_index, a.first + j, r) for a, group in zip(asks, result)
                                for j, r in enumerate(group)])
            self._generate_call_done(p)
        else:
            self.clock.score_calls += time.perf_counter() - p.submitted
            self._on_scored(p.payload[0], result)

    def _next_streamed_sample(self, gen: ray.ObjectRefGenerator) -> None:
        """Take the next ``[(position, index, rollout), ...]`` a worker yielded, or its end."""
        p = self._pending[gen]
        asks = p.payload[0]
        try:
            ref = next(gen)
        except StopIteration:
            del self._pending[gen]
            missing = [a.item.uid for a in asks if self._ask_missing(a)]
            if missing:
                raise RemoteCallError(f"{p.actor_name}: generate_stream() ended without every sample of "
                                      f"prompts {missing}") from None
            self._generate_call_done(p)
            return
        try:
            done = ray.get(ref)
        except ray.exceptions.RayActorError as exc:
            del self._pending[gen]
            self._lost(p, "generate_stream", exc)
            return
        except Exception as exc:  # noqa: BLE001 - re-raised with the actor's name
            raise RemoteCallError(f"{p.actor_name}: generate_stream() failed: {first_line(exc)}") from exc
        for position, index, _ in done:
            if not (0 <= position < len(asks) and 0 <= index < asks[position].n):
                raise RemoteCallError(f"{p.actor_name}: generate_stream() yielded sample ({position}, {index}) "
                                      f"outside its {len(asks)} requests")
        if not self._accept_version(p, [[rollout for _, _, rollout in done]]):
            del self._pending[gen]  # what it still yields comes from the same stale weights
            return
        self._on_generated([(asks[position].group_index, asks[position].first + index, rollout)
                            for position, index, rollout in done])

    def _lost(self, p: _Pending, call: str, exc: ray.exceptions.RayActorError) -> None:
        """The actor died (Ray may be restarting it): the call's work is lost, redo it."""
        if p.kind == "score" and isinstance(exc, ray.exceptions.ActorDiedError):
            self.dead_teachers.add(p.index)
        if not self._reissue(p, f"{call}() failed, the actor died ({first_line(exc)})"):
            raise RemoteCallError(f"{p.actor_name}: {call}() failed: {first_line(exc)}") from exc

    def _accept_version(self, p: _Pending, results: list[list[Any]]) -> bool:
        """False (and the call re-issued) if the rollouts come from a restarted worker."""
        foreign = _foreign_version(results, p.version)
        if foreign is None:
            return True
        reason = f"returned policy version {foreign}, expected {p.version} (restarted from the initial model)"
        if not self._reissue(p, reason):
            raise RemoteCallError(f"{p.actor_name}: generate() {reason}")
        return False

    def _generate_call_done(self, p: _Pending) -> None:
        self.clock.call_ended(p.index)
        if not any(q.kind == "generate" for q in self._pending.values()):
            self.clock.generate_done = self.clock.now()

    def _on_generated(self, samples: list[tuple[int, int, Rollout]]) -> None:
        """Verify newly arrived samples and queue the ones that need a teacher signal."""
        fresh = []
        for gidx, j, rollout in samples:
            if self._groups[gidx].rollouts[j] is not None:
                continue  # re-issued after a fault: the same seed gave the same sample
            if rollout.finish_reason == "paused":
                self._paused[(gidx, j)] = rollout
                self.clock.paused_samples += 1
                continue
            self._groups[gidx].rollouts[j] = rollout
            fresh.append((gidx, j))
            if all(r is not None for r in self._groups[gidx].rollouts):
                self._generated.append(gidx)
        if not fresh:
            return
        t0 = time.perf_counter()
        texts = [self._groups[g].rollouts[j].text for g, j in fresh]
        truths = [self._groups[g].ground_truth for g, _ in fresh]
        verdicts = self.verify(texts, truths)
        self.clock.verify_s += time.perf_counter() - t0
        by_group: dict[int, list[int]] = {}
        for (g, j), v in zip(fresh, verdicts):
            self._groups[g].rewards[j] = float(v.reward)
            self._groups[g].reasons[j] = str(v.reason)
            by_group.setdefault(g, []).append(j)
        for g, js in by_group.items():
            indices, reqs = teacher_requests(self.spec, self._groups[g], self.kl_beta, among=js, topk=self.topk)
            self._to_score.extend(((g, j), req) for j, req in zip(indices, reqs))
            self._scoring[g] += len(indices)
        self._maybe_pause()

    def _maybe_pause(self) -> None:
        """rollout.partial_rollouts: once ``needed`` groups (the carried ones among them)
        are generated, pause every call that resumes nothing; its samples still decoding
        come back paused. Scoring what is already generated carries on."""
        if not self.partial or self._pausing or len(self._generated) < self.needed:
            return
        if not self._required <= set(self._generated):
            return
        self._pausing = True
        for p in self._pending.values():
            if p.kind == "generate" and not p.required:
                self.workers[p.index].pause.remote(p.call)

    def _flush_scores(self) -> None:
        """Send the queued samples to the teacher: one call per live replica."""
        if not self._to_score:
            return
        queued, self._to_score = self._to_score, []
        n_calls = min(len(queued), max(1, len(self.teachers) - len(self.dead_teachers)))
        for k in range(n_calls):
            part = queued[k::n_calls]
            self._send_score(self._next_teacher(), [sample for sample, _ in part], [req for _, req in part], attempt=0)

    def _on_scored(self, samples: list[Sample], scores: list[Any]) -> None:
        if len(scores) != len(samples):
            raise RemoteCallError(f"teacher returned {len(scores)} results for {len(samples)} sequences")
        for (g, j), score in zip(samples, scores):
            attach_teacher(self._groups[g], [j], [score])
            self._scoring[g] -= 1
        if not self._pending:
            self.clock.score_done = self.clock.now()

    def _unfilled(self, g: int, js: range) -> int:
        """How many of group ``g``'s samples ``js`` are not yet generated (nor paused)."""
        rollouts = self._groups[g].rollouts
        return sum(rollouts[j] is None and (g, j) not in self._paused for j in js)

    def _missing(self, g: int) -> int:
        return self._unfilled(g, range(len(self._groups[g].rollouts)))

    def _ask_missing(self, a: _Ask) -> bool:
        """Whether a sample a request is for is not yet generated (nor paused)."""
        return self._unfilled(a.group_index, range(a.first, a.first + a.n)) > 0

    def _complete(self, g: int) -> bool:
        return not self._missing(g) and self._scoring[g] == 0

    def _next_teacher(self) -> int:
        """The next replica in turn that is not known dead (any, if all are)."""
        for _ in range(len(self.teachers)):
            t = next(self._teacher_rr)
            if t not in self.dead_teachers:
                return t
        return next(self._teacher_rr)

    def _send_score(self, t: int, samples: list[Sample], reqs: list[Any], *, attempt: int) -> None:
        ref = self.teachers[t].score.remote(reqs)
        self._pending[ref] = _Pending("score", f"teacher replica {t}", time.perf_counter(), (samples, reqs),
                                      index=t, attempt=attempt)

    def _reissue(self, p: _Pending, reason: str) -> bool:
        """Send a lost call again (same requests, same seeds); False if out of tries."""
        if p.kind == "generate":
            self.clock.call_ended(p.index)
        if p.attempt >= self.max_retries:
            return False
        if p.kind == "generate":
            if self.recover_worker is None:
                return False
            # Only prompts with samples still missing (a stream may have sent some).
            todo = [k for k, a in enumerate(p.payload[0]) if self._ask_missing(a)]
            asks = [p.payload[0][k] for k in todo]
            reqs = [p.payload[1][k] for k in todo]
            if self._pausing and not p.required:
                # Its samples would have been paused: carry them on with what they had.
                for a, req in zip(asks, reqs):
                    for j in range(a.first, a.first + a.n):
                        if self._groups[a.group_index].rollouts[j] is None:
                            self._paused.setdefault((a.group_index, j), _unstarted(req))
                asks, reqs = [], []
            logger.warning("%s: %s; re-issuing its %d prompt(s)", p.actor_name, reason, len(asks))
            try:
                version = self.recover_worker(p.index)
            except Exception as exc:  # noqa: BLE001 - named and re-raised
                raise RemoteCallError(f"{p.actor_name}: {reason}, and it could not be brought back: {first_line(exc)}") from exc
            if asks:
                self._submit_generate(p.index, asks, reqs, attempt=p.attempt + 1, version=version, required=p.required)
            elif not any(q.kind == "generate" for q in self._pending.values()):
                # Every sample of the lost call had arrived: nothing to redo (the worker is
                # brought back all the same, for the calls still to come).
                self.clock.generate_done = self.clock.now()
        else:
            samples, reqs = p.payload
            t = self._next_teacher()
            logger.warning("%s: %s; re-sending %d sequence(s) to teacher replica %d", p.actor_name, reason, len(reqs), t)
            self._send_score(t, samples, reqs, attempt=p.attempt + 1)
        self.retries += 1
        return True


def pump_streams(streams: Sequence[Any], stop_when: Callable[[], bool], slice_s: float = 0.05) -> None:
    """Pump several steps' streams in turn (a short slice each) until all are done or
    ``stop_when()``: under max_staleness > 1 the steps ahead all generate at once, and
    each one's finished samples must reach the verifier and teacher, not only the
    oldest's. Streams that are done (or stored steps from a checkpoint) are skipped."""
    while not stop_when():
        busy = [s for s in streams if not s.done]
        if not busy:
            return
        if len(busy) == 1:
            busy[0].pump(stop_when=stop_when)
            continue
        for stream in busy:
            until = time.monotonic() + slice_s
            stream.pump(stop_when=lambda: stop_when() or time.monotonic() > until, poll_s=slice_s / 2)


def _foreign_version(results: list[list[Any]], expected: int) -> int | None:
    """The first rollout policy version that is not ``expected``, else None."""
    for group in results:
        for r in group:
            if r.policy_version != expected:
                return int(r.policy_version)
    return None


def _request_seed(seed: int, group_index: int) -> int:
    """A sampling seed per prompt: reproducible whatever worker or batch it lands in."""
    return (seed * 1_000_003 + group_index * 7919) % (2**31 - 1)


def _resume_seed(sample_seed: int, tokens_so_far: int) -> int:
    """The seed a paused sample resumes with: its own seed if it had no tokens yet (so it
    is the sample it would have been), else one that depends on how far it got."""
    return (sample_seed + 1_000_033 * tokens_so_far) % (2**31 - 1)


def _unstarted(req: GenerationRequest) -> Rollout:
    """A paused sample with no tokens: what a request lost after the pause leaves."""
    if req.resume is not None:
        return req.resume
    return Rollout(response_ids=[], response_logp=np.zeros(0, dtype=np.float32), text="", finish_reason="paused",
                   policy_version=-1)
