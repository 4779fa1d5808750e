"""LearnerWorker: a Ray actor owning one DeepSpeed engine; LearnerGroup: N of them as one
ZeRO data-parallel group.

The actor only owns the process: the step logic is :class:`scope_ray.learner.LearnerCore`.
Calls that involve collectives (``train_step``, ``compute_logprobs``, ``export_weights``
and ``save_hf`` under ZeRO-3, checkpoints) must reach every rank; :class:`LearnerGroup`
makes those calls, so the controller never talks to a single rank.
"""

from __future__ import annotations

import logging
import time
from typing import Any

import ray
import torch
from ray.util.placement_group import placement_group, remove_placement_group
from ray.util.scheduling_strategies import PlacementGroupSchedulingStrategy

from scope_ray.algo import get_algorithm
from scope_ray.learner.batch import TrainBatch, shard_indices
from scope_ray.engines.weight_buckets import pack_state_dict
from scope_ray.errors import LearnerFailure, first_line
from scope_ray.learner import LearnerCore, LearnerOptions, merge_step_metrics
from scope_ray.learner.core import check_batch, free_port
from scope_ray.log_routing import capture_process_output

logger = logging.getLogger(__name__)


RENDEZVOUS_ATTEMPTS = 3


def port_was_taken(exc: BaseException) -> bool:
    """True when process-group set-up failed because its rendezvous port was in use."""
    text = str(exc)
    return "EADDRINUSE" in text or "address already in use" in text.lower()


def learner_bundle(options: LearnerOptions, resources: dict[str, float] | None = None) -> dict[str, float]:
    """One rank's placement-group bundle (scope_ray/planning models the same request)."""
    bundle = {"CPU": options.num_cpus}
    if options.use_gpu:
        bundle["GPU"] = options.num_gpus
    bundle.update(resources or {})
    return bundle


@ray.remote
class LearnerWorker:
    def __init__(self, rank: int, world_size: int, model_dir: str, options: LearnerOptions) -> None:
        capture_process_output()  # a local run's train.log, not the terminal (log_routing)
        logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
        self.core = LearnerCore(rank, world_size, model_dir, options)

    def master_address(self) -> tuple[str, int]:
        """Rank 0's node address and a free port for the process group's rendezvous."""
        return ray.util.get_node_ip_address(), free_port()

    def init_process_group(self, master_addr: str, master_port: int) -> None:
        self.core.init_engine(master_addr, master_port)

    def train_step(self, shard: TrainBatch, num_prompts_global: int, num_tokens_global: int,
                   micro_batch_tokens: int | None = None) -> dict[str, Any]:
        return self.core.train_step(shard, num_prompts_global, num_tokens_global, micro_batch_tokens)

    def compute_logprobs(self, shard: TrainBatch, micro_batch_tokens: int | None = None,
                         policy: str = "current") -> torch.Tensor:
        return self.core.compute_logprobs(shard, micro_batch_tokens, policy)

    def export_weights(self, bucket_mb: float | None = None,
                       as_ref: bool = False) -> dict[str, torch.Tensor] | list[bytes] | list[ray.ObjectRef] | None:
        """Rank 0: a dict of full weights, or safetensors buckets if ``bucket_mb``
        (packed here so only bytes cross the object store). Other ranks: None.

        ``as_ref``: put the buckets into the object store here and return ``[ref]`` (a
        list, so Ray hands over the ref instead of resolving it): the rollout workers
        then fetch them from this node without a copy through the driver.
        """
        state = self.core.export_weights()
        if state is None or bucket_mb is None:
            return state
        blobs = pack_state_dict(state, bucket_mb)
        return [ray.put(blobs)] if as_ref else blobs

    def host_weight_group(self, world_size: int, timeout_s: float) -> tuple[str, int, str]:
        """Rank 0: open the weight-broadcast group's store; its address and backend (gloo,
        or nccl when this rank's weights are on a GPU) for the engines."""
        host = ray.util.get_node_ip_address()
        port, backend = self.core.host_weight_group(host, world_size, timeout_s)
        return host, port, backend

    def connect_weight_group(self) -> None:
        self.core.connect_weight_group()

    def broadcast_weights(self, bucket_mb: float) -> dict[str, Any] | None:
        return self.core.broadcast_weights(bucket_mb)

    def save_hf(self, out_dir: str) -> str | None:
        return self.core.save_hf(out_dir)

    def parameter_counts(self) -> dict[str, int]:
        return self.core.parameter_counts()

    def save_checkpoint(self, ckpt_dir: str, tag: str | None = None) -> None:
        self.core.save_checkpoint(ckpt_dir, tag)

    def load_checkpoint(self, ckpt_dir: str, tag: str | None = None) -> None:
        self.core.load_checkpoint(ckpt_dir, tag)


