"""trainer.loggers: wandb (offline) and MLflow (a local file store) next to TensorBoard,
run for real through the trainer and read back through their own formats and APIs: the
metrics at every step equal metrics.jsonl, the config, tags and artifacts are there, and
a resumed run continues the same tracker runs."""

from __future__ import annotations

import json
import shutil
import struct
from pathlib import Path
from typing import Any

import pytest

from scope_ray.config import ConfigError, load_config
from scope_ray.controller import checkpoint as ckpt
from scope_ray.controller import trackers
from scope_ray.controller.trackers import mlflow_key

LOGGERS = "trainer.loggers=[tensorboard,wandb,mlflow]"


def _cfg(boot: Any, run_dir: Path, steps: int = 3) -> Any:
    return load_config(None, [
        f"model.student={boot.student_dir}", f"model.teacher={boot.teacher_dir}",
        f"data.train_files=[{boot.train_file}]", f"data.eval_files=[{boot.test_file}]",
        "data.max_eval_prompts=8", "trainer.eval_k=2", "trainer.eval_every=2", "trainer.prompts_per_step=4",
        "rollout.group_size=4", "model.max_response_tokens=32", "trainer.save_every=1", "trainer.keep_checkpoints=3",
        f"trainer.total_steps={steps}", f"trainer.run_dir={run_dir}", LOGGERS, "trainer.project=scope-test",
        "trainer.run_name=tracked", "trainer.tags=[ci,tiny]",
    ])


@pytest.fixture(scope="module")
def tracker_env(tmp_path_factory) -> Any:
    """wandb offline and MLflow on a local file store, for this module's runs."""
    root = tmp_path_factory.mktemp("trackers")
    paths = {"wandb": root / "wandb", "mlflow": root / "mlruns"}
    paths["wandb"].mkdir()
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("WANDB_MODE", "offline")
        mp.setenv("WANDB_DIR", str(paths["wandb"]))
        mp.setenv("WANDB_SILENT", "true")
        mp.setenv("MLFLOW_TRACKING_URI", f"file:{paths['mlflow']}")
        mp.setenv("MLFLOW_ALLOW_FILE_STORE", "true")
        yield paths


@pytest.fixture(scope="module")
def tracked_run(ray_session, tiny_bootstrap, tracker_env, tmp_path_factory) -> Path:
    """One 3-step run logging to all three trackers (the tests below read it back, then
    resume it)."""
    from scope_ray.controller.launch import run_training

    run_dir = tmp_path_factory.mktemp("tracked") / "run"
    run_training(_cfg(tiny_bootstrap, run_dir), run_dir, None, show_progress=False)
    return run_dir


def _wandb_records(run_file: Path) -> list[Any]:
    """The records of an offline wandb run file (its LevelDB-style log of protobufs)."""
    from wandb.proto import wandb_internal_pb2 as pb

    data, block = run_file.read_bytes(), 32768
    assert data[:4] == b":W&B"
    out, pos, buf = [], 7, b""
    while pos + 7 <= len(data):
        left = block - pos % block
        _, length, kind = struct.unpack("<IHB", data[pos:pos + 7]) if left >= 7 else (0, 0, 0)
        if left < 7 or (kind == 0 and length == 0):
            pos += left
            continue
        chunk, pos = data[pos + 7:pos + 7 + length], pos + 7 + length
        buf = chunk if kind in (1, 2) else buf + chunk
        if kind in (1, 4):
            record = pb.Record()
            record.ParseFromString(buf)
            out.append(record)
    return out


def _wandb_history(run_file: Path) -> dict[int, dict[str, float]]:
    rows: dict[int, dict[str, float]] = {}
    for r in _wandb_records(run_file):
        if r.WhichOneof("record_type") == "history":
            items = {i.key or "/".join(i.nested_key): json.loads(i.value_json) for i in r.history.item}
            rows.setdefault(int(items["_step"]), {}).update({k: v for k, v in items.items() if not k.startswith("_")})
    return rows


def _jsonl(run_dir: Path) -> dict[int, dict[str, float]]:
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    return {r["step"]: trackers.finite_scalars(r) for r in rows}


