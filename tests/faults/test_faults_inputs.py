"""Bad input to ``scope-ray train``: one line naming the key, no traceback, exit code 2,
and nothing started (no Ray, no actor). Config values and paths are covered key by key
in tests/test_config.py, dataset rows (fuzzed) in tests/data/test_dataset.py."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from scope_ray.cli import main


def _args(boot: Any, student: Path | str, teacher: Path | str, run_dir: Path) -> list[str]:
    return ["train", f"model.student={student}", f"model.teacher={teacher}", f"data.train_files=[{boot.train_file}]",
            f"trainer.run_dir={run_dir}"]


def _copy_without(src: Path, dst: Path, *names: str) -> Path:
    shutil.copytree(src, dst)
    for n in names:
        (dst / n).unlink()
    return dst


@pytest.mark.parametrize("case, message", [
    ("missing", "does not exist"),
    ("no_config", "has no config.json (not an HF model dir)"),
    ("no_weights", "has no weights (*.safetensors or pytorch_model*.bin)"),
])
def test_bad_model_dir_is_one_line(case: str, message: str, tiny_bootstrap, tmp_path, capsys) -> None:
    teacher = Path(tiny_bootstrap.teacher_dir)
    bad = {
        "missing": lambda: tmp_path / "nope",
        "no_config": lambda: _copy_without(teacher, tmp_path / "t", "config.json"),
        "no_weights": lambda: _copy_without(teacher, tmp_path / "t", "model.safetensors"),
    }[case]()
    rc = main(_args(tiny_bootstrap, tiny_bootstrap.student_dir, bad, tmp_path / "run"))
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2
    assert len(err) == 1 and err[0].startswith("scope-ray: config error: model.teacher: ") and message in err[0]
    assert not (tmp_path / "run").exists()  # refused before anything was written


def test_tokenizer_mismatch_is_one_line_before_ray_starts(tiny_bootstrap, tmp_path) -> None:
    from transformers import AutoTokenizer

    # Same model, tokenizer with one extra token: ids still line up, vocabularies do not.
    teacher = Path(shutil.copytree(tiny_bootstrap.teacher_dir, tmp_path / "teacher"))
    tok = AutoTokenizer.from_pretrained(teacher)
    assert tok.add_tokens(["<not-in-the-student>"]) == 1
    tok.save_pretrained(teacher)

    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    proc = subprocess.run([sys.executable, "-m", "scope_ray.cli", *_args(tiny_bootstrap, tiny_bootstrap.student_dir,
                                                                         teacher, tmp_path / "run")],
                          capture_output=True, text=True, env=env, timeout=300)
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert "Traceback" not in proc.stderr
    last = proc.stderr.strip().splitlines()[-1]
    assert last.startswith("scope-ray: config error: model.teacher: student tokenizer")
    assert "'<not-in-the-student>'" in last
    # Checked before Ray: no local cluster was started, no actor was built.
    assert "Started a local Ray instance" not in proc.stderr + proc.stdout


@pytest.mark.parametrize("backend, response_tokens, role", [
    ("hf", 512 - 128 + 1, "student"),  # one token over the tiny models' 512 positions
    ("vllm", 512 - 128, "teacher"),  # exactly 512: the vLLM teacher needs 513
])
def test_a_rollout_longer_than_the_context_is_one_line_before_ray_starts(
        backend, response_tokens, role, tiny_bootstrap, tmp_path, capsys, monkeypatch) -> None:
    from scope_ray.log_routing import PROCESS_LOG_ENV

    from scope_ray.controller import cluster

    monkeypatch.setenv(PROCESS_LOG_ENV, "")  # main() points it at the run's train.log
    connected = []
    monkeypatch.setattr(cluster, "connect", lambda *a, **k: connected.append(a))
    args = [*_args(tiny_bootstrap, tiny_bootstrap.student_dir, tiny_bootstrap.teacher_dir, tmp_path / "run"),
            "model.max_prompt_tokens=128", f"model.max_response_tokens={response_tokens}",
            f"teacher.backend={backend}"]
    rc = main(args)
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2
    assert err[-1].startswith("scope-ray: config error: model.max_response_tokens: max_prompt_tokens + "
                              f"max_response_tokens = {128 + response_tokens} does not fit the {role}'s context "
                              "of 512 tokens")
    assert not connected  # refused before Ray


def test_a_stopped_run_is_one_line_and_exit_3(tiny_bootstrap, tmp_path, capsys, monkeypatch) -> None:
    """The CLI's side of a deliberate stop (learner failure, non-finite steps): the
    stops themselves are run for real in tests/faults/test_faults_stop.py, and one through the
    real CLI end to end (SIGTERM, exit 3) in tests/faults/test_faults_driver.py."""
    import logging

    from scope_ray.controller import launch
    from scope_ray.controller.trainer import TrainingStopped

    def stopped(*args: Any, **kwargs: Any) -> None:
        raise TrainingStopped("learner failed at step 2: learner worker 0: train_step() failed. Stopped; "
                              "last checkpoint: /x/step_000001")

    monkeypatch.setattr(launch, "run_training", stopped)
    from scope_ray.log_routing import PROCESS_LOG_ENV

    monkeypatch.setenv(PROCESS_LOG_ENV, "")  # main() points it at the run's train.log
    root = logging.getLogger()
    before = list(root.handlers)
    try:
        rc = main(_args(tiny_bootstrap, tiny_bootstrap.student_dir, tiny_bootstrap.teacher_dir, tmp_path / "run"))
    finally:
        for h in [h for h in root.handlers if h not in before]:  # train.log handler
            root.removeHandler(h)
            h.close()
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 3
    assert err[-1] == ("scope-ray: training stopped: learner failed at step 2: learner worker 0: train_step() failed. "
                       "Stopped; last checkpoint: /x/step_000001")
    assert "Traceback" not in "\n".join(err)
    assert "training stopped" in (tmp_path / "run" / "train.log").read_text()

