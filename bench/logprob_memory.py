"""Per-token log-probs at a real vocabulary: peak memory and tokens/s, full logits vs
the chunked head (``scope_ray.learner.logprobs.token_logprobs``), side by side in one run.

    .venv/bin/python bench/logprob_memory.py                       # 4k and 16k tokens
    .venv/bin/python bench/logprob_memory.py --tokens 4096 --reps 3

The model is a random Qwen2 with the Qwen3 vocabulary (151,936) and a tiny body (hidden
64, one layer), so the output head dominates, as it does for the logits of the paper's
students. Each case runs in a fresh process: forward + backward of the log-probs of
2 sequences of tokens/2 (float32, CPU), and the process's peak RSS growth over its state
before the first pass (``ru_maxrss``) is the memory figure. ``full`` is the path this
replaces: the model's own [B, L, V] logits, then log-softmax (the float copy, the
tempered copy and their gradients all live at once). ``full`` is not run where it would
need more than ``--max-full-gb`` (estimated from the 4k case: growth is linear in tokens).
Target (issue): growth at 2 x 2048 tokens below 1.5 GB (8.5 GB before), and no longer
proportional to tokens x vocabulary.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import resource
import sys
import time
from pathlib import Path

VOCAB = 151_936
ROOT = Path(__file__).resolve().parents[1]


def _model():
    import torch
    from transformers import Qwen2Config, Qwen2ForCausalLM

    torch.manual_seed(0)
    cfg = Qwen2Config(vocab_size=VOCAB, hidden_size=64, intermediate_size=128, num_hidden_layers=1,
                      num_attention_heads=2, num_key_value_heads=1, max_position_embeddings=16384,
                      tie_word_embeddings=True, torch_dtype="float32")
    return Qwen2ForCausalLM(cfg)


def _case(path: str, tokens: int, reps: int, out: mp.Queue) -> None:
    sys.path.insert(0, str(ROOT))
    import torch

    from scope_ray.learner.logprobs import gather_token_logprobs, token_logprobs

    torch.set_num_threads(2)
    model = _model()
    ids = torch.randint(5, VOCAB, (2, tokens // 2), generator=torch.Generator().manual_seed(1))
    mask = torch.ones_like(ids)

    def full():
        return gather_token_logprobs(model(input_ids=ids, attention_mask=mask, use_cache=False).logits, ids, 0.6)

    fn = full if path == "full" else (lambda: token_logprobs(model, ids, mask, 0.6))
    base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    seconds = []
    for _ in range(reps):
        model.zero_grad(set_to_none=True)
        t0 = time.perf_counter()
        fn().sum().backward()
        seconds.append(time.perf_counter() - t0)
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    out.put({"path": path, "tokens": tokens, "growth_gb": (peak - base) / 1e9,
             "tokens_per_s": tokens / min(seconds), "seconds": min(seconds)})


def run_case(path: str, tokens: int, reps: int) -> dict:
    ctx = mp.get_context("spawn")
    q = ctx.Queue()
    p = ctx.Process(target=_case, args=(path, tokens, reps, q))
    p.start()
    p.join()
    if p.exitcode != 0:
        return {"path": path, "tokens": tokens, "error": f"exit code {p.exitcode} (out of memory?)"}
    return q.get()


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--tokens", type=int, nargs="+", default=[4096, 16384])
    ap.add_argument("--reps", type=int, default=2)
    ap.add_argument("--max-full-gb", type=float, default=14.0, help="skip 'full' cases estimated above this")
    ap.add_argument("--json", type=Path, default=None, help="also write the results here")
    args = ap.parse_args(argv)
    rows, per_token_full = [], None
    for tokens in args.tokens:
        for path in ("full", "chunked"):
            if path == "full" and per_token_full is not None and per_token_full * tokens > args.max_full_gb:
                rows.append({"path": path, "tokens": tokens,
                             "error": f"not run: ~{per_token_full * tokens:.0f} GB estimated (linear in tokens)"})
                continue
            row = run_case(path, tokens, args.reps)
            if path == "full" and "growth_gb" in row:
                per_token_full = row["growth_gb"] / tokens
            rows.append(row)
            print(json.dumps(row), flush=True)
    print(f"\nvocabulary {VOCAB}, forward + backward of 2 sequences, float32, CPU")
    print(f"{'tokens':>7} {'path':>8} {'peak growth':>12} {'tokens/s':>10}")
    for r in rows:
        if "error" in r:
            print(f"{r['tokens']:>7} {r['path']:>8}  {r['error']}")
        else:
            print(f"{r['tokens']:>7} {r['path']:>8} {r['growth_gb']:>9.2f} GB {r['tokens_per_s']:>10.0f}")
    by = {(r["path"], r["tokens"]): r for r in rows if "error" not in r}
    for tokens in args.tokens:
        f, c = by.get(("full", tokens)), by.get(("chunked", tokens))
        if f and c:
            print(f"{tokens} tokens: chunked / full memory {c['growth_gb'] / f['growth_gb']:.2f}x, "
                  f"speed {c['tokens_per_s'] / f['tokens_per_s']:.2f}x")
    if args.json:
        args.json.write_text(json.dumps(rows, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
