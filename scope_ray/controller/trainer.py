"""The training loop: the one place that knows the order of things.

Per step: take B prompts -> stream them (generate, verify, teacher-score the rollouts
that need it) -> group-level weights -> one learner step -> push the new weights to the
rollout workers -> log, evaluate, checkpoint.

With ``max_staleness = 1`` the next step's prompts are submitted before the learner
trains, and that stream is pumped while the learner works, so generation and teacher
scoring of step s+1 overlap the gradient step of step s (its rollouts are then one
policy version old; rho corrects for it).
"""

from __future__ import annotations

import logging
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import ray
import torch

from scope_ray.algo import get_algorithm
from scope_ray.config import RunConfig
from scope_ray.controller import checkpoint as ckpt
from scope_ray.controller.evaluation_loop import evaluate_with_workers
from scope_ray.controller.groups import WeightedBatch, batch_metrics, weigh_groups
from scope_ray.controller.run_logger import RunLogger
from scope_ray.controller.stream import PromptItem, RemoteCallError, StepStream, Verifier

logger = logging.getLogger(__name__)


class TrainingStopped(RuntimeError):
    """The run stopped on purpose (e.g. repeated non-finite steps); the checkpoint is intact."""


@dataclass
class Components:
    """Live handles the trainer drives (built by :mod:`scope_ray.controller.cluster`)."""

    rollout_workers: list[Any]
    teachers: list[Any]
    learner: Any  # actors.learner.LearnerGroup
    verify: Verifier
    pad_id: int
    train_sampler: Any  # scope_ray.data.PromptSampler over PromptItem templates
    eval_items: list[PromptItem]


@dataclass
class RunSummary:
    run_dir: Path
    steps: int
    start_eval: dict[str, float] = field(default_factory=dict)
    end_eval: dict[str, float] = field(default_factory=dict)
    seconds: float = 0.0


def to_train_batch(wb: WeightedBatch, pad_id: int):
    from scope_ray.batching import collate

    prompt_ids, response_ids, old_logp, teacher_logp = [], [], [], []
    for g in wb.groups:
        for i, r in enumerate(g.rollouts):
            prompt_ids.append(g.prompt_ids)
            response_ids.append(r.response_ids)
            old_logp.append(r.response_logp)
            t = g.teacher_logp[i] if g.teacher_logp else None
            teacher_logp.append(t)
    return collate(
        prompt_ids=prompt_ids, response_ids=response_ids, old_logp=old_logp, teacher_logp=teacher_logp,
        correct=wb.correct, rewards=wb.rewards, weights=wb.weights, group_index=wb.group_index, pad_id=pad_id,
    )


