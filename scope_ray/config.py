"""The one typed configuration tree of a scope-ray run.

A run is described by a YAML file (one per recipe, under ``launch/configs/``) plus dotted
overrides on the command line (``learner.lr=1e-5``). Loading goes: defaults <- YAML <-
overrides, each key checked against the dataclass fields (unknown keys get a "did you
mean"), each value coerced to the field's type, then :meth:`RunConfig.validate` checks
ranges and cross-field rules. Every error is one line naming the key.
"""

from __future__ import annotations

import dataclasses
import difflib
import os
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import yaml

from scope_ray.errors import ConfigError


@dataclass
class ModelConfig:
    # Local HF directories. Empty: use the embedded tiny models (built by bootstrap).
    student: str = ""
    teacher: str = ""
    # vLLM / learner dtype: "float32" on CPU; "bfloat16" on GPUs.
    dtype: Literal["float32", "bfloat16", "float16"] = "float32"
    max_prompt_tokens: int = 128
    max_response_tokens: int = 96


@dataclass
class DataConfig:
    # Parquet/JSONL files in verl's layout. Empty: the embedded synthetic task.
    train_files: list[str] = field(default_factory=list)
    eval_files: list[str] = field(default_factory=list)
    prompt_suffix: str = "Put your final answer within \\boxed{}."
    on_bad_row: Literal["skip", "fail"] = "skip"
    # Evaluate on at most this many held-out prompts (0 = all).
    max_eval_prompts: int = 0


@dataclass
class BootstrapConfig:
    """The embedded default: a tiny task, teacher and student built locally."""

    cache_dir: str = ""  # default: $SCOPE_RAY_CACHE or ~/.cache/scope-ray
    # default | tiny (tests) | imperfect-teacher (a teacher systematically wrong on one
    # problem type: the paper's regime; scope_ray/bootstrap/build.py)
    preset: Literal["default", "tiny", "imperfect-teacher"] = "default"


MAX_STALENESS = 4


