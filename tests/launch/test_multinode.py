"""Multi-node placement on real Ray: a head and three worker nodes on this machine.

launch/multinode_local.py starts ``ray.cluster_utils.Cluster`` with custom resources
``rollout_node`` / ``teacher_node`` / ``learner_node`` on one worker node each, trains
the tiny recipe 2 steps with each actor kind pinned to its node kind, and reports the
node every actor ran on (from the GCS actor table). It runs in a subprocess: the other
tests share one in-process local Ray (the ``ray_session`` fixture), and a process can be
connected to one Ray only.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

from _proc_tree import kill_tree, wait_gone

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = ROOT / "launch" / "multinode_local.py"


def test_tiny_recipe_trains_across_nodes_with_each_actor_on_its_node(tiny_bootstrap, tmp_path) -> None:
    out, run_dir = tmp_path / "placement.json", tmp_path / "run"
    temp_dir = Path(tempfile.mkdtemp(prefix="srm-", dir="/tmp"))  # short: Ray's sockets
    cache = Path(tiny_bootstrap.cache_dir).parent  # a cache hit: nothing is built
    cmd = [sys.executable, str(SCRIPT), "--out", str(out), "--run-dir", str(run_dir),
           "--temp-dir", str(temp_dir), f"bootstrap.cache_dir={cache}"]
    proc = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            text=True, start_new_session=True)
    try:
        output, _ = proc.communicate(timeout=240)
    except subprocess.TimeoutExpired:
        kill_tree(proc.pid, marker=temp_dir)
        output, _ = proc.communicate()
        raise AssertionError(f"multi-node run timed out:\n{output[-4000:]}") from None
    finally:
        kill_tree(proc.pid, marker=temp_dir)  # no-op when the script cleaned up itself
    left = wait_gone(temp_dir)
    shutil.rmtree(temp_dir, ignore_errors=True)
    assert proc.returncode == 0, output[-4000:]
    assert not left, f"the multi-node cluster left processes behind: {left}"

    report = json.loads(out.read_text())
    assert report["steps"] == 2
    assert sorted(report["nodes"].values()) == ["head", "learner_node", "rollout_node", "teacher_node"]
    placed = {a["class"]: a["kind"] for a in report["actors"]}
    assert placed == {"RolloutWorker": "rollout_node", "TeacherServer": "teacher_node",
                      "LearnerWorker": "learner_node"}
    # Three different worker nodes, none of them the head.
    nodes = {a["node_id"] for a in report["actors"]}
    assert len(nodes) == 3 and not nodes & {n for n, k in report["nodes"].items() if k == "head"}

    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    trained = [r for r in rows if "learner/loss" in r]
    assert [r["step"] for r in trained] == [1, 2]
    assert all(r["rollout/tokens"] > 0 and r["learner/skipped"] == 0 for r in trained)
