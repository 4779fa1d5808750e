"""Prompt datasets for SCOPE training: loading, validation, rendering, ordering.

No Ray here: the controller owns these objects and ships rendered token ids to
actors. transformers is imported only where a tokenizer is loaded from disk.
"""

from scope_ray.data.dataset import OnBadRow, PromptDataset, load_prompts
from scope_ray.data.prompts import (
    DEFAULT_INSTRUCTION_SUFFIX,
    PromptRenderer,
    PromptRenderError,
    RenderedPrompt,
    apply_instruction_suffix,
    render_prompt,
)
from scope_ray.data.rows import DatasetError, PromptRecord, RowRef
from scope_ray.data.sampler import PromptSampler
from scope_ray.data.tokenizer_check import check_same_tokenizer

__all__ = [
    "DEFAULT_INSTRUCTION_SUFFIX",
    "DatasetError",
    "OnBadRow",
    "PromptDataset",
    "PromptRecord",
    "PromptRenderError",
    "PromptRenderer",
    "PromptSampler",
    "RenderedPrompt",
    "RowRef",
    "apply_instruction_suffix",
    "check_same_tokenizer",
    "load_prompts",
    "render_prompt",
]
