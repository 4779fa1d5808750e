"""The training loop: the one place that knows the order of things (each phase of a step
named and timed in ``_loop``: rollouts, weigh, train, push, then log / evaluate / checkpoint).

Per step: take B prompts -> stream them (generate, verify, teacher-score the rollouts
that need it) -> group-level weights -> one learner step -> push the new weights to the
rollout workers -> log, evaluate, checkpoint.

With ``max_staleness = k >= 1`` the next k steps' prompts are submitted before the
learner trains, and those streams are pumped while the learner works, so generation and
teacher scoring of the steps ahead overlap the gradient step (their rollouts are then up
to k policy versions old; rho corrects for it).

Faults (docs/RELIABILITY.md): a restarted rollout worker gets the latest weights before
its prompts are re-issued (:mod:`scope_ray.controller.rollout_weights`); a learner
failure stops the run naming the call and the last checkpoint, or (``trainer.
on_learner_failure: restore``) rebuilds the learner group from that checkpoint and
carries on (:mod:`scope_ray.controller.learner_failure`).
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from concurrent.futures import TimeoutError as FutureTimeout
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import ray
import torch

from scope_ray.algo import get_algorithm
from scope_ray.config import RunConfig
from scope_ray.controller import checkpoint as ckpt
from scope_ray.controller import prefetch
from scope_ray.controller.evaluation_loop import evaluate_with_workers
from scope_ray.controller.groups import WeightedBatch, step_metrics, weigh_groups
from scope_ray.controller.learner_failure import handle_learner_failure
from scope_ray.controller.phases import Phases
from scope_ray.controller.rollout_weights import RolloutWeights
from scope_ray.controller.run_logger import RunLogger
from scope_ray.controller.stop_signal import StopRequest
from scope_ray.controller.trackers import open_trackers
from scope_ray.controller.stream import PromptItem, StepStream, Verifier, pump_streams
from scope_ray.errors import LearnerFailure, RemoteCallError, TrainingStopped
from scope_ray.types import RolloutGroup

logger = logging.getLogger(__name__)


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
    # Builds a fresh learner group from the initial model (on_learner_failure: restore).
    make_learner: Callable[[], Any] | None = None


@dataclass
class RunSummary:
    run_dir: Path
    steps: int
    start_eval: dict[str, float] = field(default_factory=dict)
    end_eval: dict[str, float] = field(default_factory=dict)
    seconds: float = 0.0


def to_train_batch(wb: WeightedBatch, pad_id: int, scores_are_reference: bool = False):
    """Flatten B groups into one padded batch. The scoring server's log-probs are the
    teacher's (SCOPE, OPD) or, for GRPO, the reference policy's (``ref_logp``)."""
    from scope_ray.learner.batch import collate

    prompt_ids, response_ids, old_logp, scores, topk = [], [], [], [], []
    for g in wb.groups:
        for i, r in enumerate(g.rollouts):
            prompt_ids.append(g.prompt_ids)
            response_ids.append(r.response_ids)
            old_logp.append(r.response_logp)
            scores.append(g.teacher_logp[i] if g.teacher_logp else None)
            topk.append(g.teacher_topk[i] if g.teacher_topk else None)
    unscored: list[None] = [None] * len(scores)
    ref = scores if scores_are_reference and any(s is not None for s in scores) else None
    return collate(
        prompt_ids=prompt_ids, response_ids=response_ids, old_logp=old_logp,
        teacher_logp=unscored if scores_are_reference else scores, ref_logp=ref,
        correct=wb.correct, rewards=wb.rewards, weights=wb.weights, group_index=wb.group_index, pad_id=pad_id,
        teacher_topk=topk if any(t is not None for t in topk) else None,
    )


class Trainer:
    def __init__(self, cfg: RunConfig, run_dir: Path, parts: Components, resume_from: ckpt.CheckpointRef | None,
                 stop_request: StopRequest | None = None) -> None:
        self.cfg = cfg
        self.run_dir = run_dir
        self.parts = parts
        self.spec = get_algorithm(cfg.algorithm.name)
        self.step = 0
        self.group_counter = 0
        self.version = 0
        self.nonfinite_in_a_row = 0
        self.resume_from = resume_from
        t = cfg.trainer
        self.log = RunLogger(run_dir, resume_step=resume_from.step if resume_from else None,
                             trackers=open_trackers(t.loggers, run_dir, project=t.project, run_name=t.run_name,
                                                    tags=list(t.tags), config=cfg.to_dict()))
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="learner-call")
        # Old log-probs of the prefetched step, computed for (or read from) a checkpoint
        # (old_logp: recompute): used for that one step in place of a recompute.
        self._stored_old_logp: torch.Tensor | None = None
        self._resumed_steps: list[prefetch.StoredStep] = []  # their groups, for the first steps
        # rollout.partial_rollouts: groups paused by a step's stream, for the next stream.
        self._carried: list[RolloutGroup] = []
        # What the rollout workers hold, and how a restarted one is brought up to date.
        self.weights = RolloutWeights(
            lambda: self.parts.rollout_workers, lambda: self.parts.learner, lambda: self.cfg.trainer,
            mode=cfg.rollout.weight_sync, bucket_mb=cfg.rollout.weight_bucket_mb,
            learner_version=self._learner_version, tp_size=cfg.rollout.tensor_parallel_size)
        self._train_future: Any = None  # the learner step running in the background, if any
        self.curves: Path | None = None  # curves.png, once drawn (for the trackers' artifacts)
        self._dead_teachers: set[int] = set()
        self.learner_restores = 0
        # Set by SIGTERM / SIGINT on the driver (stop_signal.py); checked after each step.
        self.stop_request = stop_request or StopRequest()

    # ------------------------------------------------------------------ the run, in order
    def run(self, progress: Any = None) -> RunSummary:
        summary = RunSummary(self.run_dir, 0)
        try:
            self._run(summary, progress)
        except BaseException:
            self.log.close(failed=True)  # the tracker runs end as failed; metrics.jsonl is complete
            self._executor.shutdown(wait=False)
            raise
        self.log.close(artifacts=self._outputs(summary))
        self._executor.shutdown(wait=False)
        return summary

    def _outputs(self, summary: RunSummary) -> list[Path]:
        """For trackers that keep files (wandb, MLflow): the curves PNG and summary.json
        (the start and end evaluation, steps and time)."""
        if not self.log.uploads_artifacts:
            return []
        path = self.run_dir / "summary.json"
        path.write_text(json.dumps({"steps": summary.steps, "seconds": summary.seconds,
                                    "start_eval": summary.start_eval, "end_eval": summary.end_eval}, indent=1))
        self.curves = self.log.plot(self.run_dir / "curves.png", eval_k=self.cfg.trainer.eval_k)
        return [path, self.curves]

    def _run(self, summary: RunSummary, progress: Any) -> None:
        t = self.cfg.trainer
        started = time.perf_counter()
        try:
            if self.resume_from is not None:
                self._restore(self.resume_from)
                summary.start_eval = _first_eval(self.log.read(), t.eval_k)
            elif t.eval_every > 0 or t.eval_at_end:
                summary.start_eval = self.evaluate()
                self.log.log(0, summary.start_eval)
        except Exception as exc:
            if not isinstance(exc, (RemoteCallError, LearnerFailure)):
                raise
            raise self._stopped(f"before step {self.step + 1}", exc) from exc
        while True:
            try:
                self._loop(summary, progress)
                break
            except RemoteCallError as exc:
                # A rollout worker or teacher call that failed for good (past its
                # restarts, or hung past its timeout).
                raise self._stopped(f"step {self.step + 1}", exc) from exc
            except Exception as exc:
                if not isinstance(exc, LearnerFailure):
                    raise
                self._on_learner_failure(exc)
        self.weights.check_pending()
        summary.steps = self.step
        summary.seconds = time.perf_counter() - started

    def _loop(self, summary: RunSummary, progress: Any) -> None:
        """Steps from ``self.step`` to the end (re-entered after a learner restore).

        ``ahead`` holds the streams of the next steps, already generating: none under
        max_staleness 0; under k >= 1 up to k, the newest submitted right after the
        previous step's weights were pushed, so a step trains on rollouts at most k
        policy versions old."""
        t = self.cfg.trainer
        staleness = t.max_staleness if t.schedule == "stream" else 0
        ahead: list[Any] = list(self._resumed_steps)
        self._resumed_steps = []
        while self.step < t.total_steps:
            step_t0 = time.perf_counter()
            phase = Phases(self.step + 1)
            with phase("rollouts"):  # generate, verify, teacher-score: streamed together
                if not ahead:
                    ahead.append(self._start_stream())
                stream = ahead.pop(0)
                groups = self._collect(stream, ahead)
            with phase("weigh"):  # routing and group-normalised weights, the learner batch
                wb = self._weigh(groups)
                batch = self._train_batch(wb)
                if self.cfg.learner.old_logp == "recompute":
                    batch.old_logp = self._recomputed_old_logp(batch, wb)
            with phase("train"):  # the steps ahead start generating first, then one learner step
                while len(ahead) < staleness and self.step + 1 + len(ahead) < t.total_steps:
                    ahead.append(self._start_stream())
                learner_metrics, train_s = self._train_in_background(batch, ahead)
            self.step += 1
            skipped = bool(learner_metrics.get("skipped", False))
            self.nonfinite_in_a_row = self.nonfinite_in_a_row + 1 if skipped else 0
            if skipped:
                logger.warning("step %d skipped: non-finite loss or gradient (%d in a row, stop at %d)",
                               self.step, self.nonfinite_in_a_row, t.max_nonfinite_steps)
            else:
                self.version += 1
            with phase("push"):  # the new weights to the rollout workers
                if not skipped:
                    self.sync_weights(wait=not ahead)
            step_s = time.perf_counter() - step_t0
            metrics = step_metrics(self.spec, wb, learner_metrics, stream.clock, learner_version=self.version,
                                   skipped=skipped, step_s=step_s, train_s=train_s,
                                   sync_s=self.weights.take_seconds(), phases=phase.metrics())
            final = self.step == t.total_steps
            eval_now = t.eval_every > 0 and self.step % t.eval_every == 0 and not final
            eval_end = final and (t.eval_every > 0 or t.eval_at_end)
            if (eval_now or eval_end) and self.weights.held_back:
                # A held-back broadcast needs every worker in it: let the step ahead finish
                # generating first, or the send would wait behind it (up to sync_timeout_s).
                pump_streams(ahead, stop_when=lambda: all(s.done for s in ahead))
            if eval_now:
                metrics.update(self.evaluate())
            if eval_end:
                summary.end_eval = self.evaluate()
                metrics.update(summary.end_eval)
            self.log.log(self.step, metrics)
            if progress is not None:
                progress(self.step, metrics)
            if self.nonfinite_in_a_row >= t.max_nonfinite_steps:
                last = ckpt.latest_valid(self.run_dir)
                raise TrainingStopped(
                    f"{self.nonfinite_in_a_row} steps in a row had a non-finite loss or gradient; "
                    f"stopping. Last checkpoint: {last.path if last else 'none'} "
                    "(intact: skipped steps leave the weights unchanged)"
                )
            saved = None
            if t.save_every > 0 and (self.step % t.save_every == 0 or self.step == t.total_steps):
                with phase("checkpoint"):  # after the row is logged: in train.log (debug) only
                    saved = self.save_checkpoint(prefetched=ahead)
            if self.stop_request.signal is not None and self.step < t.total_steps:
                self._stop_on_request(saved, prefetched=ahead)


    # ------------------------------------------------------------------ pieces
    def _next_items(self, count: int) -> list[PromptItem]:
        items = []
        for tmpl in self.parts.train_sampler.next_batch(count) if count > 0 else []:
            items.append(PromptItem(tmpl.uid, self.group_counter, tmpl.prompt_ids, tmpl.ground_truth, tmpl.data_source))
            self.group_counter += 1
        return items

    def _new_stream(self) -> StepStream:
        c = self.cfg
        return StepStream(
            self.parts.rollout_workers, self.parts.teachers, self.parts.verify, self.spec,
            prompts_per_request=c.rollout.request_prompts(c.trainer.prompts_per_step), group_size=c.rollout.group_size,
            generate_timeout_s=c.trainer.generate_timeout_s, score_timeout_s=c.trainer.score_timeout_s,
            sequential=c.trainer.schedule == "sequential", stream_rollouts=c.rollout.stream_rollouts,
            policy_version=self.version, recover_worker=self.recover_rollout_worker,
            max_retries=c.trainer.actor_max_restarts, dead_teachers=self._dead_teachers,
            kl_beta=c.algorithm.kl_beta,  # the spec decides whether it sends anything to a reference
            topk=c.algorithm.topk if c.algorithm.distill == "topk" else 0,
            partial=c.rollout.partial_rollouts,
        )

    def _start_stream(self) -> StepStream:
        """The next step's stream: the groups carried from earlier streams first, then new
        prompts up to prompts_per_step (+ rollout.extra_prompts with partial rollouts)."""
        self.weights.flush()  # a held-back broadcast goes out before the workers get new work
        c = self.cfg
        # A carried group must be trained by the stream it joins, so a stream takes at
        # most a step's worth (more wait only when a checkpoint collected several streams
        # ahead at once, each carrying its own).
        carried, self._carried = self._carried[: c.trainer.prompts_per_step], self._carried[c.trainer.prompts_per_step:]
        in_flight = c.trainer.prompts_per_step + c.rollout.partial_extra_prompts(c.trainer.prompts_per_step)
        return self._new_stream().start(self._next_items(in_flight - len(carried)), seed=c.trainer.seed,
                                        carried=carried, needed=c.trainer.prompts_per_step)

    def sync_weights(self, wait: bool = True) -> None:
        """Push the learner's weights to every rollout worker (rollout_weights.py); under
        ``max_staleness = 1`` without waiting (checked, or for a broadcast sent, before the
        workers get new work)."""
        self.weights.push(self.version, wait)

    def _learner_version(self) -> int:
        """The policy version of the learner's weights once a train step in flight (max
        staleness 1) is done: that step's result says whether it was applied."""
        fut = self._train_future
        if fut is None:
            return self.version
        metrics = fut.result()
        return self.version + (0 if bool(metrics.get("skipped", False)) else 1)

    def recover_rollout_worker(self, i: int) -> int:
        """Rollout worker ``i`` up and on the newest weights; the version it holds."""
        return self.weights.recover(i)

    @property
    def rollout_recoveries(self) -> int:
        return self.weights.recoveries

    def evaluate(self) -> dict[str, float]:
        t = self.cfg.trainer
        if not self.parts.eval_items:
            return {}
        t0 = time.perf_counter()
        self.weights.flush()
        for attempt in range(2):
            # Every worker must hold the current weights (one may have restarted
            # unnoticed since the last step); a worker dying mid-evaluation costs one rerun.
            for i in range(len(self.parts.rollout_workers)):
                self.recover_rollout_worker(i)
            try:
                out = evaluate_with_workers(
                    self.parts.rollout_workers, self.parts.eval_items, self.parts.verify, k=t.eval_k,
                    sampling={"temperature": t.eval_temperature, "top_p": t.eval_top_p, "top_k": t.eval_top_k},
                    seed=t.seed + 12345, prompts_per_request=self._eval_prompts_per_call(),
                    timeout_s=t.generate_timeout_s,
                )
                break
            except RemoteCallError as exc:
                if attempt == 1 or not isinstance(exc.__cause__, ray.exceptions.RayActorError):
                    raise
                logger.warning("evaluation lost a rollout worker (%s); running it again", exc)
        out["time/eval_s"] = time.perf_counter() - t0
        return out

    def _eval_prompts_per_call(self) -> int:
        """Each worker's whole share of the held-out prompts in one call (rollout.
        prompts_per_request 0), else max(prompts_per_request, 8), spread so every worker
        gets one (100 held-out prompts at 64 per call would leave 2 of 4 workers idle)."""
        per_worker = -(-len(self.parts.eval_items) // max(1, len(self.parts.rollout_workers)))
        ppr = self.cfg.rollout.prompts_per_request
        return max(1, per_worker if ppr == 0 else min(max(ppr, 8), per_worker))

    def _train_in_background(self, batch, ahead: list[Any]) -> tuple[dict[str, float], float]:
        """Run the learner step in a thread while pumping the streams of the steps ahead."""
        t0 = time.perf_counter()
        limit = self.cfg.trainer.train_timeout_s
        fut = self._train_future = self._executor.submit(self.parts.learner.train_step, batch, timeout_s=limit)
        try:
            pump_streams(ahead, stop_when=fut.done)
            # The learner group enforces the limit and names the rank; this is a backstop.
            metrics = fut.result(timeout=limit + 60.0)
        except FutureTimeout as exc:
            raise LearnerFailure(f"learner group: train_step() did not return within {limit:.0f} s",
                                 rank=None, call="train_step") from exc
        finally:
            self._train_future = None
        return metrics, time.perf_counter() - t0

    def _collect(self, stream: Any, later: list[Any]) -> list:
        """``stream``'s groups; the streams of later steps are pumped meanwhile, so their
        samples keep reaching the verifier and teacher (max_staleness > 1). The groups it
        paused (partial rollouts) go to the next stream started."""
        pump_streams([stream, *later], stop_when=lambda: stream.done)
        groups = stream.collect()
        self._carried.extend(stream.take_carried())
        return groups

    def _recomputed_old_logp(self, batch, wb: WeightedBatch) -> torch.Tensor:
        """pi_old as the learner's own forward pass (verl's default: engine and learner
        numerics differ under bf16 on GPUs), under the weights that generated each
        rollout: the current ones, or for a rollout one version behind (max_staleness 1)
        the ones the last step replaced, which the learner keeps for this. Recomputing
        everything with the current weights would make rho = 1 and drop the lag correction.
        """
        if self._stored_old_logp is not None:  # the prefetched step of a checkpoint
            old, self._stored_old_logp = self._stored_old_logp, None
            return old
        versions = torch.tensor([r.policy_version for g in wb.groups for r in g.rollouts])
        lag = self.version - versions
        if bool(((lag < 0) | (lag > 1)).any()):
            raise RuntimeError(f"rollouts of policy versions {sorted(set(versions.tolist()))} at learner version "
                               f"{self.version}: recompute covers the current and the previous version only")
        old = self.parts.learner.compute_logprobs(batch) if bool((lag == 0).any()) else None
        if bool((lag == 1).any()):
            previous = self.parts.learner.compute_logprobs(batch, policy="previous")
            old = previous if old is None else torch.where((lag == 1)[:, None], previous, old)
        return old

    def _controller_state(self) -> dict[str, Any]:
        return {
            "step": self.step,
            "group_counter": self.group_counter,
            "version": self.version,
            "sampler": self.parts.train_sampler.state_dict(),
            "nonfinite_in_a_row": self.nonfinite_in_a_row,
        }

    def save_checkpoint(self, prefetched: Sequence[Any] = ()) -> ckpt.CheckpointRef:
        """Learner state, HF export and the data position; with ``prefetched`` (the next
        steps' streams, max_staleness >= 1) also their groups, completed first, so a
        resume trains on exactly them (prefetch.py)."""
        staged = ckpt.staging_dir(self.run_dir, self.step)
        limit = self.cfg.trainer.train_timeout_s
        self.parts.learner.save_checkpoint(str(staged / "deepspeed"), timeout_s=limit)
        self.parts.learner.save_hf(str(staged / "hf"), timeout_s=limit)
        for index, stream in enumerate(prefetched):
            groups = self._collect(stream, prefetched[index + 1:])
            old_logp = None
            if self.cfg.learner.old_logp == "recompute":  # max_staleness 1: one stream
                # Their sampling weights are the learner's previous ones, not in the checkpoint.
                wb = self._weigh(groups)
                old_logp = self._recomputed_old_logp(self._train_batch(wb), wb)
                # The next step would compute the same (same groups, same learner): keep it.
                self._stored_old_logp = old_logp
            prefetch.save(staged, groups, old_logp, index)
        if self._carried:  # paused samples, resumed (from their tokens so far) after a resume
            prefetch.save(staged, self._carried, None, stem=prefetch.CARRIED)
        return ckpt.commit(self.run_dir, staged, self.step, self._controller_state(),
                           self.cfg.trainer.keep_checkpoints)

    def _weigh(self, groups: list) -> WeightedBatch:
        return weigh_groups(self.spec, groups, tau=self.cfg.algorithm.tau, normalize=self.cfg.algorithm.normalize)

    def _train_batch(self, wb: WeightedBatch):
        scorer = self.spec.scorer(self.cfg.algorithm.kl_beta)
        return to_train_batch(wb, self.parts.pad_id, scores_are_reference=scorer == "reference")

    def _restore(self, ref: ckpt.CheckpointRef) -> None:
        state = ref.controller_state()
        self.step = int(state["step"])
        self.group_counter = int(state["group_counter"])
        self.version = int(state["version"])
        self.nonfinite_in_a_row = int(state.get("nonfinite_in_a_row", 0))
        self.parts.train_sampler.load_state_dict(state["sampler"])
        self.parts.learner.load_checkpoint(str(ref.deepspeed_dir), timeout_s=self.cfg.trainer.train_timeout_s)
        stored = prefetch.load_all(ref.path)
        self._resumed_steps = [prefetch.StoredStep(groups) for groups, _ in stored]
        carried = prefetch.load(ref.path, stem=prefetch.CARRIED)
        self._carried = carried[0] if carried else []
        self._stored_old_logp = stored[0][1] if stored else None
        self.sync_weights()
        logger.info("resumed from %s at step %d%s", ref.path, self.step,
                    f" with the prefetched groups of {len(stored)} step(s)" if stored else "")

    def _stopped(self, when: str, exc: Exception) -> TrainingStopped:
        """One line naming when, the actor and call (``exc``'s message) and the checkpoint
        to continue from; the caller chains ``exc``, whose full text goes to train.log."""
        last = ckpt.latest_valid(self.run_dir, set_aside=False)
        where = ("no checkpoint written yet" if last is None
                 else f"last checkpoint: {last.path}; continue with: scope-ray train --resume {self.run_dir}")
        return TrainingStopped(f"{when}: {exc}. Stopped; {where}")

    def _on_learner_failure(self, exc: Exception) -> None:
        """Stop naming the failure and the last checkpoint, or restore (learner_failure.py)."""
        handle_learner_failure(self, exc)

    def _fresh_executor(self) -> None:
        """A new thread for learner calls: a hung call may still hold the old one, and
        later steps must not queue behind it."""
        self._executor.shutdown(wait=False)
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="learner-call")

    def _stop_on_request(self, saved: ckpt.CheckpointRef | None, prefetched: list[Any]) -> None:
        """A stop signal arrived during this step: checkpoint it (unless ``saved`` already
        is; even with ``save_every: 0``, so nothing trained is lost) and stop with the
        resume command."""
        ref = saved or self.save_checkpoint(prefetched)
        raise TrainingStopped(f"{self.stop_request.signal} received: stopped after step {self.step} of "
                              f"{self.cfg.trainer.total_steps}; saved checkpoint: {ref.path}; "
                              f"continue with: scope-ray train --resume {self.run_dir}")



def _first_eval(rows: list[dict[str, Any]], k: int) -> dict[str, float]:
    for row in rows:
        if f"eval/avg@{k}" in row:
            return {key: v for key, v in row.items() if key.startswith("eval/")}
    return {}
