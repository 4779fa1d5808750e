"""scope_ray/planning: ``scope-ray plan`` on the shipped recipes and cluster files, the
shapes behind its memory estimate, and the live resource check before a run starts (on
the test session's Ray, and on a simulated multi-node GPU cluster in a subprocess)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from scope_ray.cli import main
from scope_ray.config import ConfigError, load_config
from scope_ray.planning import check_live, load_cluster, plan_run
from scope_ray.planning.shapes import KNOWN, from_config

ROOT = Path(__file__).resolve().parents[2]
CONFIGS = ROOT / "launch" / "configs"
CLUSTERS = ROOT / "launch" / "clusters"
RECIPES = sorted(p.name for p in CONFIGS.glob("*.yaml") if p.name != "tiny.yaml")


@pytest.mark.parametrize("recipe", RECIPES)
def test_every_recipe_plans_on_its_documented_clusters(recipe: str, capsys) -> None:
    assert main(["plan", "--config", str(CONFIGS / recipe), "--cluster", str(CLUSTERS / "node8-h100-80g.yaml")]) == 0
    out = capsys.readouterr().out
    assert out.rstrip().splitlines()[-1] == "fits: 8 actors on 1 node(s)"
    assert main(["plan", "--config", str(CONFIGS / recipe), "--layout", str(CONFIGS / "layouts" / "train16-teacher4.yaml"),
                 "--cluster", str(CLUSTERS / "train16-teacher4-h100-80g.yaml"), "--json"]) == 0
    placed = json.loads(capsys.readouterr().out)
    # Each actor kind on the node its custom resource names, none on the GPU-less head.
    for p in placed:
        kind = p["actor"].split(" ")[0]
        want = {"rollout": "rollout-node", "learner": "learner-node", "teacher": "teacher-node",
                "reference": "teacher-node"}[kind]
        assert p["node"] == want and p["problem"] is None, p


def test_the_1_5b_recipe_does_not_fit_one_4_gpu_node(tmp_path, capsys) -> None:
    cluster = tmp_path / "node4.yaml"
    cluster.write_text("nodes:\n  - {name: gpu-node, gpus: 4, gpu_memory_gb: 80, cpus: 64}\n")
    assert main(["plan", "--config", str(CONFIGS / "r1distill1.5b-skywork7b-scope.yaml"), "--cluster", str(cluster)]) == 1
    last = capsys.readouterr().out.rstrip().splitlines()[-1]
    assert last == ("does not fit: teacher replica 0: needs 1 GPU, 4 CPU on one node and none has it left "
                    "(gpu-node: 0 of 4 GPUs, 48 of 64 CPUs)")


def test_a_learner_over_its_gpu_memory_is_named() -> None:
    """Without gradient checkpointing a 32k-token micro-batch keeps every layer's
    activations: the estimate passes 80 GiB and the plan says which part."""
    cfg = load_config(CONFIGS / "r1distill1.5b-skywork7b-scope.yaml", ["learner.gradient_checkpointing=false"],
                      check_paths=False)
    placed, _ = plan_run(cfg, load_cluster(CLUSTERS / "node8-h100-80g.yaml"))
    bad = [p for p in placed if p.problem]
    assert [p.demand.name for p in bad] == ["learner rank 0", "learner rank 1", "learner rank 2"]
    assert bad[0].problem.startswith("estimated ") and "activations" in bad[0].problem
    assert bad[0].problem.endswith("the GPU has 80 GiB")


def test_shapes_count_parameters_exactly(tiny_model_dir) -> None:
    """The memory model's parameter count: exact on a real HF model, and the paper's
    models at their published sizes."""
    import torch
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir, dtype=torch.float32)
    config = json.loads((Path(tiny_model_dir) / "config.json").read_text())
    assert from_config(config).params == sum(p.numel() for p in model.parameters())
    published = {"DeepSeek-R1-Distill-Qwen-1.5B": 1.777e9, "Skywork-OR1-7B": 7.616e9, "Qwen3-1.7B-Base": 1.72e9,
                 "Qwen3-8B": 8.19e9}
    for name, n in published.items():
        assert KNOWN[name].params == pytest.approx(n, rel=5e-3), name


def test_a_run_this_ray_can_never_hold_is_refused_before_any_actor_starts(ray_session) -> None:
    """The test session's Ray has 4 CPUs and no GPU: a GPU rollout worker can never be
    scheduled, so the run stops in one line instead of waiting on Ray for good."""
    cfg = load_config(None, ["rollout.num_gpus=1"], check_paths=False)
    with pytest.raises(ConfigError) as info:
        check_live(cfg)
    assert str(info.value).startswith("ray.check_resources: rollout worker 0 needs 1 GPU, 0.5 CPU on one node and "
                                      "none has it left")
    check_live(load_config(None, [], check_paths=False))  # the default fits
    check_live(load_config(None, ["rollout.num_gpus=1", "ray.check_resources=false"], check_paths=False))


_SIMULATED = r"""
import json, os, sys
os.environ["RAY_AUTH_MODE"] = "disabled"
os.environ["RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"] = "0"
os.environ.pop("RAY_ADDRESS", None)
import ray
from ray.cluster_utils import Cluster
from ray.util.placement_group import placement_group, placement_group_table
from actors.learner import learner_bundle
from scope_ray.config import ConfigError, load_config, overlay_overrides
from scope_ray.learner import LearnerOptions
from scope_ray.planning import check_live, live_cluster, place, run_demands

