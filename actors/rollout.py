"""RolloutWorker: the Ray actor around one :class:`~scope_ray.engines.rollout_engine.RolloutEngine`.

A thin shell: the engine (its vLLM instance and the loop thread that keeps it full) is in
``scope_ray/engines/rollout_engine.py``. What the shell adds is Ray's ordering.

Methods in the default concurrency group run one at a time, in the order the controller
submitted them (Ray orders a threaded actor's default group, ObjectRef arguments and
all). ``submit`` only queues a call's samples on the engine and returns at once, so the
calls of a step, and under ``trainer.max_staleness`` the next steps', all decode
together; a weight update submitted after them waits until they are done, and a call
submitted after the update sees the new weights. The samples come back through
``stream`` (a Ray streaming generator, one item per engine step that finished some) or
``collect`` (all at once), which run in the ``streams`` group, beside each other. Use
:func:`start_stream` / :func:`start_collect`, which chain the two without a round trip.

Log-probs follow ``EngineOptions.logprobs_mode``. Training uses ``processed_logprobs``:
log-softmax of the logits after temperature (and top-k / top-p), i.e. log pi_old(a_t) of
the distribution each token was drawn from, which the learner reproduces by scoring at
the same temperature. ``raw_logprobs`` (vLLM's default) are the untempered policy's.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterator
from typing import Any

import ray

from scope_ray.engines.rollout_engine import Finished, OpenCall, RolloutEngine, SamplingConfig, gather, request_seed
from scope_ray.engines.vllm_engine import EngineOptions
from scope_ray.log_routing import capture_process_output
from scope_ray.types import GenerationRequest, Rollout

__all__ = ["RolloutWorker", "SamplingConfig", "request_seed", "start_call", "start_collect", "start_stream"]

logger = logging.getLogger(__name__)

# Calls whose samples can be read back at once (each holds a thread while it waits).
# A worker has at most (max_staleness + 1) steps' calls, or an evaluation's, in flight.
MAX_OPEN_CALLS = 256


def start_call(worker: Any, requests: list[GenerationRequest], sampling: dict[str, Any] | None = None,
               stream: bool = True) -> tuple[Any, Any]:
    """Queue a call on ``worker`` (in order): (an ObjectRef of its call id, for
    :meth:`RolloutWorker.pause`; its results, as :func:`start_stream` or :func:`start_collect`)."""
    call = worker.submit.remote(requests, sampling)
    return call, (worker.stream if stream else worker.collect).remote(call)


def start_stream(worker: Any, requests: list[GenerationRequest], sampling: dict[str, Any] | None = None) -> Any:
    """Queue a call on ``worker`` (in order) and stream its samples back: an
    ObjectRefGenerator of ``[(position in requests, sample index, rollout), ...]``."""
    return start_call(worker, requests, sampling, stream=True)[1]


def start_collect(worker: Any, requests: list[GenerationRequest], sampling: dict[str, Any] | None = None) -> Any:
    """Queue a call on ``worker`` (in order); an ObjectRef of its G rollouts per request."""
    return start_call(worker, requests, sampling, stream=False)[1]


# "control": pause, which must not wait behind a weight update queued in the default group
# (that update waits for the very calls being paused).
@ray.remote(concurrency_groups={"streams": MAX_OPEN_CALLS, "control": 1})
class RolloutWorker:
    def __init__(self, engine: EngineOptions, sampling: SamplingConfig | dict[str, Any], worker_index: int = 0,
                 max_calls_in_flight: int = -1) -> None:
        capture_process_output()  # a local run's train.log, not the terminal (log_routing)
        self.worker_index = worker_index
        self._weight_group: str | None = None  # rollout.weight_sync: broadcast
        self._open: dict[int, OpenCall] = {}  # submitted calls not yet read
        t0 = time.perf_counter()
        self.engine = RolloutEngine(engine, sampling, worker_index, max_calls_in_flight)
        self.llm = self.engine.llm
        logger.info("rollout worker %d ready in %.1fs (%s)", worker_index, time.perf_counter() - t0, engine.model_dir)

    def ready(self) -> bool:
        return True

    def version(self) -> int:
        return self.engine.version

    def engine_stats(self) -> dict[str, int]:
        """Engine steps so far, and the most samples it decoded at once since the last ask."""
        stats = {"steps": self.engine.steps, "peak_in_flight": self.engine.peak_in_flight}
        self.engine.peak_in_flight = 0
        return stats

    # ---- generation: submit in order, read back beside each other ----
    def submit(self, requests: list[GenerationRequest], sampling: SamplingConfig | dict[str, Any] | None = None) -> int:
        """Queue G = ``request.n`` samples per request on the engine; returns the call id
        that :meth:`stream` / :meth:`collect` read. ``sampling`` overrides the worker's
        defaults for this call (e.g. evaluation temperature)."""
        call = self.engine.submit(requests, sampling)
        self._open[call.id] = call
        return call.id

    @ray.method(concurrency_group="streams")
    def stream(self, call_id: int) -> Iterator[Finished]:
        """The samples of call ``call_id`` as each engine step finishes them (one item per
        step, not per sample: each item costs an object-store put), so the controller
        verifies and teacher-scores short samples while long ones still decode."""
        yield from self.engine.results(self._open.pop(call_id))

    @ray.method(concurrency_group="streams")
    def collect(self, call_id: int) -> list[list[Rollout]]:
        """All of call ``call_id``'s rollouts, G per request in request order."""
        return gather(self.engine.results(self._open.pop(call_id)))

    @ray.method(concurrency_group="control")
    def pause(self, call_id: int) -> None:
        """rollout.partial_rollouts: end call ``call_id`` now; its unfinished samples come
        back through its stream / collect as ``"paused"`` rollouts, to be resumed later."""
        self.engine.pause(call_id)

    def generate(self, requests: list[GenerationRequest],
                 sampling: SamplingConfig | dict[str, Any] | None = None) -> list[list[Rollout]]:
        """One call, start to end, holding the ordered group meanwhile (later calls wait):
        the one-call-at-a-time behaviour, for tests and the batching benchmark."""
        return self.engine.generate(requests, sampling)

    # ---- weights: exclusive on the engine (after every call submitted before) ----
    def _exclusive(self, fn: Any) -> Any:
        return self.engine.run_exclusive(fn).result()

    def update_weights(self, blobs: list[bytes], version: int) -> int:
        """Load a full set of weights (safetensors blobs) and tag later rollouts ``version``."""
        t0 = time.perf_counter()

        def load() -> int:
            counts = self.llm.collective_rpc("load_weights_from_safetensors", args=(blobs,))
            self._after_update(version)
            return counts[0]

        n = self._exclusive(load)
        logger.info("worker %d: weights v%d (%d tensors) in %.2fs", self.worker_index, version, n, time.perf_counter() - t0)
        return n

    # ---- rollout.weight_sync: broadcast (scope_ray/engines/weight_broadcast.py) ----
    def join_weight_group(self, host: str, port: int, rank_offset: int, world_size: int, backend: str,
                          timeout_s: float) -> str:
        """Join the learner's broadcast group (blocks until every rank has); returns the
        group's id, which :meth:`weight_group` reports from then on."""
        self._weight_group = None
        local = ray.util.get_node_ip_address()
        self._exclusive(lambda: self.llm.collective_rpc(
            "join_weight_group", args=(host, port, rank_offset, world_size, backend, timeout_s, local)))
        self._weight_group = f"{host}:{port}"
        return self._weight_group

    def weight_group(self) -> str | None:
        """The broadcast group this worker is in (None: none, e.g. after a restart)."""
        return self._weight_group

    def receive_weights(self, version: int) -> int:
        """Receive one full update from the learner's broadcast and tag later rollouts
        ``version``."""
        t0 = time.perf_counter()

        def receive() -> int:
            try:
                counts = self.llm.collective_rpc("receive_weights_broadcast")
            except BaseException:
                # The group is out of step: it is rebuilt before the next update.
                self._weight_group = None
                self.llm.collective_rpc("leave_weight_group")
                raise
            self._after_update(version)
            return counts[0]

        n = self._exclusive(receive)
        logger.info("worker %d: weights v%d (%d tensors, broadcast) in %.2fs", self.worker_index, version, n,
                    time.perf_counter() - t0)
        return n

    def leave_weight_group(self) -> None:
        self._weight_group = None
        self._exclusive(lambda: self.llm.collective_rpc("leave_weight_group"))

    def _after_update(self, version: int) -> None:
        """On the engine's thread, with no call in flight."""
        # Cached prefix KV blocks were computed by the old weights; reusing them would
        # silently mix policies.
        if not self.llm.reset_prefix_cache():
            raise RuntimeError("vLLM refused to reset its prefix cache after a weight update")
        self.engine.version = version
