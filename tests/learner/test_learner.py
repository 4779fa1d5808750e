"""LearnerGroup on real Ray + real DeepSpeed (CPU, gloo).

Groups are module-scoped and reset between tests by loading an "init" DeepSpeed
checkpoint (weights AND optimizer state), which is far cheaper than new actors.
The reference is ONE worker under ZeRO-1; the data-parallel groups are TWO workers
under ZeRO-2 and ZeRO-3, with a micro-batch budget that gives the ranks different
numbers of micro-batches (so the lockstep idle passes are exercised too).
"""

from __future__ import annotations

import logging
import socket
from pathlib import Path

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file

from actors.learner import LearnerGroup, port_was_taken
from scope_ray.algo import get_algorithm, rollout_weights
from scope_ray.algo.weights import sequence_mean_logprob
from scope_ray.learner.batch import TrainBatch, collate
from scope_ray.learner import LearnerOptions, merge_step_metrics
from scope_ray.learner.logprobs import token_logprobs

OPTIONS = LearnerOptions(zero_stage=1, lr=1e-3, grad_clip=1.0, micro_batch_tokens=40, num_cpus=0.5)
BUDGET = 40  # padded tokens per micro-batch: several micro-batches per rank
# Weights after one Adam step (lr 1e-3). Adam's first step moves a weight by
# lr * g / (|g| + eps); for a gradient within a few eps (1e-8) of zero, the fp32 summation
# order of another micro-batch split changes that move by a few percent: measured 1.2e-5
# (a gradient of 6e-9, one padded micro-batch vs several) on a Xeon without AVX-512.
# A lost, doubled or misweighted micro-batch moves weights by ~lr and changes grad_norm,
# which the tests check at rel 1e-5.
ATOL = 3e-5

Weights = dict[str, torch.Tensor]


def _synthetic_batch() -> TrainBatch:
    """4 prompts x 2 rollouts of different lengths; even rows correct. old_logp and the
    weights are filled in by the ``batch`` fixture from the initial policy."""
    g = torch.Generator().manual_seed(0)
    resp_lens = [10, 4, 12, 7, 3, 9, 15, 6]
    prompts = [torch.randint(5, 200, (6,), generator=g).tolist() for _ in resp_lens]
    responses = [torch.randint(5, 200, (n,), generator=g).tolist() for n in resp_lens]
    correct = [i % 2 == 0 for i in range(len(resp_lens))]
    teacher = [None if c else (-0.5 - 4 * torch.rand(n, generator=g)).numpy() for c, n in zip(correct, resp_lens)]
    return collate(
        prompt_ids=prompts, response_ids=responses, old_logp=[[0.0] * n for n in resp_lens],
        teacher_logp=teacher, correct=correct, rewards=[float(c) for c in correct],
        weights=[1.0] * len(resp_lens), group_index=[0, 0, 1, 1, 2, 2, 3, 3], pad_id=0,
    )


def _make_group(model_dir: Path, zero_stage: int, num_workers: int, ckpt_dir: Path, **extra) -> LearnerGroup:
    group = LearnerGroup(str(model_dir), LearnerOptions(**{**_opts(zero_stage).__dict__, **extra}), num_workers,
                         timeout_s=300)
    group.save_checkpoint(str(ckpt_dir), tag="init")
    return group


def _opts(zero_stage: int) -> LearnerOptions:
    return LearnerOptions(**{**OPTIONS.__dict__, "zero_stage": zero_stage})


def _reset(group: LearnerGroup, ckpt_dir: Path) -> None:
    group.load_checkpoint(str(ckpt_dir), tag="init")


def _max_diff(a: Weights, b: Weights) -> float:
    assert a.keys() == b.keys()
    return max(float((a[k].float() - b[k].float()).abs().max()) for k in a)


