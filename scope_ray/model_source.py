"""``model.student`` / ``model.teacher``: a local HF model dir, or a Hugging Face hub id.

An id (``Qwen/Qwen3-1.7B-Base``, optionally ``@<revision>``: a branch, tag or commit) is
resolved once, on the driver, before any actor starts, through ``huggingface_hub`` into
its cache; the config then holds the local snapshot directory (its path names the repo
and the commit, so the run's ``config.yaml`` records exactly which weights it used) and
every actor loads from there. On a cluster the cache must be on storage every node
mounts: point ``HF_HOME`` (or ``HF_HUB_CACHE``) at it. ``HF_HUB_OFFLINE=1`` uses the
cache only, never the network.

Both variables are read when an id is resolved (not when ``huggingface_hub`` is
imported), so a job that sets them for itself gets them.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

# org/name, each part as the hub allows it (letters, digits, - _ .), optional @revision.
_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+(@[\w./-]+)?$")
# What a training run needs from a model repo: weights, configs, tokenizer files.
_PATTERNS = ["*.json", "*.safetensors", "*.model", "*.txt", "*.tiktoken", "*.jinja", "*.py"]


class ModelNotFound(ValueError):
    """Neither a local directory nor a resolvable hub id; the message names both places."""


def is_hub_id(value: str) -> bool:
    """True for ``org/name[@rev]`` that is not an existing path (a local dir wins)."""
    return bool(value) and not Path(value).exists() and not value.startswith((".", "/", "~")) \
        and _HUB_ID.match(value) is not None


def hub_cache_dir() -> Path:
    """Where ``huggingface_hub`` keeps models, from the environment as it is now."""
    if os.environ.get("HF_HUB_CACHE"):
        return Path(os.environ["HF_HUB_CACHE"]).expanduser()
    home = os.environ.get("HF_HOME") or os.path.join(os.environ.get("XDG_CACHE_HOME", "~/.cache"), "huggingface")
    return Path(home).expanduser() / "hub"


def hub_offline() -> bool:
    return os.environ.get("HF_HUB_OFFLINE", "").strip().upper() in ("1", "ON", "YES", "TRUE")


def resolve_model(value: str) -> str:
    """A local model dir for ``value``: itself if it is not a hub id, else the snapshot
    directory of ``org/name[@revision]`` in the hub cache (downloaded there unless
    ``HF_HUB_OFFLINE=1``). Raises :class:`ModelNotFound` with one line naming the id,
    the cache searched and why."""
    if not is_hub_id(value):
        return value
    from huggingface_hub import snapshot_download

    repo, _, revision = value.partition("@")
    cache, offline = hub_cache_dir(), hub_offline()
    try:
        path = snapshot_download(repo_id=repo, revision=revision or None, cache_dir=str(cache),
                                 local_files_only=offline, allow_patterns=_PATTERNS)
    except Exception as exc:  # noqa: BLE001 - huggingface_hub has many; one line names them
        where = f"not in the Hugging Face cache {cache}" + (" (HF_HUB_OFFLINE=1: the network was not tried)"
                                                             if offline else " and not downloadable")
        text = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
        reason = text.split(". ")[0][:200]  # huggingface_hub's first sentence: the rest is advice
        raise ModelNotFound(f"{value!r} is not a local directory, and {where} "
                            f"({type(exc).__name__}{': ' + reason if reason else ''})") from None
    return str(path)
