"""Deterministic, resumable prompt order.

Epoch e visits every item once in the order `permutation(seed, e)`. The state
is three integers, so the controller can checkpoint it next to the model and
resume the exact prompt stream after a crash.
"""

from __future__ import annotations

from typing import Any, Generic, Sequence, TypeVar

import numpy as np

T = TypeVar("T")


def _check_int(name: str, value: Any, minimum: int = 0) -> int:
    # bool is an int subclass; a True seed from a YAML typo should not pass silently.
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < minimum:
        raise ValueError(f"{name} must be an integer >= {minimum}, got {value!r}")
    return int(value)


class PromptSampler(Generic[T]):
    """Endless seeded stream over `items`, one fresh permutation per epoch.

    State: `epoch` is the epoch of the next item, `position` how many items of
    that epoch were already taken (always < len(items)). `next_batch` crosses
    epoch boundaries, so a batch may hold the tail of one epoch and the head of
    the next (an item can then appear twice in that batch if B is near N).
    """

    def __init__(self, items: Sequence[T], seed: int = 0, shuffle: bool = True) -> None:
        if len(items) == 0:
            raise ValueError("cannot sample from an empty dataset")
        self._items = items
        self._num_items = len(items)
        self._seed = _check_int("seed", seed)
        self._shuffle = shuffle
        self._epoch = 0
        self._position = 0
        self._order_cache: tuple[int, np.ndarray] | None = None

    @property
    def epoch(self) -> int:
        return self._epoch

    @property
    def position(self) -> int:
        return self._position

    @property
    def seed(self) -> int:
        return self._seed

    def epoch_order(self, epoch: int) -> np.ndarray:
        """Item indices of `epoch`, in visiting order."""
        if self._order_cache is not None and self._order_cache[0] == epoch:
            return self._order_cache[1]
        if self._shuffle:
            # Seed with the pair, not seed + epoch: with a sum, (seed=1, epoch=0) and
            # (seed=0, epoch=1) would give the same order, correlating "different" runs.
            order = np.random.default_rng([self._seed, epoch]).permutation(self._num_items)
        else:
            order = np.arange(self._num_items)
        self._order_cache = (epoch, order)
        return order

    def next_indices(self, batch_size: int) -> list[int]:
        """The next `batch_size` item indices, advancing the state."""
        remaining = _check_int("batch_size", batch_size, minimum=1)
        out: list[int] = []
        while remaining:
            order = self.epoch_order(self._epoch)
            take = min(remaining, self._num_items - self._position)
            out.extend(int(i) for i in order[self._position:self._position + take])
            self._position += take
            remaining -= take
            if self._position == self._num_items:
                self._epoch += 1
                self._position = 0
        return out

    def next_batch(self, batch_size: int) -> list[T]:
        """The next `batch_size` items, advancing the state."""
        return [self._items[i] for i in self.next_indices(batch_size)]

    def state_dict(self) -> dict[str, int]:
        # num_items lets load_state_dict refuse a checkpoint taken on a different
        # dataset, whose permutation would silently differ.
        return {"epoch": self._epoch, "position": self._position, "seed": self._seed,
                "num_items": self._num_items}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore a `state_dict()`; the checkpoint's seed wins over the constructor's."""
        try:
            epoch = _check_int("epoch", state["epoch"])
            position = _check_int("position", state["position"])
            seed = _check_int("seed", state["seed"])
        except KeyError as exc:
            raise ValueError(f"sampler state lacks key {exc}; got {sorted(state)}") from exc
        num_items = state.get("num_items")
        if num_items is not None and num_items != self._num_items:
            raise ValueError(f"sampler state was saved for {num_items} items, but the dataset "
                             f"now has {self._num_items}; the prompt order would not match")
        if position > self._num_items:
            raise ValueError(f"sampler position {position} exceeds dataset size {self._num_items}")
        if position == self._num_items:  # an end-of-epoch state from another writer
            epoch, position = epoch + 1, 0
        self._epoch, self._position, self._seed = epoch, position, seed
        self._order_cache = None