@pytest.fixture(scope="module")
def single(ray_session, tiny_model_dir: Path, tmp_path_factory: pytest.TempPathFactory):
    ckpt = tmp_path_factory.mktemp("single_ckpt")
    group = _make_group(tiny_model_dir, 1, 1, ckpt)
    yield group, ckpt
    group.shutdown()


@pytest.fixture(scope="module")
def batch(single) -> TrainBatch:
    """On-policy at the initial weights (rho = 1 on the first step), SCOPE weights."""
    group, ckpt = single
    b = _synthetic_batch()
    b.old_logp = group.compute_logprobs(b)
    mask = b.response_mask
    teacher_mean = torch.where(b.correct, torch.nan, sequence_mean_logprob(b.teacher_logp.nan_to_num(0.0), mask))
    b.weights = rollout_weights(
        get_algorithm("scope"), b.correct, sequence_mean_logprob(b.old_logp, mask), teacher_mean, b.group_index,
    ).float()
    b.validate()
    return b


@pytest.fixture(scope="module")
def initial_weights(single) -> Weights:
    group, ckpt = single
    _reset(group, ckpt)
    return group.export_weights()


@pytest.fixture(scope="module")
def reference_update(single, batch, initial_weights) -> tuple[Weights, dict]:
    """One step of the single ZeRO-1 worker at BUDGET: the weights every layout must match."""
    group, ckpt = single
    _reset(group, ckpt)
    metrics = group.train_step(batch, micro_batch_tokens=BUDGET)
    return group.export_weights(), metrics


@pytest.fixture(scope="module", params=[2, 3], ids=["zero2", "zero3"])
def dp_group(request, ray_session, tiny_model_dir: Path, tmp_path_factory: pytest.TempPathFactory):
    ckpt = tmp_path_factory.mktemp(f"dp_zero{request.param}_ckpt")
    # keep_previous_policy: the copy it keeps does not enter the update (checked below).
    group = _make_group(tiny_model_dir, request.param, 2, ckpt, keep_previous_policy=True)
    yield group, ckpt
    group.shutdown()


def test_scope_steps_change_weights_and_lower_the_loss(single, batch, initial_weights) -> None:
    group, ckpt = single
    _reset(group, ckpt)
    losses = []
    for _ in range(4):
        m = group.train_step(batch, micro_batch_tokens=BUDGET)
        assert not m["skipped"] and m["tokens"] == batch.num_response_tokens
        losses.append(m["loss"])
    assert all(b < a for a, b in zip(losses, losses[1:])), losses
    assert _max_diff(group.export_weights(), initial_weights) > 1e-3
    # the log-prob gap is 0 on the first step (on-policy) and grows as the policy moves
    assert m["logp_gap"] > 0.1 and m["rho_mean"] > 1.0


def test_first_step_is_on_policy(reference_update) -> None:
    _, m = reference_update
    assert m["logp_gap"] < 1e-5 and m["rho_mean"] == pytest.approx(1.0, abs=1e-5)
    assert m["grad_norm"] > OPTIONS.grad_clip  # clipping is active, and must match too
    assert m["micro_batches"] > 1


def test_two_workers_match_one_worker(dp_group, batch, reference_update, initial_weights) -> None:
    group, ckpt = dp_group
    _reset(group, ckpt)
    assert _max_diff(group.export_weights(), initial_weights) == 0.0
    metrics = group.train_step(batch, micro_batch_tokens=BUDGET)
    ref_weights, ref_metrics = reference_update
    assert metrics["idle_micro_batches"] > 0  # the ranks really had different counts
    assert metrics["loss"] == pytest.approx(ref_metrics["loss"], rel=1e-5)
    assert metrics["grad_norm"] == pytest.approx(ref_metrics["grad_norm"], rel=1e-5)
    assert _max_diff(group.export_weights(), ref_weights) < ATOL
    assert _max_diff(ref_weights, initial_weights) > 1e-4  # the step did move the weights


