"""The paper's table, small-scale: every arm trained with the same budget, over seeds.

    .venv/bin/python experiments/paper_table.py                          # main table, seeds 0,1,2
    .venv/bin/python experiments/paper_table.py --sweep                  # scope: tau x normalize
    .venv/bin/python experiments/paper_table.py --staleness              # scope: max_staleness 0/1/2/4
    .venv/bin/python experiments/paper_table.py --lora                   # scope: LoRA vs full fine-tuning
    .venv/bin/python experiments/paper_table.py --steps 30 --prompts-per-step 16 --eval-every 10 \\
        --set learner.lr=1e-4 --arms scope,opd,grpo --seeds 0,1

Each arm/seed is one ``scope-ray train`` subprocess (one at a time) on the recipe
``--config`` (default ``launch/configs/tiny.yaml``, the embedded default), with
``trainer.seed=<s>``, ``trainer.run_dir=<out>/<arm>-s<seed>`` and ``trainer.save_every=0``.
Override order: budget flags, then ``--set`` (every arm), then the arm's own keys (an arm's
key wins over ``--set``; a warning names the collision), then the per-run keys.

After each run the driver reads ``<run_dir>/metrics.jsonl``: the first eval row (step 0)
is the start, the eval row at the last step is the final. A run dir that already has that
final row is skipped, so a killed sweep continues where it stopped; an incomplete run dir
is deleted and run again (``save_every=0`` leaves no checkpoint to resume from).

Writes ``<results>/paper_table{,_sweep,_staleness}.json`` and ``.md`` (mean +- sample std over seeds
of final held-out avg@K / pass@K, their change from the start, wall seconds) and
``_curves.png`` (eval avg@K vs step, mean over seeds), and says whether SCOPE > OPD > GRPO
holds on the final avg@K means.
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import re
import shutil
import statistics
import subprocess
import sys
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import yaml

# The machine figures every result records come from the benchmarks' shared helpers.
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "bench"))
from _common import machine_info  # noqa: E402

logger = logging.getLogger("experiments.paper_table")

REPO = Path(__file__).resolve().parents[1]
RESULTS_DIR = Path(__file__).resolve().parent / "results"
DEFAULT_CONFIG = REPO / "launch" / "configs" / "tiny.yaml"
DEFAULT_OUT = REPO / "runs" / "paper_table"
DRIVER_FILE = "paper_table_run.json"  # written into each run dir after a successful run
EVAL_KEY = re.compile(r"^eval/avg@(\d+)$")  # top-level only, not eval/<source>/avg@K


# --------------------------------------------------------------------------- arms


@dataclass(frozen=True)
class Arm:
    name: str
    overrides: tuple[str, ...]
    note: str = ""


MAIN_ARMS: tuple[Arm, ...] = (
    Arm("scope", ("algorithm.name=scope",)),
    Arm("opd", ("algorithm.name=opd", "rollout.group_size=8"), "G=8"),
    Arm("opd-g1", ("algorithm.name=opd", "rollout.group_size=1"),
        "G=1, same prompts/step as G=8: 8x fewer rollouts per step"),
    Arm("grpo", ("algorithm.name=grpo",)),
    Arm("scope-no-teacher-weight", ("algorithm.name=scope-no-teacher-weight",)),
    Arm("scope-no-student-weight", ("algorithm.name=scope-no-student-weight",)),
    Arm("scope-reversed-teacher", ("algorithm.name=scope-reversed-teacher",)),
    Arm("scope-no-weight", ("algorithm.name=scope-no-weight",)),
    Arm("scope-topk", ("algorithm.name=scope", "algorithm.distill=topk", "algorithm.topk=20"),
        "incorrect path: forward KL over the teacher's top 20"),
    # The student samples (and is scored) at rollout.temperature 0.6; the teacher scores
    # at 1.0 by default: this arm scores it at the rollout temperature instead.
    Arm("scope-teacher-t0.6", ("algorithm.name=scope", "teacher.temperature=0.6"), "teacher scored at T 0.6"),
)

SWEEP_ARMS: tuple[Arm, ...] = tuple(
    Arm(f"scope-tau{tau}-{norm}", ("algorithm.name=scope", f"algorithm.tau={tau}", f"algorithm.normalize={norm}"))
    for norm in ("sum", "mean") for tau in ("0.5", "1", "2")
)


# Does generating ahead of the learner cost accuracy? Same budget, rollouts up to k
# policy versions old (rho corrects with the engine's log-probs).
STALENESS_ARMS: tuple[Arm, ...] = tuple(
    Arm(f"scope-s{k}", ("algorithm.name=scope", f"trainer.max_staleness={k}"), f"max_staleness {k}")
    for k in (0, 1, 2, 4)
) + tuple(
    # rollout.partial_rollouts: a quarter more groups in flight, the stragglers paused and
    # finished in the next stream (every call of a worker decoding together, so they are
    # paused mid-sample rather than before they start).
    Arm(f"scope-s{k}-partial", ("algorithm.name=scope", f"trainer.max_staleness={k}", "rollout.partial_rollouts=true",
                                "rollout.max_calls_in_flight=0"), f"max_staleness {k}, partial rollouts")
    for k in (1, 2, 4)
)


# LoRA students (learner.lora) against full fine-tuning, each over a few learning rates:
# LoRA's best lr is usually ~10x full fine-tuning's.
LORA_ARMS: tuple[Arm, ...] = (
    *(Arm(f"full-lr{lr}", ("algorithm.name=scope", f"learner.lr={lr}"), "full fine-tuning") for lr in ("5e-5", "1e-4", "2e-4", "4e-4")),
    *(Arm(f"lora-r8-lr{lr}", ("algorithm.name=scope", "learner.lora.rank=8", "learner.lora.alpha=16", f"learner.lr={lr}"),
          "LoRA rank 8, alpha 16, all linear layers") for lr in ("2.5e-4", "5e-4", "1e-3", "2e-3")),
)


def select_arms(arms: Sequence[Arm], wanted: str | None) -> list[Arm]:
    """The arms named in ``wanted`` (comma list, in the table's order); all if None."""
    if not wanted:
        return list(arms)
    names = [n.strip() for n in wanted.split(",") if n.strip()]
    known = {a.name for a in arms}
    unknown = [n for n in names if n not in known]
    if unknown:
        raise SystemExit(f"unknown arm(s) {unknown}; this table has {sorted(known)}")
    return [a for a in arms if a.name in names]


# --------------------------------------------------------------------------- reading runs


@dataclass
class EvalPoint:
    step: int
    avg: float
    pass_: float


@dataclass
class RunResult:
    arm: str
    seed: int
    run_dir: str
    k: int
    start_avg: float
    start_pass: float
    final_avg: float
    final_pass: float
    wall_s: float | None
    curve: list[EvalPoint] = field(default_factory=list)


def read_metrics(path: Path) -> list[dict[str, Any]]:
    """Rows of a metrics.jsonl; a torn (killed mid-write) line is skipped."""
    if not path.is_file():
        return []
    rows = []
    for line in path.read_text().splitlines():
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except ValueError:
            continue
        if isinstance(row, dict) and "step" in row:
            rows.append(row)
    return rows


def eval_k(rows: Sequence[dict[str, Any]]) -> int | None:
    """K of the run's held-out eval keys (``eval/avg@K``), from the first eval row."""
    for row in rows:
        for key in row:
            m = EVAL_KEY.match(key)
            if m:
                return int(m.group(1))
    return None


def eval_curve(rows: Sequence[dict[str, Any]], k: int) -> list[EvalPoint]:
    """Eval rows as (step, avg@K, pass@K), in step order; a replayed step keeps its last row."""
    by_step: dict[int, EvalPoint] = {}
    for row in rows:
        if f"eval/avg@{k}" in row and f"eval/pass@{k}" in row:
            by_step[int(row["step"])] = EvalPoint(int(row["step"]), float(row[f"eval/avg@{k}"]),
                                                  float(row[f"eval/pass@{k}"]))
    return [by_step[s] for s in sorted(by_step)]


def load_run(run_dir: Path, arm: str, seed: int, steps: int) -> RunResult | None:
    """The run's result if it is complete (an eval row at step 0 and at ``steps``), else None."""
    rows = read_metrics(run_dir / "metrics.jsonl")
    k = eval_k(rows)
    if k is None:
        return None
    curve = eval_curve(rows, k)
    if not curve or curve[0].step != 0 or curve[-1].step != steps:
        return None
    wall: float | None = None
    info = run_dir / DRIVER_FILE
    if info.is_file():
        try:
            wall = float(json.loads(info.read_text())["wall_s"])
        except (ValueError, KeyError, TypeError):
            wall = None
    return RunResult(arm, seed, str(run_dir), k, curve[0].avg, curve[0].pass_, curve[-1].avg, curve[-1].pass_,
                     wall, curve)


# --------------------------------------------------------------------------- aggregation


def mean_std(xs: Sequence[float]) -> tuple[float, float]:
    """Mean and sample standard deviation (nan with fewer than 2 values; both nan for none)."""
    vals = [float(x) for x in xs if x is not None and math.isfinite(float(x))]
    if not vals:
        return math.nan, math.nan
    return statistics.fmean(vals), (statistics.stdev(vals) if len(vals) > 1 else math.nan)


@dataclass
class ArmSummary:
    arm: str
    note: str
    seeds: list[int]
    k: int
    start_avg: tuple[float, float]
    final_avg: tuple[float, float]
    delta_avg: tuple[float, float]
    start_pass: tuple[float, float]
    final_pass: tuple[float, float]
    delta_pass: tuple[float, float]
    wall_s: tuple[float, float]
    curve: list[tuple[int, float]]  # (step, mean avg@K over the seeds that have the step)


def summarize_arm(arm: str, runs: Sequence[RunResult], note: str = "") -> ArmSummary:
    """Mean +- std over seeds of one arm's runs (all runs must be of this arm)."""
    if not runs:
        raise ValueError(f"{arm}: no runs to summarise")
    by_step: dict[int, list[float]] = {}
    for r in runs:
        for p in r.curve:
            by_step.setdefault(p.step, []).append(p.avg)
    return ArmSummary(
        arm=arm, note=note, seeds=sorted(r.seed for r in runs), k=runs[0].k,
        start_avg=mean_std([r.start_avg for r in runs]),
        final_avg=mean_std([r.final_avg for r in runs]),
        delta_avg=mean_std([r.final_avg - r.start_avg for r in runs]),
        start_pass=mean_std([r.start_pass for r in runs]),
        final_pass=mean_std([r.final_pass for r in runs]),
        delta_pass=mean_std([r.final_pass - r.start_pass for r in runs]),
        wall_s=mean_std([r.wall_s for r in runs if r.wall_s is not None]),
        curve=[(s, statistics.fmean(v)) for s, v in sorted(by_step.items())],
    )


def summarize(runs: Sequence[RunResult], arms: Sequence[Arm]) -> list[ArmSummary]:
    """One summary per arm that has at least one complete run, in the arms' order."""
    return [summarize_arm(a.name, [r for r in runs if r.arm == a.name], a.note)
            for a in arms if any(r.arm == a.name for r in runs)]


@dataclass
class Ordering:
    holds: bool | None  # None: an arm is missing
    beyond_spread: bool | None  # None: fewer than 2 seeds somewhere (no spread to compare)
    line: str


def check_ordering(summaries: Sequence[ArmSummary], order: Sequence[str] = ("scope", "opd", "grpo")) -> Ordering:
    """Whether final avg@K means are strictly decreasing along ``order``, and whether each
    adjacent gap exceeds the seed spread (gap > std_a + std_b, i.e. the mean +- std bars
    do not overlap)."""
    by = {s.arm: s for s in summaries}
    chain = " > ".join(order)
    missing = [a for a in order if a not in by]
    if missing:
        return Ordering(None, None, f"ordering {chain}: not checked (no complete runs of {', '.join(missing)})")
    k = by[order[0]].k
    means = [by[a].final_avg[0] for a in order]
    stds = [by[a].final_avg[1] for a in order]
    holds = all(a > b for a, b in zip(means, means[1:]))
    shown = ", ".join(f"{a} {100 * m:.1f}" for a, m in zip(order, means))
    if any(math.isnan(s) for s in stds):
        return Ordering(holds, None, f"ordering {chain} on final avg@{k} means: {'holds' if holds else 'does NOT hold'} "
                                     f"({shown}); seed spread unknown (fewer than 2 seeds)")
    gaps = [(f"{a}-{b}", ma - mb, sa + sb) for a, b, ma, mb, sa, sb in
            zip(order, order[1:], means, means[1:], stds, stds[1:])]
    beyond = holds and all(g > s for _, g, s in gaps)
    detail = "; ".join(f"{n} {100 * g:+.1f} vs spread {100 * s:.1f}" for n, g, s in gaps)
    if not holds:
        verdict = "does NOT hold"
    elif beyond:
        verdict = "holds, and every gap exceeds the seed spread"
    else:
        verdict = "holds, but not every gap exceeds the seed spread"
    return Ordering(holds, beyond, f"ordering {chain} on final avg@{k} means: {verdict} "
                                   f"({shown}; gaps {detail}; spread = std_a + std_b, points)")


# --------------------------------------------------------------------------- rendering


def _pm(ms: tuple[float, float], scale: float = 100.0, signed: bool = False, digits: int = 1) -> str:
    m, s = ms
    if math.isnan(m):
        return "-"
    head = f"{scale * m:+.{digits}f}" if signed else f"{scale * m:.{digits}f}"
    return head if math.isnan(s) else f"{head} ± {scale * s:.{digits}f}"


def render_markdown(summaries: Sequence[ArmSummary], ordering: Ordering | None = None) -> str:
    """The table (percent points; mean ± sample std over seeds)."""
    if not summaries:
        return "(no complete runs)\n"
    k = summaries[0].k
    head = (f"| arm | seeds | start avg@{k} | final avg@{k} | Δ avg@{k} | final pass@{k} | Δ pass@{k} "
            "| wall s | note |\n|---|---|---|---|---|---|---|---|---|\n")
    rows = "".join(
        f"| {s.arm} | {len(s.seeds)} | {_pm(s.start_avg)} | {_pm(s.final_avg)} | {_pm(s.delta_avg, signed=True)} "
        f"| {_pm(s.final_pass)} | {_pm(s.delta_pass, signed=True)} | {_pm(s.wall_s, scale=1.0, digits=0)} "
        f"| {s.note} |\n"
        for s in summaries
    )
    foot = f"\nHeld-out avg@{k} / pass@{k} in percent, mean ± sample std over seeds; Δ = final - start per seed.\n"
    if ordering is not None:
        foot += f"\n{ordering.line}\n"
    return head + rows + foot


def plot_curves(summaries: Sequence[ArmSummary], out: Path) -> Path | None:
    """Eval avg@K vs step, one line per arm (mean over seeds); None without matplotlib."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
        import matplotlib.ticker
    except ImportError:
        print("matplotlib is not installed: no curves PNG", file=sys.stderr)
        return None
    if not summaries:
        return None
    fig, ax = plt.subplots(figsize=(7, 4.5))
    for s in summaries:
        xs, ys = zip(*s.curve)
        ax.plot(xs, [100 * y for y in ys], marker="o", label=f"{s.arm} (n={len(s.seeds)})")
    ax.xaxis.set_major_locator(matplotlib.ticker.MaxNLocator(integer=True))
    ax.set_xlabel("step")
    ax.set_ylabel(f"held-out avg@{summaries[0].k} (%)")
    ax.set_title("eval avg@K vs step, mean over seeds")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=120)
    plt.close(fig)
    return out


# --------------------------------------------------------------------------- running


@dataclass(frozen=True)
class Budget:
    steps: int
    prompts_per_step: int | None
    eval_every: int | None
    extra: tuple[str, ...]  # --set key=value, every arm

    def overrides(self) -> list[str]:
        out = [f"trainer.total_steps={self.steps}"]
        if self.prompts_per_step is not None:
            out.append(f"trainer.prompts_per_step={self.prompts_per_step}")
        if self.eval_every is not None:
            out.append(f"trainer.eval_every={self.eval_every}")
        return [*out, *self.extra]


def default_steps(config: Path) -> int:
    """trainer.total_steps of the recipe (the config default if it does not set it)."""
    from scope_ray.config import TrainerConfig

    data = yaml.safe_load(config.read_text()) or {}
    return int((data.get("trainer") or {}).get("total_steps", TrainerConfig.total_steps))


def _key(override: str) -> str:
    return override.split("=", 1)[0].strip()


def run_overrides(arm: Arm, seed: int, budget: Budget, run_dir: Path) -> list[str]:
    """Budget, then --set, then the arm's keys, then the per-run keys (later wins)."""
    clash = {_key(o) for o in budget.extra} & {_key(o) for o in arm.overrides}
    if clash:
        logger.warning("%s: the arm's own %s override(s) --set", arm.name, sorted(clash))
    return [*budget.overrides(), *arm.overrides, f"trainer.seed={seed}", f"trainer.run_dir={run_dir}",
            "trainer.save_every=0", "trainer.eval_at_end=true"]


def train_once(exe: Path, config: Path, overrides: list[str], run_dir: Path) -> tuple[int, float]:
    """One ``scope-ray train`` subprocess (output into run_dir/driver.log); (rc, wall s)."""
    shutil.rmtree(run_dir, ignore_errors=True)  # an incomplete run restarts from scratch
    run_dir.mkdir(parents=True)
    cmd = [str(exe), "train", "--config", str(config), *overrides]
    t0 = time.perf_counter()
    with open(run_dir / "driver.log", "w") as log:
        rc = subprocess.run(cmd, cwd=REPO, stdout=log, stderr=subprocess.STDOUT, check=False).returncode
    wall = time.perf_counter() - t0
    (run_dir / DRIVER_FILE).write_text(json.dumps({"cmd": cmd, "rc": rc, "wall_s": wall,
                                                   "load": machine_info()["loadavg"]}, indent=1) + "\n")
    return rc, wall


def run_all(arms: Sequence[Arm], seeds: Sequence[int], budget: Budget, out: Path, exe: Path,
            config: Path) -> tuple[list[RunResult], list[str]]:
    """Every arm x seed, one at a time, skipping complete ones; (results, failures)."""
    results: list[RunResult] = []
    failures: list[str] = []
    total = len(arms) * len(seeds)
    n = 0
    for seed in seeds:  # all arms of seed 0 first: a partial sweep still compares every arm
        for arm in arms:
            n += 1
            run_dir = out / f"{arm.name}-s{seed}"
            done = load_run(run_dir, arm.name, seed, budget.steps)
            if done is not None:
                print(f"[{n}/{total}] {arm.name} seed {seed}: complete in {run_dir}, skipped", flush=True)
                results.append(done)
                continue
            print(f"[{n}/{total}] {arm.name} seed {seed}: running ({budget.steps} steps) ...", flush=True)
            rc, wall = train_once(exe, config, run_overrides(arm, seed, budget, run_dir), run_dir)
            got = load_run(run_dir, arm.name, seed, budget.steps)
            if rc != 0 or got is None:
                failures.append(f"{arm.name}-s{seed}")
                print(f"    FAILED (rc {rc}, {wall:.0f} s): see {run_dir / 'driver.log'}", flush=True)
                continue
            results.append(got)
            print(f"    avg@{got.k} {100 * got.start_avg:.1f} -> {100 * got.final_avg:.1f}, "
                  f"pass@{got.k} {100 * got.start_pass:.1f} -> {100 * got.final_pass:.1f}, {wall:.0f} s", flush=True)
    return results, failures


# --------------------------------------------------------------------------- main


def _no_nan(obj: Any) -> Any:
    """NaN (no spread with one seed) as null, so the JSON is strict."""
    if isinstance(obj, float) and math.isnan(obj):
        return None
    if isinstance(obj, dict):
        return {k: _no_nan(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_no_nan(v) for v in obj]
    return obj


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    table_kind = ap.add_mutually_exclusive_group()
    table_kind.add_argument("--sweep", action="store_true", help="the tau x normalize table of scope instead of the main one")
    table_kind.add_argument("--staleness", action="store_true",
                            help="scope at trainer.max_staleness 0, 1, 2 and 4, and with partial rollouts at 1, 2 "
                                 "and 4, instead of the main table")
    table_kind.add_argument("--lora", action="store_true",
                            help="scope with LoRA students (rank 8) and full fine-tuning over learning rates")
    ap.add_argument("--arms", help="comma list of arms to run (default: every arm of the table)")
    ap.add_argument("--seeds", default="0,1,2", help="comma list of trainer.seed values (default 0,1,2)")
    ap.add_argument("--steps", type=int, help="trainer.total_steps (default: the recipe's)")
    ap.add_argument("--prompts-per-step", type=int, help="trainer.prompts_per_step (default: the recipe's)")
    ap.add_argument("--eval-every", type=int, help="trainer.eval_every (default: the recipe's)")
    ap.add_argument("--set", dest="extra", action="append", default=[], metavar="KEY=VALUE",
                    help="dotted override for every arm (repeatable), e.g. --set learner.lr=1e-4")
    ap.add_argument("--config", type=Path, default=DEFAULT_CONFIG, help="recipe YAML (default launch/configs/tiny.yaml)")
    ap.add_argument("--out", type=Path, default=DEFAULT_OUT, help="run directories go to OUT/<arm>-s<seed>")
    ap.add_argument("--results", type=Path, default=RESULTS_DIR, help="where the JSON/MD/PNG go (default experiments/results)")
    ap.add_argument("--scope-ray", type=Path, default=REPO / ".venv" / "bin" / "scope-ray", help="the console script")
    args = ap.parse_args(argv)
    bad = [s for s in args.extra if "=" not in s]
    if bad:
        ap.error(f"--set takes key=value, got {bad}")
    return args


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    args = parse_args(argv)
    table = SWEEP_ARMS if args.sweep else STALENESS_ARMS if args.staleness else LORA_ARMS if args.lora else MAIN_ARMS
    arms = select_arms(table, args.arms)
    seeds = [int(s) for s in args.seeds.split(",") if s.strip()]
    budget = Budget(args.steps if args.steps is not None else default_steps(args.config), args.prompts_per_step,
                    args.eval_every, tuple(args.extra))
    name = ("paper_table_sweep" if args.sweep else "paper_table_staleness" if args.staleness
            else "paper_table_lora" if args.lora else "paper_table")
    print(f"{name}: {len(arms)} arms x seeds {seeds}, {budget.steps} steps each, overrides {budget.overrides()}, "
          f"runs in {args.out}", flush=True)
    if any(a.name == "opd-g1" for a in arms):
        print("note: opd-g1 samples 1 rollout per prompt with the same prompts per step as G=8: "
              "8x fewer rollouts (and teacher tokens) per step", flush=True)
    machine_before = machine_info()
    t0 = time.perf_counter()
    results, failures = run_all(arms, seeds, budget, args.out, args.scope_ray, args.config)
    summaries = summarize(results, arms)
    ordering = None if args.sweep or args.staleness or args.lora else check_ordering(summaries)
    md = (f"{len(seeds)} seed(s) {seeds}, `--config {args.config.name}`, overrides for every arm: "
          f"`{' '.join(budget.overrides())}`\n\n" + render_markdown(summaries, ordering))
    args.results.mkdir(parents=True, exist_ok=True)
    (args.results / f"{name}.md").write_text(md)
    payload = {
        "command": [sys.executable, *sys.argv], "config": str(args.config), "budget": asdict(budget),
        "base_overrides": budget.overrides(), "arms": [asdict(a) for a in arms], "seeds": seeds,
        "machine_before": machine_before, "machine_after": machine_info(),
        "driver_wall_s": time.perf_counter() - t0, "failures": failures,
        "ordering": asdict(ordering) if ordering else None,
        "summary": [asdict(s) for s in summaries], "runs": [asdict(r) for r in results],
    }
    (args.results / f"{name}.json").write_text(json.dumps(_no_nan(payload), indent=1) + "\n")
    png = plot_curves(summaries, args.results / f"{name}_curves.png")
    print()
    print(md, end="")
    print(f"\nwrote {args.results / (name + '.json')}, {args.results / (name + '.md')}" + (f", {png}" if png else ""))
    if failures:
        print(f"failed runs: {', '.join(failures)}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
