"""Pack teacher scoring sequences into forward batches under a padded-token budget.

Pure (no Ray, no torch) so the policy is unit-tested on its own. The teacher server
(:mod:`actors.teacher`) collects queued sequences and calls :func:`pack_by_token_budget`.

Cost model: a right-padded batch costs ``rows x longest`` token slots, so the budget
counts padded tokens, not real ones. Sorting by length first puts similar lengths
together, which is what keeps the padding small; greedy packing over the sorted order
then closes a batch as soon as one more row would break the budget.
"""

from __future__ import annotations

from collections.abc import Sequence


def padded_tokens(lengths: Sequence[int]) -> int:
    """Token slots of one right-padded batch: rows x longest."""
    return len(lengths) * max(lengths, default=0)


def pack_by_token_budget(lengths: Sequence[int], max_batch_tokens: int) -> list[list[int]]:
    """Indices of ``lengths`` grouped into batches, shortest sequences first.

    Every batch satisfies ``padded_tokens <= max_batch_tokens``, except that a single
    sequence longer than the budget forms a batch on its own (it must still be scored).
    Each index appears exactly once; within a batch indices are in ascending length.
    """
    if max_batch_tokens <= 0:
        raise ValueError("max_batch_tokens must be positive")
    if any(n <= 0 for n in lengths):
        raise ValueError("sequence lengths must be positive")
    order = sorted(range(len(lengths)), key=lambda i: lengths[i])  # stable: ties keep arrival order
    batches: list[list[int]] = []
    current: list[int] = []
    for i in order:
        # Ascending order: the newcomer is the longest, so the batch would cost rows x it.
        if current and (len(current) + 1) * lengths[i] > max_batch_tokens:
            batches.append(current)
            current = []
        current.append(i)
    if current:
        batches.append(current)
    return batches