def test_previous_policy_is_the_one_the_step_replaced(dp_group, batch) -> None:
    """learner.old_logp=recompute under max_staleness=1 scores a rollout made one version
    ago under the weights before the latest step (kept on every rank, ZeRO-2 and -3)."""
    group, ckpt = dp_group
    _reset(group, ckpt)
    before = group.compute_logprobs(batch)
    group.train_step(batch, micro_batch_tokens=BUDGET)
    after = group.compute_logprobs(batch)
    previous = group.compute_logprobs(batch, policy="previous")
    assert float((after - before).abs().max()) > 1e-3  # the step moved the policy
    torch.testing.assert_close(previous, before, atol=1e-6, rtol=0)


def test_more_ranks_than_groups(dp_group, single, batch) -> None:
    """One prompt group for two ranks: rank 1 only runs idle passes, same update."""
    one_group = batch.select(torch.tensor([0, 1])).trim()
    updates = []
    for group, ckpt in (single, dp_group):
        _reset(group, ckpt)
        m = group.train_step(one_group, micro_batch_tokens=BUDGET)
        assert not m["skipped"]
        updates.append((group.export_weights(), m))
    (ref_w, ref_m), (dp_w, dp_m) = updates
    assert dp_m["idle_micro_batches"] == dp_m["micro_batches"] > 0
    assert dp_m["grad_norm"] == pytest.approx(ref_m["grad_norm"], rel=1e-5)
    assert _max_diff(dp_w, ref_w) < ATOL


def test_bad_batches_are_refused_before_any_rank_runs(single, batch) -> None:
    group, _ = single
    no_teacher = batch.select(torch.arange(batch.num_rows))
    no_teacher.teacher_logp = torch.full_like(batch.teacher_logp, float("nan"))
    with pytest.raises(ValueError, match="teacher_logp is missing"):
        group.train_step(no_teacher)
    with pytest.raises(ValueError, match="empty batch"):
        group.train_step(batch.select(torch.tensor([], dtype=torch.long)).trim())


def test_micro_batch_budget_does_not_change_the_update(single, batch, reference_update) -> None:
    group, ckpt = single
    ref_weights, ref_metrics = reference_update
    for budget in (10_000, 1):  # one micro-batch; one rollout per micro-batch
        _reset(group, ckpt)
        m = group.train_step(batch, micro_batch_tokens=budget)
        assert m["micro_batches"] == (1 if budget > 1 else batch.num_rows) != ref_metrics["micro_batches"]
        # One rollout per micro-batch runs no padding; one micro-batch pads every row to the longest.
        lengths = batch.lengths().double()
        want = 0.0 if budget == 1 else float(1 - lengths.sum() / (len(lengths) * lengths.max()))
        assert m["padded_fraction"] == pytest.approx(want, abs=1e-12) and (budget == 1 or want > 0.05)
        assert m["loss"] == pytest.approx(ref_metrics["loss"], rel=1e-5)
        assert m["grad_norm"] == pytest.approx(ref_metrics["grad_norm"], rel=1e-5)
        assert _max_diff(group.export_weights(), ref_weights) < ATOL


def test_published_weights_are_the_exported_ones(single, initial_weights) -> None:
    """What the trainer syncs: rank 0's safetensors buckets, handed over as an object ref."""
    import ray
    from safetensors.torch import load as load_safetensors

    group, ckpt = single
    _reset(group, ckpt)
    ref = group.publish_weights(0.25)  # ~0.25 MiB buckets: the 1.7 MB model in several
    assert isinstance(ref, ray.ObjectRef)
    blobs = ray.get(ref)
    assert len(blobs) > 1
    published = {k: v for blob in blobs for k, v in load_safetensors(blob).items()}
    assert published.keys() == initial_weights.keys()
    assert _max_diff(published, initial_weights) == 0.0


