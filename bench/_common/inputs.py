"""The benchmarks' models and task: built once per option set and cached under the work
directory, so every script and repetition does the same work."""

from __future__ import annotations

import hashlib
import json
import logging
import shutil
import tempfile
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

logger = logging.getLogger("bench")

def model_spec(hidden: int, layers: int, heads: int, kv_heads: int, intermediate: int):
    from scope_ray.bootstrap.models import TinyModelSpec

    return TinyModelSpec(hidden_size=hidden, num_layers=layers, num_heads=heads, num_kv_heads=kv_heads,
                         intermediate_size=intermediate)


def default_student():
    from scope_ray.bootstrap.models import TinyModelSpec

    return TinyModelSpec()  # hidden 128, 2 layers (the embedded student's shape)


def teacher_spec(hidden: int, layers: int, heads: int):
    """A teacher shape from three numbers: 4 query heads per KV head, intermediate 3x hidden."""
    return model_spec(hidden, layers, heads, max(1, heads // 4), hidden * 3)


def default_teacher():
    # The embedded teacher's shape: hidden 256, 4 layers; a teacher with some compute.
    return teacher_spec(256, 4, 8)


@dataclass(frozen=True)
class Inputs:
    student_dir: Path
    teacher_dir: Path
    train_file: Path
    test_file: Path
    meta: dict[str, Any] = field(default_factory=dict)

    def overrides(self) -> list[str]:
        return [f"model.student={self.student_dir}", f"model.teacher={self.teacher_dir}",
                f"data.train_files=[{self.train_file}]", f"data.eval_files=[{self.test_file}]"]


def prepare_inputs(work_dir: Path, *, seed: int = 0, n_train: int = 512, n_test: int = 16, level: int = 1,
                   student: Any = None, teacher: Any = None, student_sft_steps: int = 0) -> Inputs:
    """Random-init (optionally briefly SFT'd) student, random-init teacher, task files.

    Cached under ``work_dir/inputs-<hash of the options>``; built in a temporary
    directory and renamed into place, so an interrupted build is never reused.
    ``student_sft_steps > 0`` trains the student that many SFT steps on the task's
    correct solutions, so some of its rollouts verify as correct (SCOPE then sends
    only the incorrect ones to the teacher); 0 keeps it random (every rollout wrong).
    """
    student = student or default_student()
    teacher = teacher or default_teacher()
    opts = {"seed": seed, "n_train": n_train, "n_test": n_test, "level": level, "student": asdict(student),
            "teacher": asdict(teacher), "student_sft_steps": student_sft_steps, "version": 1}
    key = hashlib.sha256(json.dumps(opts, sort_keys=True).encode()).hexdigest()[:12]
    root = work_dir / f"inputs-{key}"
    if not (root / "COMPLETE").is_file():
        work_dir.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".{root.name}.", dir=work_dir))
        try:
            _build_inputs(tmp, opts, student, teacher)
            (tmp / "COMPLETE").write_text(json.dumps(opts, indent=1))
            shutil.rmtree(root, ignore_errors=True)
            tmp.rename(root)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
    meta = json.loads((root / "meta.json").read_text())
    return Inputs(root / "student", root / "teacher", root / "data" / "train.parquet",
                  root / "data" / "test.parquet", meta)


def _build_inputs(out: Path, opts: dict[str, Any], student: Any, teacher: Any) -> None:
    from scope_ray.bootstrap.models import init_model, save_model_dir
    from scope_ray.data.synthetic import make_splits, write_parquet

    t0 = time.perf_counter()
    train, test = make_splits(opts["n_train"], opts["n_test"], opts["level"], opts["seed"])
    write_parquet(train, out / "data" / "train.parquet", split="train")
    write_parquet(test, out / "data" / "test.parquet", split="test")
    meta: dict[str, Any] = dict(opts)
    for name, spec, offset in (("teacher", teacher, 1), ("student", student, 2)):
        model = init_model(spec, seed=opts["seed"] * 1000 + offset)
        if name == "student" and opts["student_sft_steps"] > 0:
            meta["student_sft_final_loss"] = _quick_sft(model, train, opts["student_sft_steps"], opts["seed"])
        meta[f"{name}_params"] = sum(p.numel() for p in model.parameters())
        save_model_dir(model, out / name)
        del model
    meta["build_s"] = round(time.perf_counter() - t0, 1)
    (out / "meta.json").write_text(json.dumps(meta, indent=1))
    logger.info("built inputs in %.1fs: %s", meta["build_s"], out)


def _quick_sft(model: Any, problems: Sequence[Any], steps: int, seed: int) -> float:
    from scope_ray.bootstrap.sft import SFTOptions, problem_examples, train_sft
    from scope_ray.bootstrap.tokenizer import build_tokenizer

    tok = build_tokenizer()
    examples = problem_examples(problems, tok)
    opts = SFTOptions(steps=steps, batch_size=32, lr=3e-3, warmup_steps=max(1, steps // 10), seed=seed)
    result = train_sft(model, examples, opts, pad_id=tok.pad_token_id)
    tail = result.losses[-5:] or [float("nan")]
    return round(sum(tail) / len(tail), 4)
