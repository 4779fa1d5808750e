"""One learner rank: a DeepSpeed engine and the SCOPE train step (no Ray).

Gradient equivalence (the update does not depend on the number of ranks or micro-batches):

* Every micro-batch loss divides by the GLOBAL denominator of the step (prompts for
  aggregation "sum", response tokens for "token-mean"), so the micro-batch losses of all
  ranks add up to the full-batch loss, and so do their gradients.
* DeepSpeed's GAS is 1 and ``backward(..., scale_wrt_gas=False)``: no 1/GAS factor.
  Accumulation over a variable number of micro-batches is driven with
  ``set_gradient_accumulation_boundary`` (True only on the last), then one ``step()``.
* DeepSpeed averages gradients over the data-parallel ranks; each rank's loss is
  multiplied by the world size so the average becomes the sum.
* ZeRO-2/3 communicate inside every backward (and ZeRO-3 inside every forward), so
  all ranks must run the same number of passes: the count is agreed with an all-reduce
  (max) and ranks with fewer micro-batches run zero-loss "idle" passes.
* Clipping uses the global norm of that summed gradient, the same for any layout.

A non-finite loss (or model log-prob) makes that rank back-propagate NaN on purpose:
the global gradient norm becomes NaN on every rank and DeepSpeed's ZeRO optimizers
then skip the update and clear the gradients consistently, without an extra collective.
"""

from __future__ import annotations

import logging
import socket
import time
from pathlib import Path

import torch

from scope_ray.algo import AlgorithmSpec, LossInputs, compute_loss, get_algorithm, loss_denominator
from scope_ray.learner.batch import TrainBatch, micro_batch_indices
from scope_ray.learner import engine as eng
from scope_ray.learner import lora
from scope_ray.learner.metrics import RankStepStats
from scope_ray.learner.options import LearnerOptions
from scope_ray.learner.safe_load import weights_only_loads
from scope_ray.engines.weight_broadcast import BroadcastGroup, TensorSpec
from scope_ray.errors import first_line
from scope_ray.learner.weights import copy_weights_into, export_state, iter_state, save_hf_dir, state_shapes
from scope_ray.learner.logprobs import token_logprobs

logger = logging.getLogger(__name__)


def check_batch(batch: TrainBatch, spec: AlgorithmSpec, kl_beta: float) -> None:
    """Everything the loss would reject, checked before any collective starts (a rank
    raising mid-step would leave the others waiting). Raises ValueError."""
    batch.validate()
    spec.check_batch(batch.correct, batch.response_mask, batch.teacher_logp, batch.ref_logp, kl_beta,
                     batch.teacher_topk_logp)


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("", 0))
        return int(s.getsockname()[1])