def test_export_and_save_hf_give_the_trained_model(single, batch, reference_update, tiny_model_dir, tmp_path) -> None:
    from transformers import AutoModelForCausalLM

    group, ckpt = single
    _reset(group, ckpt)
    group.train_step(batch, micro_batch_tokens=BUDGET)
    exported = group.export_weights()
    with safe_open(str(Path(tiny_model_dir) / "model.safetensors"), "pt") as f:
        hf_names = {k: f.get_slice(k).get_shape() for k in f.keys()}
    assert {k: list(v.shape) for k, v in exported.items()} == hf_names  # every parameter, HF names
    assert "lm_head.weight" not in exported  # tied to model.embed_tokens.weight

    # Values: an HF model carrying the exported weights scores exactly like the learner.
    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir, dtype=torch.float32).eval()
    missing, unexpected = model.load_state_dict(exported, strict=False)
    assert set(missing) <= {"lm_head.weight"} and not unexpected
    with torch.no_grad():
        hf_logp = token_logprobs(model, batch.input_ids, batch.attention_mask) * batch.response_mask
    assert torch.allclose(group.compute_logprobs(batch), hf_logp, atol=1e-5)
    assert _max_diff(exported, reference_update[0]) < ATOL

    out = Path(group.save_hf(str(tmp_path / "hf")))
    assert (out / "tokenizer.json").exists() and (out / "chat_template.jinja").exists()
    saved = AutoModelForCausalLM.from_pretrained(out, dtype=torch.float32)
    assert _max_diff({k: v.detach() for k, v in saved.named_parameters()}, exported) == 0.0


def test_checkpoint_round_trip_restores_weights_and_optimizer(dp_group, batch, tmp_path) -> None:
    group, ckpt = dp_group
    _reset(group, ckpt)
    group.train_step(batch, micro_batch_tokens=BUDGET)
    group.save_checkpoint(str(tmp_path), tag="mid")
    mid = group.export_weights()
    group.train_step(batch, micro_batch_tokens=BUDGET)
    straight = group.export_weights()
    group.train_step(batch, micro_batch_tokens=BUDGET)  # move away, then come back
    group.load_checkpoint(str(tmp_path), tag="mid")
    assert _max_diff(group.export_weights(), mid) == 0.0
    group.train_step(batch, micro_batch_tokens=BUDGET)
    # Adam's second step depends on its moments: equal only if they were restored too.
    after = group.export_weights()
    assert _max_diff(after, straight) < 1e-7
    assert _max_diff(straight, mid) > 1e-4
    # save_hf gathers partitioned (ZeRO-3) weights too
    saved = load_file(str(Path(group.save_hf(str(tmp_path / "hf"))) / "model.safetensors"))
    assert _max_diff(saved, after) == 0.0


def test_non_finite_loss_skips_the_step(single, batch, initial_weights) -> None:
    group, ckpt = single
    _reset(group, ckpt)
    bad = batch.select(torch.arange(batch.num_rows))
    bad.old_logp = torch.where(bad.response_mask.bool(), torch.full_like(bad.old_logp, -1e30), bad.old_logp)
    m = group.train_step(bad, micro_batch_tokens=BUDGET)  # rho = exp(1e30) = inf
    assert m["skipped"]
    assert _max_diff(group.export_weights(), initial_weights) == 0.0
    m = group.train_step(batch, micro_batch_tokens=BUDGET)  # the learner still trains
    assert not m["skipped"] and _max_diff(group.export_weights(), initial_weights) > 1e-4


def test_non_finite_loss_on_one_rank_skips_the_step_on_every_rank(dp_group, batch, reference_update) -> None:
    """Only prompt 0's rollouts (one rank's shard) are non-finite. Every rank must skip:
    afterwards one good step gives exactly the single worker's first update, which it
    could not if any rank had applied its part or advanced its optimizer state."""
    group, ckpt = dp_group
    _reset(group, ckpt)
    bad = batch.select(torch.arange(batch.num_rows))
    poisoned = (bad.group_index == 0)[:, None] & bad.response_mask.bool()
    bad.old_logp = torch.where(poisoned, torch.full_like(bad.old_logp, -1e30), bad.old_logp)
    assert group.train_step(bad, micro_batch_tokens=BUDGET)["skipped"]
    m = group.train_step(batch, micro_batch_tokens=BUDGET)
    assert not m["skipped"]
    want, _ = reference_update
    assert _max_diff(group.export_weights(), want) < ATOL


