"""The prefetched steps, kept in a checkpoint so ``--resume`` continues exactly.

Under ``trainer.max_staleness = k >= 1`` the next k steps' groups are generated (by
weights from before the step that was just checkpointed) while the learner trains.
Drawing those prompts again on resume would generate them with the newer weights: a
valid run, but not the one that was interrupted. So the checkpoint holds the prefetched
groups themselves (token ids, engine log-probs, rewards, teacher scores and top-k), and, under
``learner.old_logp: recompute`` (k = 1 only), the old log-probs the learner computed for
them with the weights they were sampled under (which the checkpoint does not otherwise
keep).

Format, per prefetched step i (0 = the next one): ``prefetched.json`` /
``prefetched.safetensors`` for i = 0, ``prefetched.<i>.json`` / ``.safetensors`` after
it (the groups' text fields and layout, and their arrays); no pickle, covered by the
manifest.

``rollout.partial_rollouts``: the groups paused and not yet finished (``carried.json`` /
``.safetensors``, same format): each paused sample's tokens and log-probs so far, which
the first stream after the resume decodes on from.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors.torch import load_file, save_file

from scope_ray.controller.stream import StageClock
from scope_ray.types import Rollout, RolloutGroup, TeacherTopK

PREFETCHED = "prefetched"
CARRIED = "carried"
OLD_LOGP = "old_logp"


def _names(i: int, stem: str) -> tuple[str, str]:
    if i == 0:
        return f"{stem}.json", f"{stem}.safetensors"
    return f"{stem}.{i}.json", f"{stem}.{i}.safetensors"


def save(directory: Path, groups: list[RolloutGroup], old_logp: torch.Tensor | None, index: int = 0,
         stem: str = PREFETCHED) -> None:
    arrays: dict[str, torch.Tensor] = {}
    meta: list[dict[str, Any]] = []
    for i, g in enumerate(groups):
        rollouts = []
        for j, r in enumerate(g.rollouts):
            arrays[f"{i}.{j}.ids"] = torch.tensor(r.response_ids, dtype=torch.int64)
            arrays[f"{i}.{j}.logp"] = torch.from_numpy(np.asarray(r.response_logp, dtype=np.float32).copy())
            scored = g.teacher_logp[j] if g.teacher_logp else None
            if scored is not None:
                arrays[f"{i}.{j}.teacher"] = torch.from_numpy(np.asarray(scored, dtype=np.float32).copy())
            top = g.teacher_topk[j] if g.teacher_topk else None
            if top is not None:
                arrays[f"{i}.{j}.topk_ids"] = torch.from_numpy(np.asarray(top.ids, dtype=np.int32).copy())
                arrays[f"{i}.{j}.topk_logp"] = torch.from_numpy(np.asarray(top.logp, dtype=np.float32).copy())
            rollouts.append({"text": r.text, "finish_reason": r.finish_reason, "policy_version": r.policy_version,
                             "first_version": r.first_version})
        meta.append({"uid": g.uid, "group_index": g.group_index, "prompt_ids": list(g.prompt_ids),
                     "ground_truth": g.ground_truth, "data_source": g.data_source, "rewards": list(g.rewards),
                     "reasons": list(g.reasons), "rollouts": rollouts})
    if old_logp is not None:
        arrays[OLD_LOGP] = old_logp.detach().to(torch.float32).contiguous()
    meta_name, arrays_name = _names(index, stem)
    save_file(arrays, str(directory / arrays_name))
    (directory / meta_name).write_text(json.dumps(meta))


def load_all(directory: Path) -> list[tuple[list[RolloutGroup], torch.Tensor | None]]:
    """Every prefetched step saved in ``directory``, in order (none: [])."""
    out = []
    while (step := load(directory, len(out))) is not None:
        out.append(step)
    return out


def load(directory: Path, index: int = 0, stem: str = PREFETCHED) -> tuple[list[RolloutGroup], torch.Tensor | None] | None:
    """The groups and old log-probs of prefetched step ``index``, or None if there is none."""
    meta_name, arrays_name = _names(index, stem)
    if not (directory / meta_name).is_file():
        return None
    arrays = load_file(str(directory / arrays_name))
    groups = []
    for i, g in enumerate(json.loads((directory / meta_name).read_text())):
        rollouts = [Rollout(arrays[f"{i}.{j}.ids"].tolist(), arrays[f"{i}.{j}.logp"].numpy(), r["text"],
                            r["finish_reason"], int(r["policy_version"]), r.get("first_version"))
                    for j, r in enumerate(g["rollouts"])]
        teacher = [arrays[f"{i}.{j}.teacher"].numpy() if f"{i}.{j}.teacher" in arrays else None
                   for j in range(len(rollouts))]
        topk = [TeacherTopK(arrays[f"{i}.{j}.topk_ids"].numpy(), arrays[f"{i}.{j}.topk_logp"].numpy())
                if f"{i}.{j}.topk_ids" in arrays else None for j in range(len(rollouts))]
        groups.append(RolloutGroup(g["uid"], int(g["group_index"]), list(g["prompt_ids"]), g["ground_truth"],
                                   g["data_source"], rollouts, rewards=[float(x) for x in g["rewards"]],
                                   reasons=list(g["reasons"]), teacher_logp=teacher,
                                   teacher_topk=topk if any(t is not None for t in topk) else []))
    return groups, arrays.get(OLD_LOGP)


class StoredStep:
    """A step whose groups come from a checkpoint: stands in for its StepStream."""

    def __init__(self, groups: list[RolloutGroup]) -> None:
        self.groups = groups
        self.clock = StageClock()  # nothing was generated or scored in this process

    done = True  # nothing to pump

    def collect(self) -> list[RolloutGroup]:
        return self.groups

    def take_carried(self) -> list[RolloutGroup]:
        return []  # the checkpoint keeps carried groups apart (CARRIED)
