"""experiments/paper_table.py's pure helpers on synthetic metrics.jsonl files: which runs count
as complete (resume), aggregation over seeds, the ordering check, the markdown table.
No Ray, no training."""

from __future__ import annotations

import json
import math
import sys
from pathlib import Path

import pytest

from scope_ray.config import TrainerConfig

EXPERIMENTS = Path(__file__).resolve().parents[2] / "experiments"
sys.path.insert(0, str(EXPERIMENTS))

import paper_table as pt  # noqa: E402


def write_run(run_dir: Path, evals: dict[int, tuple[float, float]], *, steps: int, k: int = 8,
              wall_s: float | None = None, torn: bool = False) -> Path:
    """A metrics.jsonl like the trainer's: a training row per step, eval keys on the
    eval rows (step 0 has only eval keys), optionally a torn last line."""
    run_dir.mkdir(parents=True, exist_ok=True)
    rows = []
    for step in range(steps + 1):
        row: dict = {"step": step} if step == 0 else {"step": step, "rollout/accuracy": 0.1, "learner/loss": 1.0}
        if step in evals:
            a, p = evals[step]
            row.update({f"eval/avg@{k}": a, f"eval/pass@{k}": p, f"eval/synth/avg@{k}": 0.0})
        if step == 0 and step not in evals:
            continue
        rows.append(json.dumps(row))
    text = "\n".join(rows) + "\n" + ('{"step": 99, "eval/av' if torn else "")
    (run_dir / "metrics.jsonl").write_text(text)
    if wall_s is not None:
        (run_dir / pt.DRIVER_FILE).write_text(json.dumps({"wall_s": wall_s, "rc": 0}))
    return run_dir


def test_complete_run_reads_start_final_and_curve(tmp_path: Path) -> None:
    d = write_run(tmp_path / "scope-s0", {0: (0.10, 0.40), 5: (0.15, 0.50), 10: (0.20, 0.60)}, steps=10,
                  wall_s=42.0, torn=True)
    r = pt.load_run(d, "scope", 0, steps=10)
    assert r is not None
    assert (r.k, r.start_avg, r.start_pass, r.final_avg, r.final_pass, r.wall_s) == (8, 0.10, 0.40, 0.20, 0.60, 42.0)
    assert [p.step for p in r.curve] == [0, 5, 10]


def test_incomplete_or_other_budget_is_not_complete(tmp_path: Path) -> None:
    killed = write_run(tmp_path / "a", {0: (0.1, 0.4)}, steps=3)  # killed before the final eval
    assert pt.load_run(killed, "scope", 0, steps=10) is None
    other = write_run(tmp_path / "b", {0: (0.1, 0.4), 6: (0.2, 0.5)}, steps=6)  # a shorter budget
    assert pt.load_run(other, "scope", 0, steps=10) is None
    assert pt.load_run(tmp_path / "missing", "scope", 0, steps=10) is None
    no_start = write_run(tmp_path / "c", {10: (0.2, 0.5)}, steps=10)
    assert pt.load_run(no_start, "scope", 0, steps=10) is None


def test_eval_k_is_read_from_the_keys(tmp_path: Path) -> None:
    d = write_run(tmp_path / "k2", {0: (0.0, 0.0), 2: (0.5, 1.0)}, steps=2, k=2)
    r = pt.load_run(d, "grpo", 0, steps=2)
    assert r is not None and r.k == 2 and r.final_pass == 1.0


def test_mean_std() -> None:
    assert pt.mean_std([1.0, 2.0, 3.0]) == (2.0, 1.0)
    m, s = pt.mean_std([0.5])
    assert m == 0.5 and math.isnan(s)
    assert all(math.isnan(x) for x in pt.mean_std([]))


def _runs(tmp_path: Path, arm: str, finals: list[float], start: float = 0.10) -> list[pt.RunResult]:
    out = []
    for seed, f in enumerate(finals):
        d = write_run(tmp_path / f"{arm}-s{seed}", {0: (start, 0.4), 5: ((start + f) / 2, 0.5), 10: (f, 0.6)},
                      steps=10, wall_s=10.0 + seed)
        r = pt.load_run(d, arm, seed, steps=10)
        assert r is not None
        out.append(r)
    return out


def test_summarize_over_seeds(tmp_path: Path) -> None:
    runs = _runs(tmp_path, "scope", [0.20, 0.30, 0.40])
    s = pt.summarize_arm("scope", runs)
    assert s.seeds == [0, 1, 2]
    assert s.final_avg == pytest.approx((0.30, 0.10))
    assert s.delta_avg == pytest.approx((0.20, 0.10))
    assert s.wall_s == pytest.approx((11.0, 1.0))
    assert [step for step, _ in s.curve] == [0, 5, 10]
    assert s.curve[-1][1] == pytest.approx(0.30)


def test_summarize_keeps_table_order_and_drops_empty_arms(tmp_path: Path) -> None:
    runs = _runs(tmp_path, "grpo", [0.1]) + _runs(tmp_path, "scope", [0.2])
    arms = pt.select_arms(pt.MAIN_ARMS, "scope,opd,grpo")
    assert [s.arm for s in pt.summarize(runs, arms)] == ["scope", "grpo"]
    with pytest.raises(SystemExit):
        pt.select_arms(pt.MAIN_ARMS, "scope,nope")