@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
def test_gradient_checkpointing_and_bf16(dtype, ray_session, tiny_model_dir, batch, reference_update) -> None:
    """ZeRO-2 + gradient checkpointing: the same update in fp32; bf16 trains close to it."""
    import ray

    opts = LearnerOptions(**{**_opts(2).__dict__, "gradient_checkpointing": True, "dtype": dtype})
    group = LearnerGroup(str(tiny_model_dir), opts, 1, timeout_s=300)
    try:
        m = group.train_step(batch, micro_batch_tokens=BUDGET)
        weights = group.export_weights()
        # Micro-batch gradients are summed in fp32 either way (learner.grad_accum_dtype).
        accum = ray.get(group.workers[0].__ray_call__.remote(
            lambda w: str(w.core.engine.optimizer.gradient_accumulation_dtype)))
    finally:
        group.shutdown()
    assert accum == "torch.float32"
    ref_weights, ref_metrics = reference_update
    assert not m["skipped"]
    if dtype == "float32":
        assert m["grad_norm"] == pytest.approx(ref_metrics["grad_norm"], rel=1e-5)
        assert _max_diff(weights, ref_weights) < ATOL
    else:
        assert all(t.dtype == torch.bfloat16 for t in weights.values())
        assert m["loss"] == pytest.approx(ref_metrics["loss"], rel=2e-2)
        assert m["grad_norm"] == pytest.approx(ref_metrics["grad_norm"], rel=5e-2)
        assert _max_diff(weights, ref_weights) < 2e-2  # bf16 rounding of ~0.02-scale weights


