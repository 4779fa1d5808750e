"""Build the embedded default: synthetic task files, a tiny teacher and a weaker student.

    art = bootstrap(BootstrapOptions(), default_cache_dir())
    art.teacher_dir, art.student_dir, art.train_file, art.test_file, art.metrics

The result is cached under ``<cache>/bootstrap-<hash of the options>``: a second call with
the same options returns at once. A cache entry is built in a temporary directory, gets
its ``COMPLETE`` marker written last, and is then renamed into place, so an interrupted
build never looks valid; an entry without the marker is deleted and rebuilt. A file lock
makes concurrent callers (parallel tests, several Ray drivers) wait for one build.

The student is weak for a learnable reason: it is smaller *and* trained for far fewer
steps on the same correct solutions, so it makes arithmetic slips that on-policy
distillation from the teacher can fix (no corrupted labels).

Presets (:meth:`BootstrapOptions.preset`): ``default``; ``tiny`` (seconds, for tests);
``imperfect-teacher``, the paper's regime: the same student, and a teacher that learned
one systematic misconception (every multiplication by 3 or more written as an addition),
so it is right on the other problems and wrong, the same way, on the third of problems
that hold such a step. Its test files tag each problem's type in ``data_source``
(``..._bigmul`` / ``..._rest``), so the bootstrap metrics and every evaluation of a run
report accuracy per type.
"""

from __future__ import annotations

import contextlib
import dataclasses
import fcntl
import hashlib
import json
import logging
import os
import shutil
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from scope_ray.bootstrap.models import TinyModelSpec
from scope_ray.bootstrap.sft import SFTOptions

logger = logging.getLogger(__name__)

MARKER = "COMPLETE"
METRICS_FILE = "metrics.json"
OPTIONS_FILE = "options.json"
# Bump when the build code changes what it produces for the same options.
BUILD_VERSION = 1
# Knobs that change how fast a build runs, never what it produces.
_UNHASHED = frozenset({"log_every", "num_threads"})
# Options added after caches existed: hashed only when set, so existing caches of the
# presets that leave them at their default stay valid.
_HASHED_WHEN_SET = {"teacher_mul_as_add_from": 0}
PRESETS = ("default", "tiny", "imperfect-teacher")


def default_cache_dir() -> Path:
    env = os.environ.get("SCOPE_RAY_CACHE")
    return Path(env).expanduser() if env else Path.home() / ".cache" / "scope-ray"


@dataclass(frozen=True)
class BootstrapOptions:
    """Every knob of the embedded build. The defaults are tuned for a 2-core CPU: a few
    minutes to build, teacher >= 90% greedy on the test split, student well below it."""

    seed: int = 0
    # Task difficulty (see scope_ray.data.synthetic.LEVELS): 3 and 4 operations.
    levels: tuple[int, ...] = (2, 3)
    n_train: int = 10000
    n_test: int = 200
    # Same width, twice the depth: a 2-layer model learns the two-hop lookups (which
    # operator and operand come next in the question) much more slowly.
    teacher: TinyModelSpec = TinyModelSpec(hidden_size=128, num_layers=4, num_heads=4,
                                           num_kv_heads=2, intermediate_size=384)
    student: TinyModelSpec = TinyModelSpec(hidden_size=128, num_layers=2, num_heads=4,
                                           num_kv_heads=2, intermediate_size=384)
    # The teacher trains past the sudden drop in loss (around step 150-200) to ~0.01.
    # The student stops in the middle of its own drop, at a constant lr (no anneal):
    # measured avg@8 21% / 26% / 42% after 130 / 140 / 150 steps. There its errors are
    # a few slips per solution that the teacher's token-level signal can fix; stopped
    # earlier (120 annealed steps, avg@8 14%) its wrong answers are mostly noise, and
    # SCOPE barely moved it in 40 steps.
    teacher_sft: SFTOptions = SFTOptions(steps=280, batch_size=64, lr=2e-3, warmup_steps=15)
    student_sft: SFTOptions = SFTOptions(steps=140, batch_size=64, lr=2e-3, warmup_steps=10,
                                         min_lr_ratio=1.0)
    # > 0: the teacher's SFT solutions write every multiplication by this much or more as
    # an addition (synthetic.misconceived_solution), and the data files tag each
    # problem's type; the imperfect-teacher preset. 0: the teacher learns correct solutions.
    teacher_mul_as_add_from: int = 0
    # Measure teacher greedy accuracy and student avg@K / pass@K on the test split after
    # building (stored in metrics.json; `scope-ray bootstrap` prints them).
    evaluate: bool = True
    eval_k: int = 8
    eval_temperature: float = 0.6
    max_response_tokens: int = 96

    @classmethod
    def tiny_for_tests(cls) -> BootstrapOptions:
        """Seconds to build; the models are barely trained (tests check plumbing only)."""
        small = TinyModelSpec(hidden_size=64, num_layers=1, num_heads=2, num_kv_heads=1,
                              intermediate_size=128)
        return cls(levels=(1,), n_train=256, n_test=16, teacher=small, student=small,
                   teacher_sft=SFTOptions(steps=6, batch_size=16, lr=3e-3, warmup_steps=2),
                   student_sft=SFTOptions(steps=3, batch_size=16, lr=3e-3, warmup_steps=1),
                   evaluate=False, max_response_tokens=48)

    @classmethod
    def preset(cls, name: str) -> BootstrapOptions:
        """The options of a named preset (:data:`PRESETS`; module docstring)."""
        if name == "tiny":
            return cls.tiny_for_tests()
        if name == "imperfect-teacher":
            return cls(teacher_mul_as_add_from=3)
        if name == "default":
            return cls()
        raise ValueError(f"unknown bootstrap preset {name!r}; choose from {list(PRESETS)}")

    def validate(self) -> None:
        if self.teacher_mul_as_add_from < 0:
            raise ValueError(f"teacher_mul_as_add_from must be >= 0, got {self.teacher_mul_as_add_from}")
        self.teacher.validate("teacher")
        self.student.validate("student")
        self.teacher_sft.validate()
        self.student_sft.validate()
        if self.n_train < 1 or self.n_test < 1 or not self.levels:
            raise ValueError("need n_train >= 1, n_test >= 1 and at least one level")
        from scope_ray.data.synthetic import get_level

        for level in self.levels:
            get_level(level)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def cache_key(self) -> str:
        def strip(obj: Any) -> Any:
            if isinstance(obj, dict):
                return {k: strip(v) for k, v in obj.items()
                        if k not in _UNHASHED and not (k in _HASHED_WHEN_SET and v == _HASHED_WHEN_SET[k])}
            if isinstance(obj, (list, tuple)):
                return [strip(v) for v in obj]
            return obj

        blob = json.dumps({"version": BUILD_VERSION, "options": strip(self.to_dict())},
                          sort_keys=True)
        return hashlib.sha256(blob.encode()).hexdigest()[:16]


