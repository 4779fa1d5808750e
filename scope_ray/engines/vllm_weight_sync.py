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

Two transports (``rollout.weight_sync``, driven by
:mod:`scope_ray.controller.rollout_weights`):

- ``safetensors``: blobs from :func:`scope_ray.engines.weight_buckets.pack_state_dict`
  (via Ray's object store).
- ``broadcast``: the learner's rank 0 broadcasts buckets straight from its parameters
  over a process group of its own with every engine rank
  (:mod:`scope_ray.engines.weight_broadcast`): gloo on CPU (tested), NCCL on GPU (the
  same code, not yet run on a GPU).
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
        # A loader that stops early would leave broadcasts unmatched: drain the rest.
        for _ in weights:
            count += 1
        return count

    def load_weights_from_safetensors(self, blobs: list[bytes]) -> int:
        """Load one full update from safetensors blobs; returns the tensor count."""
        n = self._reload(iter_safetensors(blobs))
        logger.debug("reloaded %d tensors from %d safetensors blobs", n, len(blobs))
        return n

    # ---- rollout.weight_sync: broadcast (weight_broadcast.py) ----
    def join_weight_group(self, host: str, port: int, rank_offset: int, world_size: int, backend: str,
                          timeout_s: float, local_address: str) -> int:
        """Join the learner's broadcast group as rank ``rank_offset`` + this worker's rank
        in its engine (tensor parallel), its sockets on ``local_address``; returns that rank."""
        from vllm.distributed.parallel_state import get_world_group

        from scope_ray.engines.weight_broadcast import BroadcastGroup, checkpoint_shapes

        self.leave_weight_group()
        rank = rank_offset + get_world_group().rank
        # What every update must carry: the tensors of the checkpoint this engine loaded.
        self._update_shapes = checkpoint_shapes(self.model_config.model)  # type: ignore[attr-defined]
        self._weight_group = BroadcastGroup.join(host, port, rank, world_size, self.device,  # type: ignore[attr-defined]
                                                 backend, timeout_s, local_address)
        logger.info("joined the weight-broadcast group as rank %d of %d (%s)", rank, world_size, backend)
        return rank

    def receive_weights_broadcast(self) -> int:
        """Receive one full update from the learner and load it; returns the tensor count."""
        group = getattr(self, "_weight_group", None)
        if group is None:
            raise RuntimeError("not in a weight-broadcast group")
        # The manifest is checked before reload_weights starts: once it has, the model's
        # layers wait (on the meta device) for their new weights.
        tensors = group.receive(self._update_shapes, optional={TIED_HEAD})
        return self._reload(tensors)

    def leave_weight_group(self) -> None:
        group = getattr(self, "_weight_group", None)
        if group is not None:
            group.close()
        self._weight_group = None
