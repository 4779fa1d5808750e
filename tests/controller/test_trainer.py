"""scope_ray/controller/trainer.py end to end on local Ray: real vLLM, teacher, DeepSpeed.

One uninterrupted 3-step run and one 2-step run resumed to step 3 must agree exactly:
same prompts, same rollouts (per-prompt seeds), same losses, same final weights.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from scope_ray.config import load_config
from scope_ray.controller import checkpoint as ckpt
from scope_ray.controller.launch import run_training


def _cfg(boot, run_dir: Path, steps: int, extra: list[str] = ()):  # type: ignore[assignment]
    return load_config(None, [
        f"model.student={boot.student_dir}", f"model.teacher={boot.teacher_dir}",
        f"data.train_files=[{boot.train_file}]", f"data.eval_files=[{boot.test_file}]",
        "data.max_eval_prompts=8", "trainer.eval_k=2", "trainer.eval_every=0",
        "trainer.prompts_per_step=4", "rollout.group_size=4", "model.max_response_tokens=48",
        "trainer.save_every=1", "learner.lr=1e-3", f"trainer.total_steps={steps}",
        f"trainer.run_dir={run_dir}", *extra,
    ])


def _rows(run_dir: Path) -> list[dict]:
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


def _train_rows(run_dir: Path) -> list[tuple]:
    return [
        (r["step"], r["rollout/tokens"], r["branch/correct_size"], round(r["learner/loss"], 5))
        for r in _rows(run_dir) if "learner/loss" in r
    ]


@pytest.fixture(scope="module")
def uninterrupted(ray_session, tiny_bootstrap, tmp_path_factory):
    run_dir = tmp_path_factory.mktemp("run_a")
    cfg = _cfg(tiny_bootstrap, run_dir, 3)
    summary = run_training(cfg, run_dir, None, show_progress=False)
    return run_dir, summary


def test_run_writes_metrics_checkpoints_and_curves(uninterrupted):
    run_dir, summary = uninterrupted
    assert summary.steps == 3
    rows = _rows(run_dir)
    assert [r["step"] for r in rows] == [0, 1, 2, 3]
    assert "eval/avg@2" in rows[0] and "eval/pass@2" in rows[-1]
    for r in rows[1:]:
        assert r["rollout/tokens"] > 0
        assert r["branch/correct_size"] + r["branch/incorrect_size"] == 16
        assert r["learner/skipped"] == 0
        # Strictly on-policy: the learner recomputes what vLLM sampled (float32, CPU).
        assert r["learner/logp_gap"] < 1e-3, "rollout weights out of sync with the learner"
        assert r["rollout/staleness_max"] == 0
        # Teacher scoring that outlasted generation is part of the step, never more.
        assert 0.0 <= r["time/score_tail_s"] <= r["time/step_s"]
        # The step's named phases, in order, make up the step (up to the metrics' own bookkeeping).
        phases = [r[f"time/phase_{p}_s"] for p in ("rollouts", "weigh", "train", "push")]
        assert min(phases) >= 0 and sum(phases) <= r["time/step_s"] <= sum(phases) + 0.5
        assert r["time/phase_train_s"] >= r["time/train_s"]
    assert (run_dir / "curves.png").stat().st_size > 1000
    assert any((run_dir / "tensorboard").iterdir())
    assert ckpt.latest_valid(run_dir).step == 3


def test_resume_equals_uninterrupted(ray_session, tiny_bootstrap, uninterrupted, tmp_path):
    full_dir, _ = uninterrupted
    run_dir = tmp_path / "run_b"
    run_training(_cfg(tiny_bootstrap, run_dir, 2), run_dir, None, show_progress=False)
    ref = ckpt.latest_valid(run_dir)
    assert ref is not None and ref.step == 2
    run_training(_cfg(tiny_bootstrap, run_dir, 3), run_dir, ref, show_progress=False)
    assert _train_rows(run_dir) == _train_rows(full_dir)
    a = load_file(ckpt.latest_valid(full_dir).hf_dir / "model.safetensors")
    b = load_file(ckpt.latest_valid(run_dir).hf_dir / "model.safetensors")
    assert a.keys() == b.keys()
    for k in a:
        torch.testing.assert_close(a[k], b[k], rtol=0, atol=1e-6)


def test_to_train_batch_routes_scores_to_teacher_or_reference():
    import numpy as np

    from scope_ray.algo import get_algorithm
    from scope_ray.controller.groups import weigh_groups
    from scope_ray.controller.trainer import to_train_batch
    from scope_ray.types import Rollout, RolloutGroup

    rollouts = [Rollout([5, 6], np.array([-0.1, -0.2], np.float32), "x", "stop", 0) for _ in range(2)]
    g = RolloutGroup("u", 0, [1, 2, 3], "1", "s", rollouts, rewards=[1.0, 0.0], reasons=["correct", "wrong"],
                     teacher_logp=[np.array([-1.0, -2.0], np.float32)] * 2)
    wb = weigh_groups(get_algorithm("grpo"), [g], tau=1.0, normalize="sum")
    as_ref = to_train_batch(wb, pad_id=0, scores_are_reference=True)
    assert torch.isnan(as_ref.teacher_logp).all()
    assert as_ref.ref_logp[0, 3:5].tolist() == [-1.0, -2.0]
    as_teacher = to_train_batch(wb, pad_id=0)
    assert as_teacher.ref_logp is None and as_teacher.teacher_logp[1, 3:5].tolist() == [-1.0, -2.0]


def test_grpo_without_teacher_uses_reference_and_recomputed_old_logp(ray_session, tiny_bootstrap, tmp_path):
    boot = tiny_bootstrap
    cfg = load_config(None, [
        f"model.student={boot.student_dir}", f"data.train_files=[{boot.train_file}]",
        "algorithm.name=grpo", "algorithm.kl_beta=0.1", "learner.old_logp=recompute",
        "trainer.prompts_per_step=4", "rollout.group_size=4", "model.max_response_tokens=32",
        "trainer.eval_every=0", "trainer.eval_at_end=false", "trainer.save_every=0", "trainer.total_steps=2",
        f"trainer.run_dir={tmp_path}", "learner.lr=1e-3",
    ])
    run_training(cfg, tmp_path, None, show_progress=False)
    rows = [r for r in _rows(tmp_path) if "learner/loss" in r]
    assert len(rows) == 2
    assert "teacher/reverse_kl" not in rows[0]  # no teacher in GRPO
    # The reference is the initial sampling policy: KL ~0 (engine vs HF numerics) while
    # the rollouts come from it, clearly above that once the policy has moved.
    assert 0 <= rows[0]["reference/kl"] < 1e-8
    assert rows[1]["reference/kl"] > 1e3 * max(rows[0]["reference/kl"], 1e-9)


# Every step's checkpoint kept: the resume test below continues from step 1's.
STALE = ["trainer.max_staleness=1", "trainer.eval_at_end=false", "trainer.keep_checkpoints=3"]


@pytest.fixture(scope="module")
def stale_runs(ray_session, tiny_bootstrap, tmp_path_factory) -> dict[str, Path]:
    """Uninterrupted 3-step runs at max_staleness=1, one per learner.old_logp mode."""
    runs = {}
    for mode in ("rollout", "recompute"):
        run_dir = tmp_path_factory.mktemp(f"stale_{mode}")
        run_training(_cfg(tiny_bootstrap, run_dir, 3, [*STALE, f"learner.old_logp={mode}"]), run_dir, None,
                     show_progress=False)
        runs[mode] = run_dir
    return runs


def test_recompute_keeps_the_lag_correction_at_staleness_1(stale_runs):
    """max_staleness=1: step s trains on rollouts of the policy before step s-1. With
    learner.old_logp=recompute, pi_old must be the learner's forward under *those*
    weights (kept from before the last step), so rho equals the rollout-log-prob run's;
    recomputing with the current weights would give rho = 1 and drop the correction."""
    gaps = {}
    for mode, run_dir in stale_runs.items():
        rows = [r for r in _rows(run_dir) if "learner/loss" in r]
        assert [r["rollout/staleness_max"] for r in rows] == [0, 1, 1]
        gaps[mode] = [(r["learner/logp_gap"], r["learner/rho_mean"]) for r in rows]
    for (gap_a, rho_a), (gap_b, rho_b) in zip(gaps["rollout"][1:], gaps["recompute"][1:]):
        assert gap_a > 1e-3  # the lag is real at lr 1e-3
        assert gap_b == pytest.approx(gap_a, abs=1e-4) and rho_b == pytest.approx(rho_a, abs=1e-4)


@pytest.mark.parametrize("mode", ["rollout", "recompute"])
def test_staleness_1_resume_equals_uninterrupted(ray_session, tiny_bootstrap, stale_runs, tmp_path, mode):
    """Resumed from step 1's checkpoint, taken while step 2's groups were already
    generated (by the step-0 weights): the checkpoint keeps those groups (and, under
    recompute, their old log-probs), so steps 2-3 equal the uninterrupted run's. Drawing
    them again would generate them with the step-1 weights instead. (The run that wrote
    the checkpoint is the uninterrupted one itself: a copy of its directory with the
    later checkpoints taken away is a run stopped after step 1. A stop by signal is
    tested end to end in tests/faults/test_faults_driver.py.)"""
    import shutil

    from scope_ray.controller import prefetch

    shutil.copytree(stale_runs[mode], tmp_path, dirs_exist_ok=True)
    for later in ("step_000002", "step_000003"):
        shutil.rmtree(ckpt.checkpoints_dir(tmp_path) / later)
    ref = ckpt.latest_valid(tmp_path)
    assert ref is not None and ref.step == 1 and (ref.path / f"{prefetch.PREFETCHED}.json").is_file()
    cfg = _cfg(tiny_bootstrap, tmp_path, 3, [*STALE, f"learner.old_logp={mode}"])
    run_training(cfg, tmp_path, ref, show_progress=False)

    keys = ("step", "rollout/tokens", "branch/correct_size", "rollout/staleness_max", "learner/loss",
            "learner/grad_norm", "learner/logp_gap", "learner/rho_mean")
    got = [[r[k] for k in keys] for r in _rows(tmp_path) if "learner/loss" in r]
    want = [[r[k] for k in keys] for r in _rows(stale_runs[mode]) if "learner/loss" in r]
    assert [g[0] for g in got] == [1, 2, 3]
    assert [g[:4] for g in got] == [w[:4] for w in want]
    for g, w in zip(got, want):
        assert g[4:] == pytest.approx(w[4:], rel=1e-5, abs=1e-7), g[0]
    a = load_file(ckpt.latest_valid(stale_runs[mode]).hf_dir / "model.safetensors")
    b = load_file(ckpt.latest_valid(tmp_path).hf_dir / "model.safetensors")
    for k in a:
        torch.testing.assert_close(a[k], b[k], rtol=0, atol=1e-6)


def test_staleness_3_bounds_the_lag_and_resumes_exactly(ray_session, tiny_bootstrap, tmp_path_factory):
    """max_staleness 3: the next three steps generate while the learner trains. No
    trained rollout is more than 3 policy versions old, and the bound is reached. A
    checkpoint keeps the groups of every step ahead (each one's own files), so a resume
    from step 2 trains steps 3-5 on exactly the rollouts the uninterrupted run did."""
    import shutil

    from scope_ray.controller import prefetch

    extra = ["trainer.max_staleness=3", "trainer.eval_at_end=false", "trainer.keep_checkpoints=5"]
    full = tmp_path_factory.mktemp("stale3")
    run_training(_cfg(tiny_bootstrap, full, 5, extra), full, None, show_progress=False)
    rows = [r for r in _rows(full) if "learner/loss" in r]
    assert [r["rollout/staleness_max"] for r in rows] == [0, 1, 2, 3, 3]
    assert [r["policy_version"] for r in rows] == [1, 2, 3, 4, 5]

    resumed = tmp_path_factory.mktemp("stale3_resumed")
    shutil.copytree(full, resumed, dirs_exist_ok=True)
    for later in ("step_000003", "step_000004", "step_000005"):
        shutil.rmtree(ckpt.checkpoints_dir(resumed) / later)
    ref = ckpt.latest_valid(resumed)
    assert ref is not None and ref.step == 2
    assert [len(groups) for groups, _ in prefetch.load_all(ref.path)] == [4, 4, 4]  # steps 3, 4, 5
    run_training(_cfg(tiny_bootstrap, resumed, 5, extra), resumed, ref, show_progress=False)
    keys = ("step", "rollout/tokens", "branch/correct_size", "rollout/staleness_max", "learner/loss",
            "learner/grad_norm", "learner/rho_mean")
    got = [[r[k] for k in keys] for r in _rows(resumed) if "learner/loss" in r]
    want = [[r[k] for k in keys] for r in rows]
    assert [g[:4] for g in got] == [w[:4] for w in want]
    for g, w in zip(got, want):
        assert g[4:] == pytest.approx(w[4:], rel=1e-5, abs=1e-7), g[0]


def _approx_rows(run_dir: Path) -> list[tuple]:
    return [(r["step"], r["rollout/tokens"], r["branch/correct_size"], r["learner/loss"], r["learner/grad_norm"])
            for r in _rows(run_dir) if "learner/loss" in r]


def _assert_same_run(a: Path, b: Path) -> None:
    ra, rb = _approx_rows(a), _approx_rows(b)
    assert [r[:3] for r in ra] == [r[:3] for r in rb]  # same prompts, same rollouts
    for x, y in zip(ra, rb):
        assert x[3] == pytest.approx(y[3], rel=1e-4, abs=1e-5) and x[4] == pytest.approx(y[4], rel=1e-3)
    wa = load_file(ckpt.latest_valid(a).hf_dir / "model.safetensors")
    wb = load_file(ckpt.latest_valid(b).hf_dir / "model.safetensors")
    for k in wa:
        torch.testing.assert_close(wa[k], wb[k], rtol=0, atol=1e-4)


# Both with every call of a step decoding together (the GPU default), against the 1 + 1
# run's one call at a time (the CPU default): the same rollouts either way.
@pytest.mark.parametrize("layout", [
    ["rollout.num_workers=2", "learner.num_workers=2", "learner.zero_stage=2", "rollout.max_calls_in_flight=0"],
    ["rollout.num_workers=2", "learner.num_workers=2", "learner.zero_stage=3", "rollout.weight_sync=broadcast",
     "rollout.max_calls_in_flight=0"],
], ids=["2+2-zero2", "2+2-zero3-broadcast"])
def test_two_rollout_workers_and_two_ranks_train_as_one_and_one(ray_session, tiny_bootstrap, uninterrupted,
                                                               tmp_path, layout):
    """The recipes run 4 rollout workers and 3 learner ranks: per-prompt seeds give the
    same rollouts on any worker, and the ranks' summed gradients the same update. The
    ZeRO-3 case syncs by broadcast (rank 0 sends each parameter as the ranks gather it)
    and still equals the 1 + 1 safetensors run."""
    full_dir, _ = uninterrupted
    run_training(_cfg(tiny_bootstrap, tmp_path, 3, layout), tmp_path, None, show_progress=False)
    _assert_same_run(tmp_path, full_dir)
    # After every sync both engines hold exactly the learner's weights: the learner's
    # log-probs of what they sampled are theirs (strictly on-policy here).
    gaps = [r["learner/logp_gap"] for r in _rows(tmp_path) if "learner/loss" in r]
    assert len(gaps) == 3 and max(gaps) <= 1e-5, gaps


def test_sequential_schedule_and_whole_requests_train_as_the_stream(ray_session, tiny_bootstrap, uninterrupted,
                                                                    tmp_path):
    """trainer.schedule=sequential (generate all, score all, train) with whole-request
    rollouts: only the order of work differs, so the run equals the streamed one."""
    full_dir, _ = uninterrupted
    cfg = _cfg(tiny_bootstrap, tmp_path, 3, ["trainer.schedule=sequential", "rollout.stream_rollouts=false"])
    run_training(cfg, tmp_path, None, show_progress=False)
    _assert_same_run(tmp_path, full_dir)


def test_evaluation_calls_spread_over_every_worker(tmp_path):
    """100 held-out prompts on 4 workers at prompts_per_request 64 were 2 calls: two
    workers idle. Now every worker gets a call: its whole share by default
    (prompts_per_request 0), else at most max(prompts_per_request, 8) prompts."""
    from scope_ray.controller.trainer import Components, Trainer

    def per_call(n_items: int, n_workers: int, ppr: int, tmp: Path) -> int:
        cfg = load_config(None, [f"rollout.prompts_per_request={ppr}", f"trainer.run_dir={tmp}"], check_paths=False)
        parts = Components(rollout_workers=[object()] * n_workers, teachers=[], learner=None, verify=None, pad_id=0,
                           train_sampler=None, eval_items=[object()] * n_items)
        return Trainer(cfg, tmp, parts, None)._eval_prompts_per_call()

    assert per_call(100, 4, 64, tmp_path) == 25
    assert per_call(64, 1, 4, tmp_path) == 8
    assert per_call(3, 4, 64, tmp_path) == 1
    assert per_call(100, 4, 0, tmp_path) == 25 and per_call(200, 1, 0, tmp_path) == 200


def test_lora_student_trains_on_merged_weights_and_resumes_exactly(ray_session, tiny_bootstrap, tmp_path_factory):
    """learner.lora end to end: vLLM decodes with the learner's merged weights after
    every sync (strictly on-policy), a checkpoint holds the adapters (and no base
    weights) plus the merged HF export and the adapter, and a 2-step run resumed to
    step 3 equals the uninterrupted one."""
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    lora = ["learner.lora.rank=8", "learner.lora.alpha=16", "learner.lr=1e-2"]
    full = tmp_path_factory.mktemp("lora_full")
    run_training(_cfg(tiny_bootstrap, full, 3, lora), full, None, show_progress=False)
    rows = [r for r in _rows(full) if "learner/loss" in r]
    assert [r["learner/skipped"] for r in rows] == [0, 0, 0]
    assert max(r["learner/logp_gap"] for r in rows) <= 1e-5
    last = ckpt.latest_valid(full)
    merged = load_file(last.hf_dir / "model.safetensors")
    initial = load_file(Path(tiny_bootstrap.student_dir) / "model.safetensors")
    assert merged.keys() == initial.keys()
    assert max(float((merged[k] - initial[k]).abs().max()) for k in merged) > 1e-3
    # peft's own merge of the exported adapter is the exported model.
    peft_merged = PeftModel.from_pretrained(
        AutoModelForCausalLM.from_pretrained(tiny_bootstrap.student_dir, dtype=torch.float32),
        last.hf_dir / "adapter").merge_and_unload().state_dict()
    for k in merged:
        torch.testing.assert_close(peft_merged[k], merged[k], rtol=0, atol=1e-6)
    # The DeepSpeed checkpoint holds the adapters (with their optimizer state), no base weight.
    (states,) = Path(last.deepspeed_dir).rglob("mp_rank_00_model_states.pt")
    module = torch.load(states, map_location="cpu", weights_only=False)["module"]
    assert module and all(".lora_" in k for k in module), sorted(module)

    resumed = tmp_path_factory.mktemp("lora_resumed")
    run_training(_cfg(tiny_bootstrap, resumed, 2, lora), resumed, None, show_progress=False)
    run_training(_cfg(tiny_bootstrap, resumed, 3, lora), resumed, ckpt.latest_valid(resumed), show_progress=False)
    assert _train_rows(resumed) == _train_rows(full)
    again = load_file(ckpt.latest_valid(resumed).hf_dir / "model.safetensors")
    for k in merged:
        torch.testing.assert_close(again[k], merged[k], rtol=0, atol=1e-6)


def test_topk_distillation_trains_and_resumes_exactly_at_staleness_1(ray_session, tiny_bootstrap, tmp_path_factory):
    """algorithm.distill=topk end to end: the teacher's top-k reaches the learner (its
    payload is reported), the step trains, and under max_staleness 1 the checkpoint keeps
    the prefetched groups' top-k, so a resume equals the uninterrupted run."""
    import shutil

    topk = ["algorithm.distill=topk", "algorithm.topk=8", "trainer.max_staleness=1", "trainer.eval_at_end=false",
            "trainer.keep_checkpoints=3"]
    full = tmp_path_factory.mktemp("topk_full")
    run_training(_cfg(tiny_bootstrap, full, 3, topk), full, None, show_progress=False)
    rows = [r for r in _rows(full) if "learner/loss" in r]
    assert [r["learner/skipped"] for r in rows] == [0, 0, 0]
    for r in rows:
        # Every incorrect rollout's tokens x k x (int32 id + float32 log-prob).
        assert r["teacher/topk_payload_mb"] == pytest.approx(r["teacher/scored_tokens"] * 8 * 8 / 2**20)
    assert sum(r["branch/incorrect_size"] for r in rows) > 0
    # Interrupted after step 2: its checkpoint holds step 3's groups, generated ahead.
    resumed = tmp_path_factory.mktemp("topk_resumed")
    shutil.copytree(full, resumed, dirs_exist_ok=True)
    shutil.rmtree(ckpt.checkpoints_dir(resumed) / "step_000003")
    ref = ckpt.latest_valid(resumed)
    assert ref is not None and ref.step == 2
    run_training(_cfg(tiny_bootstrap, resumed, 3, topk), resumed, ref, show_progress=False)
    got, want = _rows(resumed)[-1], rows[-1]
    assert (got["step"], got["rollout/tokens"], got["teacher/topk_payload_mb"]) == \
        (want["step"], want["rollout/tokens"], want["teacher/topk_payload_mb"])
    assert got["learner/loss"] == pytest.approx(want["learner/loss"], rel=1e-5, abs=1e-7)


