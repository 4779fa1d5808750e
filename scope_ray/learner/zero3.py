"""Full parameters under ZeRO-3, one small set at a time (no-op for ZeRO-1/2)."""

from __future__ import annotations

import contextlib
from collections.abc import Sequence

import torch


def gathered(params: Sequence[torch.nn.Parameter], zero3: bool):
    """A context in which ``params`` hold their full tensors: under ZeRO-3 a collective
    gather that every rank must enter; otherwise nothing to do."""
    if not zero3:
        return contextlib.nullcontext()
    import deepspeed

    return deepspeed.zero.GatheredParameters(list(params), modifier_rank=None)
