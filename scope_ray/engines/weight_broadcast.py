"""Weights broadcast from the learner to the rollout engines over a process group of
their own (``rollout.weight_sync: broadcast``). No Ray, no vLLM: both sides import this.

The group: the learner's rank 0 is rank 0 and hosts the group's TCP store (port 0: the
OS picks a free one, no race between choosing and binding); every rollout engine rank
joins as rank 1.. It is a bare ``ProcessGroupGloo`` (CPU) or ``ProcessGroupNCCL`` (GPU)
on that store, the way vLLM's ``stateless_init_torch_distributed_process_group`` builds
one, so it never touches either side's global ``torch.distributed`` state (DeepSpeed's
on the learner, vLLM's world group on the engine). The same code drives both backends;
only the buffers' device differs.

One update is, in order:

1. a manifest: every tensor's name, dtype and full shape, as a length (int64) then JSON
   bytes, so the receiver checks names and shapes *before* it loads anything;
2. the buckets: tensors packed into flat byte buffers of at most ``bucket_mb`` (a larger
   tensor gets one to itself), one broadcast each. Both sides compute the same packing
   from the manifest, so nothing else crosses the wire.

Every collective waits at most the group's timeout, so a rank that hangs or dies turns
into an error on the others instead of a hang.
"""

from __future__ import annotations

import json
import logging
import math
import socket
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path

import torch
import torch.distributed as dist

logger = logging.getLogger(__name__)

ALIGN = 64  # byte offset of every tensor in a bucket (any dtype can be viewed there)


@dataclass(frozen=True)
class TensorSpec:
    name: str
    dtype: str  # "float32", "bfloat16", ...
    shape: tuple[int, ...]

    @property
    def nbytes(self) -> int:
        return math.prod(self.shape) * torch_dtype(self.dtype).itemsize


def torch_dtype(name: str) -> torch.dtype:
    dtype = getattr(torch, name, None)
    if not isinstance(dtype, torch.dtype):
        raise ValueError(f"not a torch dtype: {name!r}")
    return dtype


def spec_of(name: str, tensor: torch.Tensor, shape: Iterable[int] | None = None) -> TensorSpec:
    return TensorSpec(name, str(tensor.dtype).removeprefix("torch."), tuple(tensor.shape if shape is None else shape))


@dataclass(frozen=True)
class Bucket:
    entries: tuple[tuple[TensorSpec, int], ...]  # (tensor, byte offset)
    nbytes: int


