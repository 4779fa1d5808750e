"""Per-token log-probs of given token ids under a causal LM (learner and teacher share it).

Alignment used everywhere in scope-ray: ``logp[i, p]`` is log pi(ids[i, p] | ids[i, :p]),
so position 0 has no value (0.0) and a response token keeps its own position. The
learner and the torch teacher backend both call :func:`token_logprobs`, which is why
the teacher server's scores match an unbatched forward pass exactly.

Memory: the output head's logits are never materialised for the whole batch. The body
runs once, then the head and the log-softmax run over chunks of at most
``LOGIT_CHUNK_ELEMENTS`` logits (token positions x vocabulary), each chunk under
activation checkpointing, so backward recomputes a chunk's logits instead of keeping
them. At the Qwen vocabulary (151,936) a [B, L, V] fp32 logits tensor with its float
and tempered copies and their gradients grew peak memory by 8.5 GB at 2 x 2048 tokens;
``bench/logprob_memory.py`` measures both paths side by side. Under ZeRO-3 (the head's
weight is partitioned and only gathered inside the model's own forward) the model is
called whole, as before.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch.utils.checkpoint import checkpoint

from scope_ray.learner import lora

# 2^26 logits = 256 MiB in fp32 per chunk (441 positions at the Qwen vocabulary).
LOGIT_CHUNK_ELEMENTS = 1 << 26


def gather_token_logprobs(logits: torch.Tensor, input_ids: torch.Tensor,
                          temperature: float = 1.0) -> torch.Tensor:
    """[B, L, V] logits (position p predicts p+1) -> [B, L] log-probs of ``input_ids``
    under ``softmax(logits / temperature)``."""
    _check_temperature(temperature)
    shifted = logits[:, :-1, :]
    target = input_ids[:, 1:]
    logp = _target_logprobs(shifted.reshape(-1, shifted.shape[-1]), target.reshape(-1, 1), temperature)
    return F.pad(logp.view(target.shape), (1, 0), value=0.0)


def _check_temperature(temperature: float) -> None:
    if not temperature > 0:
        raise ValueError(f"temperature must be > 0, got {temperature!r}")


def _target_logprobs(logits: torch.Tensor, target: torch.Tensor, temperature: float) -> torch.Tensor:
    """[N, V] logits, [N, m] target ids -> [N, m] float32 log-probs of the targets."""
    logits = logits.float()
    if temperature != 1.0:
        logits = logits / temperature
    picked = logits.gather(-1, target)
    # log_softmax without materialising it: logit - logsumexp over the vocabulary.
    return picked - torch.logsumexp(logits, dim=-1, keepdim=True)


def _head_logprobs(hidden: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None,
                   target: torch.Tensor, temperature: float) -> torch.Tensor:
    return _target_logprobs(F.linear(hidden, weight, bias), target, temperature)


def _hf_model(model: torch.nn.Module) -> torch.nn.Module:
    # A DeepSpeed engine wraps the HF model, and a peft model (learner.lora) wraps it
    # too; the body and head below are the HF model's, adapters inside.
    return lora.base_model(getattr(model, "module", model))


def _partitioned(param: torch.Tensor) -> bool:
    return hasattr(param, "ds_id")  # a ZeRO-3 parameter: empty outside its module's forward


def token_logprobs(model: torch.nn.Module, input_ids: torch.Tensor, attention_mask: torch.Tensor,
                   temperature: float = 1.0, chunk_elements: int = LOGIT_CHUNK_ELEMENTS,
                   support: torch.Tensor | None = None) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
    """Right-padded batch -> [B, L] float32 token log-probs (see module docstring); 0 at
    position 0 and wherever ``attention_mask`` is 0.

    ``temperature`` != 1 gives the log-probs of the *tempered* policy: the one a sampler
    at that temperature actually draws from. The learner scores rollouts this way (as
    verl does), so pi_old and pi_theta in the importance ratio and the reverse-KL signal
    are the sampling distribution itself; measured on the embedded task, training the
    raw policy on samples drawn at T=0.6 drifts and collapses within ~40 steps.

    ``support`` ([B, L, k] token ids, aligned like ``input_ids``: ``support[i, p]`` are
    candidates for the token at position p): also return their log-probs, [B, L, k], from
    the same forward pass (top-k distillation scores the teacher's top-k tokens).
    """
    _check_temperature(temperature)
    targets = input_ids.unsqueeze(-1) if support is None else torch.cat([input_ids.unsqueeze(-1), support], dim=-1)
    values = _logprobs_of(model, input_ids, attention_mask, targets, temperature, chunk_elements)
    return values[..., 0] if support is None else (values[..., 0], values[..., 1:])


def _whole_model_only(hf: torch.nn.Module) -> bool:
    """The whole model where the head cannot be applied on its own: none, partitioned, or
    an adapted layer (learner.lora.target_modules naming it: its .weight is the base's)."""
    head = hf.get_output_embeddings()
    return head is None or hf.base_model is hf or hasattr(head, "base_layer") or _partitioned(head.weight)


def _logprobs_of(model: torch.nn.Module, input_ids: torch.Tensor, attention_mask: torch.Tensor,
                 targets: torch.Tensor, temperature: float, chunk_elements: int) -> torch.Tensor:
    """[B, L, m] log-probs of ``targets[b, p, :]`` at position p (0 at p = 0 and padding)."""
    hf = _hf_model(model)
    valid = attention_mask[:, 1:].bool()
    target = targets[:, 1:][valid]  # [N, m]: the positions whose next token is real
    if _whole_model_only(hf):
        logits = model(input_ids=input_ids, attention_mask=attention_mask, use_cache=False).logits
        flat = _target_logprobs(logits[:, :-1][valid], target, temperature)
    else:
        head = hf.get_output_embeddings()
        hidden = hf.base_model(input_ids=input_ids, attention_mask=attention_mask, use_cache=False).last_hidden_state
        rows = hidden[:, :-1][valid]  # [N, H]
        step = max(1, chunk_elements // head.weight.shape[0])
        pieces = []
        for start in range(0, rows.shape[0], step):
            args = (rows[start:start + step], head.weight, head.bias, target[start:start + step], temperature)
            if torch.is_grad_enabled():
                pieces.append(checkpoint(_head_logprobs, *args, use_reentrant=False))
            else:
                pieces.append(_head_logprobs(*args))
        flat = torch.cat(pieces) if pieces else rows.new_zeros((0, target.shape[-1]), dtype=torch.float32)
    b, length, m = targets.shape
    out = torch.zeros((b, length - 1, m), dtype=torch.float32, device=flat.device)
    out = out.masked_scatter(valid.unsqueeze(-1).expand_as(out), flat)
    return F.pad(out, (0, 0, 1, 0), value=0.0)


@torch.no_grad()
def token_topk(model: torch.nn.Module, input_ids: torch.Tensor, attention_mask: torch.Tensor, k: int,
               temperature: float = 1.0, chunk_elements: int = LOGIT_CHUNK_ELEMENTS,
               with_sampled: bool = False) -> tuple[torch.Tensor, ...]:
    """The ``k`` most likely tokens at every position and their log-probs under
    softmax(logits / temperature): ([B, L, k] long ids, [B, L, k] float32), aligned like
    :func:`token_logprobs` (position p: the distribution of the token at p, given the
    ones before), most likely first; ids 0 and log-probs 0 at p = 0 and on padding.

    ``with_sampled``: also ``input_ids``' own log-probs, [B, L], from the same forward
    pass (the teacher's scores for top-k distillation; the values token_logprobs gives,
    by the same formula on the same logits, so one pass serves both)."""
    _check_temperature(temperature)
    hf = _hf_model(model)
    valid = attention_mask[:, 1:].bool()
    if _whole_model_only(hf):
        rows = model(input_ids=input_ids, attention_mask=attention_mask, use_cache=False).logits[:, :-1][valid]
        head = None
    else:
        head = hf.get_output_embeddings()
        rows = hf.base_model(input_ids=input_ids, attention_mask=attention_mask,
                             use_cache=False).last_hidden_state[:, :-1][valid]
    vocab = head.weight.shape[0] if head is not None else rows.shape[-1]
    if not 1 <= k <= vocab:
        raise ValueError(f"k must be in [1, {vocab}] (the vocabulary), got {k}")
    step = max(1, chunk_elements // vocab)
    target = input_ids[:, 1:][valid].unsqueeze(-1)  # [N, 1]: each position's own next token
    ids, logps, picked = [], [], []
    for start in range(0, rows.shape[0], step):
        logits = rows[start:start + step]
        if head is not None:
            logits = F.linear(logits, head.weight, head.bias)
        logits = logits.float()
        if temperature != 1.0:
            logits = logits / temperature
        # log_softmax as _target_logprobs computes it (logit - logsumexp), so the sampled
        # tokens' values equal token_logprobs' exactly.
        lse = torch.logsumexp(logits, dim=-1, keepdim=True)
        top = logits.topk(k, dim=-1)
        ids.append(top.indices)
        logps.append(top.values - lse)
        if with_sampled:
            picked.append(logits.gather(-1, target[start:start + step]) - lse)
    b, length = input_ids.shape
    out_ids = torch.zeros((b, length - 1, k), dtype=torch.long, device=rows.device)
    out_logp = torch.zeros((b, length - 1, k), dtype=torch.float32, device=rows.device)
    out_sampled = torch.zeros((b, length - 1), dtype=torch.float32, device=rows.device)
    where = valid.unsqueeze(-1).expand_as(out_ids)
    if ids:
        out_ids = out_ids.masked_scatter(where, torch.cat(ids))
        out_logp = out_logp.masked_scatter(where, torch.cat(logps))
        if with_sampled:
            out_sampled = out_sampled.masked_scatter(valid, torch.cat(picked)[:, 0])
    top_ids, top_logp = F.pad(out_ids, (0, 0, 1, 0), value=0), F.pad(out_logp, (0, 0, 1, 0), value=0.0)
    return (top_ids, top_logp, F.pad(out_sampled, (1, 0), value=0.0)) if with_sampled else (top_ids, top_logp)
