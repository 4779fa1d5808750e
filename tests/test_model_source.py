"""Hugging Face ids for model.student / model.teacher / scope-ray eval
(scope_ray/model_source.py), without a network: the test writes the embedded models into
a hub-cache layout, as huggingface_hub would have downloaded them, and runs offline."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import yaml

from scope_ray.config import ConfigError, dump_config, load_config
from scope_ray.model_source import ModelNotFound, hub_cache_dir, is_hub_id, resolve_model

COMMIT = "0123456789abcdef0123456789abcdef01234567"


def _cache_model(cache: Path, repo: str, source: Path, commit: str = COMMIT) -> Path:
    """``source`` as ``repo`` at ``commit`` (branch main) in a hub cache at ``cache``."""
    root = cache / f"models--{repo.replace('/', '--')}"
    snapshot = root / "snapshots" / commit
    shutil.copytree(source, snapshot)
    (root / "refs").mkdir(parents=True, exist_ok=True)
    (root / "refs" / "main").write_text(commit)
    return snapshot


@pytest.fixture
def offline_cache(tmp_path, monkeypatch) -> Path:
    cache = tmp_path / "hf" / "hub"
    cache.mkdir(parents=True)
    monkeypatch.setenv("HF_HUB_CACHE", str(cache))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    return cache


def test_what_counts_as_an_id(tmp_path, monkeypatch) -> None:
    assert is_hub_id("Qwen/Qwen3-1.7B-Base") and is_hub_id("Qwen/Qwen3-1.7B-Base@v1.0")
    assert is_hub_id(f"org/name@{COMMIT}")
    assert not is_hub_id("") and not is_hub_id("/mnt/models/Qwen3-8B") and not is_hub_id("./models/x")
    assert not is_hub_id("just-a-name") and not is_hub_id("a/b/c")
    local = tmp_path / "org" / "name"
    local.mkdir(parents=True)
    monkeypatch.chdir(tmp_path)
    assert not is_hub_id("org/name")  # an existing directory wins
    monkeypatch.delenv("HF_HUB_CACHE", raising=False)
    monkeypatch.setenv("HF_HOME", str(tmp_path / "home"))
    assert hub_cache_dir() == tmp_path / "home" / "hub"


def test_an_id_resolves_to_its_cached_snapshot_offline(offline_cache, tiny_bootstrap) -> None:
    snapshot = _cache_model(offline_cache, "local-test/tiny-student", Path(tiny_bootstrap.student_dir))
    for ref in ("local-test/tiny-student", "local-test/tiny-student@main", f"local-test/tiny-student@{COMMIT}"):
        assert resolve_model(ref) == str(snapshot)
    assert resolve_model(str(tiny_bootstrap.student_dir)) == str(tiny_bootstrap.student_dir)


def test_an_unknown_id_is_one_line_naming_it_and_the_cache(offline_cache) -> None:
    with pytest.raises(ModelNotFound) as info:
        resolve_model("nobody/nothing@v2")
    msg = str(info.value)
    assert "\n" not in msg and "'nobody/nothing@v2' is not a local directory" in msg
    assert f"not in the Hugging Face cache {offline_cache}" in msg and "HF_HUB_OFFLINE=1" in msg
    with pytest.raises(ConfigError, match=r"^model.student: 'nobody/nothing' is not a local directory"):
        load_config(None, ["model.student=nobody/nothing", "model.teacher=nobody/nothing",
                           "data.train_files=[x.jsonl]"])


def test_trains_from_hub_ids_offline(ray_session, tiny_bootstrap, offline_cache, tmp_path) -> None:
    """Both models by id, resolved on the driver into the snapshot directories (repo and
    commit in the path) that every actor then loads, and that config.yaml records."""
    from scope_ray.controller.launch import run_training

    student = _cache_model(offline_cache, "local-test/tiny-student", Path(tiny_bootstrap.student_dir))
    teacher = _cache_model(offline_cache, "local-test/tiny-teacher", Path(tiny_bootstrap.teacher_dir),
                           commit="f" * 40)
    run_dir = tmp_path / "run"
    cfg = load_config(None, [
        "model.student=local-test/tiny-student", "model.teacher=local-test/tiny-teacher@main",
        f"data.train_files=[{tiny_bootstrap.train_file}]", "trainer.eval_every=0", "trainer.eval_at_end=false",
        "trainer.prompts_per_step=4", "rollout.group_size=4", "model.max_response_tokens=32",
        "trainer.save_every=0", "trainer.total_steps=2", f"trainer.run_dir={run_dir}",
    ])
    assert cfg.model.student == str(student) and cfg.model.teacher == str(teacher)
    run_training(cfg, run_dir, None, show_progress=False)
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows if "learner/loss" in r] == [1, 2]
    # What `scope-ray train` writes to the run's config.yaml: the snapshots, not the ids.
    dump_config(cfg, tmp_path / "config.yaml")
    saved = yaml.safe_load((tmp_path / "config.yaml").read_text())["model"]
    assert saved["student"] == str(student) and saved["teacher"] == str(teacher)


def test_scope_ray_eval_resolves_its_model_the_same_way(offline_cache, tiny_bootstrap, capsys) -> None:
    from scope_ray.cli import main

    assert main(["eval", "--model", "nobody/nothing", "--data", str(tiny_bootstrap.test_file), "--k", "2"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("scope-ray: config error: --model: 'nobody/nothing' is not a local")
