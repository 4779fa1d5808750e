"""Will a run fit a cluster? Place every actor on a declared (or the live) cluster the way
Ray would have to, and check each GPU's memory against the estimate.

Actors are placed in the order the trainer starts them (rollout workers, scoring
replicas, then the learner's placement group), first fit, each on one node (a rollout
worker's tensor-parallel GPUs included); the learner's ranks go on one node if they can
(the group's PACK strategy) and spread otherwise. Ray itself may order things
differently; what this finds is whether a placement exists that the demands and the
custom resources allow, and the first actor that has none.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from scope_ray.planning.demands import Demand

EPS = 1e-9


@dataclass
class Node:
    name: str
    gpus: float
    cpus: float
    gpu_memory_gib: float = 0.0  # 0: unknown (the live cluster): memory is not checked
    resources: dict[str, float] = field(default_factory=dict)


def load_cluster(path: str | Path) -> list[Node]:
    """``nodes: [{name, count, gpus, gpu_memory_gb, cpus, resources}]`` (GB as GPU
    vendors state them: 80 GB H100 = 80 GiB here, the difference is within the slack)."""
    data = yaml.safe_load(Path(path).read_text()) or {}
    nodes = []
    for i, spec in enumerate(data.get("nodes") or []):
        unknown = set(spec) - {"name", "count", "gpus", "gpu_memory_gb", "cpus", "resources"}
        if unknown:
            raise ValueError(f"{path}: nodes[{i}]: unknown keys {sorted(unknown)}")
        name = str(spec.get("name", f"node{i}"))
        count = int(spec.get("count", 1))
        for k in range(count):
            nodes.append(Node(name if count == 1 else f"{name}-{k}", float(spec.get("gpus", 0)),
                              float(spec.get("cpus", 1)), float(spec.get("gpu_memory_gb", 0)),
                              {str(key): float(v) for key, v in (spec.get("resources") or {}).items()}))
    if not nodes:
        raise ValueError(f"{path}: no nodes")
    return nodes


def live_cluster() -> list[Node]:
    """The nodes of the connected Ray cluster, with their *total* resources (a run that
    waits for busy resources may still start; one that exceeds the totals never will)."""
    import ray

    nodes = []
    for n in ray.nodes():
        if not n.get("Alive"):
            continue
        res = dict(n.get("Resources") or {})
        custom = {k: v for k, v in res.items() if k not in ("CPU", "GPU", "memory", "object_store_memory")
                  and not k.startswith("node:") and not k.startswith("accelerator_type")}
        name = f"{n.get('NodeManagerAddress', '?')}/{str(n.get('NodeID', ''))[:8]}"  # ip/node id
        nodes.append(Node(name, float(res.get("GPU", 0)),
                          float(res.get("CPU", 0)), 0.0, custom))
    return nodes


@dataclass
class Placed:
    demand: Demand
    node: Node | None
    problem: str = ""  # why it does not fit ("" when it does)

    def footprint_gib(self) -> float:
        """Memory per GPU: a vLLM engine takes its share of the GPU it lands on."""
        d = self.demand
        if d.utilization and self.node is not None and self.node.gpu_memory_gib > 0:
            return max(d.needs_gib, d.utilization * self.node.gpu_memory_gib)
        return d.needs_gib if d.utilization else d.memory_gib


def _fits(d: Demand, free: dict[str, Any]) -> bool:
    if d.gpus > free["gpus"] + EPS or d.cpus > free["cpus"] + EPS:
        return False
    return all(free["resources"].get(k, 0.0) + EPS >= v for k, v in d.resources.items())


def _take(d: Demand, free: dict[str, Any]) -> None:
    free["gpus"] -= d.gpus
    free["cpus"] -= d.cpus
    for k, v in d.resources.items():
        free["resources"][k] = free["resources"].get(k, 0.0) - v


def _short(d: Demand, nodes: list[Node], free: dict[str, dict[str, Any]]) -> str:
    asks = [f"{d.gpus:g} GPU" if d.gpus else "", f"{d.cpus:g} CPU", *(f"{k}: {v:g}" for k, v in d.resources.items())]
    left = "; ".join(f"{n.name}: {free[n.name]['gpus']:g} of {n.gpus:g} GPUs, {free[n.name]['cpus']:g} of "
                     f"{n.cpus:g} CPUs" + "".join(f", {k} {free[n.name]['resources'].get(k, 0):g}"
                                                   for k in d.resources)
                     for n in nodes)
    return f"needs {', '.join(a for a in asks if a)} on one node and none has it left ({left})"


def place(demands: list[Demand], nodes: list[Node]) -> list[Placed]:
    free = {n.name: {"gpus": n.gpus, "cpus": n.cpus, "resources": dict(n.resources)} for n in nodes}
    out: list[Placed] = []
    singles = [d for d in demands if d.group != "learner"]
    group = [d for d in demands if d.group == "learner"]
    for d in singles:
        node = next((n for n in nodes if _fits(d, free[n.name])), None)
        if node is None:
            out.append(Placed(d, None, _short(d, nodes, free)))
            continue
        _take(d, free[node.name])
        out.append(Placed(d, node, _memory_problem(d, node)))
    # PACK: all ranks on one node if any node holds them all, else rank by rank.
    whole = next((n for n in nodes if _fits(_sum(group), free[n.name])), None) if group else None
    for d in group:
        node = whole if whole is not None else next((n for n in nodes if _fits(d, free[n.name])), None)
        if node is None:
            out.append(Placed(d, None, _short(d, nodes, free)))
            continue
        _take(d, free[node.name])
        out.append(Placed(d, node, _memory_problem(d, node)))
    return out


def _sum(group: list[Demand]) -> Demand:
    total = Demand("learner group", sum(d.gpus for d in group), sum(d.cpus for d in group), {})
    for d in group:
        for k, v in d.resources.items():
            total.resources[k] = total.resources.get(k, 0.0) + v
    return total


def _memory_problem(d: Demand, node: Node) -> str:
    if d.gpus <= 0 or node.gpu_memory_gib <= 0:
        return ""
    per_gpu = node.gpu_memory_gib
    if d.utilization:
        budget = d.utilization * per_gpu
        if d.needs_gib > budget:
            return (f"its weights, overhead and one max-length sequence's KV cache need {d.needs_gib:.1f} GiB per GPU, "
                    f"more than gpu_memory_utilization {d.utilization:g} x {per_gpu:g} GiB = {budget:.1f} GiB")
        return ""
    if d.memory_gib > per_gpu:
        top = sorted(((v, k) for k, v in d.parts.items()), reverse=True)[:3]
        return (f"estimated {d.memory_gib:.1f} GiB per GPU ({', '.join(f'{k} {v:.1f}' for v, k in top)}), "
                f"the GPU has {per_gpu:g} GiB")
    return ""


def to_json(placed: list[Placed]) -> str:
    return json.dumps([{"actor": p.demand.name, "node": p.node.name if p.node else None, "gpus": p.demand.gpus,
                        "memory_gib": round(p.footprint_gib(), 2), "problem": p.problem or None} for p in placed],
                      indent=1)