@pytest.mark.parametrize(
    "scope, opd, beyond_spread, text",
    [([0.50, 0.52, 0.54], [0.30, 0.32, 0.34], True, "holds, and every gap exceeds"),
     ([0.20, 0.40, 0.60], [0.30, 0.35, 0.40], False, "not every gap")],
    ids=["beyond_spread", "within_spread"],
)
def test_ordering_holds(tmp_path: Path, scope: list[float], opd: list[float], beyond_spread: bool, text: str) -> None:
    runs = (_runs(tmp_path, "scope", scope) + _runs(tmp_path, "opd", opd)
            + _runs(tmp_path, "grpo", [0.10, 0.12, 0.14]))
    o = pt.check_ordering(pt.summarize(runs, pt.MAIN_ARMS))
    assert o.holds is True and o.beyond_spread is beyond_spread
    assert text in o.line


def test_ordering_fails_or_is_unknown(tmp_path: Path) -> None:
    runs = _runs(tmp_path, "scope", [0.2]) + _runs(tmp_path, "opd", [0.3]) + _runs(tmp_path, "grpo", [0.1])
    o = pt.check_ordering(pt.summarize(runs, pt.MAIN_ARMS))
    assert o.holds is False and "does NOT hold" in o.line
    one_seed = pt.check_ordering(pt.summarize(_runs(tmp_path / "x", "scope", [0.3]) + _runs(tmp_path / "x", "opd", [0.2])
                                              + _runs(tmp_path / "x", "grpo", [0.1]), pt.MAIN_ARMS))
    assert one_seed.holds is True and one_seed.beyond_spread is None and "spread unknown" in one_seed.line
    missing = pt.check_ordering(pt.summarize(_runs(tmp_path / "y", "scope", [0.3]), pt.MAIN_ARMS))
    assert missing.holds is None and "opd, grpo" in missing.line


def test_markdown_table(tmp_path: Path) -> None:
    runs = _runs(tmp_path, "scope", [0.20, 0.30, 0.40]) + _runs(tmp_path, "opd-g1", [0.15])
    summaries = pt.summarize(runs, pt.MAIN_ARMS)
    md = pt.render_markdown(summaries, pt.check_ordering(summaries))
    lines = md.splitlines()
    assert lines[0].startswith("| arm | seeds | start avg@8 | final avg@8 | Δ avg@8")
    assert "| scope | 3 | 10.0 ± 0.0 | 30.0 ± 10.0 | +20.0 ± 10.0 |" in md
    assert "| opd-g1 | 1 |" in md and "8x fewer rollouts" in md
    assert "not checked" in md
    assert pt.render_markdown([]) == "(no complete runs)\n"


def test_run_overrides_order_and_budget(tmp_path: Path) -> None:
    budget = pt.Budget(steps=7, prompts_per_step=4, eval_every=None, extra=("learner.lr=1e-4", "rollout.group_size=4"))
    arm = next(a for a in pt.MAIN_ARMS if a.name == "opd-g1")
    ov = pt.run_overrides(arm, 2, budget, tmp_path / "opd-g1-s2")
    assert ov[:2] == ["trainer.total_steps=7", "trainer.prompts_per_step=4"]
    assert ov.index("rollout.group_size=1") > ov.index("rollout.group_size=4")  # the arm's key wins
    assert "trainer.seed=2" in ov and "trainer.save_every=0" in ov
    assert f"trainer.run_dir={tmp_path / 'opd-g1-s2'}" in ov


def test_sweep_arms_and_default_steps(tmp_path: Path) -> None:
    names = [a.name for a in pt.SWEEP_ARMS]
    assert len(names) == 6 and "scope-tau0.5-sum" in names and "scope-tau2-mean" in names
    cfg = tmp_path / "r.yaml"
    cfg.write_text("trainer:\n  total_steps: 13\n")
    assert pt.default_steps(cfg) == 13
    cfg.write_text("algorithm:\n  name: scope\n")
    assert pt.default_steps(cfg) == TrainerConfig.total_steps
    assert pt.default_steps(pt.DEFAULT_CONFIG) >= 1


def test_staleness_arms_are_scope_at_each_bound(tmp_path: Path) -> None:
    budget = pt.Budget(steps=5, prompts_per_step=4, eval_every=None, extra=("trainer.max_staleness=3",))
    bounds = {}
    for arm in pt.STALENESS_ARMS:
        ov = pt.run_overrides(arm, 0, budget, tmp_path / arm.name)
        assert "algorithm.name=scope" in ov
        # The arm's bound wins over a --set one: the last max_staleness in the list.
        bounds[arm.name] = [o for o in ov if o.startswith("trainer.max_staleness=")][-1].split("=")[1]
    assert bounds == {"scope-s0": "0", "scope-s1": "1", "scope-s2": "2", "scope-s4": "4",
                      "scope-s1-partial": "1", "scope-s2-partial": "2", "scope-s4-partial": "4"}
    partial = [arm.name for arm in pt.STALENESS_ARMS if "rollout.partial_rollouts=true" in arm.overrides]
    assert partial == ["scope-s1-partial", "scope-s2-partial", "scope-s4-partial"]


def test_curves_png(tmp_path: Path) -> None:
    summaries = pt.summarize(_runs(tmp_path, "scope", [0.2, 0.3]), pt.MAIN_ARMS)
    out = pt.plot_curves(summaries, tmp_path / "c.png")
    assert out is not None and out.stat().st_size > 1000
