"""Load DeepSpeed checkpoints without unpickling arbitrary objects.

DeepSpeed 0.19.8 reads every checkpoint file through its checkpoint engine, whose
``load`` calls ``torch.load(path, weights_only=False)``: a crafted ``*.pt`` file in a
checkpoint directory would run code in the learner. :func:`weights_only_loads` swaps
that ``load`` for ``torch.load(weights_only=True)`` with the few plain DeepSpeed classes
its optimizer state holds allow-listed, for the duration of one ``load_checkpoint``.
A file that needs anything else is refused with an error naming the global.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any

import torch


def _deepspeed_safe_globals() -> list[Any]:
    """Classes found in ZeRO-1/2/3 optimizer states: data holders with no side effects."""
    from deepspeed.runtime.fp16.loss_scaler import DynamicLossScaler, LossScaler
    from deepspeed.runtime.zero.config import ZeroStageEnum
    from deepspeed.utils.tensor_fragment import fragment_address

    return [LossScaler, DynamicLossScaler, ZeroStageEnum, fragment_address]


def safe_torch_load(path: str, map_location: Any = None) -> Any:
    """``torch.load(weights_only=True)`` that accepts DeepSpeed's own state classes."""
    with torch.serialization.safe_globals(_deepspeed_safe_globals()):
        return torch.load(path, map_location=map_location, weights_only=True)


@contextlib.contextmanager
def weights_only_loads(engine: Any) -> Iterator[None]:
    """Inside the block, ``engine``'s checkpoint engine loads with ``weights_only=True``."""
    ckpt_engine = engine.checkpoint_engine
    saved = ckpt_engine.__dict__.get("load")
    ckpt_engine.load = lambda path, map_location=None: safe_torch_load(path, map_location)
    try:
        yield
    finally:
        if saved is None:
            del ckpt_engine.load
        else:
            ckpt_engine.load = saved
