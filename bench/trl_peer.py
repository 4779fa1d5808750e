"""scope-ray against a peer: TRL's on-policy distillation trainer, same models, task and prompts.

Runs the two sides one after the other (alternating the order over ``--reps``) on the
same settings and reports for each: end-to-end wall time of the training process, time in
training steps, rollout tokens per second, and (``--size tiny``) the held-out avg@8 and
pass@8 the student reaches, measured for both students with scope-ray's own evaluator
(``scope-ray eval --k 8 --json``, vLLM, temperature 0.6).

- scope-ray: ``.venv/bin/scope-ray train algorithm.name=opd ...`` (``--algorithm`` to pick
  ``scope``); its ``metrics.jsonl`` gives ``time/step_s`` and ``rollout/tokens`` per step.
- TRL: ``bench/trl_side.py`` in ``.venv-trl`` (``bench/trl_setup.sh`` creates it):
  ``trl.DistillationTrainer`` with ``beta=1`` (reverse KL), ``bf16=False``,
  ``gradient_checkpointing=False``, the same learning rate, weight decay, Adam settings,
  gradient clip, a constant schedule, temperature and response length. TRL generates one
  completion per row, so each prompt is repeated G times within its step's batch.
- Prompts: the first ``steps x prompts_per_step`` prompts in the order scope-ray's sampler
  visits the training file (seed ``trainer.seed``), with scope-ray's rendered token ids
  (chat template + instruction suffix); TRL gets exactly those ids (checked).

Sizes: ``tiny`` is the embedded bootstrap pair (student 0.43M, teacher 0.82M parameters,
both SFT'd; snapshotted into the work directory, see ``tiny_inputs``). ``25m`` is a random-init Qwen2 pair with the same tokenizer, about 25M (student)
and 75M (teacher) parameters, built once into ``bench/.cache/``; only time and throughput
mean anything there (accuracy is about 0, so it is not evaluated unless ``--eval``).

This is a shared 2-core machine: the sides run back to back, with the ``uptime`` load
recorded before and after each; figures move with the load.
"""

from __future__ import annotations

import argparse
import glob
import json
import logging
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from _common import BENCH_DIR, DEFAULT_WORK_DIR, RESULTS_DIR, machine_info, setup_logging, write_result

logger = logging.getLogger("bench")

ROOT = BENCH_DIR.parent
SCOPE_BIN = ROOT / ".venv" / "bin" / "scope-ray"
TRL_PY = ROOT / ".venv-trl" / "bin" / "python"

# ~25M / ~75M parameters, vocabulary 261 (the embedded tokenizer).
SIZES = {
    "25m": {"student": dict(hidden=512, layers=8, heads=8, kv_heads=2, intermediate=1536),
            "teacher": dict(hidden=768, layers=11, heads=12, kv_heads=2, intermediate=2304)},
}


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--size", choices=["tiny", "25m"], default="tiny")
    ap.add_argument("--steps", type=int, default=None, help="gradient steps (default: 20 tiny, 3 25m)")
    ap.add_argument("--prompts-per-step", type=int, default=16)
    ap.add_argument("--group-size", type=int, default=8, help="rollouts per prompt")
    ap.add_argument("--max-response-tokens", type=int, default=96)
    ap.add_argument("--temperature", type=float, default=0.6)
    ap.add_argument("--lr", type=float, default=5e-5)
    ap.add_argument("--algorithm", default="opd", help="scope-ray algorithm.name (opd: uniform on-policy distillation)")
    ap.add_argument("--reps", type=int, default=1, help="repetitions; the order alternates (trl scope, scope trl, ...)")
    ap.add_argument("--first", choices=["trl", "scope"], default="trl", help="side run first in repetition 1")
    ap.add_argument("--sides", nargs="+", choices=["trl", "scope"], default=["trl", "scope"],
                    help="run only these sides (one side alone prints no ratio)")
    ap.add_argument("--eval", dest="do_eval", action="store_true", default=None, help="evaluate avg@8 (default: tiny only)")
    ap.add_argument("--no-eval", dest="do_eval", action="store_false")
    ap.add_argument("--eval-k", type=int, default=8)
    ap.add_argument("--tiny-from", type=Path,
                    help="a bootstrap directory (student/, teacher/, data/) to snapshot for --size tiny "
                         "(default: the embedded bootstrap, built if missing)")
    ap.add_argument("--trl-threads", type=int, default=0, help="torch threads on the TRL side (0: torch's default)")
    ap.add_argument("--work-dir", type=Path, default=DEFAULT_WORK_DIR / "trl_peer")
    ap.add_argument("--out", type=Path, help="result JSON (default bench/results/trl_peer_<size>.json)")
    ap.add_argument("-v", "--verbose", action="store_true")
    ap.add_argument("overrides", nargs="*", help="extra scope-ray config overrides (scope-ray side only)")
    a = ap.parse_args(argv)
    if a.steps is None:
        a.steps = 20 if a.size == "tiny" else 3
    if a.do_eval is None:
        a.do_eval = a.size == "tiny"
    return a


