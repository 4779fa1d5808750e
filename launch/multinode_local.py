"""Train the tiny recipe across a four-node Ray cluster on one machine; report placement.

A head plus three worker nodes from ``ray.cluster_utils.Cluster``, each worker started
with one Ray custom resource (``rollout_node``, ``teacher_node``, ``learner_node``), the
way a GPU cluster is started with ``ray start --resources``. The config pins each actor
kind to its node kind through ``rollout.resources`` / ``teacher.resources`` /
``learner.resources``; after training, the GCS actor table says where every actor ran.

Run it in its own process (it starts its own Ray, separate from any other)::

    python launch/multinode_local.py --out placement.json [OVERRIDES...]

The JSON written to ``--out``: ``{"steps": N, "run_dir": ..., "nodes": {node_id: kind},
"actors": [{"class", "node_id", "kind"}]}``. Loopback only, token auth off: a
throwaway cluster on one machine.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import tempfile
from pathlib import Path
from typing import Any

logger = logging.getLogger("multinode_local")

NODE_KINDS = ("rollout_node", "teacher_node", "learner_node")
# Actor class -> the custom resource its config section asks for.
EXPECTED = {"RolloutWorker": "rollout_node", "TeacherServer": "teacher_node", "LearnerWorker": "learner_node"}
TINY = ["trainer.total_steps=2", "trainer.prompts_per_step=4", "rollout.group_size=4",
        "model.max_response_tokens=48", "trainer.eval_every=0", "trainer.eval_at_end=false",
        "trainer.save_every=0", "bootstrap.preset=tiny"]


def _node_kinds() -> dict[str, str]:
    import ray

    kinds = {}
    for node in ray.nodes():
        held = [k for k in NODE_KINDS if node["Resources"].get(k)]
        kinds[node["NodeID"]] = held[0] if held else "head"
    return kinds


def _actor_placement(kinds: dict[str, str]) -> list[dict[str, Any]]:
    # The GCS actor table keeps dead actors with the node they ran on, so this works
    # after the run has killed them (the state API would need a dashboard).
    from ray._private import state

    out = []
    for info in state.actors().values():
        cls = info.get("ActorClassName", "")
        if cls in EXPECTED:
            node = info["Address"]["NodeID"]
            out.append({"class": cls, "node_id": node, "kind": kinds.get(node, "?"), "state": info.get("State")})
    return sorted(out, key=lambda a: a["class"])


def run(overrides: list[str], run_dir: Path, temp_dir: Path) -> dict[str, Any]:
    # Set before Ray starts: no token auth, every address 127.0.0.1 (Ray's loopback mode).
    os.environ.setdefault("RAY_AUTH_MODE", "disabled")
    os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")
    os.environ.pop("RAY_ADDRESS", None)
    import ray
    from ray.cluster_utils import Cluster

    from scope_ray.config import load_config
    from scope_ray.controller.launch import run_training

    # A private temp dir: sessions, sockets and logs apart from any other Ray here, and
    # every process of this cluster names it on its command line.
    cluster = Cluster(initialize_head=True,
                      head_node_args={"num_cpus": 0, "include_dashboard": False, "temp_dir": str(temp_dir)})
    try:
        # One logical CPU per node is enough: the actors ask for 0.5 (rollout, teacher)
        # and 1 (learner); the controller runs in this process on the head.
        for kind in NODE_KINDS:
            cluster.add_node(num_cpus=1, resources={kind: 1}, temp_dir=str(temp_dir))
        cluster.wait_for_nodes()
        ray.init(address=cluster.address, log_to_driver=True)
        cfg = load_config(None, [
            *TINY, *overrides,
            "rollout.resources={rollout_node: 1}", "teacher.resources={teacher_node: 1}",
            "learner.resources={learner_node: 1}", f"trainer.run_dir={run_dir}",
        ])
        summary = run_training(cfg, run_dir, None, show_progress=False)
        kinds = _node_kinds()
        return {"steps": summary.steps, "run_dir": str(run_dir), "nodes": kinds,
                "actors": _actor_placement(kinds)}
    finally:
        ray.shutdown()
        cluster.shutdown()


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", required=True, help="write the placement report (JSON) here")
    p.add_argument("--run-dir", default=None, help="run directory (default: a new temp dir)")
    p.add_argument("--temp-dir", default=None, help="Ray temp dir (default: a new short dir under /tmp)")
    p.add_argument("overrides", nargs="*", help="extra config overrides, e.g. bootstrap.cache_dir=...")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    run_dir = Path(args.run_dir) if args.run_dir else Path(tempfile.mkdtemp(prefix="scope-multinode-"))
    # Short: Ray's unix sockets live under it (108-byte path limit).
    temp_dir = Path(args.temp_dir) if args.temp_dir else Path(tempfile.mkdtemp(prefix="srm-", dir="/tmp"))
    report = run(args.overrides, run_dir, temp_dir)
    Path(args.out).write_text(json.dumps(report, indent=2))
    wrong = [a for a in report["actors"] if a["kind"] != EXPECTED[a["class"]]]
    for a in report["actors"]:
        logger.info("%-14s on %s node %s", a["class"], a["kind"], a["node_id"][:8])
    return 1 if wrong or not report["actors"] else 0


if __name__ == "__main__":
    sys.exit(main())
