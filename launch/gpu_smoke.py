"""One-GPU smoke test of scope-ray's CUDA paths, with throughput.

Builds a random ~100M-parameter Qwen2 (the embedded tiny architecture, scaled up) and
runs, on one device:

  learner    the project's SCOPE loss (``scope_ray.algo.compute_loss`` on
             ``scope_ray.learner.logprobs.token_logprobs``): forward + backward + AdamW
  teacher    no-grad token log-prob scoring, the teacher server's hf path
  deepspeed  ``scope_ray.learner.LearnerCore`` (ZeRO-2, world size 1): the real learner
             step, when deepspeed is importable
  vllm       ``scope_ray.engines.vllm_engine.create_llm`` + generate, when vllm is
             importable (run last: it claims GPU memory, and on CPU pins threads)

Needs only torch and transformers (no Ray, no network); optional paths whose package is
missing are reported as skipped. Prints one JSON report on stdout (``--out`` also
writes it) and exits 1 if any path failed.

    python launch/gpu_smoke.py                      # CUDA, ~100M model
    python launch/gpu_smoke.py --device cpu --tiny  # what tests/launch/test_gpu_smoke.py runs
"""

from __future__ import annotations

import argparse
import contextlib
import gc
import importlib.util
import json
import logging
import os
import sys
import tempfile
import time
import traceback
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:  # run as a script from anywhere: import this checkout
    sys.path.insert(0, str(ROOT))

import torch  # noqa: E402

logger = logging.getLogger("gpu_smoke")

SECTIONS = ("learner", "teacher", "deepspeed", "vllm")


@dataclass(frozen=True)
class Shape:
    """Synthetic SCOPE batch: ``prompts`` groups of ``group`` rollouts."""

    prompts: int
    group: int
    prompt_len: int
    response_len: int


def model_spec(tiny: bool):
    from scope_ray.bootstrap.models import TinyModelSpec

    if tiny:
        return TinyModelSpec()
    # ~97M parameters with the 261-token byte vocabulary; head dim 64, GQA 12:4 like Qwen.
    return TinyModelSpec(hidden_size=768, num_layers=12, num_heads=12, num_kv_heads=4,
                         intermediate_size=2816, max_position_embeddings=4096)