def test_wandb_and_mlflow_get_every_step_config_and_artifacts(tracked_run, tracker_env):
    from mlflow.tracking import MlflowClient

    run_dir = tracked_run
    want = _jsonl(run_dir)
    assert sorted(want) == [0, 1, 2, 3] and "eval/avg@2" in want[3] and "learner/loss" in want[1]
    ids = json.loads((run_dir / trackers.STATE_FILE).read_text())

    # MLflow: one run, FINISHED, every metric at every step, the config, the artifacts.
    client = MlflowClient()
    exp = client.get_experiment_by_name("scope-test")
    [run] = client.search_runs([exp.experiment_id])
    assert run.info.run_id == ids["mlflow"] and run.info.status == "FINISHED" and run.info.run_name == "tracked"
    assert run.data.tags["run_dir"] == str(run_dir) and run.data.tags["tag.ci"] == "1"
    assert run.data.params["learner.lr"] == str(load_config(None, []).learner.lr)
    for key in ("learner/loss", "rollout/accuracy", "eval/avg@2", "time/step_s"):
        history = {m.step: m.value for m in client.get_metric_history(run.info.run_id, mlflow_key(key))}
        assert history == {s: row[key] for s, row in want.items() if key in row}, key
    assert {a.path for a in client.list_artifacts(run.info.run_id)} >= {"curves.png", "summary.json", "config.json"}

    # wandb (offline): the run's own record file holds the same history, its config and tags.
    [run_file] = (tracker_env["wandb"] / "wandb").glob(f"offline-run-*-{ids['wandb']}/run-{ids['wandb']}.wandb")
    got = _wandb_history(run_file)
    assert sorted(got) == sorted(want)
    for step, row in want.items():
        assert got[step] == pytest.approx(row, rel=1e-12), step
    records = _wandb_records(run_file)
    [meta] = [r.run for r in records if r.WhichOneof("record_type") == "run"][:1]
    assert meta.project == "scope-test" and meta.display_name == "tracked" and list(meta.tags) == ["ci", "tiny"]
    config = {i.key: json.loads(i.value_json) for i in meta.config.update}  # the run's config, as wandb keeps it
    assert config["learner"]["lr"] == pytest.approx(load_config(None, []).learner.lr)
    assert config["run_dir"] == str(run_dir) and config["trainer"]["loggers"] == ["tensorboard", "wandb", "mlflow"]
    assert sum(r.WhichOneof("record_type") == "artifact" for r in records) == 2  # curves.png, summary.json


def test_a_resumed_run_continues_the_same_tracker_runs(tracked_run, tracker_env, tiny_bootstrap):
    """The run above, stopped after step 2 (its step-3 checkpoint taken away) and resumed."""
    from mlflow.tracking import MlflowClient

    from scope_ray.controller.launch import run_training

    run_dir = tracked_run
    ids = json.loads((run_dir / trackers.STATE_FILE).read_text())
    shutil.rmtree(ckpt.checkpoints_dir(run_dir) / "step_000003")
    ref = ckpt.latest_valid(run_dir)
    assert ref is not None and ref.step == 2
    run_training(_cfg(tiny_bootstrap, run_dir), run_dir, ref, show_progress=False)
    assert json.loads((run_dir / trackers.STATE_FILE).read_text()) == ids
    client = MlflowClient()
    [run] = client.search_runs([client.get_experiment_by_name("scope-test").experiment_id])
    assert run.info.run_id == ids["mlflow"] and run.info.status == "FINISHED"
    steps = [m.step for m in client.get_metric_history(run.info.run_id, "learner/loss")]
    assert steps == [1, 2, 3, 3]  # step 3 replayed after the resume: MLflow keeps both
    runs = sorted((tracker_env["wandb"] / "wandb").glob("offline-run-*"))
    assert len(runs) == 2 and all(p.name.endswith(ids["wandb"]) for p in runs)  # the same wandb run, twice


def test_a_selected_tracker_that_is_not_installed_is_refused_by_name(monkeypatch):
    real = trackers.importlib.util.find_spec
    monkeypatch.setattr(trackers.importlib.util, "find_spec", lambda name: None if name == "wandb" else real(name))
    with pytest.raises(ConfigError, match=r"^trainer.loggers: 'wandb' is not installed: pip install 'scope-ray\[wandb\]'$"):
        load_config(None, ["trainer.loggers=[tensorboard,wandb]"])
    with pytest.raises(ConfigError, match=r"^trainer.loggers: unknown logger 'comet'"):
        load_config(None, ["trainer.loggers=[comet]"])
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    with pytest.raises(ConfigError, match=r"^trainer.loggers: 'mlflow' needs MLFLOW_TRACKING_URI"):
        load_config(None, ["trainer.loggers=[mlflow]"])
