"""What the terminal shows: a progress bar (step, ETA, accuracy) and a final summary table."""

from __future__ import annotations

from typing import Any

from rich.console import Console
from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn
from rich.table import Table

from scope_ray.controller.trainer import RunSummary


class ProgressDisplay:
    def __init__(self, total_steps: int, *, start: int = 0, eval_k: int = 8, enabled: bool = True) -> None:
        self.eval_k = eval_k
        self.enabled = enabled
        self._progress = Progress(
            TextColumn("[bold]step {task.completed}/{task.total}"),
            BarColumn(),
            TimeElapsedColumn(),
            TextColumn("ETA"),
            TimeRemainingColumn(),
            TextColumn("{task.fields[info]}"),
            disable=not enabled,
        )
        self._task = self._progress.add_task("train", total=total_steps, completed=start, info="")

    def __enter__(self) -> ProgressDisplay:
        self._progress.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self._progress.stop()

    def update(self, step: int, metrics: dict[str, float]) -> None:
        info = f"acc {metrics.get('rollout/accuracy', float('nan')):.2f}"
        if "learner/loss" in metrics:
            info += f"  loss {metrics['learner/loss']:.3g}"
        key = f"eval/avg@{self.eval_k}"
        if key in metrics:
            info += f"  {key} {metrics[key]:.3f}"
        info += f"  {metrics.get('time/step_s', 0):.1f}s/step"
        self._progress.update(self._task, completed=step, info=info)


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
    console.print(f"run directory: {summary.run_dir}  (metrics.jsonl, curves.png, tensorboard/, checkpoints/)")
