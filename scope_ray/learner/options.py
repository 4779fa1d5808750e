"""Typed learner options (one object per learner group, sent to every rank)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

from scope_ray.algo import AGGREGATIONS, get_algorithm
from scope_ray.config import ZERO1_BF16_FP32
from scope_ray.learner.lora import LoraOptions

LearnerDtype = Literal["float32", "bfloat16"]


@dataclass(frozen=True)
class LearnerOptions:
    # ZeRO stage of the data-parallel group. 1 = plain data parallel with sharded
    # optimizer state. 0 is refused: without a ZeRO optimizer DeepSpeed has no
    # non-finite-gradient skip for a torch optimizer.
    zero_stage: int = 2
    lr: float = 5e-5  # paper: 5e-5 constant
    weight_decay: float = 0.01  # paper: 0.01
    betas: tuple[float, float] = (0.9, 0.999)
    eps: float = 1e-8
    grad_clip: float = 1.0  # max global grad norm; 0 = off
    # Padded tokens (rows x longest row) per forward/backward; bounds activation memory.
    micro_batch_tokens: int = 16384
    gradient_checkpointing: bool = False
    # Parameter/compute dtype. bfloat16 keeps fp32 master weights in the optimizer.
    dtype: LearnerDtype = "float32"
    # bfloat16 models: the dtype micro-batch gradients are summed in (config.py).
    grad_accum_dtype: LearnerDtype = "float32"
    algorithm: str = "scope"
    aggregation: Literal["sum", "token-mean"] = "sum"
    clip_eps: float = 0.2  # grpo only
    kl_beta: float = 1e-4  # grpo only
    seed: int = 0
    # Log-probs are of softmax(logits / temperature): the rollout sampling temperature,
    # so the trained policy is the one that generated the rollouts (verl does the same).
    temperature: float = 1.0
    # Keep a frozen copy of the weights each step replaces, so pi_old of a rollout made
    # one policy version ago can be recomputed (learner.old_logp=recompute with
    # trainer.max_staleness=1). Costs one full model copy per rank in the learner dtype.
    keep_previous_policy: bool = False
    # LoRA adapters instead of full fine-tuning (rank 0 = off; scope_ray/learner/lora.py).
    lora: LoraOptions = LoraOptions()
    # Ray resources per worker; num_gpus > 0 means CUDA + NCCL, else CPU + gloo.
    num_cpus: float = 1.0
    num_gpus: float = 0.0

    @property
    def use_gpu(self) -> bool:
        return self.num_gpus > 0

    def validate(self) -> None:
        """Raise ValueError naming the first bad option."""
        checks: list[tuple[bool, str]] = [
            (self.zero_stage in (1, 2, 3),
             f"zero_stage must be 1, 2 or 3 (1 for plain data parallel), got {self.zero_stage}"),
            (self.lr > 0, f"lr must be > 0, got {self.lr}"),
            (self.weight_decay >= 0, f"weight_decay must be >= 0, got {self.weight_decay}"),
            (len(self.betas) == 2 and all(0 <= b < 1 for b in self.betas),
             f"betas must be two numbers in [0, 1), got {self.betas}"),
            (self.eps > 0, f"eps must be > 0, got {self.eps}"),
            (self.grad_clip >= 0, f"grad_clip must be >= 0 (0 = off), got {self.grad_clip}"),
            (self.micro_batch_tokens >= 1, f"micro_batch_tokens must be >= 1, got {self.micro_batch_tokens}"),
            (self.dtype in ("float32", "bfloat16"),
             f"dtype must be 'float32' or 'bfloat16', got {self.dtype!r}"),
            (self.grad_accum_dtype == "float32" or self.dtype == "bfloat16",
             f"grad_accum_dtype bfloat16 needs dtype bfloat16, got dtype {self.dtype!r}"),
            (not (self.dtype == "bfloat16" and self.zero_stage == 1 and self.grad_accum_dtype == "float32"),
             f"grad_accum_dtype {ZERO1_BF16_FP32}"),
            (self.aggregation in AGGREGATIONS,
             f"aggregation must be one of {AGGREGATIONS}, got {self.aggregation!r}"),
            (self.clip_eps > 0, f"clip_eps must be > 0, got {self.clip_eps}"),
            (self.kl_beta >= 0, f"kl_beta must be >= 0, got {self.kl_beta}"),
            (self.temperature > 0, f"temperature must be > 0, got {self.temperature}"),
            (self.num_cpus >= 0 and self.num_gpus >= 0, "num_cpus and num_gpus must be >= 0"),
        ]
        lora_problem = self.lora.problem()
        checks.append((lora_problem is None, f"lora.{lora_problem}"))
        for ok, message in checks:
            if not ok:
                raise ValueError(f"LearnerOptions: {message}")
        get_algorithm(self.algorithm)  # raises with a did-you-mean hint

    @classmethod
    def from_run_config(cls, cfg: Any) -> LearnerOptions:
        """From a :class:`scope_ray.config.RunConfig` (learner, algorithm, model.dtype, seed)."""
        lr, algo = cfg.learner, cfg.algorithm
        if cfg.model.dtype not in ("float32", "bfloat16"):
            raise ValueError(f"model.dtype {cfg.model.dtype!r} is not supported by the learner (float32 or bfloat16)")
        return cls(
            zero_stage=lr.zero_stage, lr=lr.lr, weight_decay=lr.weight_decay, betas=tuple(lr.betas),
            eps=lr.eps, grad_clip=lr.grad_clip, micro_batch_tokens=lr.micro_batch_tokens,
            gradient_checkpointing=lr.gradient_checkpointing, dtype=cfg.model.dtype,
            grad_accum_dtype=lr.grad_accum_dtype,
            algorithm=algo.name, aggregation=algo.aggregation, clip_eps=algo.clip_eps, kl_beta=algo.kl_beta,
            seed=cfg.trainer.seed, num_cpus=lr.num_cpus, num_gpus=lr.num_gpus,
            temperature=cfg.rollout.temperature,
            lora=LoraOptions.from_config(lr.lora),
            keep_previous_policy=(lr.old_logp == "recompute" and cfg.trainer.max_staleness >= 1
                                  and cfg.trainer.schedule == "stream"),
        )