PARTIAL = ["rollout.partial_rollouts=true", "rollout.extra_prompts=2", "rollout.prompts_per_request=1",
           "rollout.max_calls_in_flight=0", "trainer.eval_at_end=false", "trainer.keep_checkpoints=5"]


@pytest.mark.parametrize("staleness", [0, 2])
def test_partial_rollouts_resume_paused_samples_within_the_staleness_bound(ray_session, tiny_bootstrap,
                                                                          tmp_path_factory, staleness):
    """rollout.partial_rollouts on the real actors: 6 groups in flight, 4 trained a step
    (every call decoding together, so the last groups are paused mid-sample). Every step
    trains 4 whole groups; samples are paused and resumed from their tokens; no trained
    token is older than the bound, max(1, 2 k) versions (a carried sample waits for the
    next stream started, up to k steps ahead); at k 0 the resumed samples reach it (their
    first tokens are one version old). A checkpoint keeps the carried groups with their
    paused samples, and a run resumed from it trains them and carries on."""
    import shutil

    from scope_ray.controller import prefetch

    steps = 4 if staleness == 0 else 3
    extra = [*PARTIAL, f"trainer.max_staleness={staleness}"]
    full = tmp_path_factory.mktemp(f"partial{staleness}")
    run_training(_cfg(tiny_bootstrap, full, steps, extra), full, None, show_progress=False)
    rows = [r for r in _rows(full) if "learner/loss" in r]
    assert len(rows) == steps
    assert all(r["branch/correct_size"] + r["branch/incorrect_size"] == 4 * 4 for r in rows)
    assert sum(r["rollout/paused_samples"] for r in rows) > 0 and sum(r["rollout/resumed_samples"] for r in rows) > 0
    bound = max(1, 2 * staleness)
    assert max(r["rollout/staleness_max"] for r in rows) <= bound
    if staleness == 0:
        assert max(r["rollout/staleness_max"] for r in rows) == 1
        ref = ckpt.latest_valid(full)
        carried, _ = prefetch.load(ref.path, stem=prefetch.CARRIED)
        assert len(carried) == 2 and [len(g.rollouts) for g in carried] == [4, 4]

        resumed = tmp_path_factory.mktemp("partial_resumed")
        shutil.copytree(full, resumed, dirs_exist_ok=True)
        for later in ("step_000003", "step_000004"):
            shutil.rmtree(ckpt.checkpoints_dir(resumed) / later)
        ref = ckpt.latest_valid(resumed)
        assert ref.step == 2 and len(prefetch.load(ref.path, stem=prefetch.CARRIED)[0]) == 2
        run_training(_cfg(tiny_bootstrap, resumed, 4, extra), resumed, ref, show_progress=False)
        after = [r for r in _rows(resumed) if "learner/loss" in r and r["step"] > 2]
        assert [r["step"] for r in after] == [3, 4]
        assert all(r["branch/correct_size"] + r["branch/incorrect_size"] == 16 for r in after)
        assert after[0]["rollout/staleness_max"] <= 1
