"""Where results go, the machine they were measured on, and the statistics every script
prints (medians over repetitions, alternating order)."""

from __future__ import annotations

import json
import logging
import os
import platform
import subprocess
from collections.abc import Sequence
from pathlib import Path
from typing import Any, TypeVar

logger = logging.getLogger("bench")

BENCH_DIR = Path(__file__).resolve().parents[1]
RESULTS_DIR = BENCH_DIR / "results"
DEFAULT_WORK_DIR = BENCH_DIR / ".cache"  # ignored by git (.gitignore: .cache/)

T = TypeVar("T")

def machine_info() -> dict[str, Any]:
    """Cores, load averages and the ``uptime`` line, taken now."""
    try:
        up = subprocess.run(["uptime"], capture_output=True, text=True, timeout=5).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        up = ""
    return {"cpus": os.cpu_count(), "loadavg": [round(x, 2) for x in os.getloadavg()], "uptime": up,
            "platform": platform.platform(), "python": platform.python_version()}


def load_line(tag: str) -> str:
    info = machine_info()
    one, five, fifteen = info["loadavg"]
    return f"[{tag}] {info['cpus']} CPUs, load {one:.2f} {five:.2f} {fifteen:.2f}"


def setup_logging(verbose: bool) -> None:
    logging.basicConfig(level=logging.INFO if verbose else logging.WARNING,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    logging.getLogger("bench").setLevel(logging.INFO)


def write_result(name: str, payload: dict[str, Any], out: Path | None = None) -> Path:
    path = out or RESULTS_DIR / f"{name}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(payload, indent=1, sort_keys=False, default=_json_default) + "\n")
    logger.info("wrote %s", path)
    return path


def _json_default(obj: Any) -> Any:
    if isinstance(obj, Path):
        return str(obj)
    if hasattr(obj, "item"):
        return obj.item()
    raise TypeError(f"not JSON serialisable: {type(obj).__name__}")


def medians(rows: Sequence[dict[str, Any]], keys: Sequence[str]) -> dict[str, float]:
    """``{key: median over rows}`` for each key (one row per repetition)."""
    return {k: median([r[k] for r in rows]) for k in keys}


def median(xs: Sequence[float]) -> float:
    s = sorted(xs)
    n = len(s)
    if n == 0:
        return float("nan")
    return s[n // 2] if n % 2 else 0.5 * (s[n // 2 - 1] + s[n // 2])


def interleave(names: Sequence[T], reps: int) -> list[tuple[int, T]]:
    """A B C, C B A, A B C, ...: alternating order so slow drift in the machine's load
    hits every variant alike."""
    order: list[tuple[int, T]] = []
    for r in range(reps):
        seq = list(names) if r % 2 == 0 else list(reversed(names))
        order.extend((r, n) for n in seq)
    return order
