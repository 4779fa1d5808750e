"""LoRA students (learner.lora) on real Ray + real DeepSpeed (CPU, gloo) + real vLLM.

What must hold: only the adapters train and sit in the optimizer; whatever leaves the
learner (export, HF dir, weight sync) is the merged model under the base model's names,
equal to peft's own merge of the exported adapter; vLLM serving the synced weights
decodes what the merged model decodes; a checkpoint (adapters + optimizer only) resumes
to the same update; ZeRO-3 over two ranks makes the same update as one ZeRO-2 rank.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import ray
import torch
from safetensors.torch import load_file

from actors.learner import LearnerGroup
from actors.rollout import RolloutWorker
from scope_ray.engines.vllm_engine import EngineOptions
from scope_ray.learner import LearnerOptions
from scope_ray.learner.batch import TrainBatch, collate
from scope_ray.learner.lora import LoraOptions
from scope_ray.learner.logprobs import token_logprobs
from scope_ray.types import GenerationRequest

LORA = LoraOptions(rank=4, alpha=8.0)
# A large lr so a few steps move the merged model visibly (the checks below compare it).
OPTIONS = LearnerOptions(zero_stage=2, lr=2e-2, grad_clip=1.0, micro_batch_tokens=64, num_cpus=0.5, lora=LORA)
PROMPTS = [[40, 41, 42, 43, 44, 45], [50, 60, 70], [(7 * i) % 250 + 5 for i in range(40)]]


def _batch(group: LearnerGroup) -> TrainBatch:
    """3 prompts x 2 rollouts, all incorrect (teacher-weighted distillation), on-policy."""
    g = torch.Generator().manual_seed(0)
    lens = [9, 5, 12, 7, 4, 10]
    prompts = [torch.randint(5, 200, (6,), generator=g).tolist() for _ in lens]
    responses = [torch.randint(5, 200, (n,), generator=g).tolist() for n in lens]
    b = collate(
        prompt_ids=prompts, response_ids=responses, old_logp=[[0.0] * n for n in lens],
        teacher_logp=[(-0.5 - 4 * torch.rand(n, generator=g)).numpy() for n in lens],
        correct=[False] * len(lens), rewards=[0.0] * len(lens), weights=[0.5] * len(lens),
        group_index=[0, 0, 1, 1, 2, 2], pad_id=0,
    )
    b.old_logp = group.compute_logprobs(b)
    b.validate()
    return b


def _base_names(model_dir: Path) -> set[str]:
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32)
    return {name for name, _ in model.named_parameters()}


def _hf(model_dir: Path) -> torch.nn.Module:
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32).eval()


def _max_diff(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> float:
    assert a.keys() == b.keys()
    return max(float((a[k].float() - b[k].float()).abs().max()) for k in a)


@pytest.fixture(scope="module")
def lora_group(ray_session, tiny_model_dir: Path, tmp_path_factory: pytest.TempPathFactory):
    ckpt = tmp_path_factory.mktemp("lora_ckpt")
    group = LearnerGroup(str(tiny_model_dir), OPTIONS, 1, timeout_s=300)
    group.save_checkpoint(str(ckpt), tag="init")
    yield group, ckpt
    group.shutdown()


@pytest.fixture(scope="module")
def trained(lora_group, tiny_model_dir: Path, tmp_path_factory: pytest.TempPathFactory):
    """Three steps from the initial adapters: (weights before, weights after, HF dir)."""
    group, ckpt = lora_group
    group.load_checkpoint(str(ckpt), tag="init")
    before = group.export_weights()
    batch = _batch(group)
    for _ in range(3):
        group.train_step(batch)
    out = tmp_path_factory.mktemp("lora_hf") / "hf"
    group.save_hf(str(out))
    return before, group.export_weights(), out


def test_only_the_adapters_train_and_fill_the_optimizer(lora_group, trained, tiny_model_dir) -> None:
    group, _ = lora_group
    counts = group.parameter_counts()[0]
    base = sum(p.numel() for p in _hf(tiny_model_dir).parameters())
    assert counts["total"] == base + counts["trainable"]
    assert 0 < counts["trainable"] < base / 10
    # AdamW: two fp32 moments per trained parameter (plus a step counter per group).
    assert 8 * counts["trainable"] <= counts["optimizer_state_bytes"] <= 8 * counts["trainable"] + 64
    before, after, _ = trained
    assert set(after) == _base_names(tiny_model_dir)  # the merged model, under HF names
    moved = {k for k in after if float((after[k] - before[k]).abs().max()) > 0}
    assert moved and all(k.endswith("proj.weight") for k in moved), sorted(moved)  # only adapted layers
    assert max(float((after[k] - before[k]).abs().max()) for k in moved) > 1e-3


def test_the_export_is_peft_merge_of_the_saved_adapter(trained, tiny_model_dir) -> None:
    from peft import PeftModel

    _, after, hf_dir = trained
    saved = load_file(hf_dir / "model.safetensors")
    assert _max_diff(saved, {k: after[k] for k in saved}) == 0.0
    assert (hf_dir / "adapter" / "adapter_model.safetensors").is_file()
    merged = PeftModel.from_pretrained(_hf(tiny_model_dir), hf_dir / "adapter").merge_and_unload()
    ours = _hf(hf_dir).state_dict()
    theirs = merged.state_dict()
    assert _max_diff({k: ours[k] for k in saved}, {k: theirs[k] for k in saved}) < 1e-6


def test_learner_logprobs_are_the_merged_models(lora_group, trained) -> None:
    group, _ = lora_group
    _, _, hf_dir = trained
    batch = _batch(group)
    ours = group.compute_logprobs(batch)
    model = _hf(hf_dir)
    with torch.inference_mode():
        theirs = token_logprobs(model, batch.input_ids, batch.attention_mask, 1.0)
    mask = batch.response_mask.bool()
    torch.testing.assert_close(ours[mask], theirs.float()[mask], atol=1e-5, rtol=0)


def test_vllm_serving_the_synced_weights_decodes_as_the_merged_model(ray_session, lora_group, trained,
                                                                     tiny_model_dir) -> None:
    """The rollout path: the learner's bucketed export into a vLLM worker."""
    group, _ = lora_group
    _, _, hf_dir = trained
    opts = EngineOptions(model_dir=str(tiny_model_dir), seed=0, max_model_len=128, dtype="float32",
                         logprobs_mode="processed_logprobs")
    worker = RolloutWorker.options(num_cpus=0.5).remote(opts, {"temperature": 1.0, "max_tokens": 12})
    try:
        ray.get(worker.update_weights.remote(group.export_weights(bucket_mb=0.25), 7), timeout=120)
        greedy = {"temperature": 0.0, "max_tokens": 12}
        reqs = [GenerationRequest(uid=str(i), prompt_ids=p, n=1) for i, p in enumerate(PROMPTS)]
        got = [g[0] for g in ray.get(worker.generate.remote(reqs, greedy), timeout=120)]
    finally:
        ray.kill(worker)
    merged, base = _hf(hf_dir), _hf(tiny_model_dir)
    gap_to_base = 0.0
    for p, r in zip(PROMPTS, got):
        ids = torch.tensor([p])
        expected = merged.generate(ids, attention_mask=torch.ones_like(ids), do_sample=False, max_new_tokens=12)
        assert r.response_ids == expected[0, len(p):].tolist()
        full = torch.tensor([p + r.response_ids])
        with torch.inference_mode():
            want = token_logprobs(merged, full, torch.ones_like(full), 1.0)[0, len(p):].numpy()
            old = token_logprobs(base, full, torch.ones_like(full), 1.0)[0, len(p):].numpy()
        np.testing.assert_allclose(r.response_logp, want, atol=1e-4)
        gap_to_base = max(gap_to_base, float(np.abs(want - old).max()))
    assert gap_to_base > 1e-2  # the adapters really changed what vLLM serves


