"""``scope-ray train``: resolve the config and models, build the actors, run the loop.

Embedded default (no model paths): the tiny task, teacher and student come from
``scope-ray bootstrap``'s cache (built on first use). Under ``ray job submit``
(``RAY_ADDRESS`` set) the driver joins that cluster; otherwise it starts a local Ray.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from pathlib import Path

from scope_ray import log_routing
from scope_ray.config import ConfigError, RunConfig, dump_config, load_config
from scope_ray.controller import checkpoint as ckpt
from scope_ray.controller.stream import PromptItem
from scope_ray.controller.trainer import Components, RunSummary, Trainer, TrainingStopped

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class ResolvedInputs:
    student_dir: str
    teacher_dir: str
    train_files: list[str]
    eval_files: list[str]


def resolve_inputs(cfg: RunConfig) -> ResolvedInputs:
    """Model dirs and data files; for the embedded default, bootstrap them (cached)."""
    if not cfg.uses_embedded_models:
        # GRPO may run without a teacher; the student then stands in for the checks.
        teacher = cfg.model.teacher or cfg.model.student
        return ResolvedInputs(cfg.model.student, teacher, list(cfg.data.train_files), list(cfg.data.eval_files))
    from scope_ray.bootstrap.build import BootstrapOptions, bootstrap, default_cache_dir

    opts = BootstrapOptions.preset(cfg.bootstrap.preset)
    cache = Path(cfg.bootstrap.cache_dir) if cfg.bootstrap.cache_dir else default_cache_dir()
    art = bootstrap(opts, cache)
    return ResolvedInputs(
        str(art.student_dir), str(art.teacher_dir),
        list(cfg.data.train_files) or [str(art.train_file)],
        list(cfg.data.eval_files) or [str(art.test_file)],
    )


def load_prompt_items(cfg: RunConfig, inputs: ResolvedInputs, tokenizer) -> tuple[list[PromptItem], list[PromptItem]]:
    from scope_ray.data import load_prompts

    def items(files: list[str]) -> list[PromptItem]:
        ds = load_prompts(
            files, tokenizer=tokenizer, max_prompt_tokens=cfg.model.max_prompt_tokens,
            on_bad_row=cfg.data.on_bad_row, instruction_suffix=cfg.data.prompt_suffix,
        )
        rendered = ds.render_many(list(ds))
        return [
            PromptItem(rec.uid, i, list(r.token_ids), rec.ground_truth, rec.data_source)
            for i, (rec, r) in enumerate(zip(ds, rendered))
        ]

    train = items(inputs.train_files)
    evals = items(inputs.eval_files) if inputs.eval_files else []
    if cfg.data.max_eval_prompts:
        evals = evals[: cfg.data.max_eval_prompts]
    return train, evals


def make_run_dir(cfg: RunConfig) -> Path:
    if cfg.trainer.run_dir:
        path = Path(cfg.trainer.run_dir)
    else:
        path = Path("runs") / f"{cfg.trainer.name}-{time.strftime('%Y%m%d-%H%M%S')}"
    path.mkdir(parents=True, exist_ok=True)
    return path


def is_local(cfg: RunConfig) -> bool:
    """True when this driver will start its own Ray (no ray.address, no $RAY_ADDRESS)."""
    from scope_ray.controller.cluster import ray_address

    return not ray_address(cfg.ray)


def check_models(inputs: ResolvedInputs, cfg: RunConfig | None = None) -> None:
    """Student and teacher must share a tokenizer (the teacher scores the student's token
    ids), and hold a full rollout in their context. Checked before Ray or any actor
    starts; a problem is a one-line ConfigError."""
    from scope_ray.data import check_same_tokenizer

    try:
        check_same_tokenizer(inputs.student_dir, inputs.teacher_dir)
    except (ValueError, OSError) as exc:
        raise ConfigError(f"model.teacher: {' '.join(str(exc).split())}") from None
    if cfg is None:
        return
    m = cfg.model
    longest = m.max_prompt_tokens + m.max_response_tokens
    # The vLLM teacher's engine needs one position more (actors/teacher.py).
    teacher_needs = longest + (1 if cfg.teacher.backend == "vllm" else 0)
    for role, model_dir, need in (("student", inputs.student_dir, longest), ("teacher", inputs.teacher_dir, teacher_needs)):
        context = model_context_length(model_dir)
        if context is not None and need > context:
            raise ConfigError(
                f"model.max_response_tokens: max_prompt_tokens + max_response_tokens = {longest} does not fit the "
                f"{role}'s context of {context} tokens (max_position_embeddings in {model_dir}/config.json)"
                + ("; the vllm teacher backend needs one token more" if need > longest else ""))


def model_context_length(model_dir: str) -> int | None:
    """``max_position_embeddings`` of an HF model dir (its text config for wrapped
    models), or None when it does not say."""
    from scope_ray.engines.vllm_engine import text_config

    try:
        value = text_config(model_dir).get("max_position_embeddings")
    except (OSError, ValueError):
        return None
    return int(value) if isinstance(value, (int, float)) else None


def start_components(cfg: RunConfig) -> Components:
    """Check the inputs, then start Ray (or join it) and every actor, with the data loaded."""
    from transformers import AutoTokenizer

    from scope_ray.controller import cluster

    inputs = resolve_inputs(cfg)
    check_models(inputs, cfg)
    tokenizer = AutoTokenizer.from_pretrained(inputs.student_dir)
    train_items, eval_items = load_prompt_items(cfg, inputs, tokenizer)
    logger.info("data: %d training prompts, %d held-out prompts", len(train_items), len(eval_items))
    cluster.connect(cfg.ray, cfg)
    from scope_ray.planning import check_live

    check_live(cfg)  # a layout the cluster can never hold fails here, not after train_timeout_s
    return cluster.build(cfg, inputs.student_dir, inputs.teacher_dir, tokenizer, train_items, eval_items)


def run_training(cfg: RunConfig, run_dir: Path, resume_from: ckpt.CheckpointRef | None, *, show_progress: bool = True) -> RunSummary:
    from scope_ray.controller import cluster

    parts = start_components(cfg)
    try:
        from scope_ray.controller.progress import ProgressDisplay
        from scope_ray.controller.stop_signal import catch_stop_signals

        # Installed once the actors are up: a signal during start-up just ends the process
        # (nothing is trained yet); from here on it ends the step and checkpoints it.
        with catch_stop_signals() as stop_request, ProgressDisplay(
                cfg.trainer.total_steps, start=resume_from.step if resume_from else 0,
                eval_k=cfg.trainer.eval_k, enabled=show_progress) as progress:
            trainer = Trainer(cfg, run_dir, parts, resume_from, stop_request)
            summary = trainer.run(progress.update)
        if trainer.curves is None:  # not drawn yet for a tracker's artifacts
            trainer.log.plot(run_dir / "curves.png", eval_k=cfg.trainer.eval_k)
        return summary
    finally:
        cluster.shutdown(parts)


def train_command(config_path: str | None, overrides: list[str], resume_dir: str | None) -> int:
    resume_from = None
    if resume_dir:
        run_dir = Path(resume_dir)
        saved = run_dir / "config.yaml"
        if config_path is None and not saved.is_file():
            raise ConfigError(f"{saved}: no saved config in the run directory to resume")
        cfg = load_config(config_path or saved, overrides)
        resume_from = ckpt.latest_valid(run_dir)
        if resume_from is None:
            raise ConfigError(f"{run_dir}: no valid checkpoint to resume from")
    else:
        cfg = load_config(config_path, overrides)
        run_dir = make_run_dir(cfg)
    cfg.trainer.run_dir = str(run_dir)
    dump_config(cfg, run_dir / "config.yaml")
    log_routing.add_run_log(run_dir / "train.log")
    if not log_routing.is_verbose() and is_local(cfg):
        log_routing.route_process_output(run_dir / "train.log")
    logger.info("run directory: %s", run_dir)
    try:
        summary = run_training(cfg, run_dir, resume_from)
    except TrainingStopped as exc:
        # The whole chain (remote tracebacks included) into train.log; the CLI prints
        # the one line on the terminal.
        logger.error("training stopped: %s", exc, exc_info=True, extra=log_routing.FILE_ONLY)
        raise
    from scope_ray.controller.progress import print_summary

    print_summary(summary, cfg.trainer.eval_k)
    return 0

