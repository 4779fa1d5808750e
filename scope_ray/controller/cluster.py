"""Ray connection and actor construction from the config (placement lives here).

On one machine the actors' ``num_cpus`` are a scheduling budget, so a local Ray gets at
least as many logical CPUs as the config asks for. On a GPU cluster each rollout
worker, teacher replica and learner worker asks for its GPUs, and can be pinned to nodes
with Ray custom resources (``resources`` in the config sections).
"""

from __future__ import annotations

import logging
import math
import os
from typing import Any

from scope_ray import log_routing
from scope_ray.config import RayConfig, RunConfig
from scope_ray.errors import first_line
from scope_ray.controller.trainer import Components, TrainingStopped
from scope_ray.engines.vllm_engine import EngineOptions

logger = logging.getLogger(__name__)


def logical_cpus_needed(cfg: RunConfig) -> int:
    r, t, lr = cfg.rollout, cfg.teacher, cfg.learner
    need = r.num_workers * r.num_cpus + t.num_replicas * t.num_cpus + lr.num_workers * lr.num_cpus
    return max(1, math.ceil(need))


def connect(rc: RayConfig, cfg: RunConfig | None = None) -> None:
    """Join ``ray.address`` / ``$RAY_ADDRESS`` (e.g. under ``ray job submit``), else start
    a local Ray in this process."""
    import ray

    if ray.is_initialized():
        return
    address = ray_address(rc)
    if address:
        logger.info("joining Ray cluster at %s", address)
        ray.init(address=address)
        return
    # No dashboard, hence no job server: nothing accepts HTTP job submissions, and
    # every port the local Ray opens (GCS, raylet, workers, agents) listens on loopback
    # only (bind_local_ray_to_loopback). Ray 2.60's token authentication (on by default:
    # a token in ~/.ray/auth_token) stays on as well unless RAY_AUTH_MODE says otherwise.
    # If this driver is SIGKILLed, the Ray it started goes too: GCS, raylet and actors
    # within seconds, the two node agents within about a minute (docs/RELIABILITY.md).
    bind_local_ray_to_loopback()
    num_cpus = rc.num_cpus or max(os.cpu_count() or 1, logical_cpus_needed(cfg) if cfg else 1)
    # address="local": a new Ray even when another one runs on this machine. Plain
    # ray.init() would attach to the newest local cluster (/tmp/ray/ray_current_cluster,
    # e.g. a `ray start --head` or another run) and then refuse num_cpus. To join such a
    # cluster on purpose, set ray.address=auto or RAY_ADDRESS.
    routed = log_routing.routes_process_output()
    # Routed: the actors write to train.log themselves, and Ray's client logs go through
    # the root logger (log_routing); nothing for Ray to forward or configure.
    ray.init(address="local", num_cpus=num_cpus, include_dashboard=False, dashboard_host=rc.dashboard_host,
             log_to_driver=not routed, configure_logging=not routed)
    logger.info("started local Ray with %d logical CPUs (token auth: %s)", num_cpus,
                os.environ.get("RAY_AUTH_MODE", "token"))


def ray_address(rc: RayConfig) -> str:
    """The cluster to join: ``ray.address``, else ``$RAY_ADDRESS``; "" = start a local Ray."""
    return rc.address or os.environ.get("RAY_ADDRESS", "")


def bind_local_ray_to_loopback() -> None:
    """Make the local Ray this process starts use 127.0.0.1 as its node address, so its
    gRPC servers (which listen on loopback only when the node address is 127.0.0.1) and
    agents are unreachable from the network: a one-machine run has no reason to be.

    Ray refuses ``_node_ip_address="127.0.0.1"`` (it resolves loopback to the machine's
    routable address) except in its single-machine mode, the one it uses on macOS and
    Windows, switched by ``RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0``. That variable is read
    when Ray is imported, which has happened by now, so the parsed constant is set too;
    the variable reaches the processes Ray spawns. tests/faults/test_faults_driver.py reads the
    listening sockets of a real run and fails if a Ray upgrade changes this.
    """
    import ray._private.ray_constants as ray_constants

    os.environ["RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"] = "0"
    ray_constants.ENABLE_RAY_CLUSTER = False


def _quiet_env() -> dict[str, Any]:
    """vLLM logs every engine step at INFO; keep its warnings and errors only (the
    driver shows actor logs). Set VLLM_LOGGING_LEVEL yourself to see more."""
    return {"env_vars": {"VLLM_LOGGING_LEVEL": os.environ.get("VLLM_LOGGING_LEVEL", "WARNING")}}