# --------------------------------------------------------------------------- inputs


def bootstrap_paths() -> dict[str, str]:
    from scope_ray.bootstrap.build import BootstrapOptions, bootstrap

    art = bootstrap(BootstrapOptions())
    return {"student": str(art.student_dir), "teacher": str(art.teacher_dir), "train": str(art.train_file),
            "test": str(art.test_file)}


def tiny_inputs(a: argparse.Namespace) -> dict[str, str]:
    """The embedded pair and task, copied once into the work directory.

    The bootstrap cache is shared with other work and is rebuilt (under a new key) when
    its recipe changes, so a run snapshots the build it measures and every later run of
    this script reuses that snapshot (``source.json`` says where it came from).
    """
    snap = a.work_dir / "tiny-inputs"
    if not (snap / "COMPLETE").is_file():
        if a.tiny_from:
            src = {"student": a.tiny_from / "student", "teacher": a.tiny_from / "teacher",
                   "train": a.tiny_from / "data" / "train.parquet", "test": a.tiny_from / "data" / "test.parquet"}
        else:
            src = {k: Path(v) for k, v in bootstrap_paths().items()}
        tmp = a.work_dir / ".tiny-inputs.tmp"
        shutil.rmtree(tmp, ignore_errors=True)
        (tmp / "data").mkdir(parents=True)
        shutil.copytree(src["student"], tmp / "student")
        shutil.copytree(src["teacher"], tmp / "teacher")
        shutil.copy2(src["train"], tmp / "data" / "train.parquet")
        shutil.copy2(src["test"], tmp / "data" / "test.parquet")
        root = src["student"].parent
        info = {"source": str(root)}
        for name in ("options.json", "metrics.json"):
            if (root / name).is_file():
                info[name] = json.loads((root / name).read_text())
        (tmp / "source.json").write_text(json.dumps(info, indent=1))
        (tmp / "COMPLETE").write_text("")
        shutil.rmtree(snap, ignore_errors=True)
        tmp.rename(snap)
    return {"student": str(snap / "student"), "teacher": str(snap / "teacher"),
            "train": str(snap / "data" / "train.parquet"), "test": str(snap / "data" / "test.parquet")}


def build_pair(size: str, work_dir: Path) -> dict[str, Any]:
    """Random-init student and teacher of ``SIZES[size]`` (cached), the embedded tokenizer."""
    from _common import model_spec

    from scope_ray.bootstrap.models import init_model, save_model_dir

    root = work_dir / f"models-{size}"
    meta_path = root / "meta.json"
    if meta_path.is_file():
        return json.loads(meta_path.read_text())
    tmp = work_dir / f".models-{size}.tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    meta: dict[str, Any] = {}
    for name, seed in (("student", 2), ("teacher", 1)):
        s = SIZES[size][name]
        model = init_model(model_spec(s["hidden"], s["layers"], s["heads"], s["kv_heads"], s["intermediate"]), seed=seed)
        meta[f"{name}_params"] = sum(p.numel() for p in model.parameters())
        meta[f"{name}_shape"] = s
        save_model_dir(model, tmp / name)
        del model
    meta["student"], meta["teacher"] = str(root / "student"), str(root / "teacher")
    (tmp / "meta.json").write_text(json.dumps(meta, indent=1))
    shutil.rmtree(root, ignore_errors=True)
    tmp.rename(root)
    return meta


def params_of(model_dir: str) -> int:
    from safetensors import safe_open

    n = 0
    for f in glob.glob(os.path.join(model_dir, "*.safetensors")):
        with safe_open(f, "pt") as st:
            for k in st.keys():
                n += _prod(st.get_slice(k).get_shape())
    return n


def _prod(shape: Any) -> int:
    out = 1
    for d in shape:
        out *= int(d)
    return out


