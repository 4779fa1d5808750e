"""Learner batching: collate alignment, group sharding, micro-batching, loss additivity."""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
import torch

from scope_ray.algo import LossInputs, compute_loss, get_algorithm, loss_denominator
from scope_ray.types import TeacherTopK
from scope_ray.learner.batch import (
    TrainBatch,
    collate,
    micro_batch_indices,
    shard_indices,
)

PAD = 0


def split_by_groups(batch: TrainBatch, num_shards: int) -> list[TrainBatch]:
    """One (trimmed) batch per data-parallel rank, as LearnerGroup shards a step."""
    return [batch.select(idx).trim() for idx in shard_indices(batch.group_index, batch.lengths(), num_shards)]


def micro_batches(batch: TrainBatch, max_tokens: int) -> list[TrainBatch]:
    """Trimmed micro-batches under a padded-token budget, as LearnerCore forms them."""
    return [batch.select(idx).trim() for idx in micro_batch_indices(batch.lengths(), max_tokens)]


def make_batch(prompt_lens: list[int], response_lens: list[int], groups: list[int], seed: int = 0) -> TrainBatch:
    g = torch.Generator().manual_seed(seed)
    prompts = [torch.randint(1, 50, (n,), generator=g).tolist() for n in prompt_lens]
    responses = [torch.randint(1, 50, (n,), generator=g).tolist() for n in response_lens]
    old = [(-torch.rand(n, generator=g) * 3).numpy() for n in response_lens]
    correct = [i % 2 == 0 for i in range(len(groups))]
    teacher = [None if c else (-torch.rand(n, generator=g) * 3).numpy() for c, n in zip(correct, response_lens)]
    return collate(
        prompt_ids=prompts, response_ids=responses, old_logp=old, teacher_logp=teacher,
        correct=correct, rewards=[float(c) for c in correct], weights=[0.5] * len(groups),
        group_index=groups, pad_id=PAD,
    )


def test_collate_aligns_response_values_to_their_positions() -> None:
    batch = collate(
        prompt_ids=[[5, 6, 7], [8]],
        response_ids=[[9, 10], [11, 12, 13]],
        old_logp=[np.array([-0.1, -0.2]), [-0.3, -0.4, -0.5]],
        teacher_logp=[None, np.array([-1.0, -2.0, -3.0])],
        correct=torch.tensor([True, False]),
        rewards=[1.0, 0.0],
        weights=torch.tensor([1.0, 1.0], dtype=torch.float64),
        group_index=[3, 3],
        pad_id=PAD,
    )
    assert batch.input_ids.tolist() == [[5, 6, 7, 9, 10], [8, 11, 12, 13, PAD]]
    assert batch.attention_mask.tolist() == [[1, 1, 1, 1, 1], [1, 1, 1, 1, 0]]
    assert batch.response_mask.tolist() == [[0, 0, 0, 1, 1], [0, 1, 1, 1, 0]]
    assert batch.old_logp[0].tolist() == pytest.approx([0, 0, 0, -0.1, -0.2])
    assert batch.old_logp[1].tolist() == pytest.approx([0, -0.3, -0.4, -0.5, 0])
    assert torch.isnan(batch.teacher_logp[0]).all()  # not scored
    assert batch.teacher_logp[1, 1:4].tolist() == [-1.0, -2.0, -3.0]
    assert torch.isnan(batch.teacher_logp[1, [0, 4]]).all()
    assert batch.weights.dtype == torch.float32 and batch.group_index.dtype == torch.long
    assert batch.num_prompts == 1 and batch.num_response_tokens == 5
    assert batch.ref_logp is None


