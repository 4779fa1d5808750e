"""Prompt rendering: messages -> (text, token ids) exactly as the policy sees them.

Invariant: `token_ids == tokenizer(text, add_special_tokens=False)["input_ids"]`.
With a chat template, the rendered text already holds every special token, so
encoding must not add more (this is also what transformers 5 does inside
`apply_chat_template(tokenize=True)`, which returns a BatchEncoding by default,
hence we render text and encode ourselves). Without a chat template the text is
the message contents joined by newlines, prefixed with the BOS token string iff
the tokenizer itself would add BOS, so base models see the framing they expect
and the invariant still holds.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Iterable, Sequence

if TYPE_CHECKING:  # transformers is slow to import; only needed for type names
    from transformers import PreTrainedTokenizerBase

DEFAULT_INSTRUCTION_SUFFIX = "Put your final answer within \\boxed{}."
# Texts per tokenizer call: large enough for the Rust batch encoder to pay off,
# small enough to bound peak memory on 100k-row datasets.
_ENCODE_CHUNK = 512

MessageLike = dict[str, str]


class PromptRenderError(ValueError):
    """The chat template rejected a conversation (e.g. roles must alternate)."""


@dataclass(frozen=True)
class RenderedPrompt:
    text: str
    token_ids: list[int]


def apply_instruction_suffix(messages: Sequence[MessageLike],
                             suffix: str = DEFAULT_INSTRUCTION_SUFFIX) -> list[MessageLike]:
    """Copy `messages` with `suffix` appended to the last user message.

    The separator is part of the suffix string: a suffix starting with
    whitespace (e.g. "\\n\\nPut ...") is appended verbatim, otherwise a single
    space is inserted. "" disables. A message already ending with the suffix is
    left alone, so datasets that ship the instruction do not get it twice.
    """
    copied = [dict(m) for m in messages]
    if not suffix:
        return copied
    for message in reversed(copied):
        if message.get("role") == "user":
            content = message.get("content", "").rstrip()
            if content.endswith(suffix.strip()):
                return copied
            if not content:
                message["content"] = suffix.lstrip()
            elif suffix[0].isspace():
                message["content"] = content + suffix
            else:
                message["content"] = content + " " + suffix
            return copied
    raise ValueError("cannot apply the instruction suffix: no message with role 'user'")


def _bos_prefix(tokenizer: PreTrainedTokenizerBase) -> str:
    """The BOS string if encoding with specials would start with BOS, else ""."""
    bos, bos_id = tokenizer.bos_token, tokenizer.bos_token_id
    if bos is None or bos_id is None:
        return ""
    ids = tokenizer("", add_special_tokens=True)["input_ids"]
    return bos if ids[:1] == [bos_id] else ""


class PromptRenderer:
    """Renders conversations for one tokenizer and instruction suffix.

    Holds what is probed once per tokenizer (the BOS prefix) so rendering a
    100k-row dataset does not re-probe the tokenizer per row.
    """

    def __init__(self, tokenizer: PreTrainedTokenizerBase,
                 instruction_suffix: str = DEFAULT_INSTRUCTION_SUFFIX) -> None:
        self.tokenizer = tokenizer
        self.instruction_suffix = instruction_suffix
        self.uses_chat_template = bool(getattr(tokenizer, "chat_template", None))
        self._bos = "" if self.uses_chat_template else _bos_prefix(tokenizer)

    def text(self, messages: Sequence[MessageLike]) -> str:
        """The generation prompt text (suffix applied); PromptRenderError if the template fails."""
        conversation = apply_instruction_suffix(messages, self.instruction_suffix)
        if not self.uses_chat_template:
            return self._bos + "\n".join(m["content"] for m in conversation)
        import jinja2  # a transformers dependency; imported lazily with it

        try:
            text = self.tokenizer.apply_chat_template(conversation, add_generation_prompt=True,
                                                      tokenize=False)
        except jinja2.TemplateError as exc:
            raise PromptRenderError(f"chat template failed: {exc}") from exc
        if not isinstance(text, str):
            raise TypeError(f"apply_chat_template(tokenize=False) returned {type(text).__name__}")
        return text

    def encode(self, texts: Sequence[str]) -> list[list[int]]:
        """Token ids for each text, without adding special tokens (see invariant)."""
        ids: list[list[int]] = []
        for start in range(0, len(texts), _ENCODE_CHUNK):
            chunk = list(texts[start:start + _ENCODE_CHUNK])
            encoded = self.tokenizer(chunk, add_special_tokens=False)["input_ids"]
            ids.extend(list(x) for x in encoded)
        return ids

    def render(self, messages: Sequence[MessageLike]) -> RenderedPrompt:
        text = self.text(messages)
        return RenderedPrompt(text=text, token_ids=self.encode([text])[0])

    def render_many(self, conversations: Iterable[Sequence[MessageLike]]) -> list[RenderedPrompt]:
        texts = [self.text(c) for c in conversations]
        return [RenderedPrompt(t, ids) for t, ids in zip(texts, self.encode(texts))]


def render_prompt(messages: Sequence[MessageLike], tokenizer: PreTrainedTokenizerBase,
                  instruction_suffix: str = DEFAULT_INSTRUCTION_SUFFIX) -> RenderedPrompt:
    """Render one conversation to text and token ids."""
    return PromptRenderer(tokenizer, instruction_suffix).render(messages)
