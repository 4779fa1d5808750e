"""What the terminal shows: a progress bar (step, ETA, accuracy) and a final summary table."""

from __future__ import annotations

import time
from typing import Any

from rich.console import Console
from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn
from rich.table import Table

from scope_ray.controller.trainer import RunSummary


class ProgressDisplay:
    """A live bar on a terminal; elsewhere (CI, ``ray job logs``, a pipe) one plain line
    every ~5% of the run, at each evaluation and at the end, since a live bar written to
    a file is cut to its last frame."""

    def __init__(self, total_steps: int, *, start: int = 0, eval_k: int = 8, enabled: bool = True,
                 console: Console | None = None) -> None:
        self.eval_k = eval_k
        self.enabled = enabled
        self.total = total_steps
        self.console = console or Console()
        self.live = self.console.is_terminal
        self.every = max(1, total_steps // 20)
        self._t0 = time.monotonic()
        self._start = start
        self._progress = Progress(
            TextColumn("[bold]step {task.completed}/{task.total}"),
            BarColumn(),
            TimeElapsedColumn(),
            TextColumn("ETA"),
            TimeRemainingColumn(),
            TextColumn("{task.fields[info]}"),
            console=self.console,
            disable=not (enabled and self.live),
        )
        self._task = self._progress.add_task("train", total=total_steps, completed=start, info="")

    def __enter__(self) -> ProgressDisplay:
        self._progress.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self._progress.stop()

    def _info(self, metrics: dict[str, float]) -> str:
        info = f"acc {metrics.get('rollout/accuracy', float('nan')):.2f}"
        if "learner/loss" in metrics:
            info += f"  loss {metrics['learner/loss']:.3g}"
        key = f"eval/avg@{self.eval_k}"
        if key in metrics:
            info += f"  {key} {metrics[key]:.3f}"
        return info + f"  {metrics.get('time/step_s', 0):.1f}s/step"

    def update(self, step: int, metrics: dict[str, float]) -> None:
        info = self._info(metrics)
        if self.live:
            self._progress.update(self._task, completed=step, info=info)
            return
        evaluated = f"eval/avg@{self.eval_k}" in metrics
        if self.enabled and (step % self.every == 0 or step == self.total or evaluated):
            done = step - self._start
            eta = (time.monotonic() - self._t0) / done * (self.total - step) if done > 0 else float("nan")
            self.console.print(f"step {step}/{self.total}  {info}  ETA {_clock(eta)}", highlight=False,
                               soft_wrap=True)


def _clock(seconds: float) -> str:
    if seconds != seconds:  # nan
        return "-"
    m, s = divmod(int(round(seconds)), 60)
    return f"{m // 60}:{m % 60:02d}:{s:02d}"


def print_summary(summary: RunSummary, eval_k: int, console: Console | None = None) -> None:
    console = console or Console()
    table = Table(title=f"scope-ray: {summary.steps} steps in {summary.seconds / 60:.1f} min")
    table.add_column("metric")
    table.add_column("start", justify="right")
    table.add_column("end", justify="right")
    table.add_column("change", justify="right")
    for key in (f"eval/avg@{eval_k}", f"eval/pass@{eval_k}"):
        a, b = summary.start_eval.get(key), summary.end_eval.get(key)
        fmt = lambda v: "-" if v is None else f"{100 * v:.1f}%"  # noqa: E731
        delta = "-" if a is None or b is None else f"{100 * (b - a):+.1f} pts"
        table.add_row(key.removeprefix("eval/"), fmt(a), fmt(b), delta)
    console.print(table)
    console.print(f"run directory: {summary.run_dir}  (metrics.jsonl, curves.png, tensorboard/, checkpoints/)",
                  soft_wrap=True)