@dataclass(frozen=True)
class BootstrapArtifacts:
    cache_dir: Path
    teacher_dir: Path
    student_dir: Path
    train_file: Path
    test_file: Path
    metrics: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def at(cls, root: Path) -> BootstrapArtifacts:
        metrics_path = root / METRICS_FILE
        metrics = json.loads(metrics_path.read_text()) if metrics_path.exists() else {}
        return cls(cache_dir=root, teacher_dir=root / "teacher", student_dir=root / "student",
                   train_file=root / "data" / "train.parquet",
                   test_file=root / "data" / "test.parquet", metrics=metrics)


def is_complete(root: Path) -> bool:
    return (root / MARKER).is_file()


@contextlib.contextmanager
def _locked(path: Path) -> Iterator[None]:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a+") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def bootstrap(opts: BootstrapOptions, cache_dir: Path | str | None = None, *,
              force: bool = False) -> BootstrapArtifacts:
    """Return the cached artifacts for ``opts``, building them first if needed."""
    opts.validate()
    cache = Path(cache_dir) if cache_dir is not None else default_cache_dir()
    root = cache / f"bootstrap-{opts.cache_key()}"
    if not force and is_complete(root):
        logger.info("bootstrap cache hit: %s", root)
        return BootstrapArtifacts.at(root)
    with _locked(cache / f".{root.name}.lock"):
        # Another process may have finished the same build while we waited for the lock.
        if not force and is_complete(root):
            return BootstrapArtifacts.at(root)
        if root.exists():
            logger.warning("removing %s %s", "old" if force else "incomplete", root)
            shutil.rmtree(root)
        # Temp dirs of builds that were killed (SIGKILL runs no cleanup); we hold the
        # lock, so none of them belongs to a live build.
        for stale in cache.glob(f".{root.name}.tmp-*"):
            shutil.rmtree(stale, ignore_errors=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".{root.name}.tmp-", dir=cache))
        try:
            build_into(tmp, opts)
            tmp.rename(root)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
    logger.info("bootstrap built %s", root)
    return BootstrapArtifacts.at(root)


