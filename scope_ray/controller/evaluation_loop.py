"""Held-out evaluation through the rollout workers (they already hold the latest weights)."""

from __future__ import annotations

import logging
from collections import defaultdict
from collections.abc import Sequence
from typing import Any

import ray

from actors.rollout import start_collect
from scope_ray.controller.stream import PromptItem, RemoteCallError, Verifier
from scope_ray.errors import first_line
from scope_ray.evaluation import flat_metrics
from scope_ray.types import GenerationRequest

logger = logging.getLogger(__name__)


def evaluate_with_workers(
    workers: Sequence[Any],
    items: Sequence[PromptItem],
    verify: Verifier,
    *,
    k: int,
    sampling: dict[str, Any],
    seed: int,
    prompts_per_request: int,
    timeout_s: float,
) -> dict[str, float]:
    """Sample ``k`` responses per held-out prompt; return avg@k / pass@k overall and per source.

    The same seeds every time, so start-vs-end numbers differ only by the weights.
    """
    refs = []
    chunks = [items[i : i + prompts_per_request] for i in range(0, len(items), prompts_per_request)]
    for j, chunk in enumerate(chunks):
        reqs = [GenerationRequest(uid=it.uid, prompt_ids=it.prompt_ids, n=k, seed=seed + it.group_index) for it in chunk]
        refs.append((j % len(workers), chunk, start_collect(workers[j % len(workers)], reqs, sampling)))
    counts: dict[str, list[tuple[int, int]]] = defaultdict(list)
    for w, chunk, ref in refs:
        try:
            results = ray.get(ref, timeout=timeout_s)
        except Exception as exc:  # noqa: BLE001 - named and re-raised
            raise RemoteCallError(f"rollout worker {w}: generate() for evaluation failed: {first_line(exc)}") from exc
        texts = [r.text for rollouts in results for r in rollouts]
        truths = [it.ground_truth for it, rollouts in zip(chunk, results) for _ in rollouts]
        verdicts = verify(texts, truths)
        pos = 0
        for it, rollouts in zip(chunk, results):
            c = sum(int(v.reward > 0.5) for v in verdicts[pos : pos + len(rollouts)])
            counts[it.data_source].append((len(rollouts), c))
            pos += len(rollouts)
    return flat_metrics(counts, k)