def test_a_checkpoint_holds_the_adapters_and_resumes_the_same_update(lora_group, tiny_model_dir, tmp_path) -> None:
    group, ckpt = lora_group
    group.load_checkpoint(str(ckpt), tag="init")
    batch = _batch(group)
    group.train_step(batch)
    group.save_checkpoint(str(tmp_path), tag="mid")
    group.train_step(batch)
    straight = group.export_weights()
    group.load_checkpoint(str(ckpt), tag="init")  # somewhere else first: the load must restore
    group.load_checkpoint(str(tmp_path), tag="mid")
    group.train_step(batch)
    assert _max_diff(group.export_weights(), straight) == 0.0
    model_bytes = sum(p.numel() * 4 for p in _hf(tiny_model_dir).parameters())
    states = sum(f.stat().st_size for f in (tmp_path / "mid").glob("*model_states.pt"))
    assert 0 < states < model_bytes / 5, (states, model_bytes)  # no base weights inside


def test_zero3_over_two_ranks_makes_the_one_rank_update_and_keeps_the_previous_policy(ray_session, lora_group, tiny_model_dir) -> None:
    group, ckpt = lora_group
    group.load_checkpoint(str(ckpt), tag="init")
    batch = _batch(group)
    one = group.train_step(batch, micro_batch_tokens=24)
    want = group.export_weights()
    # keep_previous_policy (learner.old_logp=recompute at staleness 1): the kept copy is
    # the merged model the step replaced.
    zero3 = LearnerGroup(str(tiny_model_dir),
                         LearnerOptions(**{**OPTIONS.__dict__, "zero_stage": 3, "keep_previous_policy": True}), 2,
                         timeout_s=300)
    try:
        before = zero3.compute_logprobs(batch)
        two = zero3.train_step(batch, micro_batch_tokens=24)
        got = zero3.export_weights()
        counts = zero3.parameter_counts()
        previous = zero3.compute_logprobs(batch, policy="previous")
    finally:
        zero3.shutdown()
    torch.testing.assert_close(previous, before, atol=1e-6, rtol=0)
    assert two["grad_norm"] == pytest.approx(one["grad_norm"], rel=1e-5)
    assert _max_diff(got, want) < 3e-5  # Adam's first step near eps (tests/learner/test_learner.py)
    # The adapters' optimizer state is split over the two ranks.
    assert sum(c["optimizer_state_bytes"] for c in counts) <= 8 * counts[0]["trainable"] + 128
