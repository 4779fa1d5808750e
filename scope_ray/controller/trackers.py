"""Experiment trackers a run reports to (``trainer.loggers``): TensorBoard (the default),
Weights & Biases and MLflow. ``metrics.jsonl`` is always written (run_logger.py).

wandb and MLflow are optional extras (``pip install 'scope-ray[wandb]'`` / ``[mlflow]``),
imported only when selected; the config check refuses a selected one that is not
installed before Ray starts. Each gets the project (``trainer.project``), the run name
(``trainer.run_name``, default the run directory's name), the tags, the resolved config
and the run directory; the curves PNG and ``summary.json`` go up as artifacts when the
run ends. The tracker's run id is kept in the run directory (``trackers.json``), so
``--resume`` continues the same tracker run. Steps replayed after a resume (those after
the checkpoint) are logged again: MLflow keeps both values of such a step, wandb keeps
the first (it takes no step below one it has seen).

Where they write is theirs to configure, as their users expect: wandb's ``WANDB_MODE``
(``offline`` for no network), ``WANDB_DIR`` (default: the run directory); MLflow's
``MLFLOW_TRACKING_URI`` (required: a tracking server, or ``file:DIR`` with
``MLFLOW_ALLOW_FILE_STORE=true``, since MLflow 3 refuses a file store otherwise and
``mlflow-skinny`` has no database backend).
"""

from __future__ import annotations

import importlib.util
import json
import logging
import math
import os
import re
import secrets
import time
from pathlib import Path
from typing import Any, Protocol

logger = logging.getLogger(__name__)

TRACKERS = ("tensorboard", "wandb", "mlflow")
EXTRAS = {"wandb": ("wandb", "wandb"), "mlflow": ("mlflow", "mlflow")}  # logger -> (module, extra)
STATE_FILE = "trackers.json"


class Tracker(Protocol):
    def log(self, step: int, scalars: dict[str, float]) -> None: ...
    def artifact(self, path: Path) -> None: ...
    def close(self, failed: bool) -> None: ...


def missing_extra(name: str) -> str | None:
    """The pip command that would install what logger ``name`` needs, if it is missing."""
    if name not in EXTRAS:
        return None
    module, extra = EXTRAS[name]
    return None if importlib.util.find_spec(module) is not None else f"pip install 'scope-ray[{extra}]'"


def open_trackers(names: list[str], run_dir: Path, *, project: str, run_name: str, tags: list[str],
                  config: dict[str, Any]) -> list[Tracker]:
    state_path = run_dir / STATE_FILE
    state = json.loads(state_path.read_text()) if state_path.is_file() else {}
    name = run_name or run_dir.name
    out: list[Tracker] = []
    for kind in names:
        if kind == "tensorboard":
            out.append(TensorBoardTracker(run_dir))
        elif kind == "wandb":
            out.append(WandbTracker(run_dir, project, name, tags, config, state.get("wandb")))
            state["wandb"] = out[-1].run_id  # type: ignore[attr-defined]
        elif kind == "mlflow":
            out.append(MlflowTracker(run_dir, project, name, tags, config, state.get("mlflow")))
            state["mlflow"] = out[-1].run_id  # type: ignore[attr-defined]
        else:
            raise ValueError(f"unknown logger {kind!r} (expected one of {TRACKERS})")
    if state:
        state_path.write_text(json.dumps(state))
    return out


def finite_scalars(row: dict[str, Any]) -> dict[str, float]:
    return {k: float(v) for k, v in row.items()
            if k != "step" and isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)}


class TensorBoardTracker:
    def __init__(self, run_dir: Path) -> None:
        from torch.utils.tensorboard import SummaryWriter

        self._writer = SummaryWriter(log_dir=str(run_dir / "tensorboard"))

    def log(self, step: int, scalars: dict[str, float]) -> None:
        for k, v in scalars.items():
            self._writer.add_scalar(k, v, step)
        self._writer.flush()

    def artifact(self, path: Path) -> None:
        pass  # the files are in the run directory next to the events

    def close(self, failed: bool) -> None:
        self._writer.close()


class WandbTracker:
    def __init__(self, run_dir: Path, project: str, name: str, tags: list[str], config: dict[str, Any],
                 run_id: str | None) -> None:
        import wandb

        self.run_id = run_id or secrets.token_hex(4)  # wandb's own form: 8 lowercase characters
        self._run = wandb.init(project=project, name=name, id=self.run_id, resume="allow", tags=tags,
                               dir=os.environ.get("WANDB_DIR") or str(run_dir),
                               config={**config, "run_dir": str(run_dir)}, notes=f"run directory: {run_dir}")

    def log(self, step: int, scalars: dict[str, float]) -> None:
        self._run.log(scalars, step=step)

    def artifact(self, path: Path) -> None:
        import wandb

        art = wandb.Artifact(f"{self.run_id}-{path.stem}", type="run-output")
        art.add_file(str(path))
        self._run.log_artifact(art)

    def close(self, failed: bool) -> None:
        self._run.finish(exit_code=1 if failed else 0)


_MLFLOW_NAME = re.compile(r"[^\w\-. /]")


def mlflow_key(key: str) -> str:
    """MLflow allows letters, digits, ``_ - . / space``: ``eval/avg@8`` -> ``eval/avg_at_8``."""
    return _MLFLOW_NAME.sub("_", key.replace("@", "_at_"))


class MlflowTracker:
    def __init__(self, run_dir: Path, project: str, name: str, tags: list[str], config: dict[str, Any],
                 run_id: str | None) -> None:
        from mlflow.entities import Param
        from mlflow.tracking import MlflowClient

        self._client = MlflowClient()  # MLFLOW_TRACKING_URI
        if run_id is None:
            experiment = self._client.get_experiment_by_name(project)
            eid = experiment.experiment_id if experiment else self._client.create_experiment(project)
            run = self._client.create_run(eid, run_name=name, tags={"run_dir": str(run_dir),
                                                                    **{f"tag.{t}": "1" for t in tags}})
            run_id = run.info.run_id
            params = [Param(k[:250], str(v)[:6000]) for k, v in _flatten(config).items()]
            for i in range(0, len(params), 100):  # MLflow's batch limit
                self._client.log_batch(run_id, params=params[i:i + 100])
            self._client.log_dict(run_id, config, "config.json")
        else:
            self._client.update_run(run_id, status="RUNNING")
        self.run_id = run_id

    def log(self, step: int, scalars: dict[str, float]) -> None:
        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        self._client.log_batch(self.run_id, metrics=[Metric(mlflow_key(k), v, now, step) for k, v in scalars.items()])

    def artifact(self, path: Path) -> None:
        self._client.log_artifact(self.run_id, str(path))

    def close(self, failed: bool) -> None:
        self._client.set_terminated(self.run_id, "FAILED" if failed else "FINISHED")


def _flatten(d: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in d.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict):
            out.update(_flatten(v, f"{key}."))
        else:
            out[key] = v
    return out
