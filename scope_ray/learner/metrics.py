"""Per-rank step statistics and their merge into one metrics dict for the step.

Ranks report sums and counts, never means, so the merged means weigh every token of the
global batch equally whatever the shard sizes.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any

import torch


@dataclass
class RankStepStats:
    loss: float = 0.0  # this rank's share of the global loss (shares sum to it)
    tokens: int = 0  # response tokens
    logp_gap_sum: float = 0.0  # sum |logp_learner - logp_rollout| over response tokens
    rho_sum: float = 0.0
    rho_max: float = 0.0
    micro_batches: int = 0
    idle_micro_batches: int = 0  # zero-loss passes that keep ranks in lockstep
    # Token slots the forward passes ran (rows x widest row per micro-batch) and how many
    # of them were real (prompt + response) tokens: the rest is padding.
    slot_tokens: int = 0
    real_tokens: int = 0
    nonfinite: bool = False
    grad_norm: float = float("nan")
    lr: float = float("nan")
    applied: bool = False
    time_s: float = 0.0

    def add_micro_batch(
        self, loss: torch.Tensor, logp: torch.Tensor, old_logp: torch.Tensor, used: torch.Tensor
    ) -> None:
        with torch.no_grad():
            diff = (logp.detach() - old_logp)[used].double()
            self.loss += float(loss.detach())
            self.tokens += int(used.sum())
            self.logp_gap_sum += float(diff.abs().sum())
            if diff.numel():
                rho = torch.exp(diff)
                self.rho_sum += float(rho.sum())
                self.rho_max = max(self.rho_max, float(rho.max()))

    def add_padding(self, rows: int, width: int, real: int) -> None:
        self.slot_tokens += rows * width
        self.real_tokens += real

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def merge_step_metrics(per_rank: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """Rank dicts (rank 0 first) -> the step's metrics.

    ``skipped`` is True when the optimizer did not apply the update on any rank (a
    non-finite loss or gradient norm); ``loss`` is then not meaningful.
    """
    if not per_rank:
        raise ValueError("no rank metrics to merge")
    tokens = sum(int(r["tokens"]) for r in per_rank)
    first = per_rank[0]
    skipped = any(not r["applied"] or r["nonfinite"] for r in per_rank)
    return {
        "loss": float(sum(r["loss"] for r in per_rank)),
        "grad_norm": float(first["grad_norm"]),
        "lr": float(first["lr"]),
        "tokens": tokens,
        "logp_gap": sum(r["logp_gap_sum"] for r in per_rank) / tokens if tokens else math.nan,
        "rho_mean": sum(r["rho_sum"] for r in per_rank) / tokens if tokens else math.nan,
        "rho_max": max(float(r["rho_max"]) for r in per_rank),
        "micro_batches": sum(int(r["micro_batches"]) for r in per_rank),
        "idle_micro_batches": sum(int(r["idle_micro_batches"]) for r in per_rank),
        "padded_fraction": padded_fraction(per_rank),
        "skipped": skipped,
        "time_s": max(float(r["time_s"]) for r in per_rank),
    }


def padded_fraction(per_rank: Sequence[dict[str, Any]]) -> float:
    """The share of the step's forward-pass token slots that were padding."""
    slots = sum(int(r.get("slot_tokens", 0)) for r in per_rank)
    real = sum(int(r.get("real_tokens", 0)) for r in per_rank)
    return 1.0 - real / slots if slots else math.nan
