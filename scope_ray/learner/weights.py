"""Full weights out of a (possibly ZeRO-3 partitioned) model: export and HF save.

Names are the HF model's parameter names as ``save_pretrained`` writes them, which is
what vLLM's ``load_weights`` reads. ``named_parameters()`` lists a shared tensor once, so
with tied embeddings only ``model.embed_tokens.weight`` is exported (no ``lm_head.weight``),
exactly like the checkpoint vLLM loaded at start-up; vLLM skips ``lm_head`` for tied
models anyway.

A LoRA student (``learner.lora``) leaves through the same functions as its merged
model under the base model's names (scope_ray/learner/lora.py).

Under ZeRO-3 every rank must call these functions (the gathers are collectives); only
rank 0 keeps the data.
"""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from pathlib import Path

import torch

from scope_ray.learner import lora
from scope_ray.learner.zero3 import gathered

# Files of an HF model dir that are weights or written by save_pretrained itself; all
# other files (tokenizer, chat template, ...) are copied from the source model dir.
_WRITTEN_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth", ".index.json")
_WRITTEN_NAMES = frozenset({"config.json", "generation_config.json"})


def persistent_buffers(module: torch.nn.Module) -> Iterator[tuple[str, torch.Tensor]]:
    """Buffers that ``state_dict`` would save (rotary caches are non-persistent)."""
    for prefix, sub in module.named_modules():
        for name, buf in sub._buffers.items():
            if buf is not None and name not in sub._non_persistent_buffers_set:
                yield (f"{prefix}.{name}" if prefix else name), buf


def export_state(module: torch.nn.Module, zero3: bool, keep: bool) -> dict[str, torch.Tensor] | None:
    """Full CPU copies of every parameter and persistent buffer; None where not ``keep``.

    One parameter gathered at a time: peak extra memory is the largest tensor, not the
    model.
    """
    out: dict[str, torch.Tensor] | None = {} if keep else None
    for name, tensor in iter_state(module, zero3):
        if out is not None:
            out[name] = tensor.to("cpu", copy=True)
    return out


def iter_state(module: torch.nn.Module, zero3: bool) -> Iterator[tuple[str, torch.Tensor]]:
    """(name, full tensor) for every parameter, then every persistent buffer, on the
    module's device; each parameter is gathered only while the caller holds it (ZeRO-3).
    Every rank must run it to the end under ZeRO-3; the tensors are only valid until the
    next item."""
    if lora.is_lora(module):
        yield from lora.merged_parameters(module, zero3)
    else:
        for name, param in module.named_parameters():
            with gathered([param], zero3):
                yield name, param.detach()
    yield from ((name, buf.detach()) for name, buf in persistent_buffers(lora.base_model(module)))


def state_shapes(module: torch.nn.Module) -> list[tuple[str, torch.dtype, tuple[int, ...]]]:
    """What :func:`iter_state` yields, without gathering: (name, dtype, full shape)."""
    if lora.is_lora(module):
        out = lora.merged_shapes(module)
    else:
        out = [(name, p.dtype, tuple(getattr(p, "ds_shape", p.shape))) for name, p in module.named_parameters()]
    return out + [(name, b.dtype, tuple(b.shape)) for name, b in persistent_buffers(lora.base_model(module))]


@torch.no_grad()
def copy_weights_into(module: torch.nn.Module, target: torch.nn.Module, zero3: bool) -> None:
    """Every parameter and persistent buffer of ``module`` (merged, for a LoRA student)
    into the same-named one of ``target`` (the same architecture, plain), in place, on
    the target's device: no CPU copy of the model. Under ZeRO-3 every rank must call it
    (one parameter gathered at a time)."""
    dst = {**dict(target.named_parameters()), **dict(persistent_buffers(target))}
    src_names = {name for name, _, _ in state_shapes(module)}
    if src_names != set(dst):
        raise RuntimeError(f"copy_weights_into: parameter names differ: only in the source "
                           f"{sorted(src_names - set(dst))}, only in the target {sorted(set(dst) - src_names)}")
    for name, tensor in iter_state(module, zero3):
        dst[name].copy_(tensor)


def copy_tokenizer_files(source_dir: str | Path, out_dir: str | Path) -> list[str]:
    """Everything in the source model dir but weights and configs (tokenizer files,
    chat template, ...). Returns the copied names."""
    copied = []
    for path in sorted(Path(source_dir).iterdir()):
        if not path.is_file() or path.name in _WRITTEN_NAMES or path.name.endswith(_WRITTEN_SUFFIXES):
            continue
        shutil.copy2(path, Path(out_dir) / path.name)
        copied.append(path.name)
    return copied


def save_hf_dir(
    module: torch.nn.Module, state: dict[str, torch.Tensor], out_dir: str | Path, source_dir: str | Path
) -> Path:
    """An HF dir (safetensors + config + tokenizer) that transformers and vLLM load."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    # A peft model's own save_pretrained writes the adapter only: the base model writes
    # the (merged) state under its config.
    lora.base_model(module).save_pretrained(out, state_dict=state, safe_serialization=True)
    copy_tokenizer_files(source_dir, out)
    return out
