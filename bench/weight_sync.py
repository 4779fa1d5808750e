"""Weight sync benchmark: learner export -> rollout worker load, vs the tiny recipe's step.

    .venv/bin/python bench/weight_sync.py                        # 3 reps
    .venv/bin/python bench/weight_sync.py --reps 5 --recipe-steps 6 --bucket-mb 64

The path is the trainer's own (``Trainer.sync_weights``): ``LearnerGroup.publish_weights(
bucket_mb)`` (rank 0 gathers the weights, packs safetensors buckets and puts them in its
node's object store; the driver gets only the ref), then ``RolloutWorker.update_weights``
(the worker fetches the buckets, vLLM loads them and resets its prefix cache). Timed for

- ``tiny``: the embedded student's shape (hidden 128, 2 layers), on the recipe's actors;
- ``100m``: a random Qwen2 with hidden 768, 12 layers, 12 heads (head dim 64), 2 KV
  heads, intermediate 3072 (parameter count printed), on its own learner + worker.

Side by side in every repetition: a short run of the tiny recipe
(``launch/configs/tiny.yaml``: 16 prompts x 8 rollouts, 96 response tokens, SCOPE,
max_staleness 0, evaluation and checkpoints off) on the same tiny student, then the
syncs. Reported: seconds per sync (and its parts), bytes and bytes/s, and sync / recipe
step time (target for the tiny recipe: <= 5%), from the standalone syncs and from the
trainer's own ``time/sync_s`` inside the recipe run. Each sync is paired (alternating
order) with the path the trainer used before: the buckets come back to the driver, which
``ray.put``s them again (``path/via driver`` is the trainer path's time over that one's),
and with ``rollout.weight_sync: broadcast`` (rank 0 broadcasts buckets over gloo straight
into the engines; ``broadcast/safetensors`` is its time over the safetensors path's in the
same repetition). On GPUs the broadcast would also skip the device-to-host copy (NCCL;
not measured here).
"""

from __future__ import annotations

import argparse
import logging
import sys
import time
from pathlib import Path
from typing import Any

from _common import (
    BENCH_DIR, DEFAULT_WORK_DIR, Cluster, attach_spans, load_line, machine_info, median, model_spec,
    prepare_inputs, setup_logging, trial_summary, write_result,
)

logger = logging.getLogger("bench.weight_sync")
TARGET = 0.05
RECIPE = ["algorithm.name=scope", "rollout.group_size=8", "rollout.temperature=0.6", "trainer.prompts_per_step=16",
          "trainer.eval_every=0", "trainer.eval_at_end=false", "trainer.save_every=0", "trainer.max_staleness=0"]


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--syncs", type=int, default=2, help="syncs per model per repetition")
    ap.add_argument("--recipe-steps", type=int, default=5, help="tiny-recipe steps per repetition")
    ap.add_argument("--bucket-mb", type=int, default=256, help="rollout.weight_bucket_mb (the default)")
    ap.add_argument("--big", type=int, nargs=5, default=[768, 12, 12, 2, 3072],
                    metavar=("HIDDEN", "LAYERS", "HEADS", "KV_HEADS", "INTERMEDIATE"))
    ap.add_argument("--no-big", action="store_true", help="skip the ~100M model")
    ap.add_argument("--student-sft-steps", type=int, default=200,
                    help="the recipe's student: trained this many SFT steps so rollouts end (shared cache with "
                         "teacher_cost.py); 0: random student (every rollout runs to the token limit)")
    ap.add_argument("--work-dir", type=Path, default=DEFAULT_WORK_DIR)
    ap.add_argument("--out", type=Path)
    ap.add_argument("--num-cpus", type=int, default=16)
    ap.add_argument("-v", "--verbose", action="store_true")
    return ap.parse_args(argv)


def build_model_dir(work_dir: Path, spec: Any, seed: int = 7) -> tuple[Path, int]:
    """A random-init Qwen2 of ``spec`` saved as an HF dir (cached); (dir, parameters)."""
    from scope_ray.bootstrap.models import init_model, save_model_dir

    out = work_dir / f"model-{spec.hidden_size}x{spec.num_layers}-h{spec.num_heads}kv{spec.num_kv_heads}-" \
                     f"i{spec.intermediate_size}-s{seed}"
    marker = out / "PARAMS"
    if not marker.is_file():
        model = init_model(spec, seed)
        n = sum(p.numel() for p in model.parameters())
        save_model_dir(model, out)
        marker.write_text(str(n))
        del model
    return out, int(marker.read_text())


