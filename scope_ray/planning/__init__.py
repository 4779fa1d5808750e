"""``scope-ray plan``: where every actor of a run would go on a cluster and whether its
GPU memory suffices, before a GPU-hour is spent; and the same resource check against the
live cluster before ``scope-ray train`` creates anything (fail in seconds, not after
``train_timeout_s`` of a placement group that can never be scheduled)."""

from __future__ import annotations

from typing import Any

from scope_ray.planning.demands import Demand, run_demands
from scope_ray.planning.placement import Node, Placed, live_cluster, load_cluster, place
from scope_ray.planning.shapes import ModelShape, model_shape

__all__ = ["Demand", "ModelShape", "Node", "Placed", "check_live", "format_plan", "live_cluster", "load_cluster",
           "model_shape", "place", "plan_run", "run_demands"]


def plan_run(cfg: Any, nodes: list[Node]) -> tuple[list[Placed], list[str]]:
    """Placements of every actor of ``cfg`` on ``nodes``, and where the model shapes came from."""
    from scope_ray.algo import get_algorithm

    student, s_from = model_shape(cfg.model.student, "student")
    sources = [f"student: {s_from}"]
    teacher = None
    if get_algorithm(cfg.algorithm.name).scorer(cfg.algorithm.kl_beta) == "teacher":
        teacher, t_from = model_shape(cfg.model.teacher, "teacher")
        sources.append(f"teacher: {t_from}")
    return place(run_demands(cfg, student, teacher), nodes), sources


def format_plan(placed: list[Placed], sources: list[str]) -> str:
    rows = [f"{'actor':<22} {'node':<16} {'GPUs':>5} {'GiB/GPU':>8}  notes"]
    for p in placed:
        d = p.demand
        node = p.node.name if p.node else "-"
        gib = f"{p.footprint_gib():.1f}" if d.gpus > 0 and (d.parts or d.memory_gib) else "-"
        rows.append(f"{d.name:<22} {node:<16} {d.gpus:>5g} {gib:>8}  {p.problem or 'ok'}")
    first_of_kind: dict[str, Placed] = {}  # "learner rank" -> rank 0: the parts are the same
    for p in placed:
        key = p.demand.name.rsplit(" ", 1)[0]
        if p.demand.parts and key not in first_of_kind:
            first_of_kind[key] = p
    for key, p in first_of_kind.items():
        parts = ", ".join(f"{k} {v:.1f}" for k, v in p.demand.parts.items())
        rows.append(f"  {key}: {parts} (GiB per GPU)")
    rows.append("model shapes: " + "; ".join(sources))
    bad = [p for p in placed if p.problem]
    rows.append(f"does not fit: {bad[0].demand.name}: {bad[0].problem}" if bad
                else f"fits: {len(placed)} actors on {len({p.node.name for p in placed if p.node})} node(s)")
    return "\n".join(rows)


def check_live(cfg: Any) -> None:
    """Refuse (ConfigError naming the actor) a run the connected cluster can never
    schedule: its totals, not what is free now (``ray.check_resources: false`` turns it
    off, e.g. on an autoscaling cluster that adds nodes on demand)."""
    from scope_ray.config import ConfigError

    if not cfg.ray.check_resources:
        return
    nodes = live_cluster()
    placed = place(run_demands(cfg, None, None), nodes)
    bad = next((p for p in placed if p.problem), None)
    if bad is not None:
        raise ConfigError(f"ray.check_resources: {bad.demand.name} {bad.problem}; the cluster can never schedule "
                          "this run (set ray.check_resources=false if it autoscales)")