def test_collate_aligns_the_teachers_topk_and_micro_batches_keep_it() -> None:
    """algorithm.distill=topk: [N, L, k] fields aligned like teacher_logp, NaN / id 0
    where not scored; select and trim carry them like the per-position fields."""
    top = TeacherTopK(ids=np.array([[4, 9], [7, 1], [2, 3]], dtype=np.int32),
                      logp=np.array([[-0.1, -2.0], [-0.5, -1.0], [-0.2, -3.0]], dtype=np.float32))
    batch = collate(
        prompt_ids=[[5, 6, 7], [8]], response_ids=[[9, 10], [11, 12, 13]],
        old_logp=[[-0.1, -0.2], [-0.3, -0.4, -0.5]], teacher_logp=[None, [-1.0, -2.0, -3.0]],
        correct=[True, False], rewards=[1.0, 0.0], weights=[1.0, 1.0], group_index=[3, 3], pad_id=PAD,
        teacher_topk=[None, top],
    )
    assert batch.teacher_topk_ids.shape == batch.teacher_topk_logp.shape == (2, 5, 2)
    assert batch.teacher_topk_ids[1, 1:4].tolist() == top.ids.tolist()
    assert batch.teacher_topk_logp[1, 1:4].tolist() == top.logp.tolist()
    assert torch.isnan(batch.teacher_topk_logp[0]).all() and torch.isnan(batch.teacher_topk_logp[1, [0, 4]]).all()
    part = batch.select([1]).trim()
    assert part.seq_len == 4 and part.teacher_topk_ids.shape == (1, 4, 2)
    assert part.teacher_topk_ids[0, 1:4].tolist() == top.ids.tolist()
    part.validate()
    with pytest.raises(ValueError, match=r"teacher_topk\[1\] has shape \(3, 2\) for a 2-token response"):
        collate(prompt_ids=[[5], [8]], response_ids=[[9], [11, 12]], old_logp=[[-0.1], [-0.3, -0.4]],
                teacher_topk=[None, top], teacher_logp=[None, [-1.0, -2.0]], correct=[True, False],
                rewards=[1.0, 0.0], weights=[1.0, 1.0], group_index=[3, 3], pad_id=PAD)


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(old_logp=[[-0.1]]), r"old_logp\[0\] has 1 values for a 2-token response"),
        (dict(prompt_ids=[[]]), "prompt_ids\\[0\\] is empty"),
        (dict(correct=[1]), "correct must be bool"),
        (dict(group_index=[0.5]), "group_index must be integer"),
        (dict(old_logp=[[-0.1, float("nan")]]), "old_logp is non-finite"),
    ],
)
def test_collate_rejects_bad_inputs(kwargs: dict, match: str) -> None:
    args = dict(
        prompt_ids=[[1, 2]], response_ids=[[3, 4]], old_logp=[[-0.1, -0.2]], teacher_logp=[None],
        correct=[True], rewards=[1.0], weights=[1.0], group_index=[0], pad_id=PAD,
    )
    args.update(kwargs)
    with pytest.raises(ValueError, match=match):
        collate(**args)


def test_split_by_groups_keeps_groups_whole_and_balances_tokens() -> None:
    # group 0: 2 x 30 tokens = 60; group 1: 2 x 10 = 20; group 2: 2 x 15 = 30; group 3: 2 x 5 = 10
    groups = [0, 1, 2, 3, 0, 1, 2, 3]
    resp = [28, 8, 13, 3, 28, 8, 13, 3]
    batch = make_batch([2] * 8, resp, groups)
    shards = split_by_groups(batch, 2)
    rows = [idx.tolist() for idx in shard_indices(batch.group_index, batch.lengths(), 2)]
    # LPT: 60 -> s0; 30 -> s1; 20 -> s1 (30 < 60); 10 -> s1 (50 < 60)  => 60 / 60
    assert rows == [[0, 4], [1, 2, 3, 5, 6, 7]]
    assert [int(s.lengths().sum()) for s in shards] == [60, 60]
    seen = sorted(r for shard_rows in rows for r in shard_rows)
    assert seen == list(range(8))
    for shard in shards:
        shard.validate()
        assert shard.seq_len == int(shard.lengths().max())  # trimmed
    gsets = [set(s.group_index.tolist()) for s in shards]
    assert not gsets[0] & gsets[1]


def test_split_by_groups_allows_empty_shards() -> None:
    batch = make_batch([2, 2], [3, 4], [7, 7])
    shards = split_by_groups(batch, 3)
    assert [s.num_rows for s in shards] == [2, 0, 0]
    assert shards[1].input_ids.shape == (0, 0)
    assert micro_batches(shards[1], 100) == []


def test_micro_batches_respect_budget_and_never_split_rollouts() -> None:
    resp = [3, 40, 10, 10, 22, 5, 1, 17]
    batch = make_batch([4] * 8, resp, [0, 0, 1, 1, 2, 2, 3, 3])
    budget = 40  # row of 44 tokens exceeds it: alone
    parts = micro_batch_indices(batch.lengths(), budget)
    covered = sorted(r for idx in parts for r in idx.tolist())
    assert covered == list(range(8))
    lengths = batch.lengths()
    for idx in parts:
        padded = len(idx) * int(lengths[idx].max())
        assert padded <= budget or len(idx) == 1
    assert [1] in [idx.tolist() for idx in parts]
    mbs = micro_batches(batch, budget)
    assert [mb.num_rows for mb in mbs] == [len(idx) for idx in parts]
    for mb, idx in zip(mbs, parts):
        assert mb.seq_len == int(lengths[idx].max())
        # trimming keeps every real token and its values
        assert torch.equal(mb.input_ids, batch.input_ids[idx, : mb.seq_len])
        assert torch.equal(mb.old_logp, batch.old_logp[idx, : mb.seq_len])
    assert len(micro_batch_indices(batch.lengths(), 10_000)) == 1


