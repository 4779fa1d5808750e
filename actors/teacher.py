"""TeacherServer: the Ray actor around :class:`~scope_ray.engines.teacher_scoring.TeacherScoring`.

A thin shell: the scorers ("hf", "vllm") and the batcher that packs many callers'
sequences into forward batches live in ``scope_ray/engines/teacher_scoring.py``. The actor
is async (up to 1024 calls at once), so the controller's streams of several steps call
``score`` together and their sequences share batches.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import ray

from scope_ray.engines.teacher_scoring import HFScorer, TeacherScoring, TeacherStats, VLLMScorer
from scope_ray.log_routing import capture_process_output
from scope_ray.types import ScoreRequest

__all__ = ["HFScorer", "TeacherServer", "TeacherStats", "VLLMScorer"]


@ray.remote(max_concurrency=1024)
class TeacherServer:
    def __init__(self, model_dir: str, **options: Any) -> None:
        """``options``: those of :class:`TeacherScoring` (backend, max_batch_tokens,
        max_wait_ms, dtype, device, seed, max_model_len, gpu_memory_utilization,
        temperature)."""
        capture_process_output()  # a local run's train.log, not the terminal (log_routing)
        self.core = TeacherScoring(model_dir, **options)

    async def ready(self) -> bool:
        return True

    async def stats(self) -> dict:
        return self.core.stats()

    async def score(self, requests: list[ScoreRequest]) -> list[np.ndarray]:
        """log pi_T of each response token, float32, one array per request, in order."""
        return await self.core.score(requests)
