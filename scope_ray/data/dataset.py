"""Load prompt datasets (verl parquet layout or JSONL) into validated records.

    ds = load_prompts(["data/train.parquet", "data/extra.jsonl"], tokenizer=tok,
                      max_prompt_tokens=1024, on_bad_row="skip")
    sampler = PromptSampler(ds, seed=0)
    batch = sampler.next_batch(64)          # list[PromptRecord]
    rendered = ds.render_many(batch)        # text + token ids per prompt

Bad rows (missing/mistyped field, empty ground truth, template failure,
over-long prompt) follow `on_bad_row`: "fail" raises `DatasetError` naming
file and row; "skip" drops them, counts them by reason in `ds.skipped` and logs
one summary warning. Unreadable files always raise (see `readers.py`).
"""

from __future__ import annotations

import logging
import os
from collections import Counter
from pathlib import Path
from typing import TYPE_CHECKING, Literal, Sequence, overload

from scope_ray.data.prompts import (
    DEFAULT_INSTRUCTION_SUFFIX,
    PromptRenderer,
    PromptRenderError,
    RenderedPrompt,
)
from scope_ray.data.readers import iter_raw_rows
from scope_ray.data.rows import (
    PROMPT_TOO_LONG,
    TEMPLATE_ERROR,
    BadRow,
    DatasetError,
    PromptRecord,
    RowRef,
    parse_row,
)

if TYPE_CHECKING:
    from transformers import PreTrainedTokenizerBase

logger = logging.getLogger(__name__)

OnBadRow = Literal["skip", "fail"]
PathsLike = str | os.PathLike[str] | Sequence[str | os.PathLike[str]]


def _check_policy(on_bad_row: str) -> None:
    if on_bad_row not in ("skip", "fail"):
        raise ValueError(f"on_bad_row must be 'skip' or 'fail', got {on_bad_row!r}")


def _check_max_tokens(max_prompt_tokens: int | None) -> None:
    if max_prompt_tokens is not None and (
            isinstance(max_prompt_tokens, bool) or not isinstance(max_prompt_tokens, int)
            or max_prompt_tokens < 1):
        raise ValueError(f"max_prompt_tokens must be a positive int or None, "
                         f"got {max_prompt_tokens!r}")


class PromptDataset(Sequence[PromptRecord]):
    """Validated records in file order (files concatenated in the order given)."""

    def __init__(self, records: Sequence[PromptRecord], *, paths: Sequence[str],
                 rows_read: int, skipped: dict[str, int],
                 prompt_token_counts: Sequence[int] | None,
                 renderer: PromptRenderer | None) -> None:
        self.records: tuple[PromptRecord, ...] = tuple(records)
        self.paths: tuple[str, ...] = tuple(paths)
        self.rows_read = rows_read
        self.skipped: dict[str, int] = dict(skipped)
        # Rendered-prompt lengths (suffix + template included), when a tokenizer was given.
        self.prompt_token_counts: tuple[int, ...] | None = (
            None if prompt_token_counts is None else tuple(prompt_token_counts))
        self.renderer = renderer

    def __len__(self) -> int:
        return len(self.records)

    @overload
    def __getitem__(self, index: int) -> PromptRecord: ...

    @overload
    def __getitem__(self, index: slice) -> Sequence[PromptRecord]: ...

    def __getitem__(self, index: int | slice) -> PromptRecord | Sequence[PromptRecord]:
        return self.records[index]

    def __repr__(self) -> str:
        return (f"PromptDataset({len(self)} prompts from {len(self.paths)} file(s), "
                f"skipped={self.skipped})")

    def _renderer(self) -> PromptRenderer:
        if self.renderer is None:
            raise ValueError("this dataset was loaded without a tokenizer; "
                             "use scope_ray.data.prompts.render_prompt instead")
        return self.renderer

    def render(self, record: PromptRecord) -> RenderedPrompt:
        """Text and token ids of one record, with the dataset's tokenizer and suffix."""
        return self._renderer().render(record.messages)

    def render_many(self, records: Sequence[PromptRecord]) -> list[RenderedPrompt]:
        return self._renderer().render_many([r.messages for r in records])