class LearnerGroup:
    """N learner actors forming one ZeRO data-parallel group.

    Placement: one bundle per worker ({"CPU": num_cpus} plus {"GPU": num_gpus} on GPU) in
    a placement group; PACK keeps the ranks on as few nodes as possible (STRICT_PACK
    insists on one node, fastest for NCCL when it fits). ``resources`` adds Ray custom
    resources to every bundle, e.g. {"learner_node": 1} to keep the ranks on the nodes
    started with that resource. ``rendezvous_port`` fixes rank 0's port for the first try
    (default: a free one); a port that turns out to be taken is retried on a fresh one.
    """

    def __init__(self, model_dir: str, options: LearnerOptions, num_workers: int = 1, *,
                 placement_strategy: str = "PACK", timeout_s: float | None = None,
                 resources: dict[str, float] | None = None, rendezvous_port: int | None = None) -> None:
        options.validate()
        if num_workers < 1:
            raise ValueError(f"num_workers must be >= 1, got {num_workers}")
        self.options = options
        self.spec = get_algorithm(options.algorithm)
        self.timeout_s = timeout_s
        bundle = learner_bundle(options, resources)
        self._pg = placement_group([dict(bundle) for _ in range(num_workers)], strategy=placement_strategy)
        ray.get(self._pg.ready(), timeout=timeout_s)
        self.workers: list[Any] = []
        # Rank 0 picks a free port and binds it only inside init_process_group, so another
        # process can take it in between (seen when several jobs share a machine): then
        # the whole group is started again on a new port.
        for attempt in range(1, RENDEZVOUS_ATTEMPTS + 1):
            self.workers = self._start_workers(num_workers, str(model_dir))
            addr, port = self._get(self.workers[0].master_address.remote(), "master_address")
            if attempt == 1 and rendezvous_port is not None:
                port = rendezvous_port
            try:
                self._get_all([w.init_process_group.remote(addr, port) for w in self.workers], "init_process_group")
                break
            except LearnerFailure as exc:
                if not port_was_taken(exc) or attempt == RENDEZVOUS_ATTEMPTS:
                    self.shutdown()
                    raise
                logger.warning("rendezvous port %d was taken by another process (attempt %d of %d); "
                               "restarting the learner group on a new port", port, attempt, RENDEZVOUS_ATTEMPTS)
                self._kill_workers()
        logger.info("learner group ready: %d worker(s), ZeRO-%d, rendezvous %s:%d",
                    num_workers, options.zero_stage, addr, port)

    def _start_workers(self, num_workers: int, model_dir: str) -> list[Any]:
        return [
            LearnerWorker.options(
                num_cpus=self.options.num_cpus,
                num_gpus=self.options.num_gpus,
                scheduling_strategy=PlacementGroupSchedulingStrategy(
                    placement_group=self._pg, placement_group_bundle_index=rank),
            ).remote(rank, num_workers, model_dir, self.options)
            for rank in range(num_workers)
        ]

    @property
    def world_size(self) -> int:
        return len(self.workers)

    def _get(self, ref: ray.ObjectRef, call: str = "call", timeout_s: float | None = None) -> Any:
        return self._get_all([ref], call, timeout_s)[0]

    def _get_all(self, refs: list[ray.ObjectRef], call: str = "call", timeout_s: float | None = None) -> list[Any]:
        """Every rank's result, in rank order; a failure or hang raises
        :class:`LearnerFailure` naming the rank and the call.

        Fails fast: when one rank dies, the others may wait in a collective for it
        until gloo/NCCL time out, so results are taken as they come, not all at once.
        """
        timeout = self.timeout_s if timeout_s is None else timeout_s
        deadline = None if timeout is None else time.monotonic() + timeout
        rank_of = {ref: rank for rank, ref in enumerate(refs)}
        results: dict[int, Any] = {}
        while rank_of:
            remaining = None if deadline is None else deadline - time.monotonic()
            if remaining is not None and remaining <= 0:
                late = sorted(rank_of.values())
                raise LearnerFailure(
                    f"learner worker {_ranks(late)}: {call}() did not return within {timeout:.0f} s",
                    rank=late[0], call=call)
            ready, _ = ray.wait(list(rank_of), num_returns=1, timeout=remaining)
            for ref in ready:
                rank = rank_of.pop(ref)
                try:
                    results[rank] = ray.get(ref)
                except ray.exceptions.RayActorError as exc:
                    raise LearnerFailure(f"learner worker {rank}: {call}() failed, the actor died: {first_line(exc)}",
                                         rank=rank, call=call) from exc
                except Exception as exc:  # noqa: BLE001 - named and re-raised
                    raise LearnerFailure(f"learner worker {rank}: {call}() failed: {first_line(exc)}",
                                         rank=rank, call=call) from exc
        return [results[rank] for rank in range(len(refs))]

    def _shards(self, batch: TrainBatch) -> list[torch.Tensor]:
        # Checked here, not only on the ranks: one failing rank would hang the others.
        check_batch(batch, self.spec, self.options.kl_beta)
        if batch.num_rows == 0:
            raise ValueError("empty batch")
        return shard_indices(batch.group_index, batch.lengths(), self.world_size)

    def train_step(self, batch: TrainBatch, micro_batch_tokens: int | None = None, *,
                   timeout_s: float | None = None) -> dict[str, Any]:
        """One optimizer step on the whole batch; whole prompt groups per rank."""
        shards = self._shards(batch)
        prompts, tokens = batch.num_prompts, batch.num_response_tokens
        refs = [
            w.train_step.remote(batch.select(rows).trim(), prompts, tokens, micro_batch_tokens)
            for w, rows in zip(self.workers, shards)
        ]
        return merge_step_metrics(self._get_all(refs, "train_step", timeout_s))

    def compute_logprobs(self, batch: TrainBatch, micro_batch_tokens: int | None = None,
                         policy: str = "current") -> torch.Tensor:
        """[N, L] log-probs of the response tokens (0 elsewhere) under the current weights
        or, ``policy="previous"``, the ones the latest train_step replaced."""
        shards = self._shards(batch)
        refs = [w.compute_logprobs.remote(batch.select(rows).trim(), micro_batch_tokens, policy)
                for w, rows in zip(self.workers, shards)]
        out = torch.zeros(batch.input_ids.shape, dtype=torch.float32)
        for rows, part in zip(shards, self._get_all(refs, "compute_logprobs")):
            out[rows, : part.shape[1]] = part
        return out

    def export_weights(self, bucket_mb: float | None = None, *,
                       timeout_s: float | None = None) -> dict[str, torch.Tensor] | list[bytes]:
        """Full weights, HF names: a dict, or safetensors buckets when ``bucket_mb``."""
        return self._get_all([w.export_weights.remote(bucket_mb) for w in self.workers], "export_weights", timeout_s)[0]

    def publish_weights(self, bucket_mb: float, *, timeout_s: float | None = None) -> ray.ObjectRef:
        """Rank 0's safetensors buckets as an object ref that rollout workers can take
        straight from the learner's node (the driver sees only the ref)."""
        return self._get_all([w.export_weights.remote(bucket_mb, as_ref=True) for w in self.workers],
                             "export_weights", timeout_s)[0][0]

    # rollout.weight_sync: broadcast. Rank 0 hosts and sends; under ZeRO-3 every rank
    # takes part in the gathers (broadcast_weights), so the call goes to all of them.
    def host_weight_group(self, world_size: int, *, timeout_s: float | None = None) -> tuple[str, int, str]:
        return self._get(self.workers[0].host_weight_group.remote(world_size, timeout_s or 300.0),
                         "host_weight_group", timeout_s)

    def connect_weight_group(self) -> ray.ObjectRef:
        """Rank 0's connect, not awaited: it returns once the engines have joined."""
        return self.workers[0].connect_weight_group.remote()

    def await_call(self, ref: ray.ObjectRef, call: str, *, timeout_s: float | None = None) -> Any:
        """A rank-0 call started without waiting (connect_weight_group), as a LearnerFailure
        when it fails or hangs."""
        return self._get(ref, call, timeout_s)

    def broadcast_weights(self, bucket_mb: float, *, timeout_s: float | None = None) -> dict[str, Any]:
        """Rank 0's report: bytes/tensors/seconds sent, or ``{"error": ...}`` when the
        broadcast itself failed (a receiver died or hung: not a learner failure)."""
        return self._get_all([w.broadcast_weights.remote(bucket_mb) for w in self.workers], "broadcast_weights",
                             timeout_s)[0]

    def save_hf(self, out_dir: str, *, timeout_s: float | None = None) -> str:
        return self._get_all([w.save_hf.remote(str(out_dir)) for w in self.workers], "save_hf", timeout_s)[0]

    def parameter_counts(self, *, timeout_s: float | None = None) -> list[dict[str, int]]:
        """Per rank: trained and total parameters, optimizer state bytes (LearnerCore)."""
        return self._get_all([w.parameter_counts.remote() for w in self.workers], "parameter_counts", timeout_s)

    def save_checkpoint(self, ckpt_dir: str, tag: str | None = None, *, timeout_s: float | None = None) -> None:
        self._get_all([w.save_checkpoint.remote(str(ckpt_dir), tag) for w in self.workers], "save_checkpoint",
                      timeout_s)

    def load_checkpoint(self, ckpt_dir: str, tag: str | None = None, *, timeout_s: float | None = None) -> None:
        self._get_all([w.load_checkpoint.remote(str(ckpt_dir), tag) for w in self.workers], "load_checkpoint",
                      timeout_s)

    save = save_checkpoint
    load = load_checkpoint

    def shutdown(self) -> None:
        """Kill every rank and free the placement group (also after a failure: dead or
        hung ranks are fine)."""
        self._kill_workers()
        remove_placement_group(self._pg)

    def _kill_workers(self) -> None:
        for w in self.workers:
            try:
                ray.kill(w)
            except Exception as exc:  # noqa: BLE001 - best effort, keep freeing the rest
                logger.warning("could not kill a learner worker: %s", exc)
        self.workers = []


def _ranks(ranks: list[int]) -> str:
    return str(ranks[0]) if len(ranks) == 1 else "s " + ", ".join(map(str, ranks))