def synthetic_batch(shape: Shape, vocab: int, seed: int = 0):
    """A collated TrainBatch; old_logp is filled in on-policy by the caller."""
    from scope_ray.learner.batch import collate

    g = torch.Generator().manual_seed(seed)
    n = shape.prompts * shape.group
    prompts = [torch.randint(8, vocab, (shape.prompt_len,), generator=g).tolist() for _ in range(n)]
    # Ragged responses, like real rollouts (between half and full length).
    lens = torch.randint(shape.response_len // 2, shape.response_len + 1, (n,), generator=g).tolist()
    responses = [torch.randint(8, vocab, (k,), generator=g).tolist() for k in lens]
    correct = [i % 2 == 0 for i in range(n)]
    teacher = [None if c else (-0.5 - 3 * torch.rand(k, generator=g)).numpy() for c, k in zip(correct, lens)]
    return collate(prompt_ids=prompts, response_ids=responses, old_logp=[[0.0] * k for k in lens],
                   teacher_logp=teacher, correct=correct, rewards=[float(c) for c in correct],
                   weights=[1.0] * n, group_index=[i // shape.group for i in range(n)], pad_id=0)


def on_policy(batch, token_logp: torch.Tensor):
    """Fill old_logp from the current policy and the SCOPE weights from it (rho = 1)."""
    from scope_ray.algo import get_algorithm, rollout_weights
    from scope_ray.algo.weights import sequence_mean_logprob

    mask = batch.response_mask.bool()
    batch.old_logp = torch.where(mask, token_logp.float().cpu(), torch.zeros(()))
    student = sequence_mean_logprob(batch.old_logp, batch.response_mask)
    teacher = sequence_mean_logprob(torch.nan_to_num(batch.teacher_logp), batch.response_mask)
    batch.weights = rollout_weights(get_algorithm("scope"), batch.correct, student, teacher,
                                    batch.group_index).float()
    return batch


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


@contextlib.contextmanager
def _autocast(device: torch.device) -> Iterator[None]:
    if device.type == "cuda":
        with torch.autocast("cuda", dtype=torch.bfloat16):
            yield
    else:
        yield  # CPU runs float32, like the CPU learner


def _timed(steps: int, device: torch.device, fn: Callable[[], Any]) -> tuple[float, Any]:
    fn()  # warm-up: kernels, allocator, autotuning
    _sync(device)
    t0 = time.perf_counter()
    out = None
    for _ in range(steps):
        out = fn()
    _sync(device)
    return (time.perf_counter() - t0) / steps, out


# ----------------------------------------------------------------------------- sections


def run_learner(model, batch, device: torch.device, steps: int) -> dict[str, Any]:
    from scope_ray.algo import LossInputs, compute_loss, get_algorithm
    from scope_ray.learner.logprobs import token_logprobs

    spec = get_algorithm("scope")
    model.train()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-5, weight_decay=0.01)
    ids, attn = batch.input_ids.to(device), batch.attention_mask.to(device)
    inputs = LossInputs(
        old_logp=batch.old_logp.to(device), mask=batch.response_mask.to(device), correct=batch.correct.to(device),
        group_index=batch.group_index.to(device), weights=batch.weights.to(device),
        rewards=batch.rewards.to(device), teacher_logp=batch.teacher_logp.to(device),
    )

    def step() -> float:
        opt.zero_grad(set_to_none=True)
        with _autocast(device):
            logp = token_logprobs(model, ids, attn)
        loss = compute_loss(spec, logp.float(), inputs, aggregation="sum", denominator=float(batch.num_prompts))
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        return float(loss.detach())

    sec, loss = _timed(steps, device, step)
    tokens = int(attn.sum())
    return {"step_s": sec, "tokens_per_s": tokens / sec, "tokens_per_step": tokens, "loss": loss}


def run_teacher(model, batch, device: torch.device, steps: int) -> dict[str, Any]:
    from scope_ray.learner.logprobs import token_logprobs

    model.eval()
    ids, attn = batch.input_ids.to(device), batch.attention_mask.to(device)

    @torch.no_grad()
    def score() -> torch.Tensor:
        with _autocast(device):
            return token_logprobs(model, ids, attn)

    sec, logp = _timed(steps, device, score)
    used = batch.response_mask.bool().to(device)
    tokens = int(attn.sum())
    return {"step_s": sec, "tokens_per_s": tokens / sec, "finite": bool(torch.isfinite(logp[used]).all())}


def run_deepspeed(model_dir: Path, batch, device: torch.device, steps: int) -> dict[str, Any]:
    from scope_ray.learner import LearnerCore, LearnerOptions
    from scope_ray.learner.core import free_port

    on_gpu = device.type == "cuda"
    opts = LearnerOptions(zero_stage=2, lr=1e-5, dtype="bfloat16" if on_gpu else "float32",
                          micro_batch_tokens=max(4096, batch.seq_len * 4), num_gpus=1.0 if on_gpu else 0.0)
    core = LearnerCore(0, 1, str(model_dir), opts)
    t0 = time.perf_counter()
    core.init_engine("127.0.0.1", free_port())
    init_s = time.perf_counter() - t0
    batch = on_policy(batch, core.compute_logprobs(batch))
    sec, stats = _timed(steps, device, lambda: core.train_step(batch, batch.num_prompts, batch.num_response_tokens))
    tokens = int(batch.attention_mask.sum())
    with contextlib.suppress(Exception):
        torch.distributed.destroy_process_group()
    return {"init_s": init_s, "step_s": sec, "tokens_per_s": tokens / sec, "zero_stage": 2,
            "applied": bool(stats.get("applied", True)), "device": str(core.device)}


def run_vllm(model_dir: Path, device: torch.device, shape: Shape, max_len: int) -> dict[str, Any]:
    from scope_ray.engines.vllm_engine import EngineOptions, create_llm

    on_gpu = device.type == "cuda"
    t0 = time.perf_counter()
    llm = create_llm(EngineOptions(
        model_dir=str(model_dir), max_model_len=max_len, dtype="bfloat16" if on_gpu else "float32",
        gpu_memory_utilization=0.5, enable_weight_sync=False,
    ))
    init_s = time.perf_counter() - t0
    from vllm import SamplingParams

    g = torch.Generator().manual_seed(1)
    prompts = [{"prompt_token_ids": torch.randint(8, 200, (shape.prompt_len,), generator=g).tolist()}
               for _ in range(shape.prompts)]
    params = SamplingParams(n=shape.group, temperature=0.6, max_tokens=shape.response_len, ignore_eos=True, seed=0)
    llm.generate(prompts[:1], SamplingParams(max_tokens=4), use_tqdm=False)  # warm-up
    t0 = time.perf_counter()
    outs = llm.generate(prompts, params, use_tqdm=False)
    sec = time.perf_counter() - t0
    generated = sum(len(c.token_ids) for o in outs for c in o.outputs)
    return {"init_s": init_s, "generate_s": sec, "tokens_per_s": generated / sec, "generated_tokens": generated,
            "sequences": sum(len(o.outputs) for o in outs)}


# ----------------------------------------------------------------------------- driver


def _missing(module: str) -> bool:
    try:
        return importlib.util.find_spec(module) is None
    except (ImportError, ValueError):  # a module blocked in sys.modules counts as missing
        return True


def _section(report: dict[str, Any], name: str, skip: set[str], fn: Callable[[], dict[str, Any]],
             needs: str | None = None) -> None:
    if name in skip:
        report[name] = {"status": "skipped", "reason": "--skip"}
    elif needs and _missing(needs):
        report[name] = {"status": "skipped", "reason": f"{needs} is not importable"}
    else:
        try:
            t0 = time.perf_counter()
            out = fn()
            report[name] = {"status": "ok", "wall_s": round(time.perf_counter() - t0, 3), **out}
        except Exception as exc:  # noqa: BLE001 - reported, the other paths still run
            logger.error("%s failed:\n%s", name, traceback.format_exc())
            report[name] = {"status": "failed", "error": f"{type(exc).__name__}: {exc}"}
    logger.info("%-9s %s", name, json.dumps(report[name]))


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--device", choices=("cuda", "cpu"), default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--tiny", action="store_true", help="the tiny test model and a small batch (CPU tests)")
    p.add_argument("--steps", type=int, default=None, help="timed steps per path (default 5, tiny 1)")
    p.add_argument("--skip", default="", help=f"comma-separated paths to skip: {','.join(SECTIONS)}")
    p.add_argument("--out", type=Path, help="also write the JSON report here")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s", stream=sys.stderr)
    skip = {s for s in args.skip.split(",") if s}
    if unknown := skip - set(SECTIONS):
        p.error(f"--skip: unknown path(s) {sorted(unknown)}; choose from {list(SECTIONS)}")
    if args.device == "cuda" and not torch.cuda.is_available():
        p.error("--device cuda: torch sees no CUDA device (use --device cpu)")

    # stdout carries the JSON report only: vLLM logs to stdout and C extensions print, so
    # everything else goes to stderr (fd 1 itself is pointed there until the end).
    report_stream = os.fdopen(os.dup(1), "w")
    sys.stdout.flush()
    os.dup2(2, 1)
    os.environ.setdefault("VLLM_LOGGING_STREAM", "ext://sys.stderr")

    device = torch.device(args.device)
    steps = args.steps or (1 if args.tiny else 5)
    shape = Shape(2, 2, 16, 16) if args.tiny else Shape(8, 4, 256, 768)
    torch.manual_seed(0)
    from scope_ray.bootstrap.models import init_model, save_model_dir
    from scope_ray.bootstrap.tokenizer import vocab_size

    spec = model_spec(args.tiny)
    report: dict[str, Any] = {
        "device": args.device, "torch": torch.__version__, "cuda": torch.version.cuda,
        "gpu": torch.cuda.get_device_name(0) if args.device == "cuda" else None,
        "model": {"hidden": spec.hidden_size, "layers": spec.num_layers},
        "batch": {"sequences": shape.prompts * shape.group, "prompt_len": shape.prompt_len,
                  "max_response_len": shape.response_len},
    }
    with tempfile.TemporaryDirectory(prefix="scope-gpu-smoke-") as tmp:
        model = init_model(spec, seed=0)
        report["model"]["params_m"] = round(sum(t.numel() for t in model.parameters()) / 1e6, 1)
        model_dir = save_model_dir(model, Path(tmp) / "model")
        model = model.to(device)
        batch = synthetic_batch(shape, vocab_size())
        with torch.no_grad(), _autocast(device):
            from scope_ray.learner.logprobs import token_logprobs

            batch = on_policy(batch, token_logprobs(model.eval(), batch.input_ids.to(device),
                                                    batch.attention_mask.to(device)))
        sections: dict[str, Any] = {}
        _section(sections, "teacher", skip, lambda: run_teacher(model, batch, device, steps))
        _section(sections, "learner", skip, lambda: run_learner(model, batch, device, steps))
        del model
        gc.collect()
        if device.type == "cuda":
            report["learner_peak_mem_gib"] = round(torch.cuda.max_memory_allocated() / 2**30, 2)
            torch.cuda.empty_cache()
        _section(sections, "deepspeed", skip, lambda: run_deepspeed(model_dir, batch, device, steps), needs="deepspeed")
        gc.collect()
        if device.type == "cuda":
            torch.cuda.empty_cache()
        max_len = shape.prompt_len + shape.response_len
        _section(sections, "vllm", skip, lambda: run_vllm(model_dir, device, shape, max_len), needs="vllm")
        report["sections"] = sections
    report["skipped"] = [k for k, v in sections.items() if v["status"] == "skipped"]
    report["failed"] = [k for k, v in sections.items() if v["status"] == "failed"]
    text = json.dumps(report, indent=2)
    if args.out:
        args.out.write_text(text)
    sys.stdout.flush()
    report_stream.write(text + "\n")  # the report is this script's output
    report_stream.flush()
    return 1 if report["failed"] else 0


if __name__ == "__main__":
    sys.exit(main())
