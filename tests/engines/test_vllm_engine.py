"""scope_ray/engines/vllm_engine.py: how every vLLM engine gets its memory.

A CPU engine's KV cache is an explicit size computed from what it must hold, so it
starts the same whatever the NUMA node reports and whatever the process's RSS; vLLM-CPU
applies a memory *fraction* to the node's memory minus the RSS, which failed on a
23.5 GiB machine whose node 0 reported 8.6 GiB.
"""

from __future__ import annotations

import ast
import json
import math
from pathlib import Path

import pytest

from scope_ray.engines import vllm_engine as ve

ROOT = Path(__file__).resolve().parents[2]
GIB = 1 << 30


def _model_dir(tmp_path: Path, **cfg) -> Path:
    base = {"num_hidden_layers": 2, "num_attention_heads": 4, "num_key_value_heads": 2, "hidden_size": 128}
    base.update(cfg)
    (tmp_path / "config.json").write_text(json.dumps(base))
    return tmp_path


def _meminfo(root: Path, node: int, total: int, free: int) -> Path:
    d = root / f"node{node}"
    d.mkdir(parents=True)
    kb = lambda b: b // 1024  # noqa: E731
    (d / "meminfo").write_text(
        f"Node {node} MemTotal:       {kb(total)} kB\n"
        f"Node {node} MemFree:        {kb(free)} kB\n"
        f"Node {node} Active(file):   0 kB\nNode {node} Inactive(file): 0 kB\n"
        f"Node {node} SReclaimable:   0 kB\n")
    return root


def test_kv_bytes_per_token_from_the_config(tmp_path) -> None:
    d = _model_dir(tmp_path)
    # 2 layers x (K, V) x 2 KV heads x head dim 32 x 4 bytes
    assert ve.kv_bytes_per_token(d, "float32") == 2 * 2 * 2 * 32 * 4 == 1024
    assert ve.kv_bytes_per_token(d, "bfloat16") == 512
    assert ve.kv_bytes_per_token(d, "auto") == 1024  # upper bound: may stay float32
    (tmp_path / "config.json").write_text(json.dumps(
        {"text_config": {"num_hidden_layers": 28, "num_attention_heads": 16, "num_key_value_heads": 8,
                         "hidden_size": 2048, "head_dim": 128}}))
    assert ve.kv_bytes_per_token(d, "bfloat16") == 2 * 28 * 8 * 128 * 2  # Qwen3-1.7B: 112 KiB


def test_cpu_kv_size_is_what_the_engine_holds(tmp_path) -> None:
    d = str(_model_dir(tmp_path))
    opts = ve.EngineOptions(model_dir=d, max_model_len=224, max_num_seqs=4096, dtype="float32")
    # 4096 sequences x 256 tokens (224 rounded up to whole 256-token blocks) x 1 KiB + 10%
    assert ve.cpu_kv_cache_bytes(opts) == math.ceil(4096 * 256 * 1024 * 1.1)
    small = ve.EngineOptions(model_dir=d, max_model_len=224, max_num_seqs=8, dtype="float32")
    assert ve.cpu_kv_cache_bytes(small) == ve.KV_FLOOR_BYTES  # 2.2 MiB needed: the floor
    by_tokens = ve.EngineOptions(model_dir=d, max_model_len=224, kv_cache_tokens=200_000, dtype="float32")
    assert ve.cpu_kv_cache_bytes(by_tokens) == math.ceil(200_000 * 1024 * 1.1)


