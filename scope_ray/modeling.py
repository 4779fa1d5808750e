"""Per-token log-probs of given token ids under a causal LM (learner and teacher share it).

Alignment used everywhere in scope-ray: ``logp[i, p]`` is log pi(ids[i, p] | ids[i, :p]),
so position 0 has no value (0.0) and a response token keeps its own position. The
learner and the torch teacher backend both call :func:`token_logprobs`, which is why
the teacher server's scores match an unbatched forward pass exactly.
"""

from __future__ import annotations

import torch


def gather_token_logprobs(logits: torch.Tensor, input_ids: torch.Tensor,
                          temperature: float = 1.0) -> torch.Tensor:
    """[B, L, V] logits (position p predicts p+1) -> [B, L] log-probs of ``input_ids``
    under ``softmax(logits / temperature)``."""
    if not temperature > 0:
        raise ValueError(f"temperature must be > 0, got {temperature!r}")
    shifted = logits[:, :-1, :].float()
    if temperature != 1.0:
        shifted = shifted / temperature
    target = input_ids[:, 1:]
    picked = shifted.gather(-1, target.unsqueeze(-1)).squeeze(-1)
    # log_softmax without materialising it: logit - logsumexp over the vocabulary.
    logp = picked - torch.logsumexp(shifted, dim=-1)
    return torch.nn.functional.pad(logp, (1, 0), value=0.0)


def token_logprobs(model: torch.nn.Module, input_ids: torch.Tensor, attention_mask: torch.Tensor,
                   temperature: float = 1.0) -> torch.Tensor:
    """Right-padded batch -> [B, L] float32 token log-probs (see module docstring).

    ``temperature`` != 1 gives the log-probs of the *tempered* policy: the one a sampler
    at that temperature actually draws from. The learner scores rollouts this way (as
    verl does), so pi_old and pi_theta in the importance ratio and the reverse-KL signal
    are the sampling distribution itself; measured on the embedded task, training the
    raw policy on samples drawn at T=0.6 drifts and collapses within ~40 steps.
    """
    out = model(input_ids=input_ids, attention_mask=attention_mask, use_cache=False)
    return gather_token_logprobs(out.logits, input_ids, temperature)
