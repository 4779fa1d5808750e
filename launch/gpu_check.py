"""Paper-shape figures on one GPU, against what ``scope-ray plan`` estimates.

    python launch/gpu_check.py --out gpu_check.json      # CUDA: 1.5B learner, 7B teacher
    python launch/gpu_check.py --device cpu --tiny       # what tests/launch/test_gpu_check.py runs
    python launch/gpu_check.py --device cpu --small --learner-tokens 4096   # ~25M, memory on CPU

learner  a random-init model of the 1.5B student's shape (DeepSeek-R1-Distill-Qwen-1.5B:
         real vocabulary, 28 layers), bf16, gradient checkpointing, the project's chunked
         log-probs (``scope_ray.learner.logprobs.token_logprobs``): forward + backward at
         ``--learner-tokens`` (2 rows). Tokens/s, MFU (6 x params + causal attention
         FLOPs per token, against the GPU's dense bf16 peak), and the peak memory that
         forward + backward add over the weights, next to the planner's estimate of the
         same parts (gradients, activations, log-prob chunk).
teacher  the 7B teacher's shape (Skywork-OR1-7B), bf16, no-grad scoring at
         ``--teacher-tokens`` (the recipes' teacher.max_batch_tokens, rows of 16k):
         tokens/s and peak over the weights against the planner's hf-teacher estimate.

On CPU (float32) the learner's peak is the process's peak RSS growth (``ru_maxrss``) over
its RSS before the first pass, so only the first section (the learner) reports memory.

Needs torch and transformers only (no Ray, vLLM or DeepSpeed, nothing downloaded).
Prints one JSON report on stdout; exit 1 if a section failed. ~2-4 min on an H100/H200
(most of it random initialisation of the 7B model).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
import traceback
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:  # run as a script from anywhere: import this checkout
    sys.path.insert(0, str(ROOT))

import torch  # noqa: E402

GIB = 1024**3
# Dense bf16 peak FLOP/s by device name (vendor figures, no sparsity).
PEAK_BF16 = {"H200": 989e12, "H100": 989e12, "A100": 312e12, "L40S": 362e12, "B200": 2250e12}


def _shape(name: str, size: str):
    from scope_ray.planning.shapes import KNOWN, ModelShape

    if size == "tiny":  # the bootstrap's tiny architecture with a 1k vocabulary
        return ModelShape(128, 2, 384, 4, 2, 1024, qkv_bias=True)
    if size == "small":  # ~25M parameters: a body the CPU can measure
        return ModelShape(512, 8, 1536, 8, 4, 8192, qkv_bias=True)
    return KNOWN[name]


def _model(shape, device: torch.device, dtype: torch.dtype):
    from transformers import Qwen2Config, Qwen2ForCausalLM

    cfg = Qwen2Config(vocab_size=shape.vocab, hidden_size=shape.hidden, intermediate_size=shape.intermediate,
                      num_hidden_layers=shape.layers, num_attention_heads=shape.heads,
                      num_key_value_heads=shape.kv_heads, max_position_embeddings=32768,
                      tie_word_embeddings=shape.tied, attn_implementation="sdpa")
    torch.manual_seed(0)
    with torch.device(device):
        model = Qwen2ForCausalLM(cfg).to(dtype)
    model.config.use_cache = False
    return model


def _peak_flops(device: torch.device) -> float | None:
    if device.type != "cuda":
        return None
    name = torch.cuda.get_device_name(0)
    return next((v for k, v in PEAK_BF16.items() if k in name), None)


def _rss_gib() -> tuple[float, float]:
    """(current RSS, peak RSS so far) of this process, GiB."""
    import resource

    with open("/proc/self/statm") as f:
        current = int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    return current / GIB, resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 / GIB


def _measure(device: torch.device, steps: int, fn, cpu_memory: bool = False) -> tuple[float, float | None]:
    """Seconds per call, and the peak GiB the calls add over what was allocated before
    (CUDA: the allocator's peak; CPU with ``cpu_memory``: peak RSS over the RSS before)."""
    rss_before = _rss_gib()[0] if cpu_memory else 0.0
    fn()  # warm-up
    if device.type == "cuda":
        torch.cuda.synchronize()
        base = torch.cuda.memory_allocated()
        torch.cuda.reset_peak_memory_stats()
    t0 = time.perf_counter()
    for _ in range(steps):
        fn()
    if device.type == "cuda":
        torch.cuda.synchronize()
    sec = (time.perf_counter() - t0) / steps
    peak = (torch.cuda.max_memory_allocated() - base) / GIB if device.type == "cuda" else None
    if cpu_memory:
        peak = _rss_gib()[1] - rss_before
    return sec, peak


def learner(device: torch.device, dtype: torch.dtype, tokens: int, steps: int, size: str) -> dict[str, Any]:
    from scope_ray.learner.logprobs import token_logprobs
    from scope_ray.planning.demands import logprob_chunk_bytes

    shape = _shape("DeepSeek-R1-Distill-Qwen-1.5B", size)
    model = _model(shape, device, dtype)
    model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    model.train()
    rows, seq = 2, tokens // 2
    ids = torch.randint(8, shape.vocab, (rows, seq), generator=torch.Generator().manual_seed(1)).to(device)
    mask = torch.ones_like(ids)

    def step() -> None:
        model.zero_grad(set_to_none=True)
        (-token_logprobs(model, ids, mask, 0.6).sum() / tokens).backward()

    sec, peak = _measure(device, steps, step, cpu_memory=device.type == "cpu")
    b = torch.finfo(dtype).bits // 8
    estimate = {"gradients": shape.params * b / GIB,
                "activations": (tokens * shape.hidden * b * shape.layers + tokens * shape.layer_working_set_bytes(b)) / GIB,
                "log-prob chunk": logprob_chunk_bytes(shape, tokens) / GIB}
    flops_per_token = 6 * shape.params + 6 * shape.layers * shape.heads * shape.dim * seq  # causal attention
    peak_flops = _peak_flops(device)
    out = {"params_b": round(shape.params / 1e9, 3), "tokens": tokens, "step_s": sec, "tokens_per_s": tokens / sec,
           "mfu": (tokens / sec * flops_per_token / peak_flops) if peak_flops else None,
           "peak_over_weights_gib": peak, "planner_estimate_gib": round(sum(estimate.values()), 2),
           "planner_parts_gib": {k: round(v, 2) for k, v in estimate.items()}}
    if peak is not None:
        out["measured_over_estimate"] = peak / sum(estimate.values())
    return out


def teacher(device: torch.device, dtype: torch.dtype, tokens: int, steps: int, size: str) -> dict[str, Any]:
    from scope_ray.learner.logprobs import token_logprobs
    from scope_ray.planning.demands import logprob_chunk_bytes

    shape = _shape("Skywork-OR1-7B", size)
    model = _model(shape, device, dtype).eval()
    seq = min(tokens, 16384)
    rows = max(1, tokens // seq)
    ids = torch.randint(8, shape.vocab, (rows, seq), generator=torch.Generator().manual_seed(2)).to(device)
    mask = torch.ones_like(ids)

    @torch.no_grad()
    def score() -> None:
        token_logprobs(model, ids, mask, 1.0)

    sec, peak = _measure(device, steps, score)
    b = torch.finfo(dtype).bits // 8
    estimate = {"one layer's working set": tokens * shape.layer_working_set_bytes(b) / GIB,
                "log-prob chunk": logprob_chunk_bytes(shape, tokens, backward=False) / GIB}
    out = {"params_b": round(shape.params / 1e9, 3), "tokens": rows * seq, "step_s": sec,
           "tokens_per_s": rows * seq / sec, "peak_over_weights_gib": peak,
           "planner_estimate_gib": round(sum(estimate.values()), 2)}
    if peak is not None:
        out["measured_over_estimate"] = peak / sum(estimate.values())
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--device", choices=("cuda", "cpu"), default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--tiny", action="store_true", help="tiny shapes and few tokens (CPU tests)")
    p.add_argument("--small", action="store_true", help="~25M-parameter shapes (memory model on CPU)")
    p.add_argument("--learner-tokens", type=int, default=None, help="default 16384 (tiny 256)")
    p.add_argument("--teacher-tokens", type=int, default=None, help="default 65536 (tiny 256)")
    p.add_argument("--steps", type=int, default=3)
    p.add_argument("--out", type=Path)
    args = p.parse_args(argv)
    device = torch.device(args.device)
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    report: dict[str, Any] = {"device": args.device, "torch": torch.__version__, "cuda": torch.version.cuda,
                              "gpu": torch.cuda.get_device_name(0) if device.type == "cuda" else None,
                              "dtype": str(dtype).replace("torch.", "")}
    size = "tiny" if args.tiny else "small" if args.small else "paper"
    few = size != "paper"
    sizes = {"learner": args.learner_tokens or (256 if few else 16384),
             "teacher": args.teacher_tokens or (256 if few else 65536)}
    report["shapes"] = size
    failed = []
    for name, fn in (("learner", learner), ("teacher", teacher)):
        try:
            t0 = time.perf_counter()
            report[name] = {"status": "ok", **fn(device, dtype, sizes[name], args.steps, size),
                            "wall_s": round(time.perf_counter() - t0, 1)}
        except Exception as exc:  # noqa: BLE001 - reported; the other section still runs
            traceback.print_exc(file=sys.stderr)
            report[name] = {"status": "failed", "error": f"{type(exc).__name__}: {exc}"}
            failed.append(name)
        if device.type == "cuda":
            torch.cuda.empty_cache()
        print(f"{name}: {json.dumps(report[name])}", file=sys.stderr, flush=True)
    report["failed"] = failed
    text = json.dumps(report, indent=2)
    if args.out:
        args.out.write_text(text)
    os.write(1, (text + "\n").encode())
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
