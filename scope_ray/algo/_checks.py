"""Argument checks shared by the algorithm functions.

Every check raises ``ValueError`` naming the offending argument, so a caller (or a user
reading a traceback from a Ray actor) sees which input was wrong, not an index error deep
inside a scatter.
"""

from __future__ import annotations

import torch


def check_1d(name: str, t: torch.Tensor, n: int | None = None) -> None:
    if not isinstance(t, torch.Tensor):
        raise ValueError(f"{name} must be a torch.Tensor, got {type(t).__name__}")
    if t.dim() != 1:
        raise ValueError(f"{name} must be 1-D [N], got shape {tuple(t.shape)}")
    if n is not None and t.shape[0] != n:
        raise ValueError(f"{name} has {t.shape[0]} entries, expected {n}")


def check_2d(name: str, t: torch.Tensor, shape: tuple[int, int] | None = None) -> None:
    if not isinstance(t, torch.Tensor):
        raise ValueError(f"{name} must be a torch.Tensor, got {type(t).__name__}")
    if t.dim() != 2:
        raise ValueError(f"{name} must be 2-D [N, T], got shape {tuple(t.shape)}")
    if shape is not None and tuple(t.shape) != tuple(shape):
        raise ValueError(f"{name} has shape {tuple(t.shape)}, expected {tuple(shape)}")


def check_finite_where(name: str, t: torch.Tensor, where: torch.Tensor) -> None:
    """Non-finite values are only an error where the value is actually used."""
    bad = ~torch.isfinite(t) & where
    if bool(bad.any()):
        idx = bad.nonzero()[0].tolist()
        raise ValueError(f"{name} has a non-finite value at index {idx} where it is used")


def check_tau(tau: float) -> None:
    if not (isinstance(tau, (int, float)) and tau > 0 and tau == tau and tau != float("inf")):
        raise ValueError(f"tau must be a finite number > 0, got {tau!r}")


def check_bool(name: str, t: torch.Tensor) -> None:
    if t.dtype != torch.bool:
        raise ValueError(f"{name} must be a bool tensor, got dtype {t.dtype}")


def check_group_index(group_index: torch.Tensor, n: int) -> None:
    check_1d("group_index", group_index, n)
    if group_index.dtype.is_floating_point or group_index.dtype == torch.bool:
        raise ValueError(f"group_index must be an integer tensor, got dtype {group_index.dtype}")
