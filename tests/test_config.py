"""scope_ray/config.py: defaults, YAML + dotted overrides, one-line errors naming the key."""

from pathlib import Path

import pytest

from scope_ray.config import ConfigError, RunConfig, dump_config, load_config

ROOT = Path(__file__).resolve().parents[1]


def test_defaults_validate_and_overrides_apply():
    cfg = load_config(None, ["learner.lr=1e-5", "algorithm.name=opd", "learner.betas=[0.9, 0.95]", "trainer.eval_at_end=false"])
    assert cfg.learner.lr == 1e-5 and isinstance(cfg.learner.lr, float)
    assert cfg.algorithm.name == "opd"
    assert cfg.learner.betas == [0.9, 0.95]
    assert cfg.trainer.eval_at_end is False
    assert RunConfig().validate().uses_embedded_models
    # Nucleus / top-k stay available for evaluation (the paper evaluates at 0.95 / 20).
    cfg = load_config(None, ["trainer.eval_top_p=0.95", "trainer.eval_top_k=20"])
    assert (cfg.trainer.eval_top_p, cfg.trainer.eval_top_k) == (0.95, 20)


def test_yaml_then_overrides(tmp_path):
    p = tmp_path / "r.yaml"
    p.write_text("learner:\n  lr: 0.001\n  zero_stage: 3\ntrainer:\n  total_steps: 7\n")
    cfg = load_config(p, ["trainer.total_steps=9"])
    assert (cfg.learner.lr, cfg.learner.zero_stage, cfg.trainer.total_steps) == (0.001, 3, 9)


def test_round_trip_through_yaml(tmp_path):
    cfg = load_config(None, ["rollout.group_size=4", "data.prompt_suffix="])
    dump_config(cfg, tmp_path / "c.yaml")
    again = load_config(tmp_path / "c.yaml")
    assert again.to_dict() == cfg.to_dict()


@pytest.mark.parametrize(
    "override, message",
    [
        ("learner.lrr=1", "learner.lrr: unknown key (did you mean 'learner.lr'?)"),
        ("lerner.lr=1", "lerner: unknown key (did you mean 'learner'?)"),
        ("algorithm.name=scop", "algorithm.name: unknown algorithm 'scop' (did you mean 'scope'?)"),
        ("learner.zero_stage=x", "learner.zero_stage: expected an integer"),
        ("learner.zero_stage=0", "learner.zero_stage: must be 1, 2 or 3"),
        ("rollout.temperature=0", "rollout.temperature: must be > 0"),
        ("algorithm.tau=-1", "algorithm.tau: must be > 0"),
        ("algorithm.normalize=softmax", "algorithm.normalize: must be one of ['sum', 'mean']"),
        ("learner.gradient_checkpointing=3", "learner.gradient_checkpointing: expected true/false"),
        ("rollout=3", "rollout: expected a mapping"),
        ("model.student=/does/not/exist", "model.teacher: set both"),
        ("learner.micro_batch_tokens=10", "learner.micro_batch_tokens: must hold one full sequence"),
        ("noequals", "overrides look like section.key=value"),
        ("teacher.temperature=0", "teacher.temperature: must be > 0"),
        ("teacher.backend=vllm teacher.temperature=2", "teacher.temperature: must be 1.0 with teacher.backend 'vllm'"),
        ("algorithm.name=grpo teacher.backend=vllm", "teacher.backend: must be 'hf' for grpo when rollout.temperature != 1"),
        ("rollout.top_p=0.95", "rollout.top_p: must be 1.0 for training, got 0.95"),
        ("rollout.top_k=20", "rollout.top_k: must be -1 (off) for training, got 20"),
        ("trainer.eval_top_p=0", "trainer.eval_top_p: must be in (0, 1]"),
        ("rollout.max_num_seqs=-1", "rollout.max_num_seqs: must be >= 0"),
        ("rollout.max_calls_in_flight=-2", "rollout.max_calls_in_flight: must be >= -1"),
        ("rollout.weight_sync=nccl", "rollout.weight_sync: must be one of ['safetensors', 'broadcast']"),
        ("trainer.max_staleness=5", "trainer.max_staleness: must be in [0, 4]"),
        ("trainer.max_staleness=2 learner.old_logp=recompute", "trainer.max_staleness: 2 needs learner.old_logp 'rollout'"),
        ("trainer.max_staleness=3 rollout.weight_sync=broadcast",
         "trainer.max_staleness: 3 needs rollout.weight_sync 'safetensors'"),
        ("learner.grad_accum_dtype=float16", "learner.grad_accum_dtype: must be one of ['float32', 'bfloat16']"),
        ("learner.grad_accum_dtype=bfloat16", "learner.grad_accum_dtype: bfloat16 needs model.dtype bfloat16"),
        ("algorithm.distill=full", "algorithm.distill: must be one of ['sampled', 'topk']"),
        ("algorithm.topk=0", "algorithm.topk: must be >= 1, got 0"),
        ("algorithm.name=grpo algorithm.distill=topk",
         "algorithm.distill: topk needs an algorithm with a teacher (the scope family or opd), got grpo"),
        ("learner.lora.rank=-1", "learner.lora.rank: must be >= 0 (0 = off), got -1"),
        ("learner.lora.rank=8 learner.lora.dropout=1", "learner.lora.dropout: must be in [0, 1), got 1.0"),
        ("learner.lora.rank=8 learner.lora.alpha=0", "learner.lora.alpha: must be > 0"),
        ("learner.lora.rank=8 learner.lora.target_modules=[]", "learner.lora.target_modules: must name at least one"),
        ("learner.lora.rnk=8", "learner.lora.rnk: unknown key (did you mean 'learner.lora.rank'?)"),
        ("rollout.extra_prompts=2", "rollout.extra_prompts: needs rollout.partial_rollouts=true"),
        ("rollout.extra_prompts=-2", "rollout.extra_prompts: must be -1 (a quarter of the step) or >= 0"),
        ("rollout.partial_rollouts=true rollout.extra_prompts=0", "rollout.extra_prompts: 0 leaves nothing to pause"),
        ("rollout.partial_rollouts=true trainer.prompts_per_step=4 rollout.extra_prompts=5",
         "rollout.extra_prompts: at most trainer.prompts_per_step (4)"),
        ("rollout.partial_rollouts=true learner.old_logp=recompute",
         "rollout.partial_rollouts: needs learner.old_logp 'rollout'"),
        ("rollout.partial_rollouts=true trainer.schedule=sequential",
         "rollout.partial_rollouts: needs trainer.schedule 'stream'"),
        ("model.dtype=bfloat16 learner.zero_stage=1",
         "learner.grad_accum_dtype: float32 with learner.zero_stage 1 and model.dtype bfloat16 runs DeepSpeed's BF16_Optimizer"),
    ],
)
def test_bad_values_give_one_line_naming_the_key(override, message):
    with pytest.raises(ConfigError) as info:
        load_config(None, override.split(" "))
    text = str(info.value)
    assert message in text
    assert "\n" not in text


