"""Split a state dict into safetensors byte buckets, and read them back (no Ray, no vLLM).

Why bytes: safetensors blobs are plain ``bytes``, so they travel through Ray's object
store (put once, read by every rollout worker) and through vLLM's ``collective_rpc``
without pickling torch tensors, and decoding them is a zero-parse memory view.

Why buckets: one blob per tensor costs an object-store round trip per tensor, one blob
for the whole model needs a second full copy in memory; buckets of ``bucket_mb`` bound
the extra memory while keeping the number of objects small. The limit counts tensor
payload bytes; every blob also carries its safetensors JSON header (a few hundred bytes
per tensor). A tensor larger than the limit goes alone into its own bucket, because
vLLM's loaders need every tensor whole.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping

import torch
from safetensors.torch import load, save


def _as_items(named_tensors: Mapping[str, torch.Tensor] | Iterable[tuple[str, torch.Tensor]]):
    return named_tensors.items() if isinstance(named_tensors, Mapping) else named_tensors


def tensor_nbytes(t: torch.Tensor) -> int:
    return t.numel() * t.element_size()


def pack_state_dict(
    named_tensors: Mapping[str, torch.Tensor] | Iterable[tuple[str, torch.Tensor]],
    bucket_mb: float,
) -> list[bytes]:
    """Named tensors (in order) -> safetensors blobs with at most ``bucket_mb`` MiB of
    tensor payload each (a single larger tensor gets a bucket to itself)."""
    if bucket_mb <= 0:
        raise ValueError("bucket_mb must be positive")
    limit = int(bucket_mb * (1 << 20))
    blobs: list[bytes] = []
    bucket: dict[str, torch.Tensor] = {}
    size = 0
    storages: set[int] = set()
    seen: set[str] = set()
    for name, tensor in _as_items(named_tensors):
        if name in seen:
            raise ValueError(f"duplicate tensor name {name!r}")
        seen.add(name)
        t = tensor.detach().to("cpu").contiguous()
        nbytes = tensor_nbytes(t)
        if bucket and size + nbytes > limit:
            blobs.append(save(bucket))
            bucket, size, storages = {}, 0, set()
        # safetensors refuses tensors that share storage (tied embeddings, views) in one
        # file; a copy keeps the name and the values.
        ptr = t.untyped_storage().data_ptr()
        if ptr in storages or t.untyped_storage().nbytes() != nbytes:
            t = t.clone()
            ptr = t.untyped_storage().data_ptr()
        storages.add(ptr)
        bucket[name] = t
        size += nbytes
    if bucket:
        blobs.append(save(bucket))
    return blobs


def iter_safetensors(blobs: Iterable[bytes]) -> Iterator[tuple[str, torch.Tensor]]:
    """Blobs from :func:`pack_state_dict` -> (name, tensor), bucket by bucket.

    Within a bucket the order is safetensors' own (it reorders by dtype and name), not
    the packing order; vLLM's loaders match tensors by name, so only bucket membership
    (which follows the packing order) matters.
    """
    for blob in blobs:
        yield from load(blob).items()