class BigSide:
    """A learner group and one rollout worker on the ~100M model (the trainer's options)."""

    def __init__(self, model_dir: Path, inputs: Any) -> None:
        import ray

        from actors.learner import LearnerGroup
        from actors.rollout import RolloutWorker
        from scope_ray.config import load_config
        from scope_ray.engines.vllm_engine import EngineOptions
        from scope_ray.learner import LearnerOptions

        cfg = load_config(None, [f"model.student={model_dir}", f"model.teacher={model_dir}",
                                 f"data.train_files=[{inputs.train_file}]", *RECIPE])
        self.learner = LearnerGroup(str(model_dir), LearnerOptions.from_run_config(cfg), num_workers=1, timeout_s=1200)
        engine = EngineOptions(model_dir=str(model_dir), seed=0,
                               max_model_len=cfg.model.max_prompt_tokens + cfg.model.max_response_tokens,
                               dtype=cfg.model.dtype,
                               enable_weight_sync=True)
        self.worker = RolloutWorker.options(num_cpus=cfg.rollout.num_cpus).remote(engine, {"max_tokens": 8})
        ray.get(self.worker.ready.remote(), timeout=1200)
        self.workers = [self.worker]

    def close(self) -> None:
        import ray

        ray.kill(self.worker)
        self.learner.shutdown()


def time_sync(learner: Any, workers: list[Any], bucket_mb: int, version: int) -> dict[str, float]:
    """One sync along the trainer's path, split into its parts."""
    import ray

    t0 = time.perf_counter()
    ref = learner.publish_weights(bucket_mb, timeout_s=1200)
    t1 = time.perf_counter()
    ray.get([w.update_weights.remote(ref, version) for w in workers], timeout=1200)
    t2 = time.perf_counter()
    blobs = ray.get(ref)  # after the clock: only to count the bytes
    nbytes = sum(len(b) for b in blobs)
    return {"export_s": t1 - t0, "load_s": t2 - t1, "total_s": t2 - t0, "bytes": nbytes,
            "buckets": len(blobs), "bytes_per_s": nbytes / (t2 - t0)}


def time_sync_via_driver(learner: Any, workers: list[Any], bucket_mb: int, version: int) -> dict[str, float]:
    """The path the trainer took before: the buckets come back to the driver, which puts
    them into the object store again (learner -> driver -> object store -> workers)."""
    import ray

    t0 = time.perf_counter()
    blobs = learner.export_weights(bucket_mb, timeout_s=1200)
    ref = ray.put(blobs)
    ray.get([w.update_weights.remote(ref, version) for w in workers], timeout=1200)
    return {"total_s": time.perf_counter() - t0}


class BroadcastSync:
    """The trainer's broadcast path (controller/rollout_weights.py) on given actors."""

    def __init__(self, learner: Any, workers: list[Any], bucket_mb: int) -> None:
        from types import SimpleNamespace

        from scope_ray.controller.rollout_weights import RolloutWeights

        timeouts = SimpleNamespace(sync_timeout_s=1200.0, generate_timeout_s=1200.0)
        self.weights = RolloutWeights(lambda: workers, lambda: learner, lambda: timeouts, mode="broadcast",
                                      bucket_mb=bucket_mb)

    def time(self, version: int) -> float:
        t0 = time.perf_counter()
        self.weights.push(version, wait=True)
        return time.perf_counter() - t0


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    setup_logging(args.verbose)
    info_before = machine_info()
    logger.info("%s", load_line("start"))
    inputs = prepare_inputs(args.work_dir, student_sft_steps=args.student_sft_steps)
    big_spec = model_spec(*args.big)
    big_dir, big_params = build_model_dir(args.work_dir, big_spec)
    logger.info("~100M model: %d parameters (%s)", big_params, big_dir)
    cluster = Cluster(inputs, RECIPE, args.work_dir / "weight_sync", num_cpus=args.num_cpus)
    big = None
    trials, syncs = [], []
    broadcasts: dict[str, BroadcastSync] = {}
    try:
        if not args.no_big:
            big = BigSide(big_dir, inputs)
        cluster.trial("warmup", ["trainer.total_steps=1"])
        for name, side in (("tiny", None), ("100m", big)):
            if name == "100m" and big is None:
                continue
            learner, workers = (cluster.parts.learner, cluster.parts.rollout_workers) if side is None else \
                (side.learner, side.workers)
            time_sync(learner, workers, args.bucket_mb, 999)  # warm-up
            broadcasts[name] = BroadcastSync(learner, workers, args.bucket_mb)
            broadcasts[name].time(999)  # warm-up, and the group is made
        for rep in range(args.reps):
            logger.info("rep %d  %s", rep, load_line("now"))
            t = cluster.trial("tiny_recipe", [f"trainer.total_steps={args.recipe_steps}"])
            trials.append(t)
            for name, side in (("tiny", None), ("100m", big)):
                if name == "100m" and side is None:
                    continue
                learner, workers = (cluster.parts.learner, cluster.parts.rollout_workers) if side is None else \
                    (side.learner, side.workers)
                for k in range(args.syncs):
                    version = 1000 + rep * 10 + k
                    # Alternate which of the two goes first (A B, B A, ...).
                    if k % 2:
                        old = time_sync_via_driver(learner, workers, args.bucket_mb, version)["total_s"]
                        row = time_sync(learner, workers, args.bucket_mb, version)
                    else:
                        row = time_sync(learner, workers, args.bucket_mb, version)
                        old = time_sync_via_driver(learner, workers, args.bucket_mb, version)["total_s"]
                    row["via_driver_total_s"] = old
                    row["broadcast_total_s"] = broadcasts[name].time(version)
                    syncs.append({"rep": rep, "model": name, **row, "load1": machine_info()["loadavg"][0]})
    finally:
        attach_spans(trials)
        if big is not None:
            big.close()
        cluster.close()
    info_after = machine_info()
    summaries = [dict(trial_summary(t, 1, 1), rep=i) for i, t in enumerate(trials)]
    result = summarize(summaries, syncs, args.reps, big_params, inputs.meta.get("student_params"))
    print_table(result, info_before, info_after)
    write_result("weight_sync", {
        "command": " ".join(["bench/weight_sync.py", *(argv if argv is not None else sys.argv[1:])]),
        "machine_before": info_before, "machine_after": info_after, "inputs": inputs.meta,
        "settings": vars(args) | {"work_dir": str(args.work_dir), "out": str(args.out)},
        "recipe_overrides": RECIPE, "recipe_config": str(BENCH_DIR.parent / "launch/configs/tiny.yaml"),
        "target_share": TARGET, "summary": result, "syncs": syncs, "recipe_trials": summaries,
    }, args.out)
    return 0