class Trainer:
    def __init__(self, cfg: RunConfig, run_dir: Path, parts: Components, resume_from: ckpt.CheckpointRef | None) -> None:
        self.cfg = cfg
        self.run_dir = run_dir
        self.parts = parts
        self.spec = get_algorithm(cfg.algorithm.name)
        self.step = 0
        self.group_counter = 0
        self.version = 0
        self.nonfinite_in_a_row = 0
        self.resume_from = resume_from
        self.log = RunLogger(run_dir, resume_step=resume_from.step if resume_from else None)
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="learner-call")
        self._pending_sync: list[ray.ObjectRef] = []
        self._before_draw: tuple[dict[str, Any], int] = ({}, 0)

    # ------------------------------------------------------------------ pieces
    def _next_items(self) -> list[PromptItem]:
        items = []
        for tmpl in self.parts.train_sampler.next_batch(self.cfg.trainer.prompts_per_step):
            items.append(PromptItem(tmpl.uid, self.group_counter, tmpl.prompt_ids, tmpl.ground_truth, tmpl.data_source))
            self.group_counter += 1
        return items

    def _new_stream(self) -> StepStream:
        c = self.cfg
        return StepStream(
            self.parts.rollout_workers, self.parts.teachers, self.parts.verify, self.spec,
            prompts_per_request=c.rollout.prompts_per_request, group_size=c.rollout.group_size,
            generate_timeout_s=c.trainer.generate_timeout_s, score_timeout_s=c.trainer.score_timeout_s,
            sequential=c.trainer.schedule == "sequential",
        )

    def _start_stream(self) -> StepStream:
        # Where the data stood before this draw: a checkpoint taken while this stream is
        # a prefetch (max_staleness = 1) must resume by drawing these prompts again.
        self._before_draw = (self.parts.train_sampler.state_dict(), self.group_counter)
        return self._new_stream().start(self._next_items(), seed=self.cfg.trainer.seed)

    def sync_weights(self, wait: bool = True) -> float:
        """Push the learner's weights to every rollout worker.

        Ray runs an actor's calls in submission order, so generation submitted after this
        sees the new weights even when we do not wait. Under ``max_staleness = 1`` we do
        not wait (the workers are busy with the next step); the calls are checked at the
        next sync instead, so a failure still surfaces with the worker's name.
        """
        t0 = time.perf_counter()
        self._check_pending_sync()
        blobs = self.parts.learner.export_weights(self.cfg.rollout.weight_bucket_mb)
        blobs_ref = ray.put(blobs)
        self._pending_sync = [w.update_weights.remote(blobs_ref, self.version) for w in self.parts.rollout_workers]
        if wait:
            self._check_pending_sync()
        return time.perf_counter() - t0

    def _check_pending_sync(self) -> None:
        for i, ref in enumerate(self._pending_sync):
            try:
                ray.get(ref, timeout=self.cfg.trainer.sync_timeout_s)
            except Exception as exc:  # noqa: BLE001 - named and re-raised
                raise RemoteCallError(f"rollout worker {i}: update_weights() failed: {exc}") from exc
        self._pending_sync = []

    def evaluate(self) -> dict[str, float]:
        t = self.cfg.trainer
        if not self.parts.eval_items:
            return {}
        t0 = time.perf_counter()
        out = evaluate_with_workers(
            self.parts.rollout_workers, self.parts.eval_items, self.parts.verify, k=t.eval_k,
            sampling={"temperature": t.eval_temperature, "top_p": t.eval_top_p, "top_k": t.eval_top_k},
            seed=t.seed + 12345, prompts_per_request=max(self.cfg.rollout.prompts_per_request, 8),
            timeout_s=t.generate_timeout_s,
        )
        out["time/eval_s"] = time.perf_counter() - t0
        return out

    def _train_in_background(self, batch, next_stream: StepStream | None) -> tuple[dict[str, float], float]:
        """Run the learner step in a thread while pumping the next step's stream."""
        t0 = time.perf_counter()
        fut = self._executor.submit(self.parts.learner.train_step, batch)
        if next_stream is not None:
            next_stream.pump(stop_when=fut.done)
        metrics = fut.result(timeout=self.cfg.trainer.train_timeout_s)
        return metrics, time.perf_counter() - t0

    def _controller_state(self, prefetched: bool) -> dict[str, Any]:
        sampler_state, counter = (
            self._before_draw if prefetched else (self.parts.train_sampler.state_dict(), self.group_counter)
        )
        return {
            "step": self.step,
            "group_counter": counter,
            "version": self.version,
            "sampler": sampler_state,
            "nonfinite_in_a_row": self.nonfinite_in_a_row,
        }

    def save_checkpoint(self, prefetched: bool = False) -> ckpt.CheckpointRef:
        staged = ckpt.staging_dir(self.run_dir, self.step)
        self.parts.learner.save_checkpoint(str(staged / "deepspeed"))
        self.parts.learner.save_hf(str(staged / "hf"))
        state = self._controller_state(prefetched)
        return ckpt.commit(self.run_dir, staged, self.step, state, self.cfg.trainer.keep_checkpoints)

    def _restore(self, ref: ckpt.CheckpointRef) -> None:
        state = ref.controller_state()
        self.step = int(state["step"])
        self.group_counter = int(state["group_counter"])
        self.version = int(state["version"])
        self.nonfinite_in_a_row = int(state.get("nonfinite_in_a_row", 0))
        self.parts.train_sampler.load_state_dict(state["sampler"])
        self.parts.learner.load_checkpoint(str(ref.deepspeed_dir))
        self.sync_weights()
        logger.info("resumed from %s at step %d", ref.path, self.step)

    # ------------------------------------------------------------------ loop
    def run(self, progress: Any = None) -> RunSummary:
        t = self.cfg.trainer
        started = time.perf_counter()
        summary = RunSummary(self.run_dir, 0)
        if self.resume_from is not None:
            self._restore(self.resume_from)
            summary.start_eval = _first_eval(self.log.read(), t.eval_k)
        elif t.eval_every > 0 or t.eval_at_end:
            summary.start_eval = self.evaluate()
            self.log.log(0, summary.start_eval)
        staleness = t.max_staleness if t.schedule == "stream" else 0
        stream = self._start_stream() if self.step < t.total_steps else None
        while self.step < t.total_steps:
            step_t0 = time.perf_counter()
            assert stream is not None
            groups = stream.collect()
            clock = stream.clock
            wb = weigh_groups(self.spec, groups, tau=self.cfg.algorithm.tau, normalize=self.cfg.algorithm.normalize)
            batch = to_train_batch(wb, self.parts.pad_id)
            next_stream = None
            if staleness >= 1 and self.step + 1 < t.total_steps:
                next_stream = self._start_stream()
            learner_metrics, train_s = self._train_in_background(batch, next_stream)
            self.step += 1
            skipped = bool(learner_metrics.get("skipped", False))
            self.nonfinite_in_a_row = self.nonfinite_in_a_row + 1 if skipped else 0
            if not skipped:
                self.version += 1
            sync_s = self.sync_weights(wait=next_stream is None) if not skipped else 0.0
            step_s = time.perf_counter() - step_t0
            metrics = batch_metrics(self.spec, wb, learner_version=self.version - (0 if skipped else 1))
            metrics.update({f"learner/{k}": float(v) for k, v in learner_metrics.items() if _is_number(v)})
            metrics.update({
                "time/step_s": step_s,
                "time/generate_s": clock.generate_done - clock.first_submit,
                "time/generate_busy_s": clock.generate_calls,
                "time/score_busy_s": clock.score_calls,
                "time/verify_s": clock.verify_s,
                "time/train_s": train_s,
                "time/sync_s": sync_s,
                "perf/rollout_tokens_per_s": metrics["rollout/tokens"] / max(step_s, 1e-9),
                "policy_version": float(self.version),
            })
            if t.eval_every > 0 and self.step % t.eval_every == 0 and self.step < t.total_steps:
                metrics.update(self.evaluate())
            if self.step == t.total_steps and (t.eval_every > 0 or t.eval_at_end):
                summary.end_eval = self.evaluate()
                metrics.update(summary.end_eval)
            self.log.log(self.step, metrics)
            if progress is not None:
                progress(self.step, metrics)
            if self.nonfinite_in_a_row >= t.max_nonfinite_steps:
                last = ckpt.latest_valid(self.run_dir)
                raise TrainingStopped(
                    f"{self.nonfinite_in_a_row} steps in a row had a non-finite loss or gradient; "
                    f"stopping. Last checkpoint: {last.path if last else 'none'}"
                )
            if t.save_every > 0 and (self.step % t.save_every == 0 or self.step == t.total_steps):
                self.save_checkpoint(prefetched=next_stream is not None)
            stream = next_stream if next_stream is not None else (
                self._start_stream() if self.step < t.total_steps else None
            )
        self._check_pending_sync()
        summary.steps = self.step
        summary.seconds = time.perf_counter() - started
        self.log.close()
        self._executor.shutdown(wait=False)
        return summary


def _first_eval(rows: list[dict[str, Any]], k: int) -> dict[str, float]:
    for row in rows:
        if f"eval/avg@{k}" in row:
            return {key: v for key, v in row.items() if key.startswith("eval/")}
    return {}


def _is_number(v: Any) -> bool:
    return isinstance(v, (int, float, np.floating, np.integer)) or (isinstance(v, torch.Tensor) and v.numel() == 1)
