"""Teacher batching policy (pure) and TeacherServer on real Ray (HF and vLLM backends)."""

from __future__ import annotations

import random
from dataclasses import replace

import numpy as np
import pytest
import ray
import torch

from actors.teacher import TeacherServer
from scope_ray.learner.logprobs import token_logprobs
from scope_ray.learner.batch import pack_by_padded_tokens, padded_tokens
from scope_ray.types import ScoreRequest

# ---------------------------------------------------------------- pure batching policy


def test_pack_covers_all_within_budget_sorted() -> None:
    rng = random.Random(0)
    lengths = [rng.randint(1, 300) for _ in range(200)]
    batches = pack_by_padded_tokens(lengths, 1024)
    assert sorted(i for b in batches for i in b) == list(range(200))
    for b in batches:
        assert padded_tokens([lengths[i] for i in b]) <= 1024
        assert [lengths[i] for i in b] == sorted(lengths[i] for i in b)
    assert [lengths[b[-1]] for b in batches] == sorted(lengths[b[-1]] for b in batches)


def test_pack_fills_greedily_and_isolates_oversize() -> None:
    assert pack_by_padded_tokens([10] * 10, 35) == [[0, 1, 2], [3, 4, 5], [6, 7, 8], [9]]
    assert pack_by_padded_tokens([5, 5000, 7], 100) == [[0, 2], [1]]
    assert pack_by_padded_tokens([], 100) == []


def test_sorting_cuts_padding() -> None:
    lengths = [10, 100] * 8
    arrival = sum(padded_tokens(lengths[i : i + 4]) for i in range(0, 16, 4))
    packed = sum(padded_tokens([lengths[i] for i in b]) for b in pack_by_padded_tokens(lengths, 400))
    assert packed < arrival  # 8x10 + 8x100 = 880 vs 4 x (4 x 100) = 1600


def test_pack_rejects_bad_input() -> None:
    assert padded_tokens([]) == 0 and padded_tokens([3, 5]) == 10
    with pytest.raises(ValueError):
        pack_by_padded_tokens([1, 2], 0)
    with pytest.raises(ValueError):
        pack_by_padded_tokens([1, 0], 10)


# ---------------------------------------------------------------- the Ray actor

BUDGET = 2048
TOPK = 5


def _requests(n: int, seed: int = 0) -> list[ScoreRequest]:
    rng = random.Random(seed)
    tok = lambda k: [rng.randint(5, 260) for _ in range(k)]  # noqa: E731
    return [ScoreRequest(prompt_ids=tok(rng.randint(1, 40)), response_ids=tok(rng.randint(1, 60))) for _ in range(n)]


def _unbatched(model, r: ScoreRequest) -> np.ndarray:
    ids = torch.tensor([r.prompt_ids + r.response_ids])
    with torch.inference_mode():
        return token_logprobs(model, ids, torch.ones_like(ids))[0, len(r.prompt_ids) :].numpy()


@pytest.fixture(scope="module")
def hf_reference(tiny_model_dir):
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(tiny_model_dir, dtype=torch.float32).eval()


@pytest.fixture(scope="module")
def hf_scores(ray_session, tiny_model_dir):
    """Scores of 32 concurrent single-sequence callers plus one multi-sequence caller."""
    teacher = TeacherServer.options(num_cpus=1).remote(
        str(tiny_model_dir), backend="hf", max_batch_tokens=BUDGET, max_wait_ms=50, dtype="float32", device="cpu"
    )
    assert ray.get(teacher.ready.remote(), timeout=60)
    reqs = _requests(32)
    refs = [teacher.score.remote([r]) for r in reqs]  # 32 calls in flight at once
    multi_ref = teacher.score.remote([reqs[0], ScoreRequest(reqs[1].prompt_ids, []), reqs[2]])
    results = [out[0] for out in ray.get(refs, timeout=60)]
    multi = ray.get(multi_ref, timeout=60)
    topk = ray.get(teacher.score.remote([replace(r, topk=TOPK) for r in reqs[:4]] + [ScoreRequest([5], [], topk=TOPK)]),
                   timeout=60)
    with pytest.raises(ray.exceptions.RayTaskError, match="prompt_ids must be non-empty"):
        ray.get(teacher.score.remote([ScoreRequest([], [7, 8])]), timeout=60)
    stats = ray.get(teacher.stats.remote())
    ray.kill(teacher)
    return reqs, results, multi, stats, topk


def test_hf_concurrent_callers_match_unbatched(hf_scores, hf_reference) -> None:
    reqs, results, multi, _, _ = hf_scores
    for r, got in zip(reqs, results):
        assert got.dtype == np.float32 and got.shape == (len(r.response_ids),)
        np.testing.assert_allclose(got, _unbatched(hf_reference, r), atol=1e-5, rtol=0)
    assert multi[1].shape == (0,)
    np.testing.assert_array_equal(multi[0], results[0])
    np.testing.assert_array_equal(multi[2], results[2])


