"""Teacher/student tokenizer compatibility check."""

from __future__ import annotations

import logging

import pytest
from tokenizers import Tokenizer, models, pre_tokenizers
from transformers import PreTrainedTokenizerFast

from scope_ray.data.tokenizer_check import check_same_tokenizer

BASE_VOCAB = ["[UNK]", "<s>", "</s>", "<pad>", "<|user|>", "<|assistant|>",
              "hello", "world", "two", "plus"]
TEMPLATE = ("{% for m in messages %}<|{{ m.role }}|> {{ m.content }} </s> {% endfor %}"
            "{% if add_generation_prompt %}<|assistant|>{% endif %}")


def make_tokenizer(tokens: list[str] = BASE_VOCAB, eos: str = "</s>",
                   chat_template: str = TEMPLATE):
    backend = Tokenizer(models.WordLevel(vocab={t: i for i, t in enumerate(tokens)},
                                         unk_token="[UNK]"))
    backend.pre_tokenizer = pre_tokenizers.Whitespace()
    tok = PreTrainedTokenizerFast(tokenizer_object=backend, unk_token="[UNK]", bos_token="<s>",
                                  eos_token=eos, pad_token="<pad>")
    tok.chat_template = chat_template
    return tok


def save(tok, path):
    tok.save_pretrained(path)
    return str(path)


def test_identical_tokenizers_in_different_dirs_pass(tmp_path, caplog):
    student = save(make_tokenizer(), tmp_path / "student")
    # The teacher ships another chat template; only ids matter for scoring.
    teacher = save(make_tokenizer(chat_template="{{ messages[0].content }}"), tmp_path / "teacher")
    with caplog.at_level(logging.INFO, logger="scope_ray.data.tokenizer_check"):
        check_same_tokenizer(student, teacher)
    assert any("share a 10-token vocabulary" in r.getMessage() for r in caplog.records)


def test_one_changed_token_fails_naming_both_dirs(tmp_path):
    changed = [("globe" if t == "world" else t) for t in BASE_VOCAB]
    student = save(make_tokenizer(), tmp_path / "student_tok")
    teacher = save(make_tokenizer(changed), tmp_path / "teacher_tok")
    with pytest.raises(ValueError) as info:
        check_same_tokenizer(student, teacher)
    msg = str(info.value)
    assert student in msg and teacher in msg
    assert "vocab sizes 10 vs 10" in msg
    assert "'world': student id 7 / teacher missing" in msg
    assert "'globe': student missing / teacher id 7" in msg


def test_extra_token_fails_and_shows_sizes(tmp_path):
    student = save(make_tokenizer(), tmp_path / "s")
    teacher = save(make_tokenizer(BASE_VOCAB + ["extra"]), tmp_path / "t")
    with pytest.raises(ValueError, match=r"vocab sizes 10 vs 11, 1 token\(s\) differ: 'extra'"):
        check_same_tokenizer(student, teacher)


def test_many_differences_are_truncated():
    teacher_tokens = BASE_VOCAB[:6] + ["a", "b", "c", "d"]  # four ids remapped
    with pytest.raises(ValueError) as info:
        check_same_tokenizer(make_tokenizer(), make_tokenizer(teacher_tokens), max_shown=2)
    assert "8 token(s) differ" in str(info.value)
    assert "(and 6 more)" in str(info.value)


def test_special_token_ids_compared_unless_disabled(tmp_path):
    student = save(make_tokenizer(), tmp_path / "s")
    teacher = save(make_tokenizer(eos="<|assistant|>"), tmp_path / "t")
    with pytest.raises(ValueError, match=r"eos_token_id: student 2 / teacher 5"):
        check_same_tokenizer(student, teacher)
    check_same_tokenizer(student, teacher, check_special_tokens=False)


def test_accepts_loaded_tokenizer_objects():
    a, b = make_tokenizer(), make_tokenizer(BASE_VOCAB + ["extra"])
    a.name_or_path, b.name_or_path = "org/student", "org/teacher"
    check_same_tokenizer(a, make_tokenizer())
    with pytest.raises(ValueError, match=r"student tokenizer \(org/student\).*teacher tokenizer "
                                         r"\(org/teacher\)"):
        check_same_tokenizer(a, b)
