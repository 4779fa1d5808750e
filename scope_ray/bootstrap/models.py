"""Tiny Qwen2-architecture models for the embedded default.

Qwen2 because every engine in the stack serves it unchanged (transformers, vLLM CPU and
CUDA, DeepSpeed), so the tiny models exercise the same code paths as the paper's
Qwen-family models. Head dim 32 is one the vLLM CPU attention kernels support.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch

from scope_ray.bootstrap.tokenizer import EOS, PAD, save_tokenizer, special_token_id, vocab_size


@dataclass(frozen=True)
class TinyModelSpec:
    hidden_size: int = 128
    num_layers: int = 2
    num_heads: int = 4
    num_kv_heads: int = 2
    intermediate_size: int = 384
    max_position_embeddings: int = 512

    def validate(self, name: str = "model") -> None:
        if self.hidden_size % self.num_heads:
            raise ValueError(f"{name}.hidden_size must be divisible by {name}.num_heads")
        if self.num_heads % self.num_kv_heads:
            raise ValueError(f"{name}.num_heads must be divisible by {name}.num_kv_heads")
        if self.hidden_size // self.num_heads not in (32, 64, 128):
            raise ValueError(f"{name}: head dim must be 32, 64 or 128 (vLLM CPU kernels)")


def qwen2_config(spec: TinyModelSpec):
    from transformers import Qwen2Config

    spec.validate()
    return Qwen2Config(
        vocab_size=vocab_size(),
        hidden_size=spec.hidden_size,
        intermediate_size=spec.intermediate_size,
        num_hidden_layers=spec.num_layers,
        num_attention_heads=spec.num_heads,
        num_key_value_heads=spec.num_kv_heads,
        max_position_embeddings=spec.max_position_embeddings,
        rope_theta=10000.0,
        tie_word_embeddings=True,
        pad_token_id=special_token_id(PAD),
        eos_token_id=special_token_id(EOS),
        bos_token_id=None,
        torch_dtype="float32",
    )


def init_model(spec: TinyModelSpec, seed: int):
    from transformers import Qwen2ForCausalLM

    torch.manual_seed(seed)
    return Qwen2ForCausalLM(qwen2_config(spec))


def save_model_dir(model, out_dir: str | Path) -> Path:
    """An HF directory vLLM and transformers load: safetensors weights + tokenizer."""
    from transformers.utils import logging as hf_logging

    out = Path(out_dir)
    # transformers 5 draws a "Writing model shards" bar on stderr for every save: on a
    # user's first run the bootstrap saves two models, and those bars were the only
    # third-party lines on the terminal (log_routing keeps it to the project's own).
    shown = hf_logging.is_progress_bar_enabled()
    hf_logging.disable_progress_bar()
    try:
        model.save_pretrained(out, safe_serialization=True)
    finally:
        if shown:
            hf_logging.enable_progress_bar()
    save_tokenizer(out)
    return out
