"""Atomic, self-checking run checkpoints.

Layout: ``<run_dir>/checkpoints/step_000010/`` holding ``controller.json`` (step, data
position, RNG, counters), ``hf/`` (the student in HF format, safetensors),
``deepspeed/`` (model + optimizer state) and ``MANIFEST.json`` written last.

A checkpoint is built under a temporary name and renamed into place only when complete,
so a crash leaves either the old set or the new one, never a half checkpoint under a
final name. The manifest lists every file with its size; a checkpoint whose manifest is
missing or does not match the files is reported and skipped on resume.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

logger = logging.getLogger(__name__)

MANIFEST = "MANIFEST.json"
CONTROLLER_STATE = "controller.json"
PREFIX = "step_"


@dataclass(frozen=True)
class CheckpointRef:
    step: int
    path: Path

    @property
    def hf_dir(self) -> Path:
        return self.path / "hf"

    @property
    def deepspeed_dir(self) -> Path:
        return self.path / "deepspeed"

    def controller_state(self) -> dict[str, Any]:
        return json.loads((self.path / CONTROLLER_STATE).read_text())


def checkpoints_dir(run_dir: str | os.PathLike) -> Path:
    return Path(run_dir) / "checkpoints"


def staging_dir(run_dir: str | os.PathLike, step: int) -> Path:
    """A fresh temporary directory for the checkpoint of ``step``."""
    tmp = checkpoints_dir(run_dir) / f".{PREFIX}{step:06d}.tmp"
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.mkdir(parents=True)
    return tmp


def _file_sizes(root: Path) -> dict[str, int]:
    return {
        str(p.relative_to(root)): p.stat().st_size
        for p in sorted(root.rglob("*"))
        if p.is_file() and p.name != MANIFEST
    }


def commit(run_dir: str | os.PathLike, staged: Path, step: int, controller_state: dict[str, Any], keep: int) -> CheckpointRef:
    """Write the controller state and manifest into ``staged``, then rename it into place."""
    (staged / CONTROLLER_STATE).write_text(json.dumps(controller_state, indent=1))
    manifest = {"step": step, "files": _file_sizes(staged)}
    with open(staged / MANIFEST, "w") as f:
        json.dump(manifest, f, indent=1)
        f.flush()
        os.fsync(f.fileno())
    final = checkpoints_dir(run_dir) / f"{PREFIX}{step:06d}"
    if final.exists():
        shutil.rmtree(final)
    os.replace(staged, final)
    _prune(run_dir, keep)
    logger.info("checkpoint saved: %s", final)
    return CheckpointRef(step, final)


def validate(path: Path) -> str | None:
    """None if the checkpoint is complete, else the reason it is not."""
    mpath = path / MANIFEST
    if not mpath.is_file():
        return "no manifest (incomplete write)"
    try:
        manifest = json.loads(mpath.read_text())
        files: dict[str, int] = manifest["files"]
    except (ValueError, KeyError, TypeError) as exc:
        return f"unreadable manifest ({exc})"
    actual = _file_sizes(path)
    for name, size in files.items():
        if name not in actual:
            return f"missing file {name}"
        if actual[name] != size:
            return f"file {name} has {actual[name]} bytes, manifest says {size}"
    if CONTROLLER_STATE not in files:
        return "no controller state"
    return None


def list_checkpoints(run_dir: str | os.PathLike) -> list[CheckpointRef]:
    root = checkpoints_dir(run_dir)
    if not root.is_dir():
        return []
    refs = []
    for p in root.iterdir():
        if p.is_dir() and p.name.startswith(PREFIX) and p.name[len(PREFIX):].isdigit():
            refs.append(CheckpointRef(int(p.name[len(PREFIX):]), p))
    return sorted(refs, key=lambda r: r.step)


def latest_valid(run_dir: str | os.PathLike) -> CheckpointRef | None:
    """The newest complete checkpoint; broken ones are reported and skipped."""
    for ref in reversed(list_checkpoints(run_dir)):
        problem = validate(ref.path)
        if problem is None:
            return ref
        logger.warning("skipping checkpoint %s: %s", ref.path, problem)
    return None


def _prune(run_dir: str | os.PathLike, keep: int) -> None:
    refs = list_checkpoints(run_dir)
    for ref in refs[: max(0, len(refs) - keep)]:
        shutil.rmtree(ref.path, ignore_errors=True)
