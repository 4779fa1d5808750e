"""What a run asks of a cluster: every actor, the Ray resources it requests (exactly as
``controller/cluster.py`` and ``actors/learner.py`` request them) and an estimate of its
peak memory per GPU.

The memory model (GiB per GPU, bf16 unless the config says float32):

- learner rank: weights (2 B/param, /ranks under ZeRO-3), gradients (2 B/param, /ranks
  under ZeRO-2/3) and their fp32 sum (4 B/param /ranks under ZeRO-2/3 when
  ``grad_accum_dtype`` is float32), fp32 master weights + Adam moments (12 B/param
  /ranks), the previous-policy copy when kept, activations of one micro-batch
  (``micro_batch_tokens``: with gradient checkpointing one bf16 hidden state per layer
  plus one layer's working set, without it every layer's working set), the log-prob
  chunk (``modeling.LOGIT_CHUNK_ELEMENTS`` fp32 logits, ~5 copies in backward) and
  ~1.5 GiB of CUDA context and allocator slack;
- vLLM engine (rollout workers, ``teacher.backend: vllm``): it takes
  ``gpu_memory_utilization`` of the GPU; inside that the weights (/TP), ~2 GiB of
  activations and CUDA graphs, and the KV cache, which must hold at least one
  max-length sequence;
- hf teacher: weights, one layer's working set at ``max_batch_tokens`` (no gradients),
  the log-prob chunk, the context.

Estimates, not measurements: the GPU check (``launch/gpu_smoke.py``) measures the learner.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from scope_ray.algo import get_algorithm
from scope_ray.planning.shapes import ModelShape

GIB = 1024**3
CUDA_CONTEXT_GIB = 1.5
VLLM_OVERHEAD_GIB = 2.0


@dataclass
class Demand:
    """One actor: its name, the Ray resources it asks for, its memory per GPU."""

    name: str
    gpus: float
    cpus: float
    resources: dict[str, float]
    memory_gib: float = 0.0  # estimated peak per GPU (0 for a CPU actor)
    parts: dict[str, float] = field(default_factory=dict)  # what the estimate is made of
    # vLLM engines take ``utilization`` of the GPU they land on; what they cannot do
    # without (weights, overhead, one max-length sequence's KV) is ``needs_gib``.
    utilization: float = 0.0
    needs_gib: float = 0.0
    group: str = ""  # "learner": one placement group (PACK) for all ranks


def _bytes_per_param(dtype: str) -> int:
    return 4 if dtype == "float32" else 2


def learner_memory(cfg: Any, shape: ModelShape) -> dict[str, float]:
    lr, ranks = cfg.learner, cfg.learner.num_workers
    p, b = shape.params, _bytes_per_param(cfg.model.dtype)
    stage = lr.zero_stage
    parts = {
        "weights": p * b / (ranks if stage == 3 else 1),
        "gradients": p * b / (ranks if stage >= 2 else 1),
        "optimizer (fp32 master + Adam)": 12 * p / ranks,
    }
    if b == 2 and lr.grad_accum_dtype == "float32":
        parts["fp32 gradient sum"] = 4 * p / (ranks if stage >= 2 else 1)
    if lr.old_logp == "recompute" and cfg.trainer.max_staleness >= 1:
        parts["previous policy"] = p * b
    tokens = lr.micro_batch_tokens
    layer_set = tokens * shape.layer_working_set_bytes(b)
    parts["activations"] = (tokens * shape.hidden * b * shape.layers + layer_set if lr.gradient_checkpointing
                            else layer_set * shape.layers)
    parts["log-prob chunk"] = logprob_chunk_bytes(shape, tokens)
    parts["CUDA context"] = CUDA_CONTEXT_GIB * GIB
    return {k: v / GIB for k, v in parts.items()}


def logprob_chunk_bytes(shape: ModelShape, tokens: int, backward: bool = True) -> float:
    """One chunk of fp32 logits and what lives beside it: the log-softmax (scoring), and
    in backward their recomputation and both gradients (~5 fp32 copies: measured 1.4 GiB
    for one 2^26-element chunk on CPU, launch/gpu_check.py --small)."""
    from scope_ray.learner.logprobs import LOGIT_CHUNK_ELEMENTS

    elements = min(LOGIT_CHUNK_ELEMENTS, tokens * shape.vocab)
    return (5 if backward else 2) * 4 * elements


def vllm_memory(shape: ModelShape, max_model_len: int, tp: int, dtype: str) -> tuple[dict[str, float], float]:
    """The fixed part of a vLLM engine and the KV cache of one max-length sequence."""
    b = _bytes_per_param(dtype)
    fixed = {"weights": shape.params * b / tp / GIB, "activations + CUDA graphs": VLLM_OVERHEAD_GIB,
             "KV of one max-length sequence": shape.kv_bytes_per_token(b) * max_model_len / tp / GIB}
    return fixed, sum(fixed.values())


def hf_teacher_memory(cfg: Any, shape: ModelShape) -> dict[str, float]:
    b, tokens = _bytes_per_param(cfg.model.dtype), cfg.teacher.max_batch_tokens
    parts = {"weights": shape.params * b, "one layer's working set": tokens * shape.layer_working_set_bytes(b),
             "log-prob chunk": logprob_chunk_bytes(shape, tokens, backward=False), "CUDA context": CUDA_CONTEXT_GIB * GIB}
    return {k: v / GIB for k, v in parts.items()}


def run_demands(cfg: Any, student: ModelShape | None, teacher: ModelShape | None) -> list[Demand]:
    """Every actor ``cfg`` starts, in the order the trainer starts them (memory left out
    where a shape is None: the live check before a run needs the resources only)."""
    r, t, lr = cfg.rollout, cfg.teacher, cfg.learner
    length = cfg.model.max_prompt_tokens + cfg.model.max_response_tokens
    out: list[Demand] = []
    for i in range(r.num_workers):
        gpus = r.num_gpus * r.tensor_parallel_size
        d = Demand(f"rollout worker {i}", gpus, r.num_cpus, dict(r.resources))
        if gpus > 0 and student is not None:
            d.parts, d.needs_gib = vllm_memory(student, length, r.tensor_parallel_size, cfg.model.dtype)
            d.utilization = r.gpu_memory_utilization
        out.append(d)
    scorer = get_algorithm(cfg.algorithm.name).scorer(cfg.algorithm.kl_beta)
    if scorer is not None:
        shape = teacher if scorer == "teacher" else student
        for i in range(t.num_replicas):
            name = "teacher replica" if scorer == "teacher" else "reference scorer"
            d = Demand(f"{name} {i}", t.num_gpus, t.num_cpus, dict(t.resources))
            if shape is None or t.num_gpus <= 0:
                pass
            elif t.backend == "vllm":
                d.parts, d.needs_gib = vllm_memory(shape, length + 1, 1, cfg.model.dtype)
                d.utilization = t.gpu_memory_utilization
            else:
                d.parts = hf_teacher_memory(cfg, shape)
                d.memory_gib = sum(d.parts.values())
            out.append(d)
    for rank in range(lr.num_workers):
        d = Demand(f"learner rank {rank}", lr.num_gpus, lr.num_cpus, dict(lr.resources), group="learner")
        if lr.num_gpus > 0 and student is not None:
            d.parts = learner_memory(cfg, student)
            d.memory_gib = sum(d.parts.values())
        out.append(d)
    return out
