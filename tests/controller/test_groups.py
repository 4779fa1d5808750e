"""scope_ray/controller/groups.py: routing, teacher requests, group weights, step metrics."""

import math

import numpy as np
import pytest
import torch

from scope_ray.algo import get_algorithm
from scope_ray.controller.groups import attach_teacher, batch_metrics, teacher_requests, weigh_groups
from scope_ray.types import Rollout, RolloutGroup, TeacherScore, TeacherTopK


def _group(gidx, rewards, lens, version=0):
    rng = np.random.default_rng(gidx)
    rollouts = [
        Rollout(response_ids=list(range(n)), response_logp=-rng.random(n).astype(np.float32), text="t",
                finish_reason="stop", policy_version=version)
        for n in lens
    ]
    g = RolloutGroup(uid=f"p{gidx}", group_index=gidx, prompt_ids=[1, 2], ground_truth="1", data_source="s",
                     rollouts=rollouts)
    g.rewards = [float(r) for r in rewards]
    g.reasons = ["correct" if r else "wrong" for r in rewards]
    return g


def _score(group, spec):
    idx, reqs = teacher_requests(spec, group)
    scores = [np.full(len(r.response_ids), -0.5 - i, dtype=np.float32) for i, r in enumerate(reqs)]
    attach_teacher(group, idx, scores)
    return idx


def test_scope_sends_only_incorrect_rollouts_to_teacher():
    spec = get_algorithm("scope")
    g = _group(3, [1, 0, 0, 1], [3, 4, 5, 6])
    idx, reqs = teacher_requests(spec, g)
    assert idx == [1, 2]
    assert [len(r.response_ids) for r in reqs] == [4, 5]
    assert all(r.prompt_ids == [1, 2] for r in reqs)
    assert teacher_requests(get_algorithm("opd"), g)[0] == [0, 1, 2, 3]
    assert teacher_requests(get_algorithm("grpo"), g)[0] == []
    # GRPO's KL term needs every rollout scored by the reference policy.
    assert teacher_requests(get_algorithm("grpo"), g, kl_beta=1e-4)[0] == [0, 1, 2, 3]


def test_attach_teacher_checks_lengths():
    g = _group(0, [0], [3])
    with pytest.raises(ValueError, match="teacher returned 2 log-probs for a 3-token response"):
        attach_teacher(g, [0], [np.zeros(2)])
    top = TeacherTopK(np.zeros((2, 4), np.int32), np.zeros((2, 4), np.float32))
    with pytest.raises(ValueError, match=r"teacher returned top-k ids \(2, 4\) and log-probs \(2, 4\) for a 3-token"):
        attach_teacher(g, [0], [TeacherScore(np.zeros(3, np.float32), top)])


def test_weigh_groups_matches_scope_weights_on_flat_tensors():
    spec = get_algorithm("scope")
    groups = [_group(10, [1, 0, 1, 0], [3, 4, 5, 6]), _group(11, [0, 0, 0, 1], [2, 2, 7, 1])]
    for g in groups:
        _score(g, spec)
    wb = weigh_groups(spec, groups, tau=1.0, normalize="sum")
    ell_s = torch.tensor([float(np.mean(r.response_logp, dtype=np.float64)) for g in groups for r in g.rollouts])
    ell_t = torch.tensor([
        float(np.mean(t, dtype=np.float64)) if t is not None else float("nan")
        for g in groups for t in g.teacher_logp
    ])
    # Eq. 4-5 by hand, per prompt and branch: softmax(-ell_S) over the correct
    # rollouts, softmax(ell_T) over the incorrect ones.
    expected = []
    for gi in range(2):
        rows = range(4 * gi, 4 * gi + 4)
        right = [i for i in rows if wb.correct[i]]
        wrong = [i for i in rows if not wb.correct[i]]
        z_right = sum(math.exp(-float(ell_s[j])) for j in right)
        z_wrong = sum(math.exp(float(ell_t[j])) for j in wrong)
        expected += [math.exp(-float(ell_s[i])) / z_right if wb.correct[i] else math.exp(float(ell_t[i])) / z_wrong
                     for i in rows]
    assert wb.weights.tolist() == pytest.approx(expected, abs=1e-6)
    assert wb.weights.tolist() != pytest.approx([0.5, 0.5, 0.5, 0.5, 1 / 3, 1 / 3, 1 / 3, 1.0], abs=1e-3)
    assert wb.group_index.tolist() == [10] * 4 + [11] * 4
    assert float(wb.weights[[0, 2]].sum()) == pytest.approx(1.0)


def test_batch_metrics_report_routing_weights_and_staleness():
    spec = get_algorithm("scope")
    groups = [_group(0, [1, 1, 1, 1], [2, 2, 2, 2], version=4), _group(1, [0, 0, 1, 0], [3, 3, 3, 3], version=3)]
    for g in groups:
        _score(g, spec)
    wb = weigh_groups(spec, groups, tau=1.0, normalize="sum")
    m = batch_metrics(spec, wb, learner_version=4)
    assert m["rollout/accuracy"] == pytest.approx(5 / 8)
    assert m["rollout/groups_all_correct"] == pytest.approx(0.5)
    assert m["branch/correct_size"] == 5 and m["branch/incorrect_size"] == 3
    assert m["teacher/scored_rollouts"] == 3 and m["teacher/scored_tokens"] == 9
    assert m["rollout/staleness_max"] == 1 and m["rollout/staleness_mean"] == pytest.approx(0.5)
    # One incorrect set (group 1, three rollouts): ESS = 1 / sum(w^2) of its weights.
    w_incorrect = wb.weights[~wb.correct].double()
    assert m["weights/incorrect_ess"] == pytest.approx(float(1.0 / (w_incorrect ** 2).sum()))
    assert np.isfinite(m["teacher/reverse_kl"])
    assert m["verifier/correct"] == pytest.approx(5 / 8)