@dataclass
class RolloutConfig:
    num_workers: int = 1
    group_size: int = 8  # G rollouts per prompt
    temperature: float = 0.6
    # Training samples the full tempered distribution: top_p must stay 1 and top_k -1
    # (see the check in _validate); trainer.eval_top_p / eval_top_k apply to evaluation.
    top_p: float = 1.0
    top_k: int = -1
    tensor_parallel_size: int = 1
    gpu_memory_utilization: float = 0.85  # GPU engines; a CPU engine's KV cache is sized from max_num_seqs
    # Sequences an engine decodes together; 0 = a worker's training call (its share of a
    # step x G), at least 8 evaluation prompts x eval_k. On CPU it also sizes the KV cache.
    max_num_seqs: int = 0
    # Prompts per generate call; 0: each worker's whole share of a step in one call. Also
    # the unit a fault re-issues and, without stream_rollouts, the unit results return in.
    prompts_per_request: int = 4
    # Calls a worker's engine decodes at once: 0 = all it holds (the calls of a step and,
    # under max_staleness, the next steps'), 1 = one call start to end before the next,
    # -1 = by device, decided in the actor: 0 on a GPU; 1 on a CPU, where a run is then
    # bit-reproducible (which calls share an engine step no longer depends on timing,
    # and vLLM-CPU's log-probs do depend on it at ~1e-7) and, on 2 cores, 1.1x faster a
    # step (bench/rollout_batching.py).
    max_calls_in_flight: int = -1
    # Workers yield each sample as soon as it is finished (false: whole requests).
    stream_rollouts: bool = True
    # Partial rollouts (slime, AReaL): each step's stream holds extra_prompts more groups
    # than it trains, and once prompts_per_step of them are generated the stragglers are
    # paused and finished first in the next stream, under newer weights (per-token
    # log-probs keep rho exact). Needs learner.old_logp 'rollout'. Long responses are then
    # trained a step later and with older tokens, and runs are not bit-reproducible
    # (scope_ray/controller/stream.py).
    partial_rollouts: bool = False
    extra_prompts: int = -1  # with partial_rollouts; -1: a quarter of prompts_per_step (at least 1)
    num_cpus: float = 0.5
    num_gpus: float = 0.0
    # How new weights reach the workers: "safetensors" buckets through Ray's object store,
    # or "broadcast" from the learner's rank 0 over a process group of their own (gloo
    # on CPU, NCCL on GPU; scope_ray/engines/weight_broadcast.py).
    weight_sync: Literal["safetensors", "broadcast"] = "safetensors"
    weight_bucket_mb: int = 256
    # Ray custom resources each worker asks for, e.g. {"rollout_node": 1} to pin the
    # workers to nodes started with --resources='{"rollout_node": 8}'.
    resources: dict[str, float] = field(default_factory=dict)

    def partial_extra_prompts(self, prompts_per_step: int) -> int:
        """The groups a step's stream holds beyond those it trains (0: no partial rollouts)."""
        if not self.partial_rollouts:
            return 0
        return max(1, prompts_per_step // 4) if self.extra_prompts < 0 else self.extra_prompts

    def request_prompts(self, prompts: int) -> int:
        """Prompts per generate call when ``prompts`` are spread over the workers."""
        if self.prompts_per_request > 0:
            return self.prompts_per_request
        return max(1, -(-prompts // max(1, self.num_workers)))


@dataclass
class TeacherConfig:
    num_replicas: int = 1
    backend: Literal["hf", "vllm"] = "hf"
    # The teacher scores under softmax(logits / temperature); 1.0 = its own distribution.
    # (GRPO's reference policy is scored at rollout.temperature instead, like the student.)
    temperature: float = 1.0
    max_batch_tokens: int = 16384
    max_wait_ms: float = 5.0
    num_cpus: float = 0.5
    num_gpus: float = 0.0
    gpu_memory_utilization: float = 0.85  # "vllm" backend on GPU
    resources: dict[str, float] = field(default_factory=dict)  # e.g. {"teacher_node": 1}


# DeepSpeed 0.19.8 runs ZeRO-1 + bf16 + fp32 accumulation through its BF16_Optimizer,
# which counts micro-batch gradients more than once under the learner's accumulation.
ZERO1_BF16_FP32 = ("float32 with learner.zero_stage 1 and model.dtype bfloat16 runs DeepSpeed's BF16_Optimizer, "
                   "which counts micro-batch gradients more than once under scope-ray's accumulation (grad norm "
                   "237 instead of 118 at 4 micro-batches); use learner.zero_stage=2 (same memory on one node) "
                   "or learner.grad_accum_dtype=bfloat16")


@dataclass
class LoraConfig:
    """learner.lora: train LoRA adapters instead of every weight (scope_ray/learner/lora.py).
    LoRA wants a larger learning rate than full fine-tuning (README: LoRA students)."""

    rank: int = 0  # 0 = off (full fine-tuning)
    alpha: float = 32.0  # updates are scaled by alpha / rank
    dropout: float = 0.0
    target_modules: list[str] = field(default_factory=lambda: ["all-linear"])  # all-linear: every linear but the head


@dataclass
class LearnerConfig:
    num_workers: int = 1
    zero_stage: int = 2
    lr: float = 5e-5
    weight_decay: float = 0.01
    betas: list[float] = field(default_factory=lambda: [0.9, 0.999])
    eps: float = 1e-8
    grad_clip: float = 1.0
    micro_batch_tokens: int = 16384
    gradient_checkpointing: bool = False
    # The dtype micro-batch gradients are summed in when model.dtype is bfloat16 (a
    # float32 model always sums in float32). bf16 sums lose ~1e-2 of the gradient over
    # the recipes' hundreds of micro-batches (bench/grad_accum_precision.py). Under
    # ZeRO-1 float32 selects DeepSpeed's BF16_Optimizer, under ZeRO-2/3 fp32 buffers.
    grad_accum_dtype: Literal["float32", "bfloat16"] = "float32"
    # pi_old in rho: "rollout" = the engine's log-probs of its own samples (exactly the
    # behaviour policy, also under max_staleness=1); "recompute" = a learner forward pass
    # before the step under the weights that generated each rollout (verl's default;
    # steadier when engine and learner numerics differ). Under max_staleness=1 the
    # learner keeps the previous weights for it: one more model copy per rank.
    old_logp: Literal["rollout", "recompute"] = "rollout"
    num_cpus: float = 1.0
    num_gpus: float = 0.0
    resources: dict[str, float] = field(default_factory=dict)  # e.g. {"learner_node": 1}
    lora: LoraConfig = field(default_factory=LoraConfig)


@dataclass
class AlgorithmConfig:
    name: str = "scope"  # scope | opd | grpo | scope-no-teacher-weight | ...
    tau: float = 1.0
    normalize: Literal["sum", "mean"] = "sum"
    aggregation: Literal["sum", "token-mean"] = "sum"
    clip_eps: float = 0.2  # grpo
    kl_beta: float = 1e-4  # grpo
    # The distillation path's signal: "sampled" = the teacher's log-prob of each sampled
    # token (the paper's reverse-KL estimate); "topk" = the forward KL over the teacher's
    # top-k tokens at each position (scope_ray/algo/losses.py: topk_forward_kl). Routing
    # and SCOPE's weights are the same either way.
    distill: Literal["sampled", "topk"] = "sampled"
    topk: int = 20


@dataclass
class TrainerConfig:
    """What the controller does, in which order, and how often."""

    prompts_per_step: int = 16  # B complete groups per gradient step
    total_steps: int = 100
    # 0: strictly on-policy; k (up to 4): the next k steps generate while the learner
    # trains, so a step trains on rollouts at most k policy versions old (rho corrects
    # with the engine's log-probs).
    max_staleness: int = 0
    # "stream": teacher scoring overlaps generation; "sequential": generate all, then
    # score all, then train (the baseline the pipeline benchmark compares against).
    schedule: Literal["stream", "sequential"] = "stream"
    seed: int = 0
    eval_every: int = 20  # steps; 0 disables periodic evaluation
    eval_at_end: bool = True  # evaluate before the first and after the last step
    eval_k: int = 8
    eval_temperature: float = 0.6
    eval_top_p: float = 1.0
    eval_top_k: int = -1
    save_every: int = 25  # steps; 0 disables periodic checkpoints
    keep_checkpoints: int = 2
    run_dir: str = ""  # default: runs/<name>-<time>
    # Experiment trackers (controller/trackers.py): any of tensorboard, wandb, mlflow;
    # metrics.jsonl is always written. project / run_name (default: the run directory's
    # name) / tags go to wandb and MLflow.
    loggers: list[str] = field(default_factory=lambda: ["tensorboard"])
    project: str = "scope-ray"
    run_name: str = ""
    tags: list[str] = field(default_factory=list)
    name: str = "scope"
    # Seconds before a remote call counts as hung; the error names the actor and call.
    generate_timeout_s: float = 600.0
    score_timeout_s: float = 600.0
    train_timeout_s: float = 1200.0
    sync_timeout_s: float = 300.0
    max_nonfinite_steps: int = 3
    # Ray restarts a dead rollout worker or teacher replica up to this many times (its
    # calls are re-issued); also the most learner-group restores per run.
    actor_max_restarts: int = 3
    # A learner rank that dies or hangs: "stop" (message names the call and the last
    # checkpoint) or "restore" (new learner group from the last checkpoint, continue).
    on_learner_failure: Literal["stop", "restore"] = "stop"


@dataclass
class RayConfig:
    address: str = ""  # "" = $RAY_ADDRESS if set, else start a local Ray in-process
    num_cpus: int = 0  # local Ray only; 0 = Ray's default
    dashboard_host: str = "127.0.0.1"
    # Before starting actors, refuse a run whose actors the cluster's total resources can
    # never hold (scope_ray/planning); off for a cluster that autoscales.
    check_resources: bool = True


@dataclass
class RunConfig:
    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    bootstrap: BootstrapConfig = field(default_factory=BootstrapConfig)
    rollout: RolloutConfig = field(default_factory=RolloutConfig)
    teacher: TeacherConfig = field(default_factory=TeacherConfig)
    learner: LearnerConfig = field(default_factory=LearnerConfig)
    algorithm: AlgorithmConfig = field(default_factory=AlgorithmConfig)
    trainer: TrainerConfig = field(default_factory=TrainerConfig)
    ray: RayConfig = field(default_factory=RayConfig)

    @property
    def uses_embedded_models(self) -> bool:
        return not self.model.student

    def validate(self, check_paths: bool = True) -> RunConfig:
        """Check ranges and cross-field rules; ``check_paths=False`` skips filesystem
        checks (for recipes whose model dirs exist only on the cluster)."""
        _validate(self, check_paths)
        return self

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


# --------------------------------------------------------------------------- validation


def _require(cond: bool, key: str, msg: str) -> None:
    if not cond:
        raise ConfigError(f"{key}: {msg}")


def _validate(cfg: RunConfig, check_paths: bool) -> None:
    from scope_ray.algo import ALGORITHMS, get_algorithm
    from scope_ray.learner.lora import LoraOptions

    m, r, t, lr, a, tr = cfg.model, cfg.rollout, cfg.teacher, cfg.learner, cfg.algorithm, cfg.trainer
    # An algorithm without a teacher (GRPO: its KL reference is the initial student).
    teacherless = a.name in ALGORITHMS and ALGORITHMS[a.name].scorer(a.kl_beta) != "teacher"
    _require(bool(m.student) == bool(m.teacher) or (teacherless and m.student), "model.teacher" if m.student else "model.student",
             "set both model.student and model.teacher, or neither (embedded default)")
    for key, path in (("model.student", m.student), ("model.teacher", m.teacher)):
        if path and check_paths:
            _require(Path(path).is_dir(), key, f"model directory {path!r} does not exist")
            _require((Path(path) / "config.json").is_file(), key, f"{path!r} has no config.json (not an HF model dir)")
            _require(_has_weights(Path(path)), key, f"{path!r} has no weights (*.safetensors or pytorch_model*.bin)")
    _require(bool(cfg.data.train_files) or cfg.uses_embedded_models, "data.train_files",
             "required when model.student is set (real models need real data)")
    for key, files in (("data.train_files", cfg.data.train_files), ("data.eval_files", cfg.data.eval_files)):
        for f in files if check_paths else []:
            _require(Path(f).is_file(), key, f"file {f!r} does not exist")
    _require(m.max_prompt_tokens > 0, "model.max_prompt_tokens", "must be > 0")
    _require(m.max_response_tokens > 0, "model.max_response_tokens", "must be > 0")
    _require(r.num_workers >= 1, "rollout.num_workers", "must be >= 1")
    _require(r.group_size >= 1, "rollout.group_size", "must be >= 1")
    _require(r.temperature > 0, "rollout.temperature", "must be > 0 (sampling; greedy rollouts give identical groups)")
    # Nucleus / top-k rollouts are refused: vLLM's processed log-probs are then
    # renormalised over the kept tokens while the learner scores the whole (tempered)
    # vocabulary, so rho != 1 at an unchanged policy (0.95-0.98 per token at top_p 0.95),
    # biasing the student weights and GRPO's clipping. Evaluation keeps both settings.
    _require(r.top_p == 1.0, "rollout.top_p",
             f"must be 1.0 for training, got {r.top_p} (the learner scores the full vocabulary; "
             "nucleus sampling is for evaluation: trainer.eval_top_p)")
    _require(r.top_k == -1, "rollout.top_k",
             f"must be -1 (off) for training, got {r.top_k} (the learner scores the full vocabulary; "
             "top-k sampling is for evaluation: trainer.eval_top_k)")
    _require(0 < tr.eval_top_p <= 1, "trainer.eval_top_p", "must be in (0, 1]")
    _require(tr.eval_top_k == -1 or tr.eval_top_k > 0, "trainer.eval_top_k", "must be -1 (off) or > 0")
    _require(r.tensor_parallel_size >= 1, "rollout.tensor_parallel_size", "must be >= 1")
    _require(0 < r.gpu_memory_utilization <= 1, "rollout.gpu_memory_utilization", "must be in (0, 1]")
    _require(r.prompts_per_request >= 0, "rollout.prompts_per_request", "must be >= 0 (0 = each worker's whole share)")
    _require(r.max_num_seqs >= 0, "rollout.max_num_seqs", "must be >= 0 (0 = a worker's share of a step)")
    _require(r.max_calls_in_flight >= -1, "rollout.max_calls_in_flight",
             "must be >= -1 (0 = every call a worker holds, -1 = by device)")
    _require(r.weight_bucket_mb >= 1, "rollout.weight_bucket_mb", "must be >= 1")
    _require(t.num_replicas >= 1, "teacher.num_replicas", "must be >= 1")
    _require(t.max_batch_tokens >= 1, "teacher.max_batch_tokens", "must be >= 1")
    _require(t.max_wait_ms >= 0, "teacher.max_wait_ms", "must be >= 0")
    _require(0 < t.gpu_memory_utilization <= 1, "teacher.gpu_memory_utilization", "must be in (0, 1]")
    _require(t.temperature > 0, "teacher.temperature", "must be > 0")
    reference = a.name in ALGORITHMS and ALGORITHMS[a.name].scorer(a.kl_beta) == "reference"
    _require(t.backend == "hf" or not reference or r.temperature == 1.0, "teacher.backend",
             f"must be 'hf' for {a.name} when rollout.temperature != 1 (the reference is scored tempered)")
    _require(t.backend == "hf" or t.temperature == 1.0, "teacher.temperature",
             "must be 1.0 with teacher.backend 'vllm' (its prompt log-probs are raw); use backend 'hf'")
    _require(lr.num_workers >= 1, "learner.num_workers", "must be >= 1")
    # Stage 0 is refused: without ZeRO, DeepSpeed does not skip non-finite steps when
    # given a torch optimizer.
    _require(lr.zero_stage in (1, 2, 3), "learner.zero_stage", f"must be 1, 2 or 3, got {lr.zero_stage}")
    _require(lr.lr > 0, "learner.lr", "must be > 0")
    _require(lr.weight_decay >= 0, "learner.weight_decay", "must be >= 0")
    _require(len(lr.betas) == 2 and all(0 <= b < 1 for b in lr.betas), "learner.betas", "must be two numbers in [0, 1)")
    _require(lr.grad_clip >= 0, "learner.grad_clip", "must be >= 0 (0 = off)")
    lora_problem = LoraOptions.from_config(lr.lora).problem()
    if lora_problem is not None:
        raise ConfigError(f"learner.lora.{lora_problem[0]}: {lora_problem[1]}")
    _require(lr.grad_accum_dtype == "float32" or m.dtype == "bfloat16", "learner.grad_accum_dtype",
             f"bfloat16 needs model.dtype bfloat16 (a {m.dtype} model sums its gradients in its own dtype)")
    _require(not (m.dtype == "bfloat16" and lr.zero_stage == 1 and lr.grad_accum_dtype == "float32"),
             "learner.grad_accum_dtype", ZERO1_BF16_FP32)
    min_tokens = m.max_prompt_tokens + m.max_response_tokens
    _require(lr.micro_batch_tokens >= min_tokens, "learner.micro_batch_tokens",
             f"must hold one full sequence (>= {min_tokens} = max_prompt_tokens + max_response_tokens)")
    _require(t.max_batch_tokens >= min_tokens, "teacher.max_batch_tokens",
             f"must hold one full sequence (>= {min_tokens})")
    try:
        get_algorithm(a.name)
    except ValueError as exc:  # names the algorithm, with a "did you mean"
        raise ConfigError(f"algorithm.name: {exc}") from None
    _require(a.tau > 0, "algorithm.tau", "must be > 0")
    _require(a.clip_eps > 0, "algorithm.clip_eps", "must be > 0")
    _require(a.kl_beta >= 0, "algorithm.kl_beta", "must be >= 0")
    _require(a.topk >= 1, "algorithm.topk", f"must be >= 1, got {a.topk}")
    _require(a.distill == "sampled" or ALGORITHMS[a.name].scorer(a.kl_beta) == "teacher", "algorithm.distill",
             f"topk needs an algorithm with a teacher (the scope family or opd), got {a.name}")
    vocab = _vocab_size(m.teacher) if check_paths and a.distill == "topk" and m.teacher else None
    _require(vocab is None or a.topk <= vocab, "algorithm.topk",
             f"must be at most the teacher's vocabulary ({vocab}), got {a.topk}")
    _require(tr.prompts_per_step >= 1, "trainer.prompts_per_step", "must be >= 1")
    _require(tr.total_steps >= 1, "trainer.total_steps", "must be >= 1")
    _require(0 <= tr.max_staleness <= MAX_STALENESS, "trainer.max_staleness", f"must be in [0, {MAX_STALENESS}]")
    # recompute keeps one earlier policy on the learner (the one the last step replaced).
    _require(tr.max_staleness <= 1 or lr.old_logp == "rollout", "trainer.max_staleness",
             f"{tr.max_staleness} needs learner.old_logp 'rollout' (recompute covers rollouts one version old)")
    # A broadcast needs the workers idle; with more than one step ahead they never are.
    _require(tr.max_staleness <= 1 or r.weight_sync == "safetensors", "trainer.max_staleness",
             f"{tr.max_staleness} needs rollout.weight_sync 'safetensors' (a broadcast waits for idle workers)")
    _require(r.extra_prompts >= -1, "rollout.extra_prompts", "must be -1 (a quarter of the step) or >= 0")
    _require(r.extra_prompts <= 0 or r.partial_rollouts, "rollout.extra_prompts",
             "needs rollout.partial_rollouts=true (without it the extra groups would be generated and thrown away)")
    if r.partial_rollouts:
        _require(r.extra_prompts != 0, "rollout.extra_prompts",
                 "0 leaves nothing to pause with rollout.partial_rollouts; use >= 1 or -1")
        _require(r.extra_prompts <= tr.prompts_per_step, "rollout.extra_prompts",
                 f"at most trainer.prompts_per_step ({tr.prompts_per_step}): the groups carried into a step are "
                 "trained in it")
        # A resumed sample's tokens come from two policies; the learner keeps one earlier.
        _require(lr.old_logp == "rollout", "rollout.partial_rollouts",
                 "needs learner.old_logp 'rollout' (a resumed sample's tokens come from two policies)")
        _require(tr.schedule == "stream", "rollout.partial_rollouts",
                 "needs trainer.schedule 'stream' (the sequential schedule is the benchmark baseline)")
    _require(tr.eval_every >= 0, "trainer.eval_every", "must be >= 0")
    _require(tr.eval_k >= 1, "trainer.eval_k", "must be >= 1")
    _require(tr.save_every >= 0, "trainer.save_every", "must be >= 0")
    _require(tr.keep_checkpoints >= 1, "trainer.keep_checkpoints", "must be >= 1")
    for key in ("generate_timeout_s", "score_timeout_s", "train_timeout_s", "sync_timeout_s"):
        _require(getattr(tr, key) > 0, f"trainer.{key}", "must be > 0")
    _require(tr.max_nonfinite_steps >= 1, "trainer.max_nonfinite_steps", "must be >= 1")
    _check_loggers(tr.loggers)
    _require(tr.actor_max_restarts >= 0, "trainer.actor_max_restarts", "must be >= 0")


def _vocab_size(model_dir: str) -> int | None:
    """The vocabulary in a local HF model dir's config.json (None: a hub id, or unread)."""
    import json

    path = Path(model_dir) / "config.json"
    try:
        cfg = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    vocab = cfg.get("vocab_size", (cfg.get("text_config") or {}).get("vocab_size"))
    return int(vocab) if isinstance(vocab, int) else None


def _has_weights(model_dir: Path) -> bool:
    return any(model_dir.glob("*.safetensors")) or any(model_dir.glob("pytorch_model*.bin"))


# --------------------------------------------------------------------------- loading


def _field_types(cls: type) -> dict[str, Any]:
    hints = typing.get_type_hints(cls)
    return {f.name: hints[f.name] for f in dataclasses.fields(cls)}


def _unknown_key(key: str, known: list[str]) -> ConfigError:
    leaf = key.rsplit(".", 1)[-1]
    prefix = key[: len(key) - len(leaf)]
    close = difflib.get_close_matches(leaf, known, n=1)
    hint = f" (did you mean {prefix + close[0]!r}?)" if close else ""
    return ConfigError(f"{key}: unknown key{hint}")


def _coerce(key: str, value: Any, tp: Any) -> Any:
    origin = typing.get_origin(tp)
    if origin is Literal:
        choices = typing.get_args(tp)
        if value not in choices:
            raise ConfigError(f"{key}: must be one of {list(choices)}, got {value!r}")
        return value
    if origin in (list, typing.List):  # noqa: UP006
        (item_tp,) = typing.get_args(tp)
        if isinstance(value, str):
            value = [v for v in value.split(",") if v] if value else []
        if not isinstance(value, list):
            raise ConfigError(f"{key}: expected a list, got {type(value).__name__}")
        return [_coerce(f"{key}[{i}]", v, item_tp) for i, v in enumerate(value)]
    if origin is dict:
        key_tp, val_tp = typing.get_args(tp)
        if not isinstance(value, dict):
            raise ConfigError(f"{key}: expected a mapping, got {type(value).__name__}")
        return {_coerce(f"{key}", k, key_tp): _coerce(f"{key}.{k}", v, val_tp) for k, v in value.items()}
    if origin in (typing.Union, types.UnionType):
        raise ConfigError(f"{key}: union types are not supported in the config tree")
    if tp is bool:
        if isinstance(value, bool):
            return value
        raise ConfigError(f"{key}: expected true/false, got {value!r}")
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            if isinstance(value, float) and value.is_integer():
                return int(value)
            raise ConfigError(f"{key}: expected an integer, got {value!r}")
        return value
    if tp is float:
        if isinstance(value, str):
            # YAML 1.1 reads "1e-5" (no dot) as a string; accept any float literal.
            try:
                return float(value)
            except ValueError:
                pass
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"{key}: expected a number, got {value!r}")
        return float(value)
    if tp is str:
        if not isinstance(value, str):
            raise ConfigError(f"{key}: expected a string, got {value!r}")
        return value
    raise ConfigError(f"{key}: unsupported field type {tp!r}")


def _apply(obj: Any, data: dict[str, Any], prefix: str = "") -> None:
    if not isinstance(data, dict):
        raise ConfigError(f"{prefix.rstrip('.') or '<root>'}: expected a mapping, got {type(data).__name__}")
    types_ = _field_types(type(obj))
    for key, value in data.items():
        full = f"{prefix}{key}"
        if key not in types_:
            raise _unknown_key(full, list(types_))
        tp = types_[key]
        if dataclasses.is_dataclass(tp):
            _apply(getattr(obj, key), value, f"{full}.")
        else:
            setattr(obj, key, _coerce(full, value, tp))


def parse_override(text: str) -> tuple[list[str], Any]:
    """``a.b=value`` -> (["a", "b"], parsed value); the value is read as YAML."""
    if "=" not in text:
        raise ConfigError(f"{text}: overrides look like section.key=value")
    key, raw = text.split("=", 1)
    key = key.strip()
    if not key or any(not part for part in key.split(".")):
        raise ConfigError(f"{text}: bad key {key!r}")
    try:
        value = yaml.safe_load(raw) if raw.strip() else ""
    except yaml.YAMLError as exc:
        raise ConfigError(f"{key}: cannot parse value {raw!r}: {exc}") from None
    return key.split("."), value


def _nest(path: list[str], value: Any) -> dict[str, Any]:
    out: Any = value
    for part in reversed(path):
        out = {part: out}
    return out


def overlay_overrides(path: str | Path) -> list[str]:
    """A layout overlay (launch/configs/layouts/*.yaml: a partial config tree that moves
    actors between GPUs and nodes) as ``section.key=<json>`` overrides, one per leaf key.
    Values are compact JSON (valid YAML, no spaces), so each is one shell word; whole
    values replace the recipe's (``resources: {teacher_node: 1}`` is a placement change)."""
    import json

    data: Any = yaml.safe_load(Path(path).read_text()) or {}
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: a layout is a mapping of config sections")
    out: list[str] = []
    for section, values in data.items():
        if not isinstance(values, dict):
            raise ConfigError(f"{path}: {section}: expected a mapping of keys")
        for key, value in values.items():
            out.append(f"{section}.{key}={json.dumps(value, separators=(',', ':'))}")
    return out


def load_config(
    path: str | os.PathLike | None = None, overrides: list[str] | None = None, *, check_paths: bool = True
) -> RunConfig:
    """Defaults <- YAML file <- dotted overrides, then validated."""
    cfg = RunConfig()
    if path is not None:
        p = Path(path)
        if not p.is_file():
            raise ConfigError(f"{p}: config file does not exist")
        try:
            data = yaml.safe_load(p.read_text()) or {}
        except yaml.YAMLError as exc:
            raise ConfigError(f"{p}: not valid YAML: {exc}") from None
        try:
            _apply(cfg, data)
        except ConfigError as exc:
            raise ConfigError(f"{p}: {exc}") from None
    for text in overrides or []:
        keys, value = parse_override(text)
        _apply(cfg, _nest(keys, value))
    if check_paths:
        _resolve_hub_ids(cfg)
    return cfg.validate(check_paths)


def _check_loggers(loggers: list[str]) -> None:
    from scope_ray.controller.trackers import TRACKERS, missing_extra

    for name in loggers:
        _require(name in TRACKERS, "trainer.loggers", f"unknown logger {name!r}; choose from {list(TRACKERS)}")
        install = missing_extra(name)
        _require(install is None, "trainer.loggers", f"{name!r} is not installed: {install}")
    _require(len(set(loggers)) == len(loggers), "trainer.loggers", f"{loggers}: each logger once")
    # mlflow-skinny has no database backend, and MLflow 3 refuses a file store unless told.
    _require("mlflow" not in loggers or bool(os.environ.get("MLFLOW_TRACKING_URI")), "trainer.loggers",
             "'mlflow' needs MLFLOW_TRACKING_URI: a tracking server, or file:DIR with MLFLOW_ALLOW_FILE_STORE=true")


def _resolve_hub_ids(cfg: RunConfig) -> None:
    """Hugging Face ids in model.student / model.teacher -> their local snapshot dirs
    (scope_ray/model_source.py), here on the driver before any actor starts."""
    from scope_ray.model_source import ModelNotFound, resolve_model

    for key in ("student", "teacher"):
        try:
            setattr(cfg.model, key, resolve_model(getattr(cfg.model, key)))
        except ModelNotFound as exc:
            raise ConfigError(f"model.{key}: {exc}") from None


def dump_config(cfg: RunConfig, path: str | os.PathLike) -> None:
    Path(path).write_text(yaml.safe_dump(cfg.to_dict(), sort_keys=False))
