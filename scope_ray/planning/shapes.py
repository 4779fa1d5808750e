"""A model's shape, enough to size its memory: from its ``config.json`` when the model
directory is at hand, else from a table of the paper's models (``scope-ray plan`` runs
on a laptop that has only the recipe, not /mnt/models)."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class ModelShape:
    hidden: int
    layers: int
    intermediate: int
    heads: int
    kv_heads: int
    vocab: int
    head_dim: int = 0  # 0: hidden / heads
    tied: bool = False
    qkv_bias: bool = False  # Qwen2 has biases on q, k, v; Qwen3 does not

    @property
    def dim(self) -> int:
        return self.head_dim or self.hidden // self.heads

    @property
    def params(self) -> int:
        h, d = self.hidden, self.dim
        attention = h * self.heads * d * 2 + h * self.kv_heads * d * 2
        if self.qkv_bias:
            attention += (self.heads + 2 * self.kv_heads) * d
        mlp = 3 * h * self.intermediate
        per_layer = attention + mlp + 2 * h
        embeddings = self.vocab * h * (1 if self.tied else 2)
        return embeddings + self.layers * per_layer + h

    def kv_bytes_per_token(self, dtype_bytes: int) -> int:
        return 2 * self.layers * self.kv_heads * self.dim * dtype_bytes

    def layer_working_set_bytes(self, dtype_bytes: int) -> int:
        """Activations one decoder layer keeps per token for its backward (attention
        without a seq x seq matrix, as SDPA / flash attention run it): inputs of the
        norms, projections, attention output and the gated MLP."""
        h, i = self.hidden, self.intermediate
        return dtype_bytes * (10 * h + 2 * self.kv_heads * self.dim + 3 * i)


# The paper's students and teachers (their config.json), keyed by directory name.
KNOWN: dict[str, ModelShape] = {
    "DeepSeek-R1-Distill-Qwen-1.5B": ModelShape(1536, 28, 8960, 12, 2, 151936, qkv_bias=True),
    "Skywork-OR1-7B": ModelShape(3584, 28, 18944, 28, 4, 152064, qkv_bias=True),
    "Qwen3-1.7B-Base": ModelShape(2048, 28, 6144, 16, 8, 151936, head_dim=128, tied=True),
    "Qwen3-8B": ModelShape(4096, 36, 12288, 32, 8, 151936, head_dim=128),
}


def from_config(config: dict) -> ModelShape:
    text = config.get("text_config", config)
    return ModelShape(
        hidden=int(text["hidden_size"]), layers=int(text["num_hidden_layers"]),
        intermediate=int(text["intermediate_size"]), heads=int(text["num_attention_heads"]),
        kv_heads=int(text.get("num_key_value_heads") or text["num_attention_heads"]),
        vocab=int(text["vocab_size"]), head_dim=int(text.get("head_dim") or 0),
        tied=bool(text.get("tie_word_embeddings", config.get("tie_word_embeddings", False))),
        qkv_bias=bool(text.get("attention_bias", text.get("model_type", config.get("model_type")) == "qwen2")),
    )


def model_shape(model_dir: str, role: str) -> tuple[ModelShape, str]:
    """(shape, where it came from); ValueError naming ``role`` when neither source has it."""
    cfg = Path(model_dir) / "config.json"
    if cfg.is_file():
        return from_config(json.loads(cfg.read_text())), str(cfg)
    name = Path(model_dir).name
    if name in KNOWN:
        return KNOWN[name], f"built-in shape of {name}"
    raise ValueError(f"model.{role}: no {cfg} and no built-in shape for {name!r} "
                     f"(known: {', '.join(sorted(KNOWN))}); plan where the model directory is readable")
