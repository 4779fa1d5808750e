"""LoRA students (``learner.lora``): adapters through peft, merged weights everywhere else.

Only the adapters train: the base weights are frozen, so the optimizer (and its ZeRO
partitions) holds the adapters alone, and a DeepSpeed checkpoint stores them without the
base model (``exclude_frozen_parameters``). Everything that leaves the learner as a model
(the rollout workers' weight sync, the HF export, the previous policy kept for
``old_logp=recompute``) is the *merged* model, W + (alpha / rank) B A, under the base
model's own parameter names, so vLLM, transformers and the rest of scope-ray see a plain
model. vLLM's own LoRA serving (adapters applied at decode time) would send less per
sync on a GPU; it is not used: merged weights keep one weight-sync path for every run.

The adapter itself is exported beside the merged model (``hf/adapter/``, peft's format:
``adapter_model.safetensors`` + ``adapter_config.json``), for users who ship adapters.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from scope_ray.learner.zero3 import gathered

# The suffix peft gives the weight it wraps, and the adapter weights' marker.
_BASE = ".base_layer."
_ADAPTER = "default"


@dataclass(frozen=True)
class LoraOptions:
    rank: int = 0  # 0: off (full fine-tuning)
    alpha: float = 32.0  # the update is scaled by alpha / rank
    dropout: float = 0.0
    # Module names to adapt; ("all-linear",) = every linear layer but the output head.
    target_modules: tuple[str, ...] = ("all-linear",)

    @classmethod
    def from_config(cls, lora: Any) -> LoraOptions:
        """From the config tree's ``learner.lora`` (scope_ray.config.LoraConfig)."""
        return cls(lora.rank, lora.alpha, lora.dropout, tuple(lora.target_modules))

    @property
    def enabled(self) -> bool:
        return self.rank > 0

    def problem(self) -> tuple[str, str] | None:
        """What is wrong with these options, as (key under learner.lora, why), or None."""
        if self.rank < 0:
            return "rank", f"must be >= 0 (0 = off), got {self.rank}"
        if not self.enabled:
            return None
        if self.alpha <= 0:
            return "alpha", f"must be > 0, got {self.alpha}"
        if not 0 <= self.dropout < 1:
            return "dropout", f"must be in [0, 1), got {self.dropout}"
        if not self.target_modules or not all(self.target_modules):
            return "target_modules", "must name at least one module (or all-linear)"
        if missing_peft():
            return "rank", "LoRA needs peft, which is not installed: pip install 'scope-ray[lora]'"
        return None


def missing_peft() -> bool:
    import importlib.util

    return importlib.util.find_spec("peft") is None


def wrap(model: torch.nn.Module, options: LoraOptions) -> torch.nn.Module:
    """``model`` with LoRA adapters on ``options.target_modules`` and every other
    parameter frozen (peft's default: B = 0, so the wrapped model computes what the
    base does until the first step)."""
    from peft import LoraConfig, get_peft_model

    targets: str | list[str] = list(options.target_modules)
    if targets == ["all-linear"]:
        targets = "all-linear"  # peft's shorthand, a string, not a module name
    config = LoraConfig(r=options.rank, lora_alpha=options.alpha, lora_dropout=options.dropout,
                        target_modules=targets, bias="none", task_type="CAUSAL_LM")
    return get_peft_model(model, config)


def is_lora(module: torch.nn.Module) -> bool:
    return hasattr(module, "peft_config") and hasattr(module, "get_base_model")


def base_model(module: torch.nn.Module) -> torch.nn.Module:
    """The transformers model (with its adapted layers) inside a peft model; ``module``
    itself otherwise."""
    return module.get_base_model() if is_lora(module) else module


def _adapted_layers(base: torch.nn.Module) -> dict[str, Any]:
    """prefix -> the LoRA layer at that prefix of the base model."""
    from peft.tuners.lora import LoraLayer

    return {name: m for name, m in base.named_modules() if isinstance(m, LoraLayer)}


def _is_adapter_param(name: str) -> bool:
    return ".lora_" in name


