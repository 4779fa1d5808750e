"""scope_ray/learner/logprobs.py: per-token log-probs, raw and tempered."""

from __future__ import annotations

import pytest
import torch

from scope_ray.learner.logprobs import gather_token_logprobs


def _case() -> tuple[torch.Tensor, torch.Tensor]:
    logits = torch.randn(2, 5, 7, generator=torch.Generator().manual_seed(0))
    ids = torch.randint(0, 7, (2, 5), generator=torch.Generator().manual_seed(1))
    return logits, ids


@pytest.mark.parametrize("temperature", [1.0, 0.6, 2.0])
def test_logprobs_are_log_softmax_of_logits_over_temperature(temperature: float) -> None:
    logits, ids = _case()
    got = gather_token_logprobs(logits, ids, temperature=temperature)
    want = torch.log_softmax(logits[:, :-1] / temperature, dim=-1).gather(-1, ids[:, 1:, None]).squeeze(-1)
    torch.testing.assert_close(got[:, 1:], want)
    assert (got[:, 0] == 0).all()  # position 0 has no prediction


def test_temperature_must_be_positive() -> None:
    logits, ids = _case()
    with pytest.raises(ValueError, match="temperature"):
        gather_token_logprobs(logits, ids, temperature=0.0)


def _model_and_batch():
    from scope_ray.bootstrap.models import TinyModelSpec, init_model

    model = init_model(TinyModelSpec(), seed=0).eval()
    g = torch.Generator().manual_seed(2)
    ids = torch.randint(5, 250, (3, 23), generator=g)
    mask = torch.ones_like(ids)
    mask[1, 17:] = 0  # right padding
    mask[2, 9:] = 0
    return model, ids, mask


def _full_logits_reference(model, ids, mask, temperature):
    """The [B, L, V] path the chunked one replaces: the model's own logits."""
    logits = model(input_ids=ids, attention_mask=mask, use_cache=False).logits
    return torch.where(mask.bool(), gather_token_logprobs(logits, ids, temperature), torch.zeros(()))


@pytest.mark.parametrize("temperature", [1.0, 0.6])
def test_chunked_head_gives_the_full_logits_values_and_gradients(temperature: float) -> None:
    """Chunks of 5 positions (so a batch spans many chunks, one partly filled) under
    activation checkpointing: same log-probs and same parameter gradients."""
    from scope_ray.learner.logprobs import token_logprobs

    model, ids, mask = _model_and_batch()
    vocab = model.get_output_embeddings().weight.shape[0]
    weights = torch.randn(ids.shape, generator=torch.Generator().manual_seed(3))

    def grads(fn):
        model.zero_grad()
        logp = fn()
        (logp * weights).sum().backward()
        return logp.detach(), {n: p.grad.clone() for n, p in model.named_parameters()}

    want, want_g = grads(lambda: _full_logits_reference(model, ids, mask, temperature))
    got, got_g = grads(lambda: token_logprobs(model, ids, mask, temperature, chunk_elements=5 * vocab))
    torch.testing.assert_close(got, want, atol=1e-5, rtol=0)
    assert (got[1, 17:] == 0).all() and (got[:, 0] == 0).all()
    for name in want_g:
        torch.testing.assert_close(got_g[name], want_g[name], atol=1e-5, rtol=1e-4, msg=name)
    with torch.no_grad():  # the inference path (teacher, compute_logprobs) too
        torch.testing.assert_close(token_logprobs(model, ids, mask, temperature, chunk_elements=5 * vocab), want,
                                   atol=1e-5, rtol=0)


def test_a_partitioned_head_runs_the_model_whole() -> None:
    """Under ZeRO-3 the head's weight is only gathered inside the model's forward: the
    chunked path is skipped (a ZeRO-3 parameter carries ``ds_id``)."""
    from scope_ray.learner.logprobs import token_logprobs

    model, ids, mask = _model_and_batch()
    calls = []
    model.register_forward_hook(lambda *a: calls.append("whole"))
    with torch.no_grad():
        token_logprobs(model, ids, mask)
        assert calls == []  # chunked: the body and the head, never the model's forward
        model.get_output_embeddings().weight.ds_id = 7
        torch.testing.assert_close(token_logprobs(model, ids, mask), _full_logits_reference(model, ids, mask, 1.0))
        assert calls == ["whole", "whole"]


@pytest.mark.parametrize("whole", [False, True], ids=["chunked", "whole-model"])
def test_topk_and_support_logprobs_are_the_full_softmax(whole: bool) -> None:
    """Top-k distillation: the teacher's top k (token_topk) and the policy's log-probs at
    given ids (token_logprobs' support) are the full tempered softmax's, on both paths,
    and the support's gradient is the full logits path's."""
    from scope_ray.learner.logprobs import token_logprobs, token_topk

    model, ids, mask = _model_and_batch()
    if whole:
        model.get_output_embeddings().weight.ds_id = 7  # as under ZeRO-3: the model runs whole
    vocab = model.get_output_embeddings().weight.shape[0]
    with torch.no_grad():
        full = torch.log_softmax(model(input_ids=ids, attention_mask=mask).logits.float() / 0.6, -1)
    top_ids, top_logp = token_topk(model, ids, mask, 4, 0.6, chunk_elements=5 * vocab)
    want = full[:, :-1].topk(4, dim=-1)
    valid = mask[:, 1:].bool()
    torch.testing.assert_close(top_logp[:, 1:][valid], want.values[valid], atol=1e-5, rtol=0)
    assert torch.equal(top_ids[:, 1:][valid], want.indices[valid])
    assert (top_logp[:, 0] == 0).all() and (top_logp[1, 17:] == 0).all()
    # The teacher's one pass: the same top k, and the sampled tokens' log-probs exactly
    # token_logprobs' (same formula, same logits).
    *again, sampled = token_topk(model, ids, mask, 4, 0.6, chunk_elements=5 * vocab, with_sampled=True)
    assert torch.equal(again[0], top_ids) and torch.equal(again[1], top_logp)
    with torch.no_grad():
        assert torch.equal(sampled, token_logprobs(model, ids, mask, 0.6, chunk_elements=5 * vocab))
    with pytest.raises(ValueError, match=r"k must be in \[1, "):
        token_topk(model, ids, mask, vocab + 1)

    model.zero_grad()
    logp, support = token_logprobs(model, ids, mask, 0.6, chunk_elements=5 * vocab, support=top_ids)
    assert logp.shape == ids.shape and support.shape == top_ids.shape
    torch.testing.assert_close(support[:, 1:][valid], want.values[valid], atol=1e-5, rtol=0)
    support.sum().backward()
    got_g = {n: p.grad.clone() for n, p in model.named_parameters()}
    model.zero_grad()
    ref = torch.log_softmax(model(input_ids=ids, attention_mask=mask).logits.float() / 0.6, -1)[:, :-1]
    ref.gather(-1, top_ids[:, 1:])[valid].sum().backward()
    for name, p in model.named_parameters():
        torch.testing.assert_close(got_g[name], p.grad, atol=1e-5, rtol=1e-4, msg=name)
