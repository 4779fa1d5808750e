"""The embedded byte-level tokenizer shared by the tiny teacher and student.

One token per byte (256) plus a few special tokens, and no merges: every character of
the arithmetic task is one token, and any text still encodes. It is built *as* a
``Qwen2Tokenizer`` on purpose: transformers 5 loads any ``qwen2`` model directory through
``Qwen2Tokenizer``, which rebuilds a byte-level BPE from the saved vocab and merges and
ignores a custom ``tokenizer.json`` pipeline (a plain char-level tokenizer loses its
spaces that way). Building it with that class makes the saved files round-trip exactly
in transformers, vLLM and every tool that goes through ``AutoTokenizer``.
"""

from __future__ import annotations

from pathlib import Path

from tokenizers import pre_tokenizers

PAD, EOS = "<|pad|>", "<|endoftext|>"
ROLE_TOKENS = ("<|system|>", "<|user|>", "<|assistant|>")
SPECIAL_TOKENS = (PAD, EOS, *ROLE_TOKENS)

# Renders [{"role", "content"}...] as <|role|>content ... <|assistant|>; an assistant turn
# ends with EOS. Saved with the tokenizer so every HF-compatible tool renders the same.
CHAT_TEMPLATE = (
    "{% for m in messages %}<|{{ m['role'] }}|>{{ m['content'] }}"
    "{% if m['role'] == 'assistant' %}<|endoftext|>{% endif %}{% endfor %}"
    "{% if add_generation_prompt %}<|assistant|>{% endif %}"
)


def _vocab() -> dict[str, int]:
    # Byte-level alphabet sorted by code point so ids are stable across tokenizers versions.
    alphabet = sorted(pre_tokenizers.ByteLevel.alphabet())
    return {tok: i for i, tok in enumerate([*SPECIAL_TOKENS, *alphabet])}


def vocab_size() -> int:
    return len(_vocab())


def special_token_id(token: str) -> int:
    return _vocab()[token]


def build_tokenizer():
    from transformers import Qwen2Tokenizer

    tok = Qwen2Tokenizer(
        vocab=_vocab(),
        merges=[],
        unk_token=EOS,
        eos_token=EOS,
        pad_token=PAD,
        additional_special_tokens=list(ROLE_TOKENS),
        model_max_length=4096,
    )
    tok.chat_template = CHAT_TEMPLATE
    return tok


def save_tokenizer(out_dir: str | Path) -> Path:
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    build_tokenizer().save_pretrained(out)
    return out