def _full_logp(model, r: ScoreRequest) -> np.ndarray:
    """[response tokens, vocab]: the teacher's whole distribution at each response position."""
    ids = torch.tensor([r.prompt_ids + r.response_ids])
    with torch.inference_mode():
        logits = model(input_ids=ids).logits[0, len(r.prompt_ids) - 1 : -1]
    return torch.log_softmax(logits.float(), -1).numpy()


def test_hf_topk_is_the_teachers_most_likely_tokens(hf_scores, hf_reference) -> None:
    """algorithm.distill=topk: each position's k most likely tokens and log-probs, and
    the sampled tokens' log-probs as before."""
    reqs, results, _, _, topk = hf_scores
    for r, plain, got in zip(reqs[:4], results, topk):
        np.testing.assert_array_equal(got.logp, plain)
        assert got.topk.ids.shape == got.topk.logp.shape == (len(r.response_ids), TOPK)
        assert got.topk.ids.dtype == np.int32 and got.topk.nbytes == len(r.response_ids) * TOPK * 8
        full = _full_logp(hf_reference, r)
        want = np.sort(full, axis=-1)[:, ::-1][:, :TOPK]
        np.testing.assert_allclose(got.topk.logp, want, atol=1e-5, rtol=0)
        np.testing.assert_allclose(np.take_along_axis(full, got.topk.ids.astype(np.int64), -1), got.topk.logp,
                                   atol=1e-5, rtol=0)
    assert topk[4].topk.ids.shape == (0, TOPK)


def test_hf_batching_happened(hf_scores) -> None:
    reqs, _, _, stats, _ = hf_scores
    assert stats["requests"] == 34  # the rejected call never counts
    assert stats["sequences"] == 38  # the empty responses are answered without a forward
    # 32 callers at once within max_wait_ms coalesce into a few forwards (2 measured; a
    # server that scored each request alone would report 34).
    assert stats["batches"] <= stats["sequences"] // 4
    assert stats["max_batch_padded_tokens"] <= BUDGET
    assert stats["real_tokens"] == (sum(r.num_tokens for r in reqs) + sum(r.num_tokens for r in (reqs[0], reqs[2]))
                                    + sum(r.num_tokens for r in reqs[:4]))
    assert stats["real_tokens"] <= stats["padded_tokens"] and stats["forward_s"] > 0


def test_vllm_backend_agrees_with_hf(ray_session, tiny_model_dir, hf_scores, hf_reference) -> None:
    reqs, hf_results, _, _, hf_topk = hf_scores
    # max_model_len is the longest rollout (prompt + response), as the trainer passes it.
    teacher = TeacherServer.options(num_cpus=1).remote(
        str(tiny_model_dir), backend="vllm", max_batch_tokens=BUDGET, max_wait_ms=50, dtype="float32",
        max_model_len=256,
    )
    # A rollout of exactly the full length: vLLM refuses a prompt that fills its model
    # length when asked for prompt log-probs, so the engine gets one token more.
    full = ScoreRequest(prompt_ids=[(3 * i) % 250 + 5 for i in range(200)],
                        response_ids=[(7 * i) % 250 + 5 for i in range(56)])
    try:
        got = [out[0] for out in ray.get([teacher.score.remote([r]) for r in reqs], timeout=120)]
        (full_got,) = ray.get(teacher.score.remote([full]), timeout=120)
        topk = ray.get(teacher.score.remote([replace(r, topk=TOPK) for r in reqs[:4]]), timeout=120)
        stats = ray.get(teacher.stats.remote())
    finally:
        ray.kill(teacher)
    assert full.num_tokens == 256 and full_got.shape == (56,)
    np.testing.assert_allclose(full_got, _unbatched(hf_reference, full), atol=1e-3, rtol=0)
    for r, g, h in zip(reqs, got, hf_results):
        assert g.dtype == np.float32 and g.shape == (len(r.response_ids),)
        np.testing.assert_allclose(g, h, atol=1e-3, rtol=0)
    assert stats["batches"] < stats["sequences"] == 37
    # prompt_logprobs=k: the same top-k as the HF backend (up to ties in a near-uniform
    # random model: compared by value, and every id's log-prob checked against HF's).
    for r, v, h in zip(reqs[:4], topk, hf_topk):
        np.testing.assert_array_equal(v.logp, got[reqs.index(r)])
        np.testing.assert_allclose(v.topk.logp, h.topk.logp, atol=1e-3, rtol=0)
        full = _full_logp(hf_reference, r)
        np.testing.assert_allclose(np.take_along_axis(full, v.topk.ids.astype(np.int64), -1), v.topk.logp,
                                   atol=1e-3, rtol=0)
