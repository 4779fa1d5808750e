"""Teacher scoring without Ray: the two scorers and the batcher that feeds them.

``TeacherScoring.score(requests)`` returns log pi_T(a_t | prompt, a_<t) for every response
token. Many callers (the controller's streams, one per step) call at once; their
sequences go into one asyncio queue, and a single batcher task

1. waits for the first sequence, then keeps collecting until the queued real tokens
   reach ``max_batch_tokens`` or ``max_wait_ms`` has passed since that first one;
2. packs what it collected with :func:`scope_ray.learner.batch.pack_by_padded_tokens`
   (sorted by length, ``rows x longest <= max_batch_tokens``);
3. runs each batch's forward in a dedicated worker thread, so the event loop keeps
   accepting new calls while the model computes, and resolves each caller's future.

Backends: ``"hf"`` (transformers, the learner's own :func:`~scope_ray.learner.logprobs.token_logprobs`,
so scores equal an unbatched forward pass) and ``"vllm"`` (``prompt_logprobs=0``, one
dummy output token, no detokenisation; vLLM schedules the batch itself). Both tested on CPU.
The Ray actor around it is :class:`actors.teacher.TeacherServer`.
"""

from __future__ import annotations

import asyncio
import logging
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass

import numpy as np
import torch

from scope_ray.learner.batch import pack_by_padded_tokens, padded_tokens
from scope_ray.types import ScoreRequest, TeacherScore, TeacherTopK

logger = logging.getLogger(__name__)


@dataclass
class TeacherStats:
    requests: int = 0  # score() calls
    sequences: int = 0
    real_tokens: int = 0
    padded_tokens: int = 0  # rows x longest, summed over batches (vLLM itself packs unpadded)
    max_batch_padded_tokens: int = 0
    forward_s: float = 0.0
    batches: int = 0


@dataclass
class _Item:
    request: ScoreRequest
    future: asyncio.Future


def _resolve_device(device: str) -> torch.device:
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)


class HFScorer:
    """Exact scoring with transformers on right-padded batches."""

    def __init__(self, model_dir: str, dtype: str, device: str, temperature: float = 1.0) -> None:
        from transformers import AutoModelForCausalLM

        self.temperature = temperature
        self.device = _resolve_device(device)
        self.model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=getattr(torch, dtype)).to(self.device).eval()
        pad = self.model.config.pad_token_id
        self.pad_id = 0 if pad is None else int(pad)

    def __call__(self, batch: list[ScoreRequest]) -> list[np.ndarray | TeacherScore]:
        from scope_ray.learner.logprobs import token_logprobs, token_topk

        seqs = [r.prompt_ids + r.response_ids for r in batch]
        longest = max(len(s) for s in seqs)
        ids = torch.full((len(seqs), longest), self.pad_id, dtype=torch.long)
        mask = torch.zeros((len(seqs), longest), dtype=torch.long)
        for row, s in enumerate(seqs):
            ids[row, : len(s)] = torch.tensor(s)
            mask[row, : len(s)] = 1
        ids, mask = ids.to(self.device), mask.to(self.device)
        k = max(r.topk for r in batch)
        with torch.inference_mode():
            top = None
            if k:  # one forward pass gives the top k and the sampled tokens' log-probs
                *top, logp = token_topk(self.model, ids, mask, k, self.temperature, with_sampled=True)
            else:
                logp = token_logprobs(self.model, ids, mask, self.temperature)
            logp = logp.float().cpu()
        out: list[np.ndarray | TeacherScore] = []
        for row, r in enumerate(batch):
            span = slice(len(r.prompt_ids), r.num_tokens)
            sampled = logp[row, span].numpy().copy()
            if not r.topk:
                out.append(sampled)
                continue
            out.append(TeacherScore(sampled, TeacherTopK(
                ids=top[0][row, span, : r.topk].cpu().numpy().astype(np.int32),
                logp=top[1][row, span, : r.topk].cpu().numpy().astype(np.float32))))
        return out


