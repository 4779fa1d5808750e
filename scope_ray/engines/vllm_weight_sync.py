"""vLLM worker extension that swaps in new policy weights (``worker_extension_cls``).

vLLM mixes this class into its worker, so ``self`` is the worker: the methods below are
reached with ``llm.collective_rpc("method", args=(...))`` and run on every worker of the
engine (one per tensor-parallel rank). Both paths end in the worker's
``reload_weights(weights_iterator=...)``, which runs the model's own ``load_weights``
under vLLM's layerwise-reload bookkeeping (fused qkv / gate_up packing, tied heads,
tensor-parallel sharding, copy into the existing storage). Calling ``model.load_weights``
directly skips that bookkeeping and fails on the CPU backend.

One reload call must carry ALL tensors of an update: layerwise reload restores each
layer when its last weight arrives, and finalises (re-processes) layers that got only
part of their weights at the end of the call, so a layer split across two calls ends
up half-updated.

Two transports, chosen by the learner side (:mod:`actors.weight_sync`):

- ``safetensors``: blobs from :func:`scope_ray.engines.weight_buckets.pack_state_dict`
  (via Ray's object store). Works everywhere; tested on CPU.
- ``nccl``: the learner (rank 0) broadcasts each tensor straight into the engine's GPU
  over a ``StatelessProcessGroup`` + ``PyNcclCommunicator`` group that does not touch
  either side's global ``torch.distributed`` state. UNTESTED in this repository (written
  against the installed vLLM 0.32 API on a machine without a GPU).
"""

from __future__ import annotations

import logging
from collections.abc import Iterator

import torch

from scope_ray.engines.weight_buckets import iter_safetensors

logger = logging.getLogger(__name__)


class _DropRotaryReloadWarning(logging.Filter):
    """vLLM 0.32's layerwise reload warns "RotaryEmbedding: Failed to load weights" on
    every update: the rotary cos/sin cache is a buffer no checkpoint carries, and vLLM
    correctly puts the existing one back. Dropping exactly that line keeps one warning
    per weight sync out of every run's log; any other reload warning still shows."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not (record.getMessage().startswith("RotaryEmbedding: Failed to load weights"))


logging.getLogger("vllm.model_executor.model_loader.reload.layerwise").addFilter(
    _DropRotaryReloadWarning())


TIED_EMBEDDING = "model.embed_tokens.weight"
TIED_HEAD = "lm_head.weight"


def with_tied_head(weights: Iterator[tuple[str, torch.Tensor]], tied: bool) -> Iterator[tuple[str, torch.Tensor]]:
    """Also send the embedding as ``lm_head.weight`` when the model ties them.

    HF state dicts (and the learner's export) leave the tied head out, but vLLM's
    layerwise reload re-creates the embedding's storage, which unties its
    ``ParallelLMHead``: without its own copy the head keeps the OLD weights and the
    engine samples from a mixed policy (measured: 0.46 nats max log-prob gap).
    """
    seen_head = False
    embedding = None
    for name, tensor in weights:
        seen_head |= name == TIED_HEAD
        if name == TIED_EMBEDDING:
            embedding = tensor
        yield name, tensor
    if tied and embedding is not None and not seen_head:
        yield TIED_HEAD, embedding


class WeightSyncExtension:
    """Mixed into vLLM's worker; relies on its ``reload_weights``, ``device`` and
    ``model_config``."""

    def _reload(self, weights: Iterator[tuple[str, torch.Tensor]]) -> int:
        count = 0
        hf_config = self.model_config.hf_config  # type: ignore[attr-defined]
        tied = bool(getattr(hf_config, "tie_word_embeddings", False))

        def counted() -> Iterator[tuple[str, torch.Tensor]]:
            nonlocal count
            for item in with_tied_head(weights, tied):
                count += 1
                yield item

        self.reload_weights(weights_iterator=counted())  # type: ignore[attr-defined]
        # A loader that stops early would leave NCCL broadcasts unmatched: drain the rest.
        for _ in weights:
            count += 1
        return count

    def load_weights_from_safetensors(self, blobs: list[bytes]) -> int:
        """Load one full update from safetensors blobs; returns the tensor count."""
        n = self._reload(iter_safetensors(blobs))
        logger.debug("reloaded %d tensors from %d safetensors blobs", n, len(blobs))
        return n

    # ---- GPU path (untested here: no GPU on the development machine) ----

    def init_weight_update_group(self, master_address: str, master_port: int, rank_offset: int, world_size: int) -> None:
        """Join the learner's broadcast group as rank ``rank_offset + tp rank``.

        The learner is rank 0 and creates the group's TCP store at master_address:port.
        """
        from vllm.distributed.device_communicators.pynccl import PyNcclCommunicator
        from vllm.distributed.parallel_state import get_world_group
        from vllm.distributed.utils import StatelessProcessGroup

        rank = rank_offset + get_world_group().rank
        group = StatelessProcessGroup.create(host=master_address, port=master_port, rank=rank, world_size=world_size)
        self._weight_comm = PyNcclCommunicator(group, device=self.device)  # type: ignore[attr-defined]
        logger.info("joined weight-update group as rank %d of %d", rank, world_size)

    def update_weights_nccl(self, names: list[str], dtypes: list[str], shapes: list[list[int]]) -> int:
        """Receive one full update, tensor by tensor in ``names`` order, from rank 0."""
        comm = self._weight_comm
        device = self.device  # type: ignore[attr-defined]

        def received() -> Iterator[tuple[str, torch.Tensor]]:
            for name, dtype, shape in zip(names, dtypes, shapes, strict=True):
                buf = torch.empty(shape, dtype=getattr(torch, dtype), device=device)
                comm.broadcast(buf, src=0, stream=torch.cuda.current_stream())
                yield name, buf

        n = self._reload(received())
        torch.cuda.synchronize()
        return n