class _BadRowPolicy:
    """Applies on_bad_row: raise at once, or count and remember one example per reason."""

    def __init__(self, on_bad_row: OnBadRow) -> None:
        self.on_bad_row = on_bad_row
        self.counts: Counter[str] = Counter()
        self.first_example: dict[str, str] = {}

    def reject(self, ref: RowRef, bad: BadRow) -> None:
        if self.on_bad_row == "fail":
            raise bad.to_error(ref)
        self.counts[bad.reason] += 1
        self.first_example.setdefault(bad.reason, f"{ref}: {bad.detail}")

    def log_summary(self, rows_read: int) -> None:
        if not self.counts:
            return
        examples = "; ".join(f"{reason}: {n} (e.g. {self.first_example[reason]})"
                             for reason, n in sorted(self.counts.items()))
        logger.warning("skipped %d of %d dataset rows -- %s",
                       sum(self.counts.values()), rows_read, examples)


def _normalize_paths(paths: PathsLike) -> list[Path]:
    items = [paths] if isinstance(paths, (str, os.PathLike)) else list(paths)
    if not items:
        raise ValueError("no dataset paths given")
    seen: set[Path] = set()
    for item in items:
        resolved = Path(item).resolve()
        # Listing a file twice would duplicate every uid ("<file>:<row>"); upsample
        # explicitly instead.
        if resolved in seen:
            raise DatasetError(f"{item}: listed more than once", path=str(item))
        seen.add(resolved)
    return [Path(item) for item in items]


def _filter_by_length(records: list[PromptRecord], renderer: PromptRenderer,
                      max_prompt_tokens: int | None, policy: _BadRowPolicy,
                      ) -> tuple[list[PromptRecord], list[int]]:
    rendered: list[tuple[PromptRecord, str]] = []
    for record in records:
        try:
            rendered.append((record, renderer.text(record.messages)))
        except PromptRenderError as exc:
            policy.reject(record.source, BadRow(TEMPLATE_ERROR, str(exc)))
    lengths = [len(ids) for ids in renderer.encode([text for _, text in rendered])]
    kept: list[PromptRecord] = []
    kept_lengths: list[int] = []
    for (record, _), n_tokens in zip(rendered, lengths):
        if max_prompt_tokens is not None and n_tokens > max_prompt_tokens:
            policy.reject(record.source, BadRow(
                PROMPT_TOO_LONG,
                f"prompt is {n_tokens} tokens, over max_prompt_tokens={max_prompt_tokens}"))
            continue
        kept.append(record)
        kept_lengths.append(n_tokens)
    return kept, kept_lengths


def load_prompts(paths: PathsLike, *, tokenizer: PreTrainedTokenizerBase | None = None,
                 max_prompt_tokens: int | None = None, on_bad_row: OnBadRow = "fail",
                 instruction_suffix: str = DEFAULT_INSTRUCTION_SUFFIX) -> PromptDataset:
    """Read, validate and (with a tokenizer) length-filter prompts from files.

    With a tokenizer every prompt is rendered once here, so template failures
    and over-long prompts surface at load time with their file and row rather
    than mid-training.
    """
    _check_policy(on_bad_row)
    _check_max_tokens(max_prompt_tokens)
    if max_prompt_tokens is not None and tokenizer is None:
        raise ValueError("max_prompt_tokens needs a tokenizer to count prompt tokens")
    files = _normalize_paths(paths)
    renderer = None if tokenizer is None else PromptRenderer(tokenizer, instruction_suffix)
    policy = _BadRowPolicy(on_bad_row)

    records: list[PromptRecord] = []
    token_counts: list[int] = []
    rows_read = 0
    for path in files:
        file_records: list[PromptRecord] = []
        for ref, raw in iter_raw_rows(path):
            rows_read += 1
            try:
                file_records.append(parse_row(raw, ref))
            except BadRow as bad:
                policy.reject(ref, bad)
        if renderer is not None:
            file_records, lengths = _filter_by_length(file_records, renderer,
                                                      max_prompt_tokens, policy)
            token_counts.extend(lengths)
        records.extend(file_records)

    policy.log_summary(rows_read)
    if not records:
        raise DatasetError(
            f"no usable prompts in {[str(p) for p in files]}: read {rows_read} rows, "
            f"skipped {dict(policy.counts)}")
    return PromptDataset(records, paths=[str(p) for p in files], rows_read=rows_read,
                         skipped=dict(policy.counts),
                         prompt_token_counts=token_counts if renderer is not None else None,
                         renderer=renderer)