@pytest.mark.parametrize("aggregation", ["sum", "token-mean"])
def test_micro_batch_and_shard_losses_add_up_to_the_full_batch_loss(aggregation: str) -> None:
    """The contract the learner relies on: with the GLOBAL denominator, losses (and
    gradients) of shards x micro-batches sum to the full-batch loss (and gradient)."""
    batch = make_batch([3, 5, 2, 4, 6, 3], [7, 2, 9, 4, 5, 8], [0, 0, 1, 1, 2, 2], seed=3)
    spec = get_algorithm("scope")
    logp_full = (batch.old_logp + 0.1 * torch.randn(batch.old_logp.shape)).requires_grad_(True)

    def loss_of(rows: torch.Tensor, denominator: float | None) -> torch.Tensor:
        sub = batch.select(rows)
        inputs = LossInputs(
            old_logp=sub.old_logp, mask=sub.response_mask, correct=sub.correct, group_index=sub.group_index,
            weights=sub.weights, rewards=sub.rewards, teacher_logp=sub.teacher_logp,
        )
        return compute_loss(spec, logp_full[rows], inputs, aggregation=aggregation, denominator=denominator)

    full = loss_of(torch.arange(batch.num_rows), None)
    (grad_full,) = torch.autograd.grad(full, logp_full)
    denom = loss_denominator(aggregation, batch.num_prompts, batch.num_response_tokens)
    total = torch.zeros(())
    for shard_rows in shard_indices(batch.group_index, batch.lengths(), 2):
        for mb in micro_batch_indices(batch.lengths()[shard_rows], 12):
            total = total + loss_of(shard_rows[mb], denom)
    (grad_parts,) = torch.autograd.grad(total, logp_full)
    assert math.isfinite(full.item())
    assert total.item() == pytest.approx(full.item(), rel=1e-6)
    assert torch.allclose(grad_parts, grad_full, atol=1e-7)
    assert grad_full.abs().sum() > 0


def _brute_force_least_padding(widths: list[int], budget: int, max_parts: int) -> int:
    """Every way to cut a longest-first list into at most max_parts contiguous parts."""
    import itertools

    n, best = len(widths), None
    for parts in range(1, max_parts + 1):
        for inner in itertools.combinations(range(1, n), parts - 1):
            cuts = [0, *inner, n]
            sizes = [(b - a, widths[a]) for a, b in zip(cuts, cuts[1:])]
            if all(rows * w <= budget or rows == 1 for rows, w in sizes):
                total = sum(rows * w for rows, w in sizes)
                best = total if best is None else min(best, total)
    return best


@settings(max_examples=150, deadline=None)
@given(st.lists(st.integers(1, 30), min_size=1, max_size=9), st.integers(1, 90))
def test_micro_batches_have_the_least_padding_of_their_count(lengths: list[int], budget: int) -> None:
    """Same number of passes as the greedy packing (never more), never more padding,
    and the least padding any contiguous cut of the sorted rows allows (brute force)."""
    from scope_ray.learner.batch import least_padding_cuts, pack_by_padded_tokens, padded_tokens

    parts = micro_batch_indices(torch.tensor(lengths), budget)
    assert sorted(int(i) for p in parts for i in p) == list(range(len(lengths)))
    assert all(padded_tokens([lengths[i] for i in p.tolist()]) <= budget or len(p) == 1 for p in parts)
    greedy = pack_by_padded_tokens(lengths, budget, longest_first=True)
    ours = sum(padded_tokens([lengths[i] for i in p.tolist()]) for p in parts)
    assert len(parts) <= len(greedy)
    assert ours <= sum(padded_tokens([lengths[i] for i in b]) for b in greedy)
    widths = sorted(lengths, reverse=True)
    assert ours == _brute_force_least_padding(widths, budget, len(greedy))
    cuts = least_padding_cuts(widths, budget, len(greedy))
    assert cuts[0] == 0 and cuts[-1] == len(lengths) and cuts == sorted(cuts)