def plan_buckets(specs: list[TensorSpec], bucket_mb: float) -> list[Bucket]:
    """Tensors in manifest order into buckets of at most ``bucket_mb`` MiB."""
    limit = int(bucket_mb * (1 << 20))
    buckets: list[Bucket] = []
    entries: list[tuple[TensorSpec, int]] = []
    size = 0
    for spec in specs:
        start = -(-size // ALIGN) * ALIGN
        if entries and start + spec.nbytes > limit:
            buckets.append(Bucket(tuple(entries), size))
            entries, start = [], 0
        entries.append((spec, start))
        size = start + spec.nbytes
    if entries:
        buckets.append(Bucket(tuple(entries), size))
    return buckets


def backend_for(device: torch.device) -> str:
    return "nccl" if device.type == "cuda" else "gloo"


class BroadcastGroup:
    """One rank of a weight-broadcast group. Rank 0 is made by :meth:`host` (store first,
    then :meth:`connect` once the others are told the address); the others by
    :meth:`join`, which connects at once. Connecting blocks until every rank is there.

    Every socket binds to the address given for the rank (its Ray node address), not to
    every interface: on a local run that is 127.0.0.1, so the group is reachable from
    this machine only, as the learner's own process group is (docs/RELIABILITY.md)."""

    def __init__(self, store: dist.Store, rank: int, world_size: int, device: torch.device,
                 timeout_s: float, local_address: str) -> None:
        self.store, self.rank, self.world_size = store, rank, world_size
        self.local_address = local_address
        self.device = torch.device(device)
        self.backend = backend_for(self.device)
        self.timeout = timedelta(seconds=timeout_s)
        self._pg = None

    @classmethod
    def host(cls, host: str, world_size: int, device: torch.device, timeout_s: float) -> BroadcastGroup:
        # Bound here (port 0: the OS picks a free one, so no other process can take it
        # between choosing and binding) and handed to the store, which would otherwise
        # listen on every interface.
        listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        listener.bind((host, 0))
        listener.listen(max(16, world_size))
        port = listener.getsockname()[1]
        # The store's thread polls this fd from now on: detach it, or closing the socket
        # object would pull it from under the store (see learner/engine.py).
        store = dist.TCPStore(host, port, world_size, True, timeout=timedelta(seconds=timeout_s),
                              wait_for_workers=False, master_listen_fd=listener.detach(), use_libuv=False)
        return cls(store, 0, world_size, device, timeout_s, host)

    @classmethod
    def join(cls, host: str, port: int, rank: int, world_size: int, device: torch.device, backend: str,
             timeout_s: float, local_address: str = "127.0.0.1") -> BroadcastGroup:
        group = cls(dist.TCPStore(host, port, world_size, False, timeout=timedelta(seconds=timeout_s)),
                    rank, world_size, device, timeout_s, local_address)
        if group.backend != backend:
            raise RuntimeError(f"weight broadcast: the learner sends over {backend} but this engine's weights are "
                               f"on {group.device} ({group.backend}); use rollout.weight_sync=safetensors")
        group.connect()
        return group

    @property
    def port(self) -> int:
        return int(self.store.port)

    def connect(self) -> None:
        store = dist.PrefixStore("scope-ray-weights", self.store)
        if self.backend == "gloo":
            options = dist.ProcessGroupGloo._Options()
            options._timeout = self.timeout
            options._devices = [dist.ProcessGroupGloo.create_device(hostname=self.local_address)]
            self._pg = dist.ProcessGroupGloo(store, self.rank, self.world_size, options)
        else:  # the GPU path: same calls, NCCL buffers on this rank's device (NCCL_SOCKET_IFNAME picks its interface)
            options = dist.ProcessGroupNCCL.Options()
            options._timeout = self.timeout
            self._pg = dist.ProcessGroupNCCL(store, self.rank, self.world_size, options)
        # One round trip now, so a rank that cannot reach the others fails here, not
        # in the middle of the first update.
        self.broadcast(torch.zeros(1, device=self.device))

    def broadcast(self, tensor: torch.Tensor) -> None:
        if self._pg is None:
            raise RuntimeError("weight broadcast group is closed")
        opts = dist.BroadcastOptions()
        opts.rootRank = 0
        opts.timeout = self.timeout
        self._pg.broadcast([tensor], opts).wait(self.timeout)

    def close(self) -> None:
        self._pg = None  # the backend's destructor closes its connections
        self.store = None  # type: ignore[assignment]

    # ---- one update ----
    def send(self, specs: list[TensorSpec], tensors: Iterator[tuple[str, torch.Tensor]], bucket_mb: float) -> int:
        """Rank 0: the manifest, then ``tensors`` (in ``specs`` order) bucket by bucket.
        Returns the payload bytes. ``tensors`` is consumed to its end even on failure
        (under ZeRO-3 each item is a gather the other learner ranks take part in)."""
        try:
            self._send_manifest(specs, bucket_mb)
            sent = 0
            for bucket in plan_buckets(specs, bucket_mb):
                buf = torch.empty(bucket.nbytes, dtype=torch.uint8, device=self.device)
                for spec, offset in bucket.entries:
                    name, tensor = next(tensors)
                    if name != spec.name or spec_of(name, tensor) != spec:
                        raise RuntimeError(f"weight broadcast: tensor {name!r} {tuple(tensor.shape)} {tensor.dtype} "
                                           f"does not match the manifest's {spec}")
                    flat = tensor.detach().contiguous().reshape(-1).view(torch.uint8)
                    buf[offset:offset + spec.nbytes].copy_(flat)
                self.broadcast(buf)
                sent += bucket.nbytes
            return sent
        finally:
            for _ in tensors:
                pass

    def receive(self, expected: Mapping[str, tuple[int, ...]] | None = None,
                optional: Iterable[str] = ()) -> Iterator[tuple[str, torch.Tensor]]:
        """Ranks > 0: receive the manifest and check it against ``expected`` (name ->
        shape; names in ``optional`` may be missing), then return the update's tensors,
        bucket by bucket as they arrive (views into each bucket's buffer). A manifest
        that does not match raises here, before anything can be loaded, after taking in
        the buckets anyway so the sender finishes."""
        specs, bucket_mb = self._receive_manifest()
        buckets = plan_buckets(specs, bucket_mb)
        problem = None if expected is None else check_manifest(specs, expected, optional)
        if problem is not None:
            for bucket in buckets:
                self.broadcast(torch.empty(bucket.nbytes, dtype=torch.uint8, device=self.device))
            raise ValueError(f"weight broadcast refused: {problem}")
        return self._tensors(buckets)

    def _tensors(self, buckets: list[Bucket]) -> Iterator[tuple[str, torch.Tensor]]:
        for bucket in buckets:
            buf = torch.empty(bucket.nbytes, dtype=torch.uint8, device=self.device)
            self.broadcast(buf)
            for spec, offset in bucket.entries:
                yield spec.name, buf[offset:offset + spec.nbytes].view(torch_dtype(spec.dtype)).view(spec.shape)

    def _send_manifest(self, specs: list[TensorSpec], bucket_mb: float) -> None:
        payload = json.dumps({"bucket_mb": float(bucket_mb),
                              "tensors": [[s.name, s.dtype, list(s.shape)] for s in specs]}).encode()
        self.broadcast(torch.tensor([len(payload)], dtype=torch.int64, device=self.device))
        self.broadcast(torch.frombuffer(bytearray(payload), dtype=torch.uint8).to(self.device))

    def _receive_manifest(self) -> tuple[list[TensorSpec], float]:
        length = torch.zeros(1, dtype=torch.int64, device=self.device)
        self.broadcast(length)
        raw = torch.empty(int(length.item()), dtype=torch.uint8, device=self.device)
        self.broadcast(raw)
        manifest = json.loads(bytes(raw.cpu().numpy()).decode())
        specs = [TensorSpec(name, dtype, tuple(shape)) for name, dtype, shape in manifest["tensors"]]
        return specs, float(manifest["bucket_mb"])


def check_manifest(specs: list[TensorSpec], expected: Mapping[str, tuple[int, ...]],
                   optional: Iterable[str] = ()) -> str | None:
    """None when ``specs`` is a full update of ``expected``: same names (each once, those
    in ``optional`` may be missing), same shapes, floating-point dtypes. Else the first
    problem, naming the tensor."""
    seen: set[str] = set()
    for spec in specs:
        want = expected.get(spec.name)
        if want is None:
            return f"{spec.name!r} is not a tensor of this model"
        if spec.name in seen:
            return f"{spec.name!r} sent twice"
        seen.add(spec.name)
        if spec.shape != tuple(want):
            return f"{spec.name!r} has shape {list(spec.shape)}, this model's is {list(want)}"
        if not torch_dtype(spec.dtype).is_floating_point:
            return f"{spec.name!r} has dtype {spec.dtype}, not a floating-point one"
    missing = sorted(set(expected) - seen - set(optional))
    if missing:
        return f"{len(missing)} tensor(s) missing, e.g. {missing[0]!r} (an update must carry every weight)"
    return None


def checkpoint_shapes(model_dir: str | Path) -> dict[str, tuple[int, ...]]:
    """Name -> shape of every tensor in a model dir's safetensors files (headers only):
    what a full update of the model that was loaded from there must carry."""
    from safetensors import safe_open

    shapes: dict[str, tuple[int, ...]] = {}
    for path in sorted(Path(model_dir).glob("*.safetensors")):
        with safe_open(str(path), framework="pt") as f:
            for name in f.keys():  # noqa: SIM118 - safe_open is not a mapping
                shapes[name] = tuple(f.get_slice(name).get_shape())
    return shapes
