"""scope_ray/modeling.py: per-token log-probs, raw and tempered."""

from __future__ import annotations

import pytest
import torch

from scope_ray.modeling import gather_token_logprobs


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