def rollout_max_num_seqs(cfg: RunConfig) -> int:
    """``rollout.max_num_seqs``, or (0) a worker's whole share of a step (its prompts x G:
    what its engine holds when its calls decode together), and at least 8 evaluation
    prompts x eval_k. More in flight (the next steps' calls under max_staleness, a larger
    evaluation) wait in vLLM's queue and join as sequences end."""
    r, t = cfg.rollout, cfg.trainer
    if r.max_num_seqs > 0:
        return r.max_num_seqs
    share = -(-t.prompts_per_step // max(1, r.num_workers))
    return max(share * r.group_size, 8 * t.eval_k)


def _engine_options(cfg: RunConfig, model_dir: str) -> EngineOptions:
    r = cfg.rollout
    # gpu_memory_utilization applies where the engine finds a GPU; a CPU engine sizes its
    # KV cache from max_num_seqs. Decided inside the actor (create_llm), not here: the
    # driver may run on a head node without a GPU.
    return EngineOptions(
        model_dir=model_dir,
        seed=cfg.trainer.seed,
        max_model_len=cfg.model.max_prompt_tokens + cfg.model.max_response_tokens,
        tensor_parallel_size=r.tensor_parallel_size,
        gpu_memory_utilization=r.gpu_memory_utilization,
        max_num_seqs=rollout_max_num_seqs(cfg),
        dtype=cfg.model.dtype,
        enable_weight_sync=True,
        # Log-probs of the tempered (and top-k/top-p) distribution actually sampled from;
        # the learner scores at the same temperature (LearnerOptions.temperature).
        logprobs_mode="processed_logprobs",
    )


def build(cfg: RunConfig, student_dir: str, teacher_dir: str, tokenizer: Any, train_items: list[Any],
          eval_items: list[Any]) -> Components:
    """Start every actor and wait until all are ready (errors name the actor); the
    whole set of what the trainer drives, data included."""
    import ray

    from actors.learner import LearnerGroup, LearnerOptions
    from actors.rollout import RolloutWorker
    from actors.teacher import TeacherServer
    from scope_ray.algo import get_algorithm
    from scope_ray.reward import get_default_pool, verify_batch

    r, t = cfg.rollout, cfg.teacher
    sampling = {"temperature": r.temperature, "top_p": r.top_p, "top_k": r.top_k, "max_tokens": cfg.model.max_response_tokens}
    restarts = cfg.trainer.actor_max_restarts
    workers = [
        # Restarted by Ray when they die, but their calls are not retried by Ray: a
        # restarted worker holds the initial weights, so the controller re-syncs it and
        # re-issues its prompts itself (stream.py).
        RolloutWorker.options(
            num_cpus=r.num_cpus, num_gpus=r.num_gpus * r.tensor_parallel_size, resources=dict(r.resources),
            runtime_env=_quiet_env(), max_restarts=restarts, max_task_retries=0,
        ).remote(
            _engine_options(cfg, student_dir), sampling, worker_index=i, max_calls_in_flight=r.max_calls_in_flight,
        )
        for i in range(r.num_workers)
    ]
    spec = get_algorithm(cfg.algorithm.name)
    teachers = []
    # The scoring server serves the teacher (SCOPE, OPD) or, for GRPO's KL term, the
    # frozen initial student as the reference policy.
    scorer = spec.scorer(cfg.algorithm.kl_beta)
    scorer_dir = teacher_dir if scorer == "teacher" else student_dir
    # The reference is the initial *sampling* policy, tempered like the trained one.
    scorer_temperature = t.temperature if scorer == "teacher" else r.temperature
    if scorer is not None:
        teachers = [
            # Scoring is a pure function of its input: Ray retries a lost call on the
            # restarted replica by itself (the stream then tries another replica).
            TeacherServer.options(
                num_cpus=t.num_cpus, num_gpus=t.num_gpus, resources=dict(t.resources), runtime_env=_quiet_env(),
                max_restarts=restarts, max_task_retries=restarts,
            ).remote(
                scorer_dir, backend=t.backend, max_batch_tokens=t.max_batch_tokens, max_wait_ms=t.max_wait_ms,
                dtype=cfg.model.dtype, seed=cfg.trainer.seed,
                max_model_len=cfg.model.max_prompt_tokens + cfg.model.max_response_tokens,
                gpu_memory_utilization=t.gpu_memory_utilization,
                temperature=scorer_temperature,
            )
            for _ in range(t.num_replicas)
        ]

    def make_learner() -> LearnerGroup:
        # Also the restore path (trainer.on_learner_failure): a fresh group from the
        # initial model, into which the trainer loads the last checkpoint.
        return LearnerGroup(
            student_dir, LearnerOptions.from_run_config(cfg), num_workers=cfg.learner.num_workers,
            timeout_s=cfg.trainer.train_timeout_s, resources=dict(cfg.learner.resources),
        )

    learner = make_learner()
    for name, handles in (("rollout worker", workers), ("teacher replica", teachers)):
        for i, h in enumerate(handles):
            try:
                ray.get(h.ready.remote(), timeout=cfg.trainer.generate_timeout_s)
            except Exception as exc:  # noqa: BLE001 - named and re-raised
                raise TrainingStopped(f"{name} {i} failed to start: {first_line(exc)}") from exc
    # Warm the verifier's worker pool now rather than inside the first step.
    get_default_pool()

    def verify(texts: list[str], truths: list[str]) -> list[Any]:
        return verify_batch(texts, truths)

    from scope_ray.data import PromptSampler

    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    return Components(
        rollout_workers=workers, teachers=teachers, learner=learner, verify=verify, pad_id=int(pad_id),
        train_sampler=PromptSampler(train_items, seed=cfg.trainer.seed), eval_items=list(eval_items),
        make_learner=make_learner,
    )


def shutdown(parts: Components | None) -> None:
    import ray

    if parts is None:
        return
    for h in [*parts.rollout_workers, *parts.teachers]:
        try:
            ray.kill(h)
        except Exception:  # noqa: BLE001 - best effort at exit
            pass
    try:
        parts.learner.shutdown()
    except Exception:  # noqa: BLE001
        pass
