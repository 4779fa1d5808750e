"""What top-k distillation (algorithm.distill=topk) costs, side by side with the sampled signal.

    .venv/bin/python bench/topk_cost.py                  # k 20 and 100, 5 repetitions
    .venv/bin/python bench/topk_cost.py --k 5 20 --reps 7 --sequences 128

On the embedded default's teacher and student (bootstrapped, cached), the same batch of
``--sequences`` prompt + response sequences (the test split's questions, responses of
the task's length), measured in one process, variants alternating:

- teacher scoring: the HF scorer's forward (:class:`scope_ray.engines.teacher_scoring.HFScorer`),
  sampled-token log-probs only vs also the top k (a second pass over the output head);
- learner: one forward + backward of the student's log-probs, without and with the
  teacher's top-k ids as extra targets (``token_logprobs(..., support=...)``);
- payload: bytes per scored token the teacher returns (4 sampled; 4 + 8 k with top-k).

Prints medians and the ratio to the sampled variant; writes bench/results/topk_cost.json.
Only the ratios mean anything across machines; on a GPU the output head's share of a
forward is smaller, so the top-k pass costs relatively less there (not measured here).
"""

from __future__ import annotations

import argparse
import random
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import interleave, load_line, machine_info, median, write_result  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--k", type=int, nargs="+", default=[20, 100])
    ap.add_argument("--reps", type=int, default=5)
    ap.add_argument("--sequences", type=int, default=64)
    ap.add_argument("--response-tokens", type=int, default=60)
    args = ap.parse_args(argv)

    import torch

    from scope_ray.bootstrap.build import BootstrapOptions, bootstrap
    from scope_ray.data.synthetic import read_problems
    from scope_ray.engines.teacher_scoring import HFScorer
    from scope_ray.learner.logprobs import token_logprobs, token_topk
    from scope_ray.types import ScoreRequest

    print(load_line("before"), flush=True)
    art = bootstrap(BootstrapOptions())
    scorer = HFScorer(str(art.teacher_dir), "float32", "cpu")
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(str(art.student_dir))
    student = AutoModelForCausalLM.from_pretrained(str(art.student_dir), dtype=torch.float32)
    rng = random.Random(0)
    problems = read_problems(art.test_file)[: args.sequences]
    vocab = student.get_output_embeddings().weight.shape[0]
    prompts = [tok(p.question)["input_ids"] for p in problems]
    responses = [[rng.randrange(5, vocab) for _ in range(args.response_tokens)] for _ in prompts]
    requests = {0: [ScoreRequest(p, r) for p, r in zip(prompts, responses)]}
    requests.update({k: [ScoreRequest(p, r, topk=k) for p, r in zip(prompts, responses)] for k in args.k})

    longest = max(len(p) + len(r) for p, r in zip(prompts, responses))
    ids = torch.zeros((len(prompts), longest), dtype=torch.long)
    mask = torch.zeros_like(ids)
    for i, (p, r) in enumerate(zip(prompts, responses)):
        ids[i, : len(p) + len(r)] = torch.tensor(p + r)
        mask[i, : len(p) + len(r)] = 1
    with torch.no_grad():
        support = {k: token_topk(scorer.model, ids, mask, k)[0] for k in args.k}

    def learner_pass(k: int) -> None:
        student.zero_grad()
        if k:
            logp, top = token_logprobs(student, ids, mask, 0.6, support=support[k])
            (logp.sum() + top.sum()).backward()
        else:
            token_logprobs(student, ids, mask, 0.6).sum().backward()

    variants = [0, *args.k]
    times: dict[str, dict[int, list[float]]] = {"teacher": {k: [] for k in variants}, "learner": {k: [] for k in variants}}
    scorer(requests[0])  # warm-up
    learner_pass(0)
    for _, k in interleave(variants, args.reps):
        t0 = time.perf_counter()
        out = scorer(requests[k])
        times["teacher"][k].append(time.perf_counter() - t0)
        t0 = time.perf_counter()
        learner_pass(k)
        times["learner"][k].append(time.perf_counter() - t0)
        if k:
            assert out[0].topk.ids.shape == (args.response_tokens, k)

    tokens = args.sequences * args.response_tokens
    rows = []
    for k in variants:
        row = {"variant": "sampled" if not k else f"top-{k}", "k": k,
               "teacher_s": median(times["teacher"][k]), "learner_s": median(times["learner"][k]),
               "payload_bytes_per_token": 4 + 8 * k, "payload_mb_per_step_of_these": tokens * (4 + 8 * k) / 2**20}
        row["teacher_ratio"] = row["teacher_s"] / median(times["teacher"][0])
        row["learner_ratio"] = row["learner_s"] / median(times["learner"][0])
        rows.append(row)
    print(f"{args.sequences} sequences x {args.response_tokens} response tokens ({tokens} scored tokens), "
          f"vocab {vocab}, medians of {args.reps}:")
    print(f"{'variant':>9} {'teacher s':>10} {'x':>6} {'learner s':>10} {'x':>6} {'bytes/token':>12}")
    for r in rows:
        print(f"{r['variant']:>9} {r['teacher_s']:>10.3f} {r['teacher_ratio']:>6.2f} {r['learner_s']:>10.3f} "
              f"{r['learner_ratio']:>6.2f} {r['payload_bytes_per_token']:>12d}")
    print(load_line("after"), flush=True)
    write_result("topk_cost", {"command": [sys.executable, *sys.argv], "args": vars(args), "rows": rows,
                               "machine": machine_info()})
    return 0


if __name__ == "__main__":
    sys.exit(main())
