"""Typed prompt records and validation of raw rows in the verl column layout.

A raw row (a dict read from parquet or a JSONL line) becomes a `PromptRecord`
or is rejected with a `BadRow` carrying a stable reason code. The loader turns
a `BadRow` into a `DatasetError` (fail mode) or a skip count (skip mode).

Row numbering: `row N` is always the 0-based index of the record in its file
(for JSONL, the 0-based line index, so `row N` is line N+1; messages show both).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Mapping

# Reason codes for rejected rows; they are the keys of `PromptDataset.skipped`.
NOT_AN_OBJECT = "not_an_object"
MISSING_FIELD = "missing_field"
WRONG_TYPE = "wrong_type"
EMPTY_PROMPT = "empty_prompt"
NO_USER_MESSAGE = "no_user_message"
EMPTY_GROUND_TRUTH = "empty_ground_truth"
EMPTY_DATA_SOURCE = "empty_data_source"
PROMPT_TOO_LONG = "prompt_too_long"
TEMPLATE_ERROR = "template_error"

Message = dict[str, str]


class DatasetError(ValueError):
    """A dataset file or row is unusable. The message names the file (and row)."""

    def __init__(self, message: str, *, path: str | None = None,
                 row: int | None = None, reason: str | None = None) -> None:
        super().__init__(message)
        self.path = path
        self.row = row
        self.reason = reason


@dataclass(frozen=True)
class RowRef:
    """Where a record came from: file path as given, 0-based row, JSONL line (1-based)."""

    file: str
    row: int
    line: int | None = None  # only for JSONL, so editors can jump to it

    def __str__(self) -> str:
        where = f"{self.file} row {self.row}"
        return where if self.line is None else f"{where} (line {self.line})"


@dataclass(frozen=True)
class PromptRecord:
    """One validated prompt. Treat `extra_info` as read-only.

    `messages` is a tuple of fresh {"role", "content"} dicts; a plain-string
    prompt becomes a single user message. The instruction suffix is NOT applied
    here (it is a rendering choice, see `prompts.py`), so records stay the data
    as written. `uid` is unique within a loaded dataset ("<file>:<row>").
    """

    uid: str
    messages: tuple[Message, ...]
    ground_truth: str
    data_source: str
    extra_info: dict[str, Any]
    source: RowRef

    def message_list(self) -> list[Message]:
        """A mutable copy, e.g. for `apply_chat_template`."""
        return [dict(m) for m in self.messages]


class BadRow(Exception):
    """Internal: a row failed validation; `reason` is one of the codes above."""

    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(detail)
        self.reason = reason
        self.detail = detail

    def to_error(self, ref: RowRef) -> DatasetError:
        return DatasetError(f"{ref}: {self.detail}", path=ref.file, row=ref.row,
                            reason=self.reason)


def _type_name(value: object) -> str:
    # JSON vocabulary, since most users think of rows as JSON objects.
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "bool"
    if isinstance(value, (int, float)):
        return "number"
    if isinstance(value, str):
        return "string"
    if isinstance(value, (list, tuple)):
        return "list"
    if isinstance(value, Mapping):
        return "object"
    return type(value).__name__


def _required(obj: Mapping[str, Any], key: str, label: str) -> Any:
    # A null counts as missing: parquet writes absent struct fields as null.
    value = obj.get(key)
    if value is None:
        raise BadRow(MISSING_FIELD, f"missing field {label}")
    return value


def _required_str(obj: Mapping[str, Any], key: str, label: str) -> str:
    value = _required(obj, key, label)
    if not isinstance(value, str):
        raise BadRow(WRONG_TYPE, f"{label} must be a string, got {_type_name(value)}")
    return value


def _parse_messages(value: list[Any] | tuple[Any, ...]) -> tuple[Message, ...]:
    if not value:
        raise BadRow(EMPTY_PROMPT, "prompt is an empty message list")
    messages: list[Message] = []
    for i, item in enumerate(value):
        label = f"prompt[{i}]"
        if not isinstance(item, Mapping):
            raise BadRow(WRONG_TYPE, f"{label} must be a message object, got {_type_name(item)}")
        role = _required_str(item, "role", f"{label}.role")
        content = _required_str(item, "content", f"{label}.content")
        if not role.strip():
            raise BadRow(WRONG_TYPE, f"{label}.role is empty")
        # Keep only role/content: parquet structs carry null fields (name, tool_calls)
        # for every row once any row has them, and chat templates choke on nulls.
        messages.append({"role": role, "content": content})
    if not any(m["role"] == "user" for m in messages):
        raise BadRow(NO_USER_MESSAGE, "prompt has no message with role 'user'")
    if not any(m["content"].strip() for m in messages):
        raise BadRow(EMPTY_PROMPT, "prompt is empty (all message contents are blank)")
    return tuple(messages)


def _parse_prompt(value: Any) -> tuple[Message, ...]:
    if isinstance(value, str):
        if not value.strip():
            raise BadRow(EMPTY_PROMPT, "prompt is empty")
        return ({"role": "user", "content": value},)
    if isinstance(value, (list, tuple)):
        return _parse_messages(value)
    raise BadRow(WRONG_TYPE,
                 f"prompt must be a string or a list of messages, got {_type_name(value)}")


def parse_row(raw: Any, ref: RowRef) -> PromptRecord:
    """Validate one raw row; raise `BadRow` on the first problem found."""
    if not isinstance(raw, Mapping):
        raise BadRow(NOT_AN_OBJECT, f"row must be an object, got {_type_name(raw)}")
    messages = _parse_prompt(_required(raw, "prompt", "prompt"))

    reward_model = _required(raw, "reward_model", "reward_model")
    if not isinstance(reward_model, Mapping):
        raise BadRow(WRONG_TYPE,
                     f"reward_model must be an object, got {_type_name(reward_model)}")
    ground_truth = _required_str(reward_model, "ground_truth", "reward_model.ground_truth")
    if not ground_truth.strip():
        raise BadRow(EMPTY_GROUND_TRUTH, "reward_model.ground_truth is empty")

    data_source = _required_str(raw, "data_source", "data_source")
    if not data_source.strip():
        # The verifier is chosen by data_source; an empty one cannot be routed.
        raise BadRow(EMPTY_DATA_SOURCE, "data_source is empty")

    extra_info = raw.get("extra_info")
    if extra_info is None:
        extra_info = {}
    elif not isinstance(extra_info, Mapping):
        raise BadRow(WRONG_TYPE, f"extra_info must be an object, got {_type_name(extra_info)}")

    return PromptRecord(
        uid=f"{ref.file}:{ref.row}",
        messages=messages,
        ground_truth=ground_truth,
        data_source=data_source,
        extra_info=dict(extra_info),
        source=ref,
    )