def summarize(summaries: list[dict[str, Any]], syncs: list[dict[str, Any]], reps: int, big_params: int,
              tiny_params: int | None) -> dict[str, Any]:
    step = {s["rep"]: s["mean"]["step_s"] for s in summaries}
    out: dict[str, Any] = {
        "recipe_step_s": median(list(step.values())),
        "recipe_logged_sync_s": median([s["mean"]["logged_sync_s"] for s in summaries]),
        "recipe_logged_sync_share": median([s["mean"]["logged_sync_s"] / s["mean"]["logged_step_s"]
                                            for s in summaries]),
        "recipe_actor_sync_share": median([s["mean"]["sync_busy_s"] / s["mean"]["step_s"] for s in summaries]),
        "recipe_rollout_tokens": median([s["mean"]["rollout_tokens"] for s in summaries]),
        "recipe_accuracy": median([s["mean"]["accuracy"] for s in summaries]),
    }
    for model, params in (("tiny", tiny_params), ("100m", big_params)):
        rows = [r for r in syncs if r["model"] == model]
        if not rows:
            continue
        share = [median([r["total_s"] for r in rows if r["rep"] == k]) / step[k] for k in range(reps)]
        out[model] = {
            "params": params, "bytes": rows[0]["bytes"], "buckets": rows[0]["buckets"],
            "total_s": median([r["total_s"] for r in rows]), "export_s": median([r["export_s"] for r in rows]),
            "load_s": median([r["load_s"] for r in rows]),
            "bytes_per_s": median([r["bytes_per_s"] for r in rows]),
            "via_driver_total_s": median([r["via_driver_total_s"] for r in rows]),
            "path_over_via_driver": median([r["total_s"] / r["via_driver_total_s"] for r in rows]),
            "broadcast_total_s": median([r["broadcast_total_s"] for r in rows]),
            "broadcast_over_safetensors": median([r["broadcast_total_s"] / r["total_s"] for r in rows]),
            "share_of_recipe_step": median(share), "share_per_rep": share,
        }
    return out


def print_table(r: dict[str, Any], info: dict[str, Any], info_after: dict[str, Any]) -> None:
    print(f"\nweight sync (publish on the learner -> load on the workers, medians); {info['cpus']} CPUs, load "
          f"{info['loadavg']} -> {info_after['loadavg']}")
    print(f"{'model':<6} {'params':>11} {'MB':>7} {'buckets':>7} {'total s':>8} {'export':>7} "
          f"{'load':>6} {'MB/s':>7} {'/ recipe step':>13} {'path/via driver':>15} {'broadcast s':>11} "
          f"{'broadcast/safetensors':>21}")
    for name in ("tiny", "100m"):
        if name not in r:
            continue
        m = r[name]
        print(f"{name:<6} {m['params'] or 0:11,d} {m['bytes'] / 1e6:7.1f} {m['buckets']:7d} {m['total_s']:8.3f} "
              f"{m['export_s']:7.3f} {m['load_s']:6.3f} {m['bytes_per_s'] / 1e6:7.1f} "
              f"{m['share_of_recipe_step']:13.1%} {m['path_over_via_driver']:15.2f} {m['broadcast_total_s']:11.3f} "
              f"{m['broadcast_over_safetensors']:21.2f}")
    print(f"tiny recipe: {r['recipe_step_s']:.2f} s/step ({r['recipe_rollout_tokens']:.0f} rollout tokens, accuracy "
          f"{r['recipe_accuracy']:.2f}); in-run sync: logged time/sync_s {r['recipe_logged_sync_s']:.3f} s = "
          f"{r['recipe_logged_sync_share']:.1%} of time/step_s, actor-side {r['recipe_actor_sync_share']:.1%}")
    share = r["tiny"]["share_of_recipe_step"]
    verdict = "met" if max(share, r["recipe_logged_sync_share"]) <= TARGET else "NOT met"
    print(f"target tiny sync <= {TARGET:.0%} of the tiny recipe's step: standalone {share:.1%}, in-run "
          f"{r['recipe_logged_sync_share']:.1%} ({verdict})")


if __name__ == "__main__":
    sys.exit(main())
