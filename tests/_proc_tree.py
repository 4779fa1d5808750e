"""Stop exactly the processes a test started: a process and all its descendants.

``ray stop`` kills every Ray process of the user on the machine, including other
people's clusters and the session-wide test Ray, so the tests never call it. Ray
workers call setpgid and are re-parented to init once their raylet dies, so neither a
process group nor a late tree walk finds them: the tree is snapshotted while the root
is still alive, and any process whose command line names the test's private Ray temp
dir (GCS, raylet, dashboard, agents) is added.
"""

from __future__ import annotations

import contextlib
import os
import signal
import time
from pathlib import Path

import psutil


def _by_marker(marker: str) -> list[psutil.Process]:
    found = []
    for proc in psutil.process_iter(["pid", "cmdline"]):
        with contextlib.suppress(psutil.Error):
            if proc.pid != os.getpid() and marker in " ".join(proc.info["cmdline"] or []):
                found.append(proc)
    return found


def kill_tree(pid: int, marker: str | Path | None = None, grace_s: float = 5.0) -> int:
    """SIGTERM, then SIGKILL after ``grace_s``, to ``pid``, its descendants and every
    process whose command line contains ``marker``. Returns how many were signalled."""
    procs: dict[int, psutil.Process] = {}
    with contextlib.suppress(psutil.NoSuchProcess):
        root = psutil.Process(pid)
        procs[root.pid] = root
        for child in root.children(recursive=True):
            procs[child.pid] = child
    if marker:
        for proc in _by_marker(str(marker)):
            procs.setdefault(proc.pid, proc)
            with contextlib.suppress(psutil.Error):
                for child in proc.children(recursive=True):
                    procs.setdefault(child.pid, child)
    for proc in procs.values():
        with contextlib.suppress(psutil.Error):
            proc.send_signal(signal.SIGTERM)
    _, alive = psutil.wait_procs(list(procs.values()), timeout=grace_s)
    for proc in alive:
        with contextlib.suppress(psutil.Error):
            proc.kill()
    psutil.wait_procs(alive, timeout=grace_s)
    return len(procs)


def wait_gone(marker: str | Path, timeout_s: float = 10.0) -> list[int]:
    """PIDs still naming ``marker`` after ``timeout_s`` (empty when all are gone)."""
    deadline = time.monotonic() + timeout_s
    while True:
        left = [p.pid for p in _by_marker(str(marker))]
        if not left or time.monotonic() > deadline:
            return left
        time.sleep(0.2)