def scope_overrides(a: argparse.Namespace, inp: dict[str, str], run_dir: Path) -> list[str]:
    return [
        f"algorithm.name={a.algorithm}",
        f"model.student={inp['student']}", f"model.teacher={inp['teacher']}",
        f"data.train_files=[{inp['train']}]", f"data.eval_files=[{inp['test']}]",
        f"trainer.total_steps={a.steps}", f"trainer.prompts_per_step={a.prompts_per_step}",
        f"rollout.group_size={a.group_size}", f"rollout.temperature={a.temperature}",
        f"model.max_response_tokens={a.max_response_tokens}", f"learner.lr={a.lr}",
        "trainer.eval_every=0", "trainer.eval_at_end=false",
        # a checkpoint at the last step only: the final student (hf/) to evaluate
        f"trainer.save_every={a.steps}",
        f"trainer.run_dir={run_dir}",
        *a.overrides,
    ]


def prompts_in_scope_order(a: argparse.Namespace, inp: dict[str, str], n: int) -> tuple[list[dict[str, Any]], Any]:
    """The first n prompts scope-ray's sampler visits, with its rendered token ids."""
    from transformers import AutoTokenizer

    from scope_ray.config import load_config
    from scope_ray.controller.launch import ResolvedInputs, load_prompt_items
    from scope_ray.data import PromptSampler

    cfg = load_config(None, scope_overrides(a, inp, a.work_dir / "probe"))
    tok = AutoTokenizer.from_pretrained(inp["student"])
    train, _ = load_prompt_items(cfg, ResolvedInputs(inp["student"], inp["teacher"], [inp["train"]], [inp["test"]]), tok)
    order = PromptSampler(train, seed=cfg.trainer.seed).epoch_order(0)
    if n > len(order):
        raise SystemExit(f"{n} prompts needed, the training file has {len(order)}")
    out = []
    for i in order[:n]:
        ids = list(train[int(i)].prompt_ids)
        out.append({"text": tok.decode(ids, skip_special_tokens=False), "ids": ids, "uid": train[int(i)].uid})
    return out, cfg


# --------------------------------------------------------------------------- sides


def run_logged(cmd: list[str], log: Path, env: dict[str, str] | None = None) -> tuple[float, int]:
    log.parent.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    with log.open("w") as fh:
        rc = subprocess.run(cmd, stdout=fh, stderr=subprocess.STDOUT, cwd=ROOT, env=env).returncode
    return time.perf_counter() - t0, rc


def run_scope(a: argparse.Namespace, inp: dict[str, str], out_dir: Path) -> dict[str, Any]:
    run_dir = out_dir / "scope-run"
    shutil.rmtree(run_dir, ignore_errors=True)
    cmd = [str(SCOPE_BIN), "train", *scope_overrides(a, inp, run_dir)]
    load0 = machine_info()["loadavg"]
    wall, rc = run_logged(cmd, out_dir / "scope.log")
    load1 = machine_info()["loadavg"]
    if rc != 0:
        raise SystemExit(f"scope-ray side failed (rc {rc}); see {out_dir / 'scope.log'}")
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines() if line.strip()]
    steps = [r for r in rows if "time/step_s" in r]
    finals = sorted(glob.glob(str(run_dir / "checkpoints" / "step_*" / "hf")))
    steps_out = [{"step": int(r["step"]), "step_s": float(r["time/step_s"]),
                  "generate_s": float(r.get("time/generate_s", float("nan"))),
                  "rollout_tokens": int(r["rollout/tokens"]),
                  "train_s": float(r.get("time/train_s", float("nan"))),
                  "teacher_scored_tokens": float(r.get("teacher/scored_tokens", float("nan"))),
                  "loss": float(r.get("learner/loss", float("nan")))} for r in steps]
    return {"side": "scope", "cmd": cmd, "wall_s": wall, "load": [load0, load1], "steps": steps_out,
            "final_model": finals[-1] if finals else None, "run_dir": str(run_dir)}


