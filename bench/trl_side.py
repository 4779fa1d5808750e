"""The TRL side of bench/trl_peer.py: on-policy distillation with TRL's DistillationTrainer.

Runs inside ``.venv-trl`` (bench/trl_setup.sh), not the project's ``.venv``; it imports
nothing from scope_ray. ``bench/trl_peer.py`` writes a spec JSON (models, prompts in the
order scope-ray's sampler visits them, with scope-ray's rendered token ids, and the
settings) and reads back the JSON this script writes.

Settings, chosen to match the scope-ray side:
- ``trl.DistillationTrainer`` / ``DistillationConfig`` (trl 1.16): on-policy generation
  by the student (transformers ``generate``; TRL's vLLM path needs ``vllm<=0.31`` on a GPU),
  loss = generalised JSD with ``beta=1``, i.e. reverse KL over the full vocabulary, against
  the teacher at every completion token.
- One completion per dataset row (TRL's distillation is n=1), so every prompt appears G
  times in a row and a step's generation batch is ``prompts_per_step * G`` rows: the same
  number of rollouts per step, from the same prompts, as scope-ray's groups.
- ``bf16=False``, ``gradient_checkpointing=False`` (TRL defaults to both) and the same
  learning rate, weight decay, Adam betas, gradient clip and a constant schedule (TRL
  defaults to lr 1e-6 with linear decay).
- Same sampling temperature (TRL also divides the logits by it in the loss), no top-k /
  top-p, same maximum response length.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from importlib.metadata import version
from pathlib import Path


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("spec", type=Path, help="JSON written by bench/trl_peer.py")
    ap.add_argument("out", type=Path, help="result JSON to write")
    args = ap.parse_args(argv)
    spec = json.loads(args.spec.read_text())
    t_start = time.perf_counter()

    import torch
    from datasets import Dataset
    from transformers import AutoTokenizer, TrainerCallback

    from trl import DistillationConfig, DistillationTrainer

    if spec.get("torch_threads"):
        torch.set_num_threads(int(spec["torch_threads"]))
    t_import = time.perf_counter() - t_start

    steps, pps, g = int(spec["steps"]), int(spec["prompts_per_step"]), int(spec["group_size"])
    prompts = spec["prompts"]  # [{"text": ..., "ids": [...]}] in scope-ray's visiting order
    if len(prompts) < steps * pps:
        raise SystemExit(f"need {steps * pps} prompts, got {len(prompts)}")
    tok = AutoTokenizer.from_pretrained(spec["student"], padding_side="left", truncation_side="left")
    # TRL tokenizes a plain-text prompt with processing_class(text=...); it must give the
    # same ids scope-ray renders (the chat template applied, no special tokens added).
    for p in prompts[: steps * pps]:
        ids = tok(text=[p["text"]])["input_ids"][0]
        if list(ids) != list(p["ids"]):
            raise SystemExit(f"prompt token ids differ from scope-ray's for {p['text']!r}: {ids} vs {p['ids']}")
    rows = [{"prompt": p["text"]} for p in prompts[: steps * pps] for _ in range(g)]
    dataset = Dataset.from_list(rows)

    cfg = DistillationConfig(
        output_dir=str(spec["output_dir"]),
        max_steps=steps,
        per_device_train_batch_size=pps * g,
        gradient_accumulation_steps=1,
        learning_rate=float(spec["lr"]),
        lr_scheduler_type="constant",
        warmup_steps=0,
        weight_decay=float(spec["weight_decay"]),
        adam_beta1=float(spec["betas"][0]),
        adam_beta2=float(spec["betas"][1]),
        adam_epsilon=float(spec["eps"]),
        max_grad_norm=float(spec["grad_clip"]),
        bf16=False,
        fp16=False,
        gradient_checkpointing=False,
        use_cpu=True,
        beta=1.0,  # reverse KL
        temperature=float(spec["temperature"]),
        top_p=1.0,
        top_k=0,
        max_completion_length=int(spec["max_response_tokens"]),
        shuffle_dataset=False,  # rows are already in scope-ray's order, grouped per step
        use_vllm=False,
        seed=int(spec["seed"]),
        logging_steps=1,
        save_strategy="no",
        report_to="none",
        dataloader_num_workers=0,
        disable_tqdm=True,
        model_init_kwargs={"dtype": "float32"},
        teacher_model_init_kwargs={"dtype": "float32"},
    )

    class Trace(DistillationTrainer):
        """Counts rollout tokens and generation time per step (TRL logs neither per step)."""

        def __init__(self, *a, **kw):
            super().__init__(*a, **kw)
            self.gen = []  # (seconds, completion tokens, sequences)

        def _generate_single_turn(self, prompt_ids, images, multimodal_fields, has_tool_images=False):
            t0 = time.perf_counter()
            out = super()._generate_single_turn(prompt_ids, images, multimodal_fields, has_tool_images)
            self.gen.append((time.perf_counter() - t0, sum(len(c) for c in out), len(out)))
            return out

    step_marks: list[tuple[float, float]] = []
    log_rows: list[dict] = []

    class Clock(TrainerCallback):
        def on_step_begin(self, args, state, control, **kw):
            step_marks.append((time.perf_counter(), float("nan")))

        def on_step_end(self, args, state, control, **kw):
            a, _ = step_marks[-1]
            step_marks[-1] = (a, time.perf_counter())

        def on_log(self, args, state, control, logs=None, **kw):
            if logs:
                row = {k: v for k, v in logs.items() if isinstance(v, (int, float))}
                row["step"] = state.global_step
                log_rows.append(row)

    t0 = time.perf_counter()
    trainer = Trace(model=spec["student"], teacher_model=spec["teacher"], args=cfg, train_dataset=dataset,
                    processing_class=tok, callbacks=[Clock()])
    t_init = time.perf_counter() - t0
    t0 = time.perf_counter()
    trainer.train()
    t_train = time.perf_counter() - t0
    final = Path(spec["output_dir"]) / "final"
    t0 = time.perf_counter()
    trainer.save_model(str(final))
    tok.save_pretrained(str(final))
    t_save = time.perf_counter() - t0

    steps_out = []
    for i, (a, b) in enumerate(step_marks):
        gen_s, gen_tok, n = trainer.gen[i] if i < len(trainer.gen) else (float("nan"), 0, 0)
        steps_out.append({"step": i + 1, "step_s": b - a, "generate_s": gen_s, "rollout_tokens": gen_tok,
                          "rollouts": n})
    out = {
        "side": "trl",
        "trainer": "trl.DistillationTrainer",
        "versions": {p: version(p) for p in ("torch", "trl", "transformers", "accelerate", "datasets")},
        "torch_threads": torch.get_num_threads(),
        "python": sys.version.split()[0],
        "pid": os.getpid(),
        "import_s": t_import,
        "init_s": t_init,  # model + teacher load, trainer set-up
        "train_s": t_train,  # trainer.train(): every step, including its own set-up
        "save_s": t_save,
        "steps": steps_out,
        "logs": log_rows,
        "final_model": str(final),
        "config": {k: getattr(cfg, k) for k in (
            "learning_rate", "lr_scheduler_type", "weight_decay", "max_grad_norm", "bf16", "gradient_checkpointing",
            "beta", "temperature", "top_p", "top_k", "max_completion_length", "per_device_train_batch_size",
            "gradient_accumulation_steps", "max_steps", "use_vllm")},
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(out, indent=1, default=str) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