def test_sizing_ignores_rss_and_the_numa_layout(tmp_path, monkeypatch) -> None:
    """Node 0 = a third of a 24 GiB machine, the process 1 GiB larger than before: the
    CPU kwargs are the same explicit size, with no memory fraction for vLLM to apply."""
    d = str(_model_dir(tmp_path))
    opts = ve.EngineOptions(model_dir=d, max_model_len=224, max_num_seqs=64, dtype="float32")
    root = _meminfo(tmp_path / "nodes", 0, total=8 * GIB, free=7 * GIB)
    real = ve.available_memory_for_engine
    monkeypatch.setattr(ve, "_node_of_first_cpu", lambda: 0)
    monkeypatch.setattr(ve, "available_memory_for_engine", lambda: real(root))
    before = ve.memory_kwargs(opts, on_gpu=False)
    ballast = bytearray(GIB)
    ballast[:: 1 << 12] = b"x" * len(ballast[:: 1 << 12])  # touch the pages: real RSS
    after = ve.memory_kwargs(opts, on_gpu=False)
    del ballast
    assert before == after
    assert after["kv_cache_memory_bytes"] == ve.cpu_kv_cache_bytes(opts)
    assert "gpu_memory_utilization" not in after
    # No chunked prefill: a seeded prompt is never split across steps (vLLM-CPU crash).
    assert after["enable_chunked_prefill"] is False
    assert after["max_num_batched_tokens"] >= max(224, 64)
    # The same options on a GPU: the device fraction, no explicit size.
    assert ve.memory_kwargs(opts, on_gpu=True) == {"gpu_memory_utilization": 0.85, "max_num_seqs": 64}


def test_a_node_too_small_is_one_clear_line(tmp_path, monkeypatch) -> None:
    d = str(_model_dir(tmp_path))
    monkeypatch.setattr(ve, "_node_of_first_cpu", lambda: 1)
    root = _meminfo(tmp_path / "nodes", 1, total=GIB, free=128 << 20)
    assert ve.available_memory_for_engine(root) == 128 << 20
    opts = ve.EngineOptions(model_dir=d, max_model_len=512, max_num_seqs=1024, dtype="float32")
    with pytest.raises(ve.EngineMemoryError) as err:
        ve.check_fits(ve.cpu_kv_cache_bytes(opts), ve.available_memory_for_engine(root), opts)
    msg = str(err.value)
    assert "\n" not in msg and "0.55 GiB" in msg and "0.12 GiB" in msg and "rollout.max_num_seqs" in msg


def test_every_engine_is_built_by_create_llm() -> None:
    """Rollout workers, the vLLM teacher, eval, bootstrap and benches all go through
    create_llm: nothing else constructs vllm.LLM or passes a memory fraction to it."""
    offenders = []
    for path in [*ROOT.glob("scope_ray/**/*.py"), *ROOT.glob("actors/*.py"), *ROOT.glob("bench/*.py"),
                 *ROOT.glob("launch/*.py")]:
        if path.name == "vllm_engine.py":
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Call):
                name = getattr(node.func, "id", None) or getattr(node.func, "attr", None)
                if name in ("LLM", "LLMEngine") or any(k.arg == "kv_cache_memory_bytes" for k in node.keywords):
                    offenders.append(f"{path.relative_to(ROOT)}:{node.lineno}")
    assert not offenders, offenders
    assert "cpu_memory_fraction" not in "".join(p.read_text() for p in ROOT.glob("**/*.py")
                                                if ".venv" not in p.parts and p.name != Path(__file__).name)


def _start_engine_with_ballast(model_dir: str) -> list[int]:
    # A process already holding 2 GiB (a test session, a driver with data loaded): the
    # fraction-based sizing failed here once RSS exceeded the fraction.
    ballast = bytearray(2 * GIB)
    ballast[:: 1 << 12] = b"x" * len(ballast[:: 1 << 12])  # touch the pages: real RSS
    from vllm import SamplingParams

    llm = ve.create_llm(ve.EngineOptions(model_dir=model_dir, max_model_len=256, dtype="float32",
                                         enable_weight_sync=False, max_num_seqs=32))
    out = llm.generate([{"prompt_token_ids": [5, 6, 7]}], SamplingParams(max_tokens=4, temperature=0.0),
                       use_tqdm=False)
    del ballast
    return list(out[0].outputs[0].token_ids)


def test_real_engine_starts_beside_a_large_rss(tiny_model_dir) -> None:
    from scope_ray.engines.vllm_engine import run_isolated

    tokens = run_isolated(_start_engine_with_ballast, str(tiny_model_dir))
    assert len(tokens) == 4
