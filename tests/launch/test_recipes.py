"""launch/configs/*.yaml: every recipe loads, the paper recipes carry the paper's numbers,
the baselines differ from SCOPE only where the method says they should, and the layout
overlays place actors as documented.

The model and data paths exist only on a cluster, so recipes load with check_paths=False.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from scope_ray.config import RunConfig, load_config, overlay_overrides

ROOT = Path(__file__).resolve().parents[2]
CONFIGS = ROOT / "launch" / "configs"
LAYOUTS = CONFIGS / "layouts"
PAIRS = ("r1distill1.5b-skywork7b", "qwen3-1.7b-base-qwen3-8b")
BENCHMARKS = ("aime24", "aime25", "amc23")  # in-training monitoring subset


def _load(name: str, layout: str | None = None) -> RunConfig:
    overrides = overlay_overrides(LAYOUTS / layout) if layout else []
    return load_config(CONFIGS / name, overrides, check_paths=False)


def _flat(cfg: RunConfig) -> dict[str, Any]:
    return {f"{s}.{k}": v for s, sec in cfg.to_dict().items() for k, v in sec.items()}


def _diff(a: RunConfig, b: RunConfig) -> set[str]:
    fa, fb = _flat(a), _flat(b)
    return {k for k in fa if fa[k] != fb[k]}


def _gpus(cfg: RunConfig) -> float:
    """GPUs the actors ask for. The scoring server is started for a teacher, and for a
    reference policy when the KL term is on (GRPO with kl_beta > 0), as cluster.build does."""
    from scope_ray.algo import get_algorithm

    r, t, lr = cfg.rollout, cfg.teacher, cfg.learner
    spec = get_algorithm(cfg.algorithm.name)
    teacher = t.num_replicas * t.num_gpus if spec.scorer(cfg.algorithm.kl_beta) else 0
    return r.num_workers * r.num_gpus * r.tensor_parallel_size + teacher + lr.num_workers * lr.num_gpus


@pytest.mark.parametrize("path", sorted(CONFIGS.glob("*.yaml")), ids=lambda p: p.name)
def test_every_recipe_loads_as_written(path: Path, tmp_path: Path) -> None:
    """Every value the YAML sets is the value the run gets (no key dropped, renamed or
    overridden on the way), its algorithm is the one the file is named after, and the
    resolved config, dumped and loaded again, is the same config."""
    import yaml

    from scope_ray.config import dump_config

    cfg = load_config(path, check_paths=False)
    flat = _flat(cfg)
    written = {f"{s}.{k}": v for s, sec in yaml.safe_load(path.read_text()).items() for k, v in sec.items()}
    assert written, path
    for key, value in written.items():
        got = flat[key]
        assert (list(got) if isinstance(got, tuple) else got) == value, (key, got, value)
    stem = path.stem.rsplit("-", 1)[-1]
    if stem in ("scope", "opd", "grpo"):
        assert cfg.algorithm.name == stem
    out = tmp_path / "config.yaml"
    dump_config(cfg, out)
    assert _flat(load_config(out, check_paths=False)) == flat


def test_all_paper_recipes_exist() -> None:
    names = {p.name for p in CONFIGS.glob("*.yaml")}
    for pair in PAIRS:
        for algo in ("scope", "opd", "grpo"):
            assert f"{pair}-{algo}.yaml" in names


@pytest.mark.parametrize("pair", PAIRS)
def test_scope_recipe_has_the_papers_numbers(pair: str) -> None:
    cfg = _load(f"{pair}-scope.yaml")
    assert cfg.algorithm.name == "scope"
    assert cfg.algorithm.tau == 1.0
    assert cfg.algorithm.normalize == "sum"  # softmax weights sum to 1 per branch (Eq. 4, 5)
    assert cfg.learner.lr == 5e-5 and cfg.learner.weight_decay == 0.01
    assert cfg.trainer.prompts_per_step == 256
    assert cfg.rollout.group_size == 8
    assert cfg.rollout.temperature == 0.6
    assert (cfg.model.max_prompt_tokens, cfg.model.max_response_tokens) == (4096, 12288)
    assert cfg.model.dtype == "bfloat16"
    # Strictly on-policy: one update per batch, rollouts from the current weights.
    assert cfg.trainer.max_staleness == 0
    # Held-out evaluation at the paper's sampling settings.
    t = cfg.trainer
    assert (t.eval_k, t.eval_temperature, t.eval_top_p, t.eval_top_k) == (32, 0.6, 0.95, 20)
    # Real models, real data, on shared storage: never the embedded tiny default.
    assert not cfg.uses_embedded_models
    assert all(f.startswith("/mnt/") for f in [cfg.model.student, cfg.model.teacher, *cfg.data.train_files])
    assert [Path(f).stem for f in cfg.data.eval_files] == list(BENCHMARKS)
    assert cfg.data.prompt_suffix == "Put your final answer within \\boxed{}."
    # Every sequence fits a learner micro-batch and a teacher batch.
    assert cfg.learner.micro_batch_tokens >= 4096 + 12288


def test_pairs_differ_only_in_models_and_name() -> None:
    a, b = (_load(f"{p}-scope.yaml") for p in PAIRS)
    assert _diff(a, b) == {"model.student", "model.teacher", "trainer.name"}
    assert "Qwen3-1.7B-Base" in b.model.student and "Qwen3-8B" in b.model.teacher
    assert "R1-Distill-Qwen-1.5B" in a.model.student and "Skywork-OR1-7B" in a.model.teacher


@pytest.mark.parametrize("pair", PAIRS)
def test_opd_differs_from_scope_only_in_algorithm_and_group_size(pair: str) -> None:
    scope, opd = _load(f"{pair}-scope.yaml"), _load(f"{pair}-opd.yaml")
    assert _diff(scope, opd) == {"algorithm.name", "rollout.group_size", "trainer.name"}
    assert opd.algorithm.name == "opd" and opd.rollout.group_size == 1  # paper's OPD: G=1
    # The G=8 variant is one override away and then equals SCOPE but for the algorithm.
    g8 = load_config(CONFIGS / f"{pair}-opd.yaml", ["rollout.group_size=8"], check_paths=False)
    assert _diff(scope, g8) == {"algorithm.name", "trainer.name"}


@pytest.mark.parametrize("pair", PAIRS)
def test_grpo_differs_from_scope_only_in_algorithm_and_reference_backend(pair: str) -> None:
    scope, grpo = _load(f"{pair}-scope.yaml"), _load(f"{pair}-grpo.yaml")
    # teacher.backend: the reference is scored tempered, which only the "hf" backend does.
    assert _diff(scope, grpo) <= {"algorithm.name", "algorithm.clip_eps", "algorithm.kl_beta",
                                  "trainer.name", "teacher.backend"}
    assert grpo.teacher.backend == "hf"
    assert grpo.algorithm.name == "grpo"
    assert (grpo.algorithm.clip_eps, grpo.algorithm.kl_beta) == (0.2, 1e-4)
    assert grpo.rollout.group_size == 8
    # The KL reference takes the teacher's GPU: the recipe fits the 8-GPU node (5 rollout
    # workers + reference + 3 learners asked for 9 and never scheduled).
    assert _gpus(grpo) == _gpus(scope) == 8


@pytest.mark.parametrize("pair", PAIRS)
def test_recipes_use_one_8_gpu_node_and_node8_overlay_is_a_no_op(pair: str) -> None:
    for algo in ("scope", "opd"):
        cfg = _load(f"{pair}-{algo}.yaml")
        assert _gpus(cfg) == 8
        assert not (cfg.rollout.resources or cfg.teacher.resources or cfg.learner.resources)
        assert _diff(cfg, _load(f"{pair}-{algo}.yaml", "node8.yaml")) == set()


@pytest.mark.parametrize("recipe", [f"{p}-{a}.yaml" for p in PAIRS for a in ("scope", "opd", "grpo")])
def test_train16_teacher4_overlay_pins_each_actor_kind(recipe: str) -> None:
    base, cfg = _load(recipe), _load(recipe, "train16-teacher4.yaml")
    assert cfg.rollout.resources == {"rollout_node": 1.0}
    assert cfg.teacher.resources == {"teacher_node": 1.0}
    assert cfg.learner.resources == {"learner_node": 1.0}
    r, t, lr = cfg.rollout, cfg.teacher, cfg.learner
    assert r.num_workers * r.num_gpus + lr.num_workers * lr.num_gpus == 16
    assert t.num_replicas * t.num_gpus == 4
    # Only placement moved; every hyper-parameter is the recipe's.
    assert {k.split(".")[0] for k in _diff(base, cfg)} <= {"rollout", "teacher", "learner"}
    # (prompts_per_request: how a step is split over the workers, not a hyper-parameter.)
    assert _diff(base, cfg) <= {"rollout.num_workers", "rollout.resources", "rollout.prompts_per_request",
                                "teacher.num_replicas", "teacher.resources", "learner.num_workers",
                                "learner.resources"}


GPU_RECIPES = sorted(p.name for p in CONFIGS.glob("*.yaml") if p.name != "tiny.yaml")


@pytest.mark.parametrize("layout", [None, "node8.yaml", "train16-teacher4.yaml"])
@pytest.mark.parametrize("recipe", GPU_RECIPES)
def test_gpu_recipes_give_each_engine_its_whole_share_of_a_step_at_once(recipe: str, layout: str | None) -> None:
    """Paper scale: a rollout worker serves one call at a time, and a call waits on its
    longest (12k-token) sample. So each worker gets its whole share of the step's prompts
    in one call, and every worker gets one: >= 256 sequences in flight per engine wherever
    the step holds that many (G = 1 OPD has only 64 per worker)."""
    cfg = _load(recipe, layout)
    r, step = cfg.rollout, cfg.trainer.prompts_per_step
    assert step % r.num_workers == 0
    share = step // r.num_workers
    assert r.prompts_per_request == share, (recipe, layout, r.prompts_per_request, share)
    assert r.prompts_per_request * r.group_size >= min(256, share * r.group_size)
    assert r.max_num_seqs == 0 or r.max_num_seqs >= r.prompts_per_request * r.group_size


def test_layout_overrides_are_single_shell_words() -> None:
    """What launch/ray_job/submit.sh reads: the script's output, one shell word a line."""
    import subprocess
    import sys

    for layout in LAYOUTS.glob("*.yaml"):
        out = subprocess.run([sys.executable, str(ROOT / "launch" / "layout_overrides.py"), str(layout)],
                             capture_output=True, text=True, timeout=60, cwd="/")
        lines = out.stdout.splitlines()
        assert out.returncode == 0 and lines == overlay_overrides(layout), (layout, out.stderr[-1000:])
        assert all(" " not in line and "=" in line for line in lines), layout


def test_tiny_recipe_stays_the_embedded_default() -> None:
    cfg = load_config(CONFIGS / "tiny.yaml")
    assert cfg.uses_embedded_models and cfg.model.dtype == "float32"