def merged_parameters(module: torch.nn.Module, zero3: bool) -> Iterator[tuple[str, torch.Tensor]]:
    """(HF name, merged tensor) for every parameter of the base model, adapters folded
    in; each adapted weight is gathered with its A and B only while the caller holds it
    (ZeRO-3: every rank must run it to the end)."""
    base = base_model(module)
    layers = _adapted_layers(base)
    for name, param in base.named_parameters():
        if _is_adapter_param(name):
            continue
        owner, _, leaf = name.partition(_BASE)
        layer = layers.get(owner) if leaf == "weight" else None
        if layer is None:
            with gathered([param], zero3):
                yield name.replace(_BASE, "."), param.detach()
            continue
        a, b = layer.lora_A[_ADAPTER].weight, layer.lora_B[_ADAPTER].weight
        with gathered([param, a, b], zero3), torch.no_grad():
            delta = layer.get_delta_weight(_ADAPTER).float()
            yield f"{owner}.weight", (param.detach().float() + delta).to(param.dtype)


def merged_shapes(module: torch.nn.Module) -> list[tuple[str, torch.dtype, tuple[int, ...]]]:
    """What :func:`merged_parameters` yields, without gathering."""
    return [(name.replace(_BASE, "."), p.dtype, tuple(getattr(p, "ds_shape", p.shape)))
            for name, p in base_model(module).named_parameters() if not _is_adapter_param(name)]


def adapter_state(module: torch.nn.Module, zero3: bool, keep: bool) -> dict[str, torch.Tensor] | None:
    """The adapter weights under the peft model's own names (CPU copies where ``keep``;
    every rank must call it under ZeRO-3)."""
    out: dict[str, torch.Tensor] | None = {} if keep else None
    for name, param in module.named_parameters():
        if not _is_adapter_param(name):
            continue
        with gathered([param], zero3):
            if out is not None:
                out[name] = param.detach().to("cpu", copy=True)
    return out


def save_adapter(module: torch.nn.Module, state: dict[str, torch.Tensor], out_dir: str | Path,
                 base_dir: str | Path) -> Path:
    """peft's adapter dir (safetensors + config) naming ``base_dir`` as its base model:
    ``PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(base_dir), out_dir)``."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    config = module.peft_config[_ADAPTER]
    previous = config.base_model_name_or_path
    config.base_model_name_or_path = str(base_dir)
    try:
        module.save_pretrained(out, state_dict=state, safe_serialization=True)
    finally:
        config.base_model_name_or_path = previous
    return out


def checkpoint_adapters_only(engine: Any) -> None:
    """Make ``engine.save_checkpoint(..., exclude_frozen_parameters=True)`` leave out
    every frozen weight. DeepSpeed 0.19.8 drops the frozen names ``named_parameters()``
    lists, which names a tied weight once: a tied output head (``lm_head.weight``, the
    largest tensor of a Qwen3 student: 311M parameters, 1.2 GB in fp32) stayed in every
    checkpoint. Its load is not strict (``LearnerCore.load_checkpoint``), and the base
    weights come from the model dir at start."""
    original = engine.module_state_dict

    def module_state_dict(*args: Any, exclude_frozen_parameters: bool = False, **kwargs: Any) -> Any:
        sd = original(*args, exclude_frozen_parameters=exclude_frozen_parameters, **kwargs)
        if exclude_frozen_parameters and sd is not None:
            for name, param in engine.module.named_parameters(remove_duplicate=False):
                if not param.requires_grad:
                    sd.pop(name, None)
        return sd

    engine.module_state_dict = module_state_dict


def trainable_parameters(module: torch.nn.Module) -> list[torch.nn.Parameter]:
    return [p for p in module.parameters() if p.requires_grad]


def parameter_counts(module: torch.nn.Module) -> dict[str, int]:
    """Trainable and total parameter counts (full sizes, also under ZeRO-3)."""
    def numel(p: torch.nn.Parameter) -> int:
        return int(getattr(p, "ds_numel", p.numel()))

    params = list(module.parameters())
    return {"trainable": sum(numel(p) for p in params if p.requires_grad), "total": sum(numel(p) for p in params)}
