"""RolloutWorker: a Ray actor that owns one vLLM engine and samples student rollouts.

The actor is deliberately thin: it turns :class:`~scope_ray.types.GenerationRequest`s
into vLLM calls and vLLM outputs into :class:`~scope_ray.types.Rollout`s, and swaps in
new weights through :class:`~scope_ray.engines.vllm_weight_sync.WeightSyncExtension`.
Its methods run one at a time (Ray's default for a sync actor), so an ``update_weights``
submitted after a ``generate`` (or a ``generate_stream``) never races with it, and
generation submitted after an update always sees the new weights.

Log-probs follow ``EngineOptions.logprobs_mode``. Training uses ``processed_logprobs``:
log-softmax of the logits after temperature (and top-k / top-p), i.e. log pi_old(a_t) of
the distribution each token was drawn from, which the learner reproduces by scoring at
the same temperature. ``raw_logprobs`` (vLLM's default) are the untempered policy's.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass, fields, replace
from typing import Any

import numpy as np
import ray

from scope_ray.engines.vllm_engine import EngineOptions, create_llm
from scope_ray.log_routing import capture_process_output
from scope_ray.types import GenerationRequest, Rollout

logger = logging.getLogger(__name__)


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


@ray.remote
class RolloutWorker:
    def __init__(self, engine: EngineOptions, sampling: SamplingConfig | dict[str, Any], worker_index: int = 0) -> None:
        capture_process_output()  # a local run's train.log, not the terminal (log_routing)
        self.worker_index = worker_index
        self.engine_opts = engine
        self.sampling = SamplingConfig.coerce(sampling)
        self._version = 0
        self._weight_group: str | None = None  # rollout.weight_sync: broadcast
        self._calls = 0  # requests served: the seed counter for unseeded requests
        t0 = time.perf_counter()
        self.llm = create_llm(engine)
        logger.info("rollout worker %d ready in %.1fs (%s)", worker_index, time.perf_counter() - t0, engine.model_dir)

    def ready(self) -> bool:
        return True

    def version(self) -> int:
        return self._version

    def _params(self, seed: int, sampling: SamplingConfig):
        from vllm import SamplingParams
        from vllm.sampling_params import RequestOutputKind

        return SamplingParams(
            n=1,  # a request's G samples are G engine requests (see _rollouts_as_done)
            seed=seed,
            logprobs=0,  # only the sampled token's log-prob
            # One output per request, once it is done (what LLM.generate sets; the
            # engine's default streams every token).
            output_kind=RequestOutputKind.FINAL_ONLY,
            **asdict(sampling),
        )

    def generate(
        self, requests: list[GenerationRequest], sampling: SamplingConfig | dict[str, Any] | None = None
    ) -> list[list[Rollout]]:
        """G = ``request.n`` rollouts per request, in request order.

        ``sampling`` overrides the worker's defaults for this call (e.g. evaluation
        temperature). A request's ``seed`` (when not None) fixes its samples wherever it
        runs; otherwise the seed comes from (engine seed, worker index, count of
        requests this worker has served), reproducible for the same call sequence.
        """
        groups: list[list[Rollout | None]] = [[None] * r.n for r in requests]
        for done in self._rollouts_as_done(requests, sampling):
            for position, index, rollout in done:
                groups[position][index] = rollout
        return groups  # type: ignore[return-value]  # every slot is filled

    def generate_stream(
        self, requests: list[GenerationRequest], sampling: SamplingConfig | dict[str, Any] | None = None
    ) -> Iterator[list[tuple[int, int, Rollout]]]:
        """Like :meth:`generate`, but a Ray streaming generator: yields the samples that
        finished in each engine step, as ``[(position in requests, sample index,
        rollout), ...]``, as soon as that step is done (one item per step, not per
        sample: each item costs an object-store put).

        All samples still decode in one vLLM batch, so the engine batches as well as for
        :meth:`generate`, while the controller verifies and teacher-scores the samples
        that are done (short ones finish early) as the long ones are still decoding.
        """
        yield from self._rollouts_as_done(requests, sampling)

    def _rollouts_as_done(
        self, requests: list[GenerationRequest], sampling: SamplingConfig | dict[str, Any] | None
    ) -> Iterator[list[tuple[int, int, Rollout]]]:
        from vllm.inputs import tokens_input

        if not requests:
            return
        engine = self.llm.llm_engine
        if engine.has_unfinished_requests():
            # Only this actor adds requests, and every call drains or aborts its own.
            raise RuntimeError(f"rollout worker {self.worker_index}: the engine holds requests of an earlier call")
        cfg = SamplingConfig.coerce(sampling, self.sampling)
        t0 = time.perf_counter()
        # add_request + step is the loop LLM.generate runs, minus the wait for the whole
        # batch. Each of a request's n samples is its own engine request with seed + j,
        # which is exactly how vLLM fans out n > 1 (same samples), but every sample is
        # reported when it ends. Outputs carry the id we pass in.
        slots: dict[str, tuple[int, int]] = {}
        n_tok = 0
        try:
            for position, req in enumerate(requests):
                seed = req.seed
                if seed is None:
                    seed = request_seed(self.engine_opts.seed, self.worker_index, self._calls)
                call = self._calls
                self._calls += 1
                prompt = tokens_input(list(req.prompt_ids))  # an engine input: nothing to render
                for j in range(req.n):
                    rid = f"w{self.worker_index}-r{call}-s{j}"
                    engine.add_request(rid, prompt, self._params(seed + j, cfg))
                    slots[rid] = (position, j)
            total = len(slots)
            while slots and engine.has_unfinished_requests():
                done = []
                for out in engine.step():
                    if out.finished and out.request_id in slots:
                        rollout = self._rollout(out.outputs[0])
                        n_tok += len(rollout.response_ids)
                        done.append((*slots.pop(out.request_id), rollout))
                if done:
                    yield done
            if slots:
                raise RuntimeError(f"rollout worker {self.worker_index}: vLLM finished without "
                                   f"{len(slots)} of {total} samples")
        finally:
            if slots and engine.has_unfinished_requests():
                # A request was refused, a step failed or the consumer stopped early:
                # leave the engine empty for the next call.
                engine.abort_request(list(slots))
        logger.debug("worker %d: %d prompts, %d tokens in %.2fs", self.worker_index, len(requests), n_tok,
                     time.perf_counter() - t0)

    def _rollout(self, c) -> Rollout:
        ids = list(c.token_ids)
        logp = np.array([step[tok].logprob for step, tok in zip(c.logprobs, ids, strict=True)], dtype=np.float32)
        return Rollout(
            response_ids=ids,
            response_logp=logp,
            text=c.text,
            finish_reason=str(c.finish_reason),
            policy_version=self._version,
        )

    def update_weights(self, blobs: list[bytes], version: int) -> int:
        """Load a full set of weights (safetensors blobs) and tag later rollouts ``version``."""
        t0 = time.perf_counter()
        counts = self.llm.collective_rpc("load_weights_from_safetensors", args=(blobs,))
        self._after_update(version)
        logger.info("worker %d: weights v%d (%d tensors) in %.2fs", self.worker_index, version, counts[0], time.perf_counter() - t0)
        return counts[0]

    # ---- rollout.weight_sync: broadcast (scope_ray/engines/weight_broadcast.py) ----
    def join_weight_group(self, host: str, port: int, rank_offset: int, world_size: int, backend: str,
                          timeout_s: float) -> str:
        """Join the learner's broadcast group (blocks until every rank has); returns the
        group's id, which :meth:`weight_group` reports from then on."""
        self._weight_group = None
        local = ray.util.get_node_ip_address()
        self.llm.collective_rpc("join_weight_group", args=(host, port, rank_offset, world_size, backend, timeout_s, local))
        self._weight_group = f"{host}:{port}"
        return self._weight_group

    def weight_group(self) -> str | None:
        """The broadcast group this worker is in (None: none, e.g. after a restart)."""
        return self._weight_group

    def receive_weights(self, version: int) -> int:
        """Receive one full update from the learner's broadcast and tag later rollouts
        ``version``."""
        t0 = time.perf_counter()
        try:
            counts = self.llm.collective_rpc("receive_weights_broadcast")
        except BaseException:
            self.leave_weight_group()  # the group is out of step: it is rebuilt before the next update
            raise
        self._after_update(version)
        logger.info("worker %d: weights v%d (%d tensors, broadcast) in %.2fs", self.worker_index, version, counts[0],
                    time.perf_counter() - t0)
        return counts[0]

    def leave_weight_group(self) -> None:
        self._weight_group = None
        self.llm.collective_rpc("leave_weight_group")

    def _after_update(self, version: int) -> None:
        # Cached prefix KV blocks were computed by the old weights; reusing them would
        # silently mix policies. The actor is idle here, so nothing is running.
        if not self.llm.reset_prefix_cache():
            raise RuntimeError("vLLM refused to reset its prefix cache after a weight update")
        self._version = version