class VLLMScorer:
    """vLLM prompt log-probs. They are raw (untempered) and skip the prefix cache
    (vLLM turns cache reads off for prompt_logprobs requests), so G rollouts of one
    prompt do not share the prompt's prefill here."""

    def __init__(self, model_dir: str, dtype: str, seed: int, max_model_len: int, gpu_memory_utilization: float,
                 max_batch_tokens: int) -> None:
        from vllm import SamplingParams

        from scope_ray.engines.vllm_engine import EngineOptions, create_llm

        opts = EngineOptions(
            # +1: vLLM refuses a prompt that fills the whole model length when it is also
            # asked for one output token, and a full-length rollout is prompt + response.
            model_dir=model_dir, seed=seed, max_model_len=max_model_len + 1, dtype=dtype,
            gpu_memory_utilization=gpu_memory_utilization, enable_weight_sync=False,
            # A batch holds at most max_batch_tokens tokens (the server packs by tokens).
            kv_cache_tokens=max_batch_tokens + max_model_len + 1,
        )
        self.llm = create_llm(opts)
        self.params = SamplingParams(max_tokens=1, prompt_logprobs=0, detokenize=False)

    def __call__(self, batch: list[ScoreRequest]) -> list[np.ndarray | TeacherScore]:
        from vllm.inputs import TokensPrompt

        seqs = [r.prompt_ids + r.response_ids for r in batch]
        params = [self.params if not r.topk else self.params.clone() for r in batch]
        for p, r in zip(params, batch):
            if r.topk:
                p.prompt_logprobs = r.topk  # the k most likely, plus the actual token
        outs = self.llm.generate([TokensPrompt(prompt_token_ids=s) for s in seqs], params, use_tqdm=False)
        result: list[np.ndarray | TeacherScore] = []
        for r, s, out in zip(batch, seqs, outs, strict=True):
            plp = out.prompt_logprobs  # [None, {token: Logprob}, ...], one per prompt position
            positions = range(len(r.prompt_ids), len(s))
            sampled = np.array([plp[p][s[p]].logprob for p in positions], dtype=np.float32)
            if not r.topk:
                result.append(sampled)
                continue
            ranked = [sorted(((lp.rank, tok, lp.logprob) for tok, lp in plp[p].items()))[: r.topk] for p in positions]
            result.append(TeacherScore(sampled, TeacherTopK(
                ids=np.array([[tok for _, tok, _ in row] for row in ranked], dtype=np.int32).reshape(-1, r.topk),
                logp=np.array([[lp for _, _, lp in row] for row in ranked], dtype=np.float32).reshape(-1, r.topk))))
        return result