def test_a_taken_rendezvous_port_is_retried_on_a_new_one(ray_session, tiny_model_dir, batch, caplog) -> None:
    """Another process holding rank 0's port (a race between picking a free port and
    binding it) costs one restart of the group, not the run."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as taken:
        taken.bind(("", 0))
        taken.listen()
        port = taken.getsockname()[1]
        with caplog.at_level(logging.WARNING, logger="actors.learner"):
            group = LearnerGroup(str(tiny_model_dir), _opts(2), 1, timeout_s=300, rendezvous_port=port)
    try:
        assert any(f"rendezvous port {port} was taken" in r.getMessage() for r in caplog.records)
        assert not group.train_step(batch, micro_batch_tokens=BUDGET)["skipped"]
    finally:
        group.shutdown()
    assert port_was_taken(RuntimeError("DistNetworkError: ... code: -98, name: EADDRINUSE, message: ..."))
    assert not port_was_taken(RuntimeError("DistNetworkError: connection refused"))


def test_options_and_metric_merge_without_ray() -> None:
    with pytest.raises(ValueError, match="zero_stage"):
        LearnerOptions(zero_stage=0).validate()
    with pytest.raises(ValueError, match="did you mean"):
        LearnerOptions(algorithm="scop").validate()
    rank = dict(loss=1.0, tokens=2, logp_gap_sum=0.2, rho_sum=2.0, rho_max=1.5, micro_batches=1,
                idle_micro_batches=0, nonfinite=False, grad_norm=3.0, lr=1e-3, applied=True, time_s=0.1)
    merged = merge_step_metrics([rank, {**rank, "tokens": 6, "logp_gap_sum": 0.6, "rho_sum": 6.0, "rho_max": 2.0,
                                        "nonfinite": True}])
    assert merged["loss"] == 2.0 and merged["tokens"] == 8
    assert merged["logp_gap"] == pytest.approx(0.1) and merged["rho_mean"] == 1.0 and merged["rho_max"] == 2.0
    assert merged["skipped"] is True
    assert merged["padded_fraction"] != merged["padded_fraction"]  # NaN: no token slots reported
    padded = merge_step_metrics([{**rank, "slot_tokens": 100, "real_tokens": 90},
                                 {**rank, "slot_tokens": 60, "real_tokens": 30}])
    assert padded["padded_fraction"] == pytest.approx(40 / 160)


_LOOPBACK_GROUP_OUTLIVES_ITS_SETUP = """
import gc, sys, time
import torch
from scope_ray.learner.core import free_port
from scope_ray.learner.engine import _init_on_loopback
_init_on_loopback(0, 1, "127.0.0.1", free_port(), "gloo")
gc.collect()
time.sleep(1.0)  # the store's daemon polls its listening socket meanwhile
t = torch.ones(3)
torch.distributed.all_reduce(t)
torch.distributed.barrier()
print("alive", t.tolist())
"""


def test_the_loopback_group_keeps_its_listening_socket() -> None:
    """Rank 0's TCPStore polls the listening socket made for it for as long as the group
    lives; when the socket object closed it on return, the store's daemon aborted the
    process (SIGABRT, seen once in a resumed run). A fresh process: the group is global."""
    import subprocess
    import sys

    root = Path(__file__).resolve().parents[2]
    done = subprocess.run([sys.executable, "-c", _LOOPBACK_GROUP_OUTLIVES_ITS_SETUP], cwd=root, capture_output=True,
                          text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    assert "alive [1.0, 1.0, 1.0]" in done.stdout


def test_learner_processes_build_with_the_interpreters_own_ninja() -> None:
    """Whatever PATH a learner process starts with (a Ray worker's, a job's), the comm
    op is built by the ninja beside its interpreter: two ninja versions sharing one build
    folder rebuilt it for each other every time."""
    import os
    import subprocess
    import sys

    own = Path(sys.executable).parent / "ninja"
    assert own.is_file(), "pip's ninja (a DeepSpeed dependency) is missing from the venv"
    code = ("from scope_ray.learner.engine import configure_process_env; configure_process_env(); "
            "import shutil; print(shutil.which('ninja'))")
    root = Path(__file__).resolve().parents[2]
    for path in ("/usr/bin:/bin", f"{own.parent}{os.pathsep}/usr/bin:/bin"):
        out = subprocess.run([sys.executable, "-c", code], cwd=root, capture_output=True, text=True, timeout=120,
                             env={**os.environ, "PATH": path})
        assert out.returncode == 0, out.stderr[-2000:]
        assert out.stdout.strip() == str(own), (path, out.stdout)


def test_deepspeed_is_told_the_gradient_accumulation_dtype() -> None:
    from scope_ray.learner.engine import deepspeed_config

    bf16 = LearnerOptions(zero_stage=2, dtype="bfloat16")
    assert deepspeed_config(bf16)["data_types"] == {"grad_accum_dtype": "fp32"}
    as_model = LearnerOptions(zero_stage=3, dtype="bfloat16", grad_accum_dtype="bfloat16")
    assert deepspeed_config(as_model)["data_types"] == {"grad_accum_dtype": "bf16"}
    assert "data_types" not in deepspeed_config(LearnerOptions(zero_stage=2))  # fp32 model: fp32 sums
    # ZeRO-1 + bf16 + fp32 sums is DeepSpeed's BF16_Optimizer, which double-counts here.
    with pytest.raises(ValueError, match="BF16_Optimizer"):
        LearnerOptions(zero_stage=1, dtype="bfloat16").validate()
    with pytest.raises(ValueError, match="grad_accum_dtype bfloat16 needs dtype bfloat16"):
        LearnerOptions(grad_accum_dtype="bfloat16").validate()