def test_missing_model_dir_and_file_errors(tmp_path):
    with pytest.raises(ConfigError, match="model.student: model directory '/nope/s' does not exist"):
        load_config(None, ["model.student=/nope/s", "model.teacher=/nope/t", f"data.train_files=[{tmp_path}/x]"])
    (tmp_path / "s").mkdir()
    with pytest.raises(ConfigError, match="has no config.json"):
        load_config(None, [f"model.student={tmp_path}/s", f"model.teacher={tmp_path}/s", f"data.train_files=[{tmp_path}/x]"])
    with pytest.raises(ConfigError, match="nope.yaml: config file does not exist"):
        load_config(tmp_path / "nope.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("learner:\n  lr: [1\n")
    with pytest.raises(ConfigError, match="bad.yaml: not valid YAML"):
        load_config(bad)
    typo = tmp_path / "typo.yaml"
    typo.write_text("trainer:\n  total_step: 3\n")
    with pytest.raises(ConfigError, match=r"typo.yaml: trainer.total_step: unknown key \(did you mean 'trainer.total_steps'\?\)"):
        load_config(typo)


def test_every_shipped_recipe_loads():
    recipes = sorted((ROOT / "launch" / "configs").glob("*.yaml"))
    assert recipes, "no recipes under launch/configs"
    for path in recipes:
        # Cluster recipes point at model dirs that exist only on the cluster.
        cfg = load_config(path, check_paths=False)
        assert cfg.trainer.total_steps >= 1, path


def test_engines_hold_a_workers_whole_share_of_a_step():
    """rollout.prompts_per_request 0: one call per worker per step. Either way a worker's
    calls decode together, so its engine is sized for its whole share (prompts x G)."""
    from scope_ray.controller.cluster import rollout_max_num_seqs

    whole = load_config(None, ["rollout.prompts_per_request=0"])
    assert whole.rollout.request_prompts(16) == 16 and rollout_max_num_seqs(whole) == 16 * 8
    three = load_config(None, ["rollout.prompts_per_request=0", "rollout.num_workers=3"])
    assert three.rollout.request_prompts(16) == 6 and rollout_max_num_seqs(three) == max(6 * 8, 8 * three.trainer.eval_k)
    default = load_config(None, [])
    assert default.rollout.prompts_per_request == 4 and default.rollout.request_prompts(16) == 4
    assert rollout_max_num_seqs(default) == 16 * 8  # 4 calls of 4 prompts, decoding together
    two = load_config(None, ["rollout.num_workers=2", "trainer.prompts_per_step=8"])
    assert rollout_max_num_seqs(two) == max(4 * 8, 8 * two.trainer.eval_k)


def test_lora_without_peft_is_refused_naming_the_extra(monkeypatch):
    """learner.lora needs peft, an optional extra: refused before Ray starts, not in a rank."""
    from scope_ray.learner import lora

    monkeypatch.setattr(lora, "missing_peft", lambda: True)
    with pytest.raises(ConfigError, match=r"^learner\.lora\.rank: LoRA needs peft.*pip install 'scope-ray\[lora\]'$"):
        load_config(None, ["learner.lora.rank=8"])
    load_config(None, ["learner.lora.rank=0"])  # off: peft is not needed


def test_topk_larger_than_the_teachers_vocabulary_is_refused(tmp_path, tiny_model_dir):
    data = tmp_path / "train.jsonl"
    data.write_text("")
    over = ["algorithm.distill=topk", f"model.student={tiny_model_dir}", f"model.teacher={tiny_model_dir}",
            f"data.train_files=[{data}]"]
    with pytest.raises(ConfigError, match=r"^algorithm\.topk: must be at most the teacher's vocabulary \(\d+\), got 100000$"):
        load_config(None, [*over, "algorithm.topk=100000"])
    load_config(None, [*over, "algorithm.topk=20"])
