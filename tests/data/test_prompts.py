"""Prompt rendering: chat template vs plain, instruction suffix, token-id invariant."""

from __future__ import annotations

import pytest
from tokenizers import Tokenizer, models, pre_tokenizers, processors
from transformers import AutoTokenizer, PreTrainedTokenizerFast

from scope_ray.data.prompts import (
    DEFAULT_INSTRUCTION_SUFFIX,
    PromptRenderError,
    PromptRenderer,
    apply_instruction_suffix,
    render_prompt,
)

SPECIALS = ["[UNK]", "<s>", "</s>", "<pad>", "<|system|>", "<|user|>", "<|assistant|>"]
WORDS = ["What", "is", "2", "+", "?", "Be", "brief", ".", "Put", "your", "final", "answer",
         "within", "\\", "boxed", "{}.", "4", "And", "3"]
TEMPLATE = ("{% for m in messages %}<|{{ m.role }}|> {{ m.content }} </s> {% endfor %}"
            "{% if add_generation_prompt %}<|assistant|>{% endif %}")
STRICT_TEMPLATE = (
    "{% for m in messages %}{% if m.role == 'assistant' and loop.first %}"
    "{{ raise_exception('conversation must not start with assistant') }}{% endif %}"
    "<|{{ m.role }}|> {{ m.content }} </s> {% endfor %}"
    "{% if add_generation_prompt %}<|assistant|>{% endif %}")


def make_tokenizer(chat_template: str | None = TEMPLATE, add_bos: bool = False):
    """Tiny word-level tokenizer built locally (no hub access)."""
    vocab = {tok: i for i, tok in enumerate(SPECIALS + WORDS)}
    backend = Tokenizer(models.WordLevel(vocab=vocab, unk_token="[UNK]"))
    backend.pre_tokenizer = pre_tokenizers.Whitespace()
    if add_bos:
        backend.post_processor = processors.TemplateProcessing(
            single="<s> $A", special_tokens=[("<s>", vocab["<s>"])])
    tok = PreTrainedTokenizerFast(
        tokenizer_object=backend, unk_token="[UNK]", bos_token="<s>", eos_token="</s>",
        pad_token="<pad>", additional_special_tokens=["<|system|>", "<|user|>", "<|assistant|>"])
    tok.chat_template = chat_template
    return tok


def ids_of(tok, text: str) -> list[int]:
    return tok(text, add_special_tokens=False)["input_ids"]


QUESTION = [{"role": "user", "content": "What is 2 + 2 ?"}]


def test_chat_template_render_text_and_ids():
    tok = make_tokenizer()
    out = render_prompt(QUESTION, tok)
    assert out.text == ("<|user|> What is 2 + 2 ? Put your final answer within \\boxed{}. "
                        "</s> <|assistant|>")
    assert out.token_ids == ids_of(tok, out.text)
    # Same ids transformers itself produces from the template (which also skips specials).
    assert out.token_ids == tok.apply_chat_template(
        [{"role": "user", "content": "What is 2 + 2 ? " + DEFAULT_INSTRUCTION_SUFFIX}],
        add_generation_prompt=True, tokenize=True, return_dict=False)
    assert out.token_ids[-1] == tok.convert_tokens_to_ids("<|assistant|>")
    assert tok.convert_tokens_to_ids("[UNK]") not in out.token_ids


def test_suffix_disabled_and_custom_separator():
    tok = make_tokenizer()
    assert render_prompt(QUESTION, tok, instruction_suffix="").text == (
        "<|user|> What is 2 + 2 ? </s> <|assistant|>")
    newline = render_prompt(QUESTION, tok, instruction_suffix="\nBe brief.")
    assert newline.text == "<|user|> What is 2 + 2 ?\nBe brief. </s> <|assistant|>"
    assert newline.token_ids == ids_of(tok, newline.text)


def test_suffix_goes_to_last_user_message_only():
    messages = [{"role": "system", "content": "Be brief."},
                {"role": "user", "content": "What is 2 + 2 ?"},
                {"role": "assistant", "content": "4"},
                {"role": "user", "content": "And 2 + 3 ?"}]
    out = apply_instruction_suffix(messages, "Put")
    assert [m["content"] for m in out] == ["Be brief.", "What is 2 + 2 ?", "4", "And 2 + 3 ? Put"]
    assert messages[3]["content"] == "And 2 + 3 ?"  # input not mutated


def test_suffix_not_duplicated_when_already_present():
    content = "What is 2 + 2 ? " + DEFAULT_INSTRUCTION_SUFFIX + "\n"
    out = apply_instruction_suffix([{"role": "user", "content": content}])
    assert out[0]["content"] == content


def test_suffix_needs_a_user_message():
    with pytest.raises(ValueError, match="no message with role 'user'"):
        apply_instruction_suffix([{"role": "system", "content": "x"}])


def test_plain_concatenation_without_chat_template():
    tok = make_tokenizer(chat_template=None)
    messages = [{"role": "system", "content": "Be brief."},
                {"role": "user", "content": "What is 2 + 2 ?"}]
    out = render_prompt(messages, tok, instruction_suffix="")
    assert out.text == "Be brief.\nWhat is 2 + 2 ?"
    assert out.token_ids == ids_of(tok, out.text)
    assert tok.convert_tokens_to_ids("<|user|>") not in out.token_ids


def test_plain_rendering_keeps_bos_when_tokenizer_adds_it():
    tok = make_tokenizer(chat_template=None, add_bos=True)
    out = render_prompt(QUESTION, tok, instruction_suffix="")
    assert out.text == "<s>What is 2 + 2 ?"
    assert out.token_ids[0] == tok.bos_token_id
    assert out.token_ids == ids_of(tok, out.text)
    # ...and equals what the tokenizer's own framing gives for the bare text.
    assert out.token_ids == tok("What is 2 + 2 ?")["input_ids"]


def test_template_failure_is_prompt_render_error():
    tok = make_tokenizer(chat_template=STRICT_TEMPLATE)
    bad = [{"role": "assistant", "content": "4"}, {"role": "user", "content": "What is 2 ?"}]
    with pytest.raises(PromptRenderError, match="must not start with assistant"):
        render_prompt(bad, tok)


def test_batch_render_matches_single(tmp_path):
    tok = make_tokenizer()
    tok.save_pretrained(tmp_path)
    loaded = AutoTokenizer.from_pretrained(tmp_path)  # real on-disk path, as in training
    conversations = [QUESTION, [{"role": "user", "content": "And 2 + 3 ?"}]]
    batch = PromptRenderer(loaded).render_many(conversations)
    assert batch == [render_prompt(c, tok) for c in conversations]
    assert batch[0].token_ids != batch[1].token_ids


def test_renderer_reports_template_use():
    assert PromptRenderer(make_tokenizer()).uses_chat_template
    assert not PromptRenderer(make_tokenizer(chat_template=None)).uses_chat_template
