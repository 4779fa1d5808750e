"""Learner-side weight push to the rollout workers: one interface, two transports.

``make_weight_sync(kind, workers, ...)`` picks the strategy from config
(``rollout.weight_sync``):

- ``"safetensors"``: pack the state dict into byte buckets once, ``ray.put`` them once,
  and let every worker read the same object (CPU and GPU; tested on CPU).
- ``"nccl"``: the calling process joins a broadcast group as rank 0 with every engine
  rank, then broadcasts tensor by tensor straight into the engines' GPUs. Must run in
  the process that holds the GPU tensors (the learner). UNTESTED here: there is no GPU
  on the development machine.

Both block until every worker has loaded the update and reports ``version``.
"""

from __future__ import annotations

import logging
from abc import ABC, abstractmethod
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import ray
import torch

from scope_ray.engines.weight_buckets import pack_state_dict

logger = logging.getLogger(__name__)

NamedTensors = Mapping[str, torch.Tensor] | Iterable[tuple[str, torch.Tensor]]


class WeightSync(ABC):
    def __init__(self, workers: Sequence[Any], timeout_s: float | None = None) -> None:
        self.workers = list(workers)  # RolloutWorker handles
        self.timeout_s = timeout_s

    @abstractmethod
    def push(self, named_tensors: NamedTensors, version: int) -> None:
        """Send a FULL set of weights (partial updates half-load fused layers)."""

    def _wait(self, refs: list[ray.ObjectRef]) -> None:
        for i, ref in enumerate(refs):
            try:
                ray.get(ref, timeout=self.timeout_s)
            except Exception as exc:
                raise RuntimeError(f"rollout worker {i}: weight update failed: {exc}") from exc


class SafetensorsWeightSync(WeightSync):
    def __init__(self, workers: Sequence[Any], bucket_mb: float = 256, timeout_s: float | None = None) -> None:
        super().__init__(workers, timeout_s)
        self.bucket_mb = bucket_mb

    def push(self, named_tensors: NamedTensors, version: int) -> None:
        blobs_ref = ray.put(pack_state_dict(named_tensors, self.bucket_mb))
        self._wait([w.update_weights.remote(blobs_ref, version) for w in self.workers])


class NcclWeightSync(WeightSync):
    """Rank 0 of a group with ``len(workers) * tp_size`` engine ranks (untested here)."""

    def __init__(
        self,
        workers: Sequence[Any],
        master_address: str,
        master_port: int,
        tp_size: int = 1,
        device: torch.device | str = "cuda",
        timeout_s: float | None = None,
    ) -> None:
        super().__init__(workers, timeout_s)
        self.master_address, self.master_port = master_address, master_port
        self.tp_size = tp_size
        self.device = torch.device(device)
        self._comm = None

    def _connect(self) -> None:
        from vllm.distributed.device_communicators.pynccl import PyNcclCommunicator
        from vllm.distributed.utils import StatelessProcessGroup

        world = 1 + len(self.workers) * self.tp_size
        refs = [
            w.init_weight_update_group.remote(self.master_address, self.master_port, 1 + i * self.tp_size, world)
            for i, w in enumerate(self.workers)
        ]
        # Rank 0 hosts the TCP store; the communicator's handshake needs every rank, so
        # the remote joins are submitted first and awaited after.
        group = StatelessProcessGroup.create(host=self.master_address, port=self.master_port, rank=0, world_size=world)
        self._comm = PyNcclCommunicator(group, device=self.device)
        self._wait(refs)
        logger.info("weight-update group ready: %d ranks", world)

    def push(self, named_tensors: NamedTensors, version: int) -> None:
        if self._comm is None:
            self._connect()
        items = list(named_tensors.items() if isinstance(named_tensors, Mapping) else named_tensors)
        names = [n for n, _ in items]
        dtypes = [str(t.dtype).removeprefix("torch.") for _, t in items]
        shapes = [list(t.shape) for _, t in items]
        refs = [w.update_weights_nccl.remote(names, dtypes, shapes, version) for w in self.workers]
        stream = torch.cuda.current_stream()
        for _, t in items:
            self._comm.broadcast(t.detach().to(self.device).contiguous(), src=0, stream=stream)
        torch.cuda.synchronize()
        self._wait(refs)


def make_weight_sync(kind: str, workers: Sequence[Any], **kwargs: Any) -> WeightSync:
    """``kind`` is ``rollout.weight_sync``: "safetensors" (bucket_mb=) or "nccl"
    (master_address=, master_port=, tp_size=, device=)."""
    if kind == "safetensors":
        return SafetensorsWeightSync(workers, **kwargs)
    if kind == "nccl":
        return NcclWeightSync(workers, **kwargs)
    raise ValueError(f"unknown weight sync {kind!r} (expected 'safetensors' or 'nccl')")
