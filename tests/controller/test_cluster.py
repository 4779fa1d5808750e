"""scope_ray/controller/cluster.py: where a run's Ray comes from."""

from __future__ import annotations

import os
import subprocess
import sys

# A Ray cluster started on this machine (as by `ray start --head`, or the multi-node
# tests' ray.cluster_utils.Cluster) registers itself in /tmp/ray/ray_current_cluster.
SCRIPT = (
    "import ray\n"
    "from ray.cluster_utils import Cluster\n"
    "from scope_ray.config import RayConfig\n"
    "from scope_ray.controller.cluster import connect\n"
    "other = Cluster(initialize_head=True, head_node_args={'num_cpus': 1})\n"
    "try:\n"
    "    connect(RayConfig(num_cpus=1))\n"
    "    print('OWN', ray.get_runtime_context().gcs_address, 'OTHER', other.address)\n"
    "    ray.shutdown()\n"
    "finally:\n"
    "    other.shutdown()\n"
)


def test_without_an_address_a_run_starts_its_own_ray_beside_a_running_one() -> None:
    """A driver with no ray.address / RAY_ADDRESS must not attach to another cluster on
    the machine (it used to, and then failed: 'num_cpus ... must not be provided')."""
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    env["RAY_AUTH_MODE"] = "disabled"
    out = subprocess.run([sys.executable, "-c", SCRIPT], env=env, capture_output=True, text=True, timeout=240)
    assert out.returncode == 0, out.stderr[-3000:]
    line = next(line for line in out.stdout.splitlines() if line.startswith("OWN "))
    _, own, _, other = line.split()
    assert own != other
