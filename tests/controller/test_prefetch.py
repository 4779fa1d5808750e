"""scope_ray/controller/prefetch.py: the groups a checkpoint keeps round-trip exactly."""

from __future__ import annotations

import numpy as np

from scope_ray.controller import prefetch
from scope_ray.types import Rollout, RolloutGroup, TeacherTopK


def test_carried_groups_round_trip_with_paused_samples_and_both_versions(tmp_path) -> None:
    """rollout.partial_rollouts: a carried group as a checkpoint stores it: a finished
    sample with its verdict, teacher scores and top-k, a paused one with tokens and two
    versions, and one paused before its first token. Stored apart from the prefetched
    steps (its own files), it loads back field for field."""
    top = TeacherTopK(np.arange(6, dtype=np.int32).reshape(3, 2), np.full((3, 2), -0.5, np.float32))
    done = Rollout([7, 8, 9], np.array([-0.1, -0.2, -0.3], np.float32), "x = 4", "stop", 3)
    paused = Rollout([5, 6], np.array([-1.0, -2.0], np.float32), "", "paused", 3, first_version=2)
    empty = Rollout([], np.zeros(0, np.float32), "", "paused", -1)
    group = RolloutGroup("u", 11, [1, 2], "4", "src", [done, paused, empty], rewards=[1.0, 0.0, 0.0],
                         reasons=["ok", "", ""], teacher_logp=[np.array([-1.0, -1.5, -2.0], np.float32), None, None],
                         teacher_topk=[top, None, None])
    prefetch.save(tmp_path, [group], None, stem=prefetch.CARRIED)
    assert prefetch.load(tmp_path) is None  # not a prefetched step
    (back,), old = prefetch.load(tmp_path, stem=prefetch.CARRIED)
    assert old is None
    assert (back.uid, back.group_index, back.prompt_ids, back.rewards, back.reasons) == ("u", 11, [1, 2], [1.0, 0.0, 0.0],
                                                                                        ["ok", "", ""])
    for got, want in zip(back.rollouts, group.rollouts):
        assert (got.response_ids, got.text, got.finish_reason, got.policy_version, got.first_version) == \
            (want.response_ids, want.text, want.finish_reason, want.policy_version, want.first_version)
        np.testing.assert_array_equal(got.response_logp, want.response_logp)
    np.testing.assert_array_equal(back.teacher_logp[0], group.teacher_logp[0])
    assert back.teacher_logp[1:] == [None, None] and back.teacher_topk[1:] == [None, None]
    np.testing.assert_array_equal(back.teacher_topk[0].ids, top.ids)
    assert back.rollouts[1].oldest_version == 2 and back.rollouts[0].oldest_version == 3