def build_into(out: Path, opts: BootstrapOptions) -> dict[str, Any]:
    """Build everything under ``out``; the marker file is written last."""
    from scope_ray.bootstrap.models import init_model, save_model_dir
    from scope_ray.bootstrap.sft import problem_examples, train_sft
    from scope_ray.bootstrap.tokenizer import build_tokenizer
    from scope_ray.data.synthetic import make_splits, misconceived_solution, write_parquet

    start = time.perf_counter()
    train, test = make_splits(opts.n_train, opts.n_test, opts.levels, opts.seed)
    wrong_from = opts.teacher_mul_as_add_from
    write_parquet(train, out / "data" / "train.parquet", split="train", mul_type_from=wrong_from)
    write_parquet(test, out / "data" / "test.parquet", split="test", mul_type_from=wrong_from)
    tokenizer = build_tokenizer()
    examples = problem_examples(train, tokenizer)
    # The imperfect teacher learns the misconceived solutions of the same problems.
    teacher_examples = examples if not wrong_from else problem_examples(
        train, tokenizer, targets=[misconceived_solution(p, wrong_from) for p in train])
    metrics: dict[str, Any] = {}
    # The models get different init seeds; both see the same training problems.
    for name, spec, sft, seed_offset, data in (("teacher", opts.teacher, opts.teacher_sft, 1, teacher_examples),
                                                ("student", opts.student, opts.student_sft, 2, examples)):
        model = init_model(spec, seed=opts.seed * 1000 + seed_offset)
        result = train_sft(model, data, dataclasses.replace(sft, seed=sft.seed + opts.seed),
                           pad_id=tokenizer.pad_token_id)
        save_model_dir(model, out / name)
        metrics[f"{name}_sft_seconds"] = round(result.seconds, 1)
        metrics[f"{name}_final_loss"] = round(sum(result.losses[-10:]) / max(1, len(result.losses[-10:])), 4)
        logger.info("%s: %d SFT steps in %.1fs, final loss %.4f", name, sft.steps, result.seconds,
                    metrics[f"{name}_final_loss"])
        del model
    metrics["train_seconds"] = round(time.perf_counter() - start, 1)
    if opts.evaluate:
        metrics.update(measure_accuracies(out, opts))
    metrics["build_seconds"] = round(time.perf_counter() - start, 1)
    (out / OPTIONS_FILE).write_text(json.dumps(opts.to_dict(), indent=2, sort_keys=True))
    (out / METRICS_FILE).write_text(json.dumps(metrics, indent=2, sort_keys=True))
    (out / MARKER).write_text(f"{opts.cache_key()}\n")
    return metrics


def measure_accuracies(out: Path, opts: BootstrapOptions) -> dict[str, float]:
    """Teacher greedy accuracy and student avg@K / pass@K on the test split.

    Runs in a child process (see :func:`~scope_ray.evaluation.run_isolated`) so the
    caller can still train at full speed afterwards (a second build, a test session).
    """
    from scope_ray.engines.vllm_engine import run_isolated

    return run_isolated(_measure_in_child, str(out), opts)


def _measure_in_child(out: str, opts: BootstrapOptions) -> dict[str, float]:
    from scope_ray.evaluation import evaluate_model_dir

    root = Path(out)
    test = [root / "data" / "test.parquet"]
    teacher = evaluate_model_dir(root / "teacher", test, 1, temperature=0.0,
                                 max_tokens=opts.max_response_tokens, engine_seed=opts.seed)
    student = evaluate_model_dir(root / "student", test, opts.eval_k,
                                 temperature=opts.eval_temperature,
                                 max_tokens=opts.max_response_tokens, engine_seed=opts.seed)
    k = opts.eval_k
    out = {"teacher_greedy_acc": round(teacher.avg_at_k, 4),
           f"student_avg@{k}": round(student.avg_at_k, 4),
           f"student_pass@{k}": round(student.pass_at_k, 4),
           "eval_seconds": round(teacher.seconds + student.seconds, 1)}
    if opts.teacher_mul_as_add_from:  # each problem type on its own (data_source tags it)
        for kind in ("bigmul", "rest"):
            out[f"teacher_greedy_acc/{kind}"] = round(_by_type(teacher, kind, "avg@1"), 4)
            out[f"student_avg@{k}/{kind}"] = round(_by_type(student, kind, f"avg@{k}"), 4)
            out[f"{kind}_fraction"] = round(_type_fraction(teacher, kind), 4)
    return out


def _by_type(report: Any, kind: str, metric: str) -> float:
    """A metric over the problems of one type (all levels), weighted by their count."""
    counts = {s: len(v) for s, v in report.counts_by_source.items() if s.endswith(f"_{kind}")}
    total = sum(counts.values())
    return sum(report.per_source[s][metric] * n for s, n in counts.items()) / total if total else float("nan")


def _type_fraction(report: Any, kind: str) -> float:
    n = sum(len(v) for s, v in report.counts_by_source.items() if s.endswith(f"_{kind}"))
    return n / max(1, report.n_problems)