class LearnerCore:
    def __init__(self, rank: int, world_size: int, model_dir: str, options: LearnerOptions) -> None:
        options.validate()
        if not 0 <= rank < world_size:
            raise ValueError(f"rank {rank} is outside world size {world_size}")
        eng.configure_process_env()
        self.rank, self.world_size = rank, world_size
        self.model_dir = str(model_dir)
        self.options = options
        self.spec = get_algorithm(options.algorithm)
        self.engine = None
        # The policy before the latest train_step (options.keep_previous_policy).
        self._previous: torch.nn.Module | None = None
        self._weight_group: BroadcastGroup | None = None  # rank 0, rollout.weight_sync: broadcast

    # ------------------------------------------------------------------ set-up
    def init_engine(self, master_addr: str, master_port: int) -> None:
        t0 = time.perf_counter()
        eng.init_distributed(self.rank, self.world_size, master_addr, master_port, eng.dist_backend(self.options))
        eng.quiet_deepspeed()
        ds_config = eng.deepspeed_config(self.options)
        model = eng.load_model(self.model_dir, self.options)
        self.engine = eng.build_engine(model, self.options, ds_config)
        counts = lora.parameter_counts(model)
        logger.info("rank %d: DeepSpeed ZeRO-%d engine ready in %.1f s (%d of %d parameters trained%s)", self.rank,
                    self.options.zero_stage, time.perf_counter() - t0, counts["trainable"], counts["total"],
                    f", LoRA rank {self.options.lora.rank}" if self.options.lora.enabled else "")

    def parameter_counts(self) -> dict[str, int]:
        """Trained and total parameters, and the bytes of optimizer state this rank holds
        (after the first step; Adam: two fp32 moments per trained parameter, partitioned
        over the ranks under ZeRO)."""
        self._require_engine()
        return {**lora.parameter_counts(self.engine.module), "optimizer_state_bytes": _optimizer_state_bytes(self.engine)}

    @property
    def device(self) -> torch.device:
        return self.engine.device

    def _require_engine(self) -> None:
        if self.engine is None:
            raise RuntimeError("learner engine not initialised: call init_engine() first")

    def _agree_max(self, value: int) -> int:
        """The max of ``value`` over ranks (every rank must call it)."""
        if self.world_size == 1:
            return value
        t = torch.tensor([value], dtype=torch.long, device=self.device)
        torch.distributed.all_reduce(t, op=torch.distributed.ReduceOp.MAX)
        return int(t.item())

    # ------------------------------------------------------------------ passes
    def _logprobs(self, mb: TrainBatch) -> tuple[torch.Tensor, torch.Tensor | None]:
        """log pi of the sampled tokens, and (top-k distillation) of the teacher's top-k
        tokens at each position, from one forward pass."""
        d = self.device
        support = mb.teacher_topk_ids.to(d) if mb.teacher_topk_ids is not None else None
        out = token_logprobs(self.engine, mb.input_ids.to(d), mb.attention_mask.to(d), self.options.temperature,
                             support=support)
        return out if support is not None else (out, None)

    def _idle_logprobs(self) -> torch.Tensor:
        """A 1 x 2-token pass: touches every parameter (ZeRO-3 gathers) at minimal cost."""
        ids = torch.zeros((1, 2), dtype=torch.long, device=self.device)
        return token_logprobs(self.engine, ids, torch.ones_like(ids), self.options.temperature)

    def _loss_inputs(self, mb: TrainBatch, advantages: torch.Tensor | None) -> LossInputs:
        d = self.device
        return LossInputs(
            old_logp=mb.old_logp.to(d), mask=mb.response_mask.to(d), correct=mb.correct.to(d),
            group_index=mb.group_index.to(d), weights=mb.weights.to(d), rewards=mb.rewards.to(d),
            teacher_logp=mb.teacher_logp.to(d),
            ref_logp=mb.ref_logp.to(d) if mb.ref_logp is not None else None,
            advantages=advantages.to(d) if advantages is not None else None,
            teacher_topk_ids=mb.teacher_topk_ids.to(d) if mb.teacher_topk_ids is not None else None,
            teacher_topk_logp=mb.teacher_topk_logp.to(d) if mb.teacher_topk_logp is not None else None,
        )

    def _micro_loss(self, mb: TrainBatch, advantages: torch.Tensor | None, denominator: float,
                    stats: RankStepStats) -> torch.Tensor:
        logp, topk_logp = self._logprobs(mb)
        inputs = self._loss_inputs(mb, advantages)
        used = inputs.mask.bool()
        if not bool(torch.isfinite(logp.detach()[used]).all()):
            stats.nonfinite = True
            return (logp * float("nan")).sum()
        o = self.options
        loss = compute_loss(self.spec, logp, inputs, aggregation=o.aggregation, denominator=denominator,
                            clip_eps=o.clip_eps, kl_beta=o.kl_beta, topk_logp=topk_logp)
        if not bool(torch.isfinite(loss.detach())):
            stats.nonfinite = True
            return loss * float("nan")
        stats.add_micro_batch(loss, logp, inputs.old_logp, used)
        return loss

    # ------------------------------------------------------------------ train
    def train_step(self, shard: TrainBatch, num_prompts_global: int, num_tokens_global: int,
                   micro_batch_tokens: int | None = None) -> dict:
        """One optimizer step on this rank's shard (whole prompt groups) of a global
        batch with ``num_prompts_global`` prompts and ``num_tokens_global`` response
        tokens. Returns this rank's stats; merge ranks with ``merge_step_metrics``."""
        self._require_engine()
        t0 = time.perf_counter()
        check_batch(shard, self.spec, self.options.kl_beta)
        denominator = loss_denominator(self.options.aggregation, num_prompts_global, num_tokens_global)
        # Group statistics need whole groups: computed on the shard, sliced per micro-batch.
        advantages = self.spec.advantages(shard.rewards, shard.group_index)
        parts = micro_batch_indices(shard.lengths(), micro_batch_tokens or self.options.micro_batch_tokens)
        passes = self._agree_max(len(parts))
        if passes == 0:
            raise ValueError("train_step on an empty global batch")

        if self.options.keep_previous_policy:
            self._keep_current_as_previous()
        stats = RankStepStats(micro_batches=len(parts), idle_micro_batches=passes - len(parts))
        self.engine.train()
        for k in range(passes):
            self.engine.set_gradient_accumulation_boundary(k == passes - 1)
            if k < len(parts):
                rows = parts[k]
                adv = advantages[rows] if advantages is not None else None
                mb = shard.select(rows).trim()
                stats.add_padding(mb.num_rows, mb.seq_len, int(mb.attention_mask.sum()))
                loss = self._micro_loss(mb, adv, denominator, stats)
            else:
                loss = self._idle_logprobs().sum() * 0.0
            # x world size: DeepSpeed averages over ranks, we need the sum (see module doc).
            self.engine.backward(loss * self.world_size, scale_wrt_gas=False)
        self.engine.step()
        applied = bool(self.engine.was_step_applied())

        stats.applied = applied
        stats.grad_norm = _as_float(self.engine.get_global_grad_norm())
        stats.lr = float(self.engine.get_lr()[0])
        stats.time_s = time.perf_counter() - t0
        if not applied:
            logger.warning("rank %d: step skipped (non-finite loss or grad norm %s)", self.rank, stats.grad_norm)
        return stats.as_dict()

    # ------------------------------------------------------------------ inference
    @torch.no_grad()
    def compute_logprobs(self, shard: TrainBatch, micro_batch_tokens: int | None = None,
                         policy: str = "current") -> torch.Tensor:
        """log pi of each response token, [N, L] float32 on CPU, 0 elsewhere, under the
        ``"current"`` weights or (``"previous"``, needs ``keep_previous_policy``) the ones
        the latest train_step replaced."""
        self._require_engine()
        if policy not in ("current", "previous"):
            raise ValueError(f"policy must be 'current' or 'previous', got {policy!r}")
        parts = micro_batch_indices(shard.lengths(), micro_batch_tokens or self.options.micro_batch_tokens)
        out = torch.zeros(shard.input_ids.shape, dtype=torch.float32)
        if policy == "previous":
            if self._previous is None:
                raise RuntimeError("no previous policy kept: it exists after a train_step with "
                                   "keep_previous_policy (learner.old_logp=recompute, trainer.max_staleness=1)")
            model, passes = self._previous, len(parts)  # a plain module: no collectives
        else:
            model, passes = self.engine, self._agree_max(len(parts))
            self.engine.eval()
        for k in range(passes):
            if k >= len(parts):
                self._idle_logprobs()
                continue
            mb = shard.select(parts[k]).trim()
            logp = token_logprobs(model, mb.input_ids.to(self.device), mb.attention_mask.to(self.device),
                                  self.options.temperature).float().cpu()
            out[parts[k], : mb.seq_len] = torch.where(mb.response_mask.bool(), logp, torch.zeros(()))
        return out

    def _keep_current_as_previous(self) -> None:
        """Copy the weights the coming update replaces into a frozen module on this rank,
        parameter by parameter on the device (gathered one at a time under ZeRO-3, a
        collective: every rank calls it in train_step)."""
        if self._previous is None:
            from transformers import AutoModelForCausalLM

            dtype = next(self.engine.module.parameters()).dtype
            self._previous = AutoModelForCausalLM.from_pretrained(self.model_dir, dtype=dtype).to(self.device)
            self._previous.eval().requires_grad_(False)
        copy_weights_into(self.engine.module, self._previous, self.options.zero_stage == 3)

    # ------------------------------------------------------------------ weights
    def export_weights(self) -> dict[str, torch.Tensor] | None:
        """Full weights with HF names on rank 0, None elsewhere (collective under ZeRO-3)."""
        self._require_engine()
        return export_state(self.engine.module, self.options.zero_stage == 3, keep=self.rank == 0)

    # rollout.weight_sync: broadcast (scope_ray/engines/weight_broadcast.py): rank 0 sends.
    def host_weight_group(self, host: str, world_size: int, timeout_s: float) -> tuple[int, str]:
        """Rank 0: open the group's store for ``world_size`` ranks; returns its port and
        backend. The engines join, and :meth:`connect_weight_group` completes it."""
        self.close_weight_group()
        self._weight_group = BroadcastGroup.host(host, world_size, self.device, timeout_s)
        return self._weight_group.port, self._weight_group.backend

    def connect_weight_group(self) -> None:
        """Rank 0: wait for every engine rank to join."""
        if self._weight_group is None:
            raise RuntimeError("host_weight_group first")
        self._weight_group.connect()

    def close_weight_group(self) -> None:
        if self._weight_group is not None:
            self._weight_group.close()
        self._weight_group = None

    def broadcast_weights(self, bucket_mb: float) -> dict[str, object] | None:
        """One full update over the broadcast group, straight from the parameters (one
        gathered at a time under ZeRO-3: every rank calls this). Rank 0 returns what it
        sent, or ``{"error": ...}`` when a receiver failed: that is not a learner failure,
        and the group is closed (the controller rebuilds it). Other ranks return None."""
        self._require_engine()
        module = self.engine.module
        tensors = iter_state(module, self.options.zero_stage == 3)
        if self.rank != 0:
            for _ in tensors:  # the gathers rank 0 sends from
                pass
            return None
        group = self._weight_group
        t0 = time.perf_counter()
        try:
            if group is None:
                raise RuntimeError("no weight-broadcast group (host_weight_group first)")
            specs = [TensorSpec(n, str(dt).removeprefix("torch."), shape) for n, dt, shape in state_shapes(module)]
            sent = group.send(specs, tensors, bucket_mb)
        except Exception as exc:  # noqa: BLE001 - reported to the controller, which names the receiver
            for _ in tensors:
                pass
            self.close_weight_group()
            logger.warning("weight broadcast failed: %s", exc)
            return {"error": first_line(exc)}
        return {"bytes": sent, "tensors": len(specs), "seconds": time.perf_counter() - t0}

    def save_hf(self, out_dir: str) -> str | None:
        """The (merged) model as an HF dir on rank 0; a LoRA student's adapter beside it
        in ``<out_dir>/adapter`` (collective under ZeRO-3: every rank calls it)."""
        state = self.export_weights()
        module = self.engine.module
        adapter = lora.adapter_state(module, self.options.zero_stage == 3, keep=self.rank == 0) \
            if self.options.lora.enabled else None
        if state is None:
            return None
        path = save_hf_dir(module, state, out_dir, self.model_dir)
        if adapter is not None:
            lora.save_adapter(module, adapter, path / "adapter", self.model_dir)
        logger.info("saved HF model to %s", path)
        return str(path)

    def save_checkpoint(self, ckpt_dir: str, tag: str | None = None) -> None:
        """Model + optimizer state, every rank writes its partition (shared filesystem)."""
        self._require_engine()
        Path(ckpt_dir).mkdir(parents=True, exist_ok=True)
        # A LoRA student's base weights are frozen and reloaded from model_dir at start:
        # the checkpoint holds the adapters and their optimizer state only.
        self.engine.save_checkpoint(ckpt_dir, tag=tag, exclude_frozen_parameters=self.options.lora.enabled)

    def load_checkpoint(self, ckpt_dir: str, tag: str | None = None) -> None:
        self._require_engine()
        # DeepSpeed itself would unpickle with weights_only=False (see safe_load).
        with weights_only_loads(self.engine):
            path, _ = self.engine.load_checkpoint(ckpt_dir, tag=tag, load_optimizer_states=True,
                                                  load_lr_scheduler_states=True,
                                                  load_module_strict=not self.options.lora.enabled)
        if path is None:
            raise FileNotFoundError(f"no DeepSpeed checkpoint in {ckpt_dir} (tag {tag!r})")


def _optimizer_state_bytes(engine) -> int:
    """Bytes of the tensors in the torch optimizer's state (DeepSpeed's ZeRO optimizers
    wrap it as ``.optimizer``)."""
    inner = getattr(engine.optimizer, "optimizer", engine.optimizer)
    return sum(t.numel() * t.element_size() for state in inner.state.values() for t in state.values()
               if isinstance(t, torch.Tensor))


def _as_float(value: object) -> float:
    if value is None:
        return float("nan")
    if isinstance(value, torch.Tensor):
        return float(value.detach().float().cpu())
    return float(value)
