"""Atomic, self-checking run checkpoints.

Layout: ``<run_dir>/checkpoints/step_000010/`` holding ``controller.json`` (step, data
position, RNG, counters), ``hf/`` (the student in HF format, safetensors),
``deepspeed/`` (model + optimizer state) and ``MANIFEST.json`` written last.

A checkpoint is built under a temporary name and renamed into place only when complete,
so a crash leaves either the old set or the new one, never a half checkpoint under a
final name. The manifest lists every file (``deepspeed/``, ``hf/``, the controller state)
with its size and BLAKE3 digest. On resume every file is hashed again: a checkpoint
whose manifest is missing, or whose files are missing, resized or changed in place, is
reported naming the file, set aside (renamed ``step_NNNNNN.invalid``, never deleted) and
the previous one is used.

Cost of the digests: BLAKE3 hashes ~4 GB/s on one core of the 2-core development
machine (0.25 s per GB, single-threaded; ~0.13 s per GB with its threads), measured
against sha256 at 1.7 GB/s. A checkpoint is hashed once when saved (the files are still
in the page cache) and once on resume.
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


DIGEST = "blake3"
INVALID_SUFFIX = ".invalid"
_CHUNK = 8 << 20


def file_digest(path: Path) -> str:
    """BLAKE3 of a file's bytes, hex (read in 8 MiB chunks: bounded memory)."""
    import blake3

    h = blake3.blake3(max_threads=blake3.blake3.AUTO)
    with open(path, "rb") as f:
        while chunk := f.read(_CHUNK):
            h.update(chunk)
    return h.hexdigest()


def _files(root: Path) -> list[Path]:
    return [p for p in sorted(root.rglob("*")) if p.is_file() and p.name != MANIFEST]


def describe_files(root: Path) -> dict[str, dict[str, Any]]:
    """Every file under ``root`` (but the manifest): ``{relative path: {"bytes", "blake3"}}``."""
    return {str(p.relative_to(root)): {"bytes": p.stat().st_size, DIGEST: file_digest(p)} for p in _files(root)}


def commit(run_dir: str | os.PathLike, staged: Path, step: int, controller_state: dict[str, Any], keep: int) -> CheckpointRef:
    """Write the controller state and manifest into ``staged``, then rename it into place."""
    (staged / CONTROLLER_STATE).write_text(json.dumps(controller_state, indent=1))
    manifest = {"step": step, "digest": DIGEST, "files": describe_files(staged)}
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


def validate(path: Path, check_digests: bool = True) -> str | None:
    """None if the checkpoint is complete and unchanged, else the reason it is not (one
    line naming the file). ``check_digests=False`` checks names and sizes only."""
    mpath = path / MANIFEST
    if not mpath.is_file():
        return "no manifest (incomplete write)"
    try:
        manifest = json.loads(mpath.read_text())
        files: dict[str, Any] = manifest["files"]
        if not isinstance(files, dict):
            raise TypeError("'files' is not a mapping")
    except (ValueError, KeyError, TypeError) as exc:
        return f"unreadable manifest ({exc})"
    if CONTROLLER_STATE not in files:
        return "no controller state"
    for name, entry in files.items():
        p = path / name
        if not p.is_file():
            return f"missing file {name}"
        # Manifests written before digests were added hold the size alone.
        size, digest = (entry, None) if isinstance(entry, int) else (entry.get("bytes"), entry.get(DIGEST))
        if p.stat().st_size != size:
            return f"file {name} has {p.stat().st_size} bytes, manifest says {size}"
        if check_digests and digest is not None and file_digest(p) != digest:
            return f"file {name} does not match its {DIGEST} digest (changed or corrupted after it was saved)"
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


def latest_valid(run_dir: str | os.PathLike, set_aside: bool = True) -> CheckpointRef | None:
    """The newest complete, unchanged checkpoint. Each broken one newer than it is
    reported (a warning naming the checkpoint and the file) and, with ``set_aside``,
    renamed ``step_NNNNNN.invalid`` so that neither a resumed run's saves nor pruning
    ever count it as a good one; nothing is deleted."""
    for ref in reversed(list_checkpoints(run_dir)):
        problem = validate(ref.path)
        if problem is None:
            return ref
        if set_aside:
            aside = _free_name(ref.path.with_name(ref.path.name + INVALID_SUFFIX))
            os.replace(ref.path, aside)
            logger.warning("checkpoint %s is invalid (%s); set aside as %s, trying the previous one",
                           ref.path, problem, aside.name)
        else:
            logger.warning("checkpoint %s is invalid: %s", ref.path, problem)
    return None


def _free_name(path: Path) -> Path:
    candidate, n = path, 1
    while candidate.exists():
        n += 1
        candidate = path.with_name(f"{path.name}.{n}")
    return candidate


def _prune(run_dir: str | os.PathLike, keep: int) -> None:
    refs = list_checkpoints(run_dir)
    for ref in refs[: max(0, len(refs) - keep)]:
        shutil.rmtree(ref.path, ignore_errors=True)


def verify_path(path: str | os.PathLike) -> list[tuple[Path, str | None]]:
    """``(checkpoint, problem or None)`` for one checkpoint directory, or for every
    checkpoint of a run directory; read-only (nothing is set aside)."""
    root = Path(path)
    if (root / MANIFEST).is_file() or root.name.startswith(PREFIX):
        return [(root, validate(root))]
    refs = list_checkpoints(root)
    if not refs:
        raise FileNotFoundError(f"{root}: neither a checkpoint nor a run directory with checkpoints")
    return [(ref.path, validate(ref.path)) for ref in refs]