class TeacherScoring:
    """A scorer on its own thread and the batcher in front of it (module docstring).
    Build it in the process that serves it; call :meth:`score` from one event loop."""

    def __init__(
        self,
        model_dir: str,
        backend: str = "hf",
        max_batch_tokens: int = 16384,
        max_wait_ms: float = 5.0,
        dtype: str = "float32",
        device: str = "auto",
        seed: int = 0,
        max_model_len: int = 4096,
        gpu_memory_utilization: float = 0.85,
        temperature: float = 1.0,
    ) -> None:
        """``device`` is for "hf"; ``seed``, ``max_model_len`` (the longest prompt +
        response to score), ``gpu_memory_utilization`` for "vllm" (its engine options; on
        GPU only, a CPU engine's KV cache is sized from ``max_batch_tokens``).
        ``temperature``: score under softmax(logits / temperature) ("hf" only; the
        "vllm" backend's prompt log-probs are always raw)."""
        if backend not in ("hf", "vllm"):
            raise ValueError(f"unknown teacher backend {backend!r} (expected 'hf' or 'vllm')")
        if not temperature > 0:
            raise ValueError(f"temperature must be > 0, got {temperature!r}")
        if backend == "vllm" and temperature != 1.0:
            raise ValueError(f"the 'vllm' teacher backend scores raw log-probs only; got temperature "
                             f"{temperature} (use backend 'hf')")
        self.backend = backend
        self.max_batch_tokens = max_batch_tokens
        self.max_wait_s = max_wait_ms / 1000.0
        # One thread owns the model: the forward never blocks the event loop, and vLLM's
        # in-process engine is always driven from the thread that built it.
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="teacher-forward")
        if backend == "hf":
            make = lambda: HFScorer(model_dir, dtype, device, temperature)  # noqa: E731
        else:
            make = lambda: VLLMScorer(model_dir, dtype, seed, max_model_len, gpu_memory_utilization,  # noqa: E731
                                      max_batch_tokens)
        t0 = time.perf_counter()
        self._scorer = self._executor.submit(make).result()
        logger.info("teacher (%s) ready in %.1fs: %s", backend, time.perf_counter() - t0, model_dir)
        self._stats = TeacherStats()
        self._queue: asyncio.Queue[_Item] | None = None
        self._batcher: asyncio.Task | None = None

    def stats(self) -> dict:
        return asdict(self._stats)

    async def score(self, requests: list[ScoreRequest]) -> list[np.ndarray | TeacherScore]:
        """log pi_T of each response token, float32, one array per request, in order (a
        TeacherScore with the top-k tokens too for a request with ``topk > 0``)."""
        if any(not r.prompt_ids for r in requests):
            raise ValueError("ScoreRequest.prompt_ids must be non-empty (the first token has no log-prob)")
        loop = asyncio.get_running_loop()
        self._ensure_batcher()
        futures = []
        for r in requests:
            fut = loop.create_future()
            if r.response_ids:
                self._queue.put_nowait(_Item(r, fut))
            elif r.topk:
                empty = np.zeros((0, r.topk), dtype=np.float32)
                fut.set_result(TeacherScore(np.zeros(0, dtype=np.float32), TeacherTopK(empty.astype(np.int32), empty)))
            else:
                fut.set_result(np.zeros(0, dtype=np.float32))
            futures.append(fut)
        self._stats.requests += 1
        return list(await asyncio.gather(*futures))

    def _ensure_batcher(self) -> None:
        # Created on first use: the queue and the task belong to Ray's actor event loop,
        # which is not running yet in __init__.
        if self._queue is None:
            self._queue = asyncio.Queue()
        if self._batcher is None or self._batcher.done():
            self._batcher = asyncio.get_running_loop().create_task(self._batch_loop())

    async def _collect(self) -> list[_Item]:
        loop = asyncio.get_running_loop()
        items = [await self._queue.get()]
        tokens = items[0].request.num_tokens
        deadline = loop.time() + self.max_wait_s
        while tokens < self.max_batch_tokens:
            if self._queue.empty():
                remaining = deadline - loop.time()
                if remaining <= 0:
                    break
                try:
                    item = await asyncio.wait_for(self._queue.get(), remaining)
                except asyncio.TimeoutError:
                    break
            else:
                item = self._queue.get_nowait()
            items.append(item)
            tokens += item.request.num_tokens
        return items

    async def _batch_loop(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            items = await self._collect()
            lengths = [it.request.num_tokens for it in items]
            for idx in pack_by_padded_tokens(lengths, self.max_batch_tokens):
                batch = [items[i] for i in idx]
                t0 = time.perf_counter()
                try:
                    scores = await loop.run_in_executor(self._executor, self._scorer, [it.request for it in batch])
                except Exception as exc:  # noqa: BLE001 - handed to the callers, loop goes on
                    logger.exception("teacher forward failed on a batch of %d", len(batch))
                    for it in batch:
                        if not it.future.done():
                            it.future.set_exception(exc)
                    continue
                self._record(batch, [lengths[i] for i in idx], time.perf_counter() - t0)
                for it, s in zip(batch, scores, strict=True):
                    if not it.future.done():  # a cancelled caller is simply skipped
                        it.future.set_result(s)

    def _record(self, batch: list[_Item], lengths: list[int], seconds: float) -> None:
        s = self._stats
        s.batches += 1
        s.sequences += len(batch)
        s.real_tokens += sum(lengths)
        padded = padded_tokens(lengths)
        s.padded_tokens += padded
        s.max_batch_padded_tokens = max(s.max_batch_padded_tokens, padded)
        s.forward_s += seconds
