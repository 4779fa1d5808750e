"""The weight-broadcast group on gloo (scope_ray/engines/weight_broadcast.py): one
sender and two receivers in threads of this process, each a real ProcessGroupGloo over a
real TCP store. The same code drives NCCL on GPUs (not exercised here)."""

from __future__ import annotations

import threading
import time
from typing import Any

import pytest
import torch

from scope_ray.engines.weight_broadcast import (ALIGN, BroadcastGroup, TensorSpec, check_manifest, plan_buckets,
                                                spec_of)


def _weights() -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    return {
        "a.weight": torch.randn(33, 7, generator=g),
        "b.bias": torch.randn(5, generator=g).to(torch.bfloat16),
        "c.weight": torch.randn(300, 40, generator=g),  # 48,000 bytes: a bucket of its own
        "d.scale": torch.randn(3, generator=g).to(torch.float64),
    }


def _run_group(n_receivers: int, sender, receiver, timeout_s: float = 10.0) -> dict[Any, Any]:
    """Rank 0 runs ``sender(group)``, ranks 1.. ``receiver(rank, group)``; results (or
    the exception each raised) by rank."""
    host = BroadcastGroup.host("127.0.0.1", 1 + n_receivers, torch.device("cpu"), timeout_s)
    out: dict[Any, Any] = {}

    def member(rank: int) -> None:
        try:
            if rank == 0:
                host.connect()
                out[0] = sender(host)
            else:
                group = BroadcastGroup.join("127.0.0.1", host.port, rank, 1 + n_receivers, torch.device("cpu"),
                                            "gloo", timeout_s)
                out[rank] = receiver(rank, group)
        except Exception as exc:  # noqa: BLE001 - the test looks at it
            out[rank] = exc

    threads = [threading.Thread(target=member, args=(r,)) for r in range(1 + n_receivers)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    return out


def test_plan_buckets_aligns_and_splits() -> None:
    specs = [TensorSpec("x", "float32", (10,)), TensorSpec("y", "bfloat16", (3,)), TensorSpec("z", "float32", (100,))]
    buckets = plan_buckets(specs, bucket_mb=200 / (1 << 20))  # 200 bytes
    assert [[s.name for s, _ in b.entries] for b in buckets] == [["x", "y"], ["z"]]
    assert buckets[0].entries[1][1] == ALIGN and buckets[0].nbytes == ALIGN + 6
    assert buckets[1].nbytes == 400  # larger than the limit: alone


def test_update_arrives_bit_exact_in_several_buckets() -> None:
    sd = _weights()
    specs = [spec_of(n, t) for n, t in sd.items()]
    got = _run_group(
        2,
        lambda g: g.send(specs, iter(sd.items()), bucket_mb=0.01),
        lambda r, g: {n: t.clone() for n, t in g.receive({n: tuple(t.shape) for n, t in sd.items()})},
    )
    assert got[0] == sum(b.nbytes for b in plan_buckets(specs, 0.01))
    for rank in (1, 2):
        assert list(got[rank]) == list(sd)
        for name, t in sd.items():
            assert got[rank][name].dtype == t.dtype and torch.equal(got[rank][name], t), (rank, name)


def test_a_wrong_shape_is_refused_before_anything_loads_and_the_sender_finishes() -> None:
    sd = _weights()
    specs = [spec_of(n, t) for n, t in sd.items()]
    expected = {n: tuple(t.shape) for n, t in sd.items()} | {"a.weight": (7, 33)}
    yielded: list[str] = []

    def receive(rank: int, g: BroadcastGroup) -> None:
        for name, _ in g.receive(expected):
            yielded.append(name)

    got = _run_group(1, lambda g: g.send(specs, iter(sd.items()), bucket_mb=0.01), receive)
    assert isinstance(got[0], int)  # the sender completed its update
    assert isinstance(got[1], ValueError)
    assert "'a.weight' has shape [33, 7], this model's is [7, 33]" in str(got[1])
    assert yielded == []


def test_check_manifest_names_the_problem() -> None:
    specs = [TensorSpec("w", "float32", (2,))]
    assert check_manifest(specs, {"w": (2,)}) is None
    assert "1 tensor(s) missing, e.g. 'v'" in check_manifest(specs, {"w": (2,), "v": (1,)})
    assert check_manifest(specs, {"w": (2,), "v": (1,)}, optional={"v"}) is None
    assert "not a tensor of this model" in check_manifest([TensorSpec("q", "float32", (2,))], {"w": (2,)})
    assert "not a floating-point" in check_manifest([TensorSpec("w", "int64", (2,))], {"w": (2,)})


def test_a_receiver_that_never_receives_fails_the_sender_within_its_timeout() -> None:
    sd = {"big": torch.zeros(4 << 20)}  # 16 MiB: more than the sockets buffer
    specs = [spec_of(n, t) for n, t in sd.items()]
    t0 = time.monotonic()

    def send(g: BroadcastGroup) -> tuple[Exception | None, float]:
        try:
            g.send(specs, iter(sd.items()), bucket_mb=64)
            return None, time.monotonic() - t0
        except Exception as exc:  # noqa: BLE001 - the test looks at it
            return exc, time.monotonic() - t0

    got = _run_group(1, send, lambda r, g: time.sleep(4.0), timeout_s=1.5)
    error, after = got[0]
    assert error is not None and after < 3.5, (error, after)  # its timeout, not the receiver's sleep


def test_sender_checks_tensors_against_its_manifest() -> None:
    sd = _weights()
    specs = [spec_of(n, t) for n, t in sd.items()]
    specs[0] = TensorSpec("a.weight", "float32", (7, 33))
    got = _run_group(1, lambda g: g.send(specs, iter(sd.items()), bucket_mb=0.01),
                     lambda r, g: list(g.receive()), timeout_s=2.0)
    assert isinstance(got[0], RuntimeError) and "does not match the manifest" in str(got[0])


def test_join_refuses_a_backend_other_than_its_device_s() -> None:
    host = BroadcastGroup.host("127.0.0.1", 2, torch.device("cpu"), 2.0)
    with pytest.raises(RuntimeError, match="sends over nccl but this engine's weights are on cpu"):
        BroadcastGroup.join("127.0.0.1", host.port, 1, 2, torch.device("cpu"), "nccl", 2.0)