def run_trl(a: argparse.Namespace, inp: dict[str, str], prompts: list[dict[str, Any]], scope_cfg: Any,
            out_dir: Path) -> dict[str, Any]:
    lr = scope_cfg.learner
    spec = {
        "student": inp["student"], "teacher": inp["teacher"], "prompts": prompts,
        "steps": a.steps, "prompts_per_step": a.prompts_per_step, "group_size": a.group_size,
        "lr": lr.lr, "weight_decay": lr.weight_decay, "betas": list(lr.betas), "eps": lr.eps,
        "grad_clip": lr.grad_clip, "temperature": a.temperature, "max_response_tokens": a.max_response_tokens,
        "seed": scope_cfg.trainer.seed, "torch_threads": a.trl_threads, "output_dir": str(out_dir / "trl-run"),
    }
    shutil.rmtree(out_dir / "trl-run", ignore_errors=True)
    out_dir.mkdir(parents=True, exist_ok=True)
    spec_path, res_path = out_dir / "trl-spec.json", out_dir / "trl-result.json"
    spec_path.write_text(json.dumps(spec))
    res_path.unlink(missing_ok=True)
    cmd = [str(TRL_PY), str(BENCH_DIR / "trl_side.py"), str(spec_path), str(res_path)]
    env = dict(os.environ, TOKENIZERS_PARALLELISM="false", HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1")
    load0 = machine_info()["loadavg"]
    wall, rc = run_logged(cmd, out_dir / "trl.log", env)
    load1 = machine_info()["loadavg"]
    if rc != 0 or not res_path.is_file():
        raise SystemExit(f"TRL side failed (rc {rc}); see {out_dir / 'trl.log'}")
    res = json.loads(res_path.read_text())
    res.update({"cmd": cmd, "wall_s": wall, "load": [load0, load1]})
    return res


def evaluate(model_dir: str, test: str, k: int, log: Path) -> dict[str, Any]:
    cmd = [str(SCOPE_BIN), "eval", "--model", model_dir, "--data", test, "--k", str(k), "--json"]
    log.parent.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    with log.open("w") as err:
        proc = subprocess.run(cmd, stdout=subprocess.PIPE, stderr=err, text=True, cwd=ROOT)
    if proc.returncode != 0:
        raise SystemExit(f"eval of {model_dir} failed (rc {proc.returncode}); see {log}")
    lines = [ln for ln in proc.stdout.splitlines() if ln.strip().startswith("{")]
    res = json.loads(lines[-1])
    return {"avg": float(res[f"avg@{k}"]), "pass": float(res[f"pass@{k}"]), "eval_s": time.perf_counter() - t0,
            "cmd": cmd}


# --------------------------------------------------------------------------- summary


def summarise(side: dict[str, Any], skip_first: int = 1) -> dict[str, float]:
    st = side["steps"]
    steady = st[skip_first:] or st
    tokens = sum(s["rollout_tokens"] for s in st)
    step_s = sum(s["step_s"] for s in st)
    return {
        "wall_s": side["wall_s"],
        "steps_s": step_s,
        "rollout_tokens": tokens,
        "tokens_per_s_steps": tokens / max(step_s, 1e-9),
        "tokens_per_s_wall": tokens / max(side["wall_s"], 1e-9),
        "steady_tokens_per_s": sum(s["rollout_tokens"] for s in steady) / max(sum(s["step_s"] for s in steady), 1e-9),
        "mean_step_s": step_s / max(len(st), 1),
        "generate_s": sum(s.get("generate_s", 0.0) for s in st),
        "mean_response_tokens": tokens / max(sum(s.get("rollouts", 0) for s in st), 1) if "rollouts" in st[0] else
        float("nan"),
    }


def fmt_table(rows: list[tuple[str, ...]]) -> str:
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    out = []
    for j, r in enumerate(rows):
        out.append("  ".join(c.rjust(w) if i else c.ljust(w) for i, (c, w) in enumerate(zip(r, widths))))
        if j == 0:
            out.append("  ".join("-" * w for w in widths))
    return "\n".join(out)


def main(argv: list[str] | None = None) -> int:
    a = parse_args(argv)
    setup_logging(a.verbose)
    if not TRL_PY.exists():
        raise SystemExit("no .venv-trl: run `bash bench/trl_setup.sh` first")
    a.work_dir = a.work_dir.resolve()
    a.work_dir.mkdir(parents=True, exist_ok=True)
    tiny = tiny_inputs(a)
    if a.size == "tiny":
        inp = dict(tiny)
        meta = {"student_params": params_of(inp["student"]), "teacher_params": params_of(inp["teacher"]),
                "source": json.loads((a.work_dir / "tiny-inputs" / "source.json").read_text())}
    else:
        meta = build_pair(a.size, a.work_dir)
        inp = {"student": meta["student"], "teacher": meta["teacher"], "train": tiny["train"], "test": tiny["test"]}
    n_prompts = a.steps * a.prompts_per_step
    prompts, scope_cfg = prompts_in_scope_order(a, inp, n_prompts)
    trl_versions = json.loads((ROOT / ".venv-trl" / "versions.json").read_text())
    print(f"[trl_peer] size {a.size}: student {meta['student_params'] / 1e6:.2f}M, teacher "
          f"{meta['teacher_params'] / 1e6:.2f}M params; {a.steps} steps x {a.prompts_per_step} prompts x "
          f"{a.group_size} rollouts, lr {a.lr}; {machine_info()['uptime']}", flush=True)

    reps: list[dict[str, Any]] = []
    for r in range(a.reps):
        order = ["trl", "scope"] if (a.first == "trl") == (r % 2 == 0) else ["scope", "trl"]
        order = [x for x in order if x in a.sides]
        rep: dict[str, Any] = {"rep": r, "order": order}
        for side in order:
            out_dir = a.work_dir / f"{a.size}-rep{r}"
            print(f"[trl_peer] rep {r}: {side} side ... ({machine_info()['uptime']})", flush=True)
            res = run_scope(a, inp, out_dir) if side == "scope" else run_trl(a, inp, prompts, scope_cfg, out_dir)
            res["summary"] = summarise(res)
            print(f"[trl_peer]   {side}: wall {res['wall_s']:.1f}s, steps {res['summary']['steps_s']:.1f}s, "
                  f"{res['summary']['tokens_per_s_steps']:.0f} rollout tokens/s", flush=True)
            if a.do_eval:
                res["eval"] = evaluate(res["final_model"], inp["test"], a.eval_k, out_dir / f"eval-{side}.log")
                print(f"[trl_peer]   {side}: avg@{a.eval_k} {res['eval']['avg']:.3f}, pass@{a.eval_k} "
                      f"{res['eval']['pass']:.3f}", flush=True)
            rep[side] = res
        reps.append(rep)

    initial = None
    if a.do_eval:
        initial = evaluate(inp["student"], inp["test"], a.eval_k, a.work_dir / f"{a.size}-eval-initial.log")
        print(f"[trl_peer] initial student: avg@{a.eval_k} {initial['avg']:.3f}, pass@{a.eval_k} {initial['pass']:.3f}")

    k = a.eval_k
    head = ("rep", "side", "wall s", "step s (sum)", "rollout tok", "tok/s (steps)", "tok/s (wall)",
            f"avg@{k}", f"pass@{k}")
    rows: list[tuple[str, ...]] = [head]
    for rep in reps:
        for side in ("trl", "scope"):
            if side not in rep:
                continue
            s = rep[side]["summary"]
            ev = rep[side].get("eval")
            rows.append((str(rep["rep"]), "TRL" if side == "trl" else f"scope-ray ({a.algorithm})",
                         f"{s['wall_s']:.1f}", f"{s['steps_s']:.1f}", str(s["rollout_tokens"]),
                         f"{s['tokens_per_s_steps']:.0f}", f"{s['tokens_per_s_wall']:.0f}",
                         f"{ev['avg']:.3f}" if ev else "-", f"{ev['pass']:.3f}" if ev else "-"))
        if "trl" not in rep or "scope" not in rep:
            continue
        t, sc = rep["trl"]["summary"], rep["scope"]["summary"]
        rows.append((str(rep["rep"]), "scope-ray / TRL", f"{sc['wall_s'] / t['wall_s']:.2f}",
                     f"{sc['steps_s'] / t['steps_s']:.2f}", "", f"{sc['tokens_per_s_steps'] / t['tokens_per_s_steps']:.2f}",
                     f"{sc['tokens_per_s_wall'] / t['tokens_per_s_wall']:.2f}",
                     f"{rep['scope']['eval']['avg'] - rep['trl']['eval']['avg']:+.3f}" if a.do_eval else "-", ""))
    if initial:
        rows.append(("-", "initial student", "", "", "", "", "", f"{initial['avg']:.3f}", f"{initial['pass']:.3f}"))
    table = fmt_table(rows)
    print(table)

    payload = {
        "command": " ".join([sys.executable, *sys.argv]),
        "git": subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True, cwd=ROOT).stdout.strip(),
        "machine": machine_info(),
        "size": a.size, "models": meta, "inputs": inp,
        "settings": {"steps": a.steps, "prompts_per_step": a.prompts_per_step, "group_size": a.group_size,
                     "max_response_tokens": a.max_response_tokens, "temperature": a.temperature, "lr": a.lr,
                     "algorithm": a.algorithm, "reps": a.reps, "eval_k": k, "trl_threads": a.trl_threads,
                     "scope_overrides": scope_overrides(a, inp, Path("<run_dir>"))},
        "trl_versions": trl_versions,
        "prompt_uids": [p["uid"] for p in prompts],
        "initial_eval": initial,
        "reps": reps,
        "table": table,
    }
    out = a.out or RESULTS_DIR / f"trl_peer_{a.size}.json"
    write_result(out.stem, payload, out)
    out.with_suffix(".txt").write_text(table + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