recipe, layout, temp = sys.argv[1], sys.argv[2], sys.argv[3]
cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 4, "num_gpus": 0, "include_dashboard": False,
                                                       "temp_dir": temp})
kinds = {}
for kind, gpus in (("rollout_node", 8), ("learner_node", 8), ("teacher_node", 4)):
    node = cluster.add_node(num_cpus=96, num_gpus=gpus, resources={kind: gpus}, temp_dir=temp)
    kinds[node.node_id] = kind
cluster.wait_for_nodes()
ray.init(address=cluster.address)
try:
    cfg = load_config(recipe, overlay_overrides(layout), check_paths=False)
    check_live(cfg)
    # The learner's placement group exactly as LearnerGroup makes it, and one stand-in
    # actor per other demand with the resources the planner says it asks for.
    pg = placement_group([learner_bundle(LearnerOptions.from_run_config(cfg), dict(cfg.learner.resources))]
                         * cfg.learner.num_workers, strategy="PACK")
    ray.get(pg.ready(), timeout=60)
    table = placement_group_table(pg)
    learner_nodes = sorted({kinds.get(n, "head") for n in table["bundles_to_node_id"].values()})

    @ray.remote
    def where():
        return ray.get_runtime_context().get_node_id()

    demands = [d for d in run_demands(cfg, None, None) if d.group != "learner"]
    landed = {d.name: kinds.get(ray.get(where.options(num_cpus=d.cpus, num_gpus=d.gpus, resources=d.resources).remote(),
                                        timeout=60), "head") for d in demands}
    by_prefix = {n[:8]: k for n, k in kinds.items()}
    planned = {p.demand.name: by_prefix.get(p.node.name.split("/")[-1], "head")
               for p in place(run_demands(cfg, None, None), live_cluster()) if p.node is not None}
    big = load_config(recipe, [], check_paths=False)
    big.rollout.num_workers = 18  # 18 + 1 + 3 GPUs: more than the cluster's 20
    try:
        check_live(big)
        refused = ""
    except ConfigError as exc:
        refused = str(exc)
    print(json.dumps({"learner_nodes": learner_nodes, "landed": landed, "planned": planned, "refused": refused}))
finally:
    ray.shutdown()
    cluster.shutdown()
"""


def test_placement_on_a_simulated_16_plus_4_gpu_cluster(tmp_path) -> None:
    """Ray nodes that declare GPUs they do not have (ray.cluster_utils): the live check
    passes the 16 + 4 layout, the learner's placement group lands on the learner node,
    every other actor on the node of its kind, as planned; an impossible layout is
    refused naming the actor."""
    import tempfile

    from _proc_tree import kill_tree, wait_gone

    temp = Path(tempfile.mkdtemp(prefix="srp-", dir="/tmp"))  # short: Ray's unix sockets
    cmd = [sys.executable, "-c", _SIMULATED, str(CONFIGS / "r1distill1.5b-skywork7b-scope.yaml"),
           str(CONFIGS / "layouts" / "train16-teacher4.yaml"), str(temp)]
    proc = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            start_new_session=True)
    try:
        out, err = proc.communicate(timeout=240)
    finally:
        kill_tree(proc.pid, marker=temp)
    wait_gone(temp)
    assert proc.returncode == 0, err[-3000:]
    report = json.loads(out.strip().splitlines()[-1])
    assert report["learner_nodes"] == ["learner_node"]
    for name, kind in report["landed"].items():
        assert kind == {"rollout": "rollout_node", "teacher": "teacher_node"}[name.split(" ")[0]], (name, kind)
    assert len(report["landed"]) == 8 + 4
    # The plan put every actor where Ray did.
    assert {k: v for k, v in report["planned"].items() if not k.startswith("learner")} == report["landed"]
    assert {v for k, v in report["planned"].items() if k.startswith("learner")} == {"learner_node"}
    assert report["refused"].startswith("ray.check_resources: learner rank 1 needs 1 GPU, 4 CPU on one node")
