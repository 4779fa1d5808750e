"""Refuse to start when teacher and student tokenize differently.

SCOPE's teacher scores the student's sampled token ids, so id k must mean the
same token to both models. We compare vocabularies (token -> id, added tokens
included) and the bos/eos/pad ids -- never embedding-matrix sizes, which are
often padded (e.g. to a multiple of 64/128) and differ between same-tokenizer
models of different sizes.
"""

from __future__ import annotations

import logging
import os
from typing import TYPE_CHECKING, Union

if TYPE_CHECKING:
    from transformers import PreTrainedTokenizerBase

logger = logging.getLogger(__name__)

TokenizerRef = Union[str, "os.PathLike[str]", "PreTrainedTokenizerBase"]
SPECIAL_TOKENS = ("bos", "eos", "pad")


def _load(ref: TokenizerRef) -> tuple[PreTrainedTokenizerBase, str]:
    """(tokenizer, label for messages) from a directory or a loaded tokenizer."""
    if isinstance(ref, (str, os.PathLike)):
        from transformers import AutoTokenizer  # slow import; only when loading from disk

        return AutoTokenizer.from_pretrained(os.fspath(ref)), os.fspath(ref)
    label = getattr(ref, "name_or_path", "") or f"<{type(ref).__name__}>"
    return ref, label


TokenDiff = tuple[str, "int | None", "int | None"]


def _vocab_differences(a: dict[str, int], b: dict[str, int]) -> list[TokenDiff]:
    """(token, id in a, id in b) for every token whose id differs, ordered by id."""
    diffs = [(tok, a.get(tok), b.get(tok)) for tok in a.keys() | b.keys()
             if a.get(tok) != b.get(tok)]
    diffs.sort(key=lambda d: (min(i for i in d[1:] if i is not None), d[0]))
    return diffs


def _fmt_id(token_id: int | None) -> str:
    return "missing" if token_id is None else f"id {token_id}"


def check_same_tokenizer(student: TokenizerRef, teacher: TokenizerRef, *,
                         check_special_tokens: bool = True, max_shown: int = 5) -> None:
    """Raise ValueError naming both tokenizers if their vocabularies differ.

    `student`/`teacher` are tokenizer directories or loaded tokenizers.
    Set `check_special_tokens=False` to tolerate different bos/eos/pad ids over
    an identical vocabulary (e.g. a base student whose eos is <|endoftext|> and
    an instruct teacher whose eos is <|im_end|>): scoring only needs the vocab.
    """
    student_tok, student_label = _load(student)
    teacher_tok, teacher_label = _load(teacher)
    student_vocab, teacher_vocab = student_tok.get_vocab(), teacher_tok.get_vocab()

    problems: list[str] = []
    if student_vocab != teacher_vocab:
        diffs = _vocab_differences(student_vocab, teacher_vocab)
        shown = ", ".join(f"{tok!r}: student {_fmt_id(s)} / teacher {_fmt_id(t)}"
                          for tok, s, t in diffs[:max_shown])
        more = f" (and {len(diffs) - max_shown} more)" if len(diffs) > max_shown else ""
        problems.append(f"vocab sizes {len(student_vocab)} vs {len(teacher_vocab)}, "
                        f"{len(diffs)} token(s) differ: {shown}{more}")
    if check_special_tokens:
        for name in SPECIAL_TOKENS:
            s_id = getattr(student_tok, f"{name}_token_id", None)
            t_id = getattr(teacher_tok, f"{name}_token_id", None)
            if s_id != t_id:
                problems.append(f"{name}_token_id: student {s_id} / teacher {t_id}")
    if problems:
        raise ValueError(
            f"student tokenizer ({student_label}) and teacher tokenizer ({teacher_label}) "
            f"differ; the teacher scores the student's token ids, so they must share a "
            f"tokenizer: " + "; ".join(problems))
    logger.info("student (%s) and teacher (%s) share a %d-token vocabulary",
                student_label, teacher_label, len(student_vocab))
