"""pack_state_dict: exact round trip, the per-bucket size limit, and tied/aliased tensors."""

from __future__ import annotations

import json
import struct

import pytest
import torch

from scope_ray.engines.weight_buckets import iter_safetensors, pack_state_dict, tensor_nbytes


def _payload_bytes(blob: bytes) -> int:
    # safetensors layout: u64 little-endian header length, JSON header, then the data.
    (header_len,) = struct.unpack("<Q", blob[:8])
    header = json.loads(blob[8 : 8 + header_len])
    assert len(blob) == 8 + header_len + sum(
        v["data_offsets"][1] - v["data_offsets"][0] for k, v in header.items() if k != "__metadata__"
    )
    return len(blob) - 8 - header_len


def _state() -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    sd = {f"layers.{i}.w": torch.randn(64, 96, generator=g) for i in range(6)}  # 24 KiB each
    sd["big"] = torch.randn(256, 256, generator=g)  # 256 KiB, over the limit below
    sd["half"] = torch.randn(33, 7, generator=g).to(torch.bfloat16)
    sd["ints"] = torch.arange(10, dtype=torch.int64)
    sd["empty"] = torch.zeros(0)
    sd["scalar"] = torch.tensor(3.5)
    return sd


def test_round_trip_exact_and_limit() -> None:
    sd = _state()
    limit_mb = 64 / 1024  # 64 KiB
    blobs = pack_state_dict(sd, limit_mb)
    got = dict(iter_safetensors(blobs))
    assert got.keys() == sd.keys()
    for name, t in sd.items():
        assert got[name].dtype == t.dtype and got[name].shape == t.shape
        assert torch.equal(got[name], t), name
    limit = int(limit_mb * (1 << 20))
    for blob in blobs:
        names = list(dict(iter_safetensors([blob])))
        payload = _payload_bytes(blob)
        assert payload <= limit or names == ["big"], (names, payload)
    # 6 x 24 KiB pack two per bucket; "big" alone; the small ones share a bucket.
    assert len(blobs) == 5


def test_bucket_order_follows_input() -> None:
    items = [(f"t{i}", torch.full((1024,), float(i))) for i in range(8)]  # 4 KiB each
    blobs = pack_state_dict(items, 8 / 1024)
    assert [sorted(dict(iter_safetensors([b]))) for b in blobs] == [
        ["t0", "t1"], ["t2", "t3"], ["t4", "t5"], ["t6", "t7"]
    ]
    assert sum(tensor_nbytes(t) for _, t in items) == sum(_payload_bytes(b) for b in blobs)


def test_tied_and_view_tensors() -> None:
    # Tied embeddings (one storage, two names) and a slice view must both survive.
    emb = torch.randn(10, 4)
    base = torch.randn(8, 8)
    sd = {"embed.weight": emb, "lm_head.weight": emb, "rows": base[2:5]}
    got = dict(iter_safetensors(pack_state_dict(sd, 1.0)))
    assert torch.equal(got["embed.weight"], emb) and torch.equal(got["lm_head.weight"], emb)
    assert torch.equal(got["rows"], base[2:5])


def test_rejects_bad_input() -> None:
    with pytest.raises(ValueError):
        pack_state_dict({"a": torch.zeros(1)}, 0)
    with pytest.raises(ValueError):
        pack_state_dict([("a", torch.zeros(1024)), ("b", torch.zeros(1)), ("a", torch.zeros(1))], 1 / 1024)
