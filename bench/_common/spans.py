"""Time intervals and Ray's task timeline: the actor-side busy spans of each call."""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Iterable

logger = logging.getLogger("bench")

Interval = tuple[float, float]

def union(spans: Iterable[Interval]) -> list[Interval]:
    out: list[Interval] = []
    for a, b in sorted(s for s in spans if s[1] > s[0]):
        if out and a <= out[-1][1]:
            out[-1] = (out[-1][0], max(out[-1][1], b))
        else:
            out.append((a, b))
    return out


def measure(spans: Iterable[Interval]) -> float:
    return float(sum(b - a for a, b in union(spans)))


def clip(spans: Iterable[Interval], lo: float, hi: float) -> list[Interval]:
    return [(max(a, lo), min(b, hi)) for a, b in spans if b > lo and a < hi]


def subtract(spans: Iterable[Interval], minus: Iterable[Interval]) -> list[Interval]:
    """Parts of ``spans`` not covered by ``minus``."""
    cut = union(minus)
    out: list[Interval] = []
    for a, b in union(spans):
        cur = a
        for c, d in cut:
            if d <= cur or c >= b:
                continue
            if c > cur:
                out.append((cur, c))
            cur = max(cur, d)
            if cur >= b:
                break
        if cur < b:
            out.append((cur, b))
    return out


def init_ray(num_cpus: int) -> None:
    """A private local Ray in this process (logical CPUs are a scheduling budget)."""
    import ray

    if ray.is_initialized():
        return
    # Ray 2.60 turns token authentication on by default; a throwaway local cluster
    # started and stopped by this process needs none.
    os.environ.setdefault("RAY_AUTH_MODE", "disabled")
    ray.init(num_cpus=num_cpus, include_dashboard=False, log_to_driver=False)


def timeline_spans(t_lo: float, t_hi: float) -> dict[tuple[str, str], list[Interval]]:
    """Execution spans (wall-clock seconds) of every actor task in [t_lo, t_hi], keyed by
    (worker id, "Class.method")."""
    import ray

    out: dict[tuple[str, str], list[Interval]] = {}
    for ev in ray.timeline():
        cat = str(ev.get("cat", ""))
        if not cat.startswith("task::") or ev.get("ph") != "X":
            continue
        a = float(ev["ts"]) / 1e6
        b = a + float(ev.get("dur", 0.0)) / 1e6
        if b < t_lo or a > t_hi:
            continue
        out.setdefault((str(ev.get("tid")), cat.removeprefix("task::")), []).append((a, b))
    return out


def spans_of(spans: dict[tuple[str, str], list[Interval]], method: str | tuple[str, ...]) -> dict[str, list[Interval]]:
    """``{worker: spans}`` for one ``Class.method`` (or any of several)."""
    methods = (method,) if isinstance(method, str) else method
    out: dict[str, list[Interval]] = {}
    for (worker, name), s in spans.items():
        if name in methods:
            out.setdefault(worker, []).extend(s)
    return out


def settle_timeline(seconds: float = 2.5) -> None:
    """Task events reach the GCS about once a second; wait before reading the timeline."""
    time.sleep(seconds)
