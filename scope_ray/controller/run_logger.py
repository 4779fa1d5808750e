"""Where a run's numbers go: metrics.jsonl, the experiment trackers (TensorBoard events
by default; wandb, MLflow: trackers.py), and a PNG of the curves.

``metrics.jsonl`` holds one JSON object per line with ``step`` and the step's metrics;
evaluation rows carry ``eval/avg@K`` and ``eval/pass@K``. On resume the file is cut
back to the resumed step so a replayed step does not appear twice. A tracker that fails
is logged and dropped; it never stops the training.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

logger = logging.getLogger(__name__)


class RunLogger:
    def __init__(self, run_dir: Path, resume_step: int | None = None, trackers: list[Any] | None = None) -> None:
        self.run_dir = run_dir
        self.path = run_dir / "metrics.jsonl"
        if resume_step is not None:
            self.truncate(resume_step)
        if trackers is None:
            trackers = []
            try:
                from scope_ray.controller.trackers import TensorBoardTracker

                trackers.append(TensorBoardTracker(run_dir))
            except Exception as exc:  # noqa: BLE001 - TensorBoard is optional at run time
                logger.warning("TensorBoard logging disabled: %s", exc)
        self.trackers = trackers

    @property
    def uploads_artifacts(self) -> bool:
        """True when a tracker keeps files of its own (wandb, MLflow), not TensorBoard."""
        from scope_ray.controller.trackers import TensorBoardTracker

        return any(not isinstance(t, TensorBoardTracker) for t in self.trackers)

    def log(self, step: int, metrics: dict[str, Any]) -> None:
        from scope_ray.controller.trackers import finite_scalars

        row = {"step": step, **{k: _plain(v) for k, v in metrics.items()}}
        with open(self.path, "a") as f:
            f.write(json.dumps(row) + "\n")
        scalars = finite_scalars(row)
        self._each("log", lambda t: t.log(step, scalars))

    def close(self, artifacts: Sequence[Path | None] = (), failed: bool = False) -> None:
        """Upload ``artifacts`` (the curves, the summary) and end every tracker's run."""
        for path in artifacts:
            if path is not None and Path(path).is_file():
                self._each("artifact", lambda t, p=Path(path): t.artifact(p))
        self._each("close", lambda t: t.close(failed))
        self.trackers = []

    def _each(self, what: str, call: Any) -> None:
        for tracker in list(self.trackers):
            try:
                call(tracker)
            except Exception as exc:  # noqa: BLE001 - a tracker must not stop the run
                logger.warning("%s: %s failed (%s); not logging to it any more", type(tracker).__name__, what, exc)
                self.trackers.remove(tracker)

    def truncate(self, step: int) -> None:
        """Drop the rows after ``step`` (they are about to be replayed)."""
        if self.path.exists():
            kept = [row for row in self.read() if row.get("step", 0) <= step]
            self.path.write_text("".join(json.dumps(r) + "\n" for r in kept))

    def read(self) -> list[dict[str, Any]]:
        if not self.path.exists():
            return []
        rows = []
        for n, line in enumerate(self.path.read_text().splitlines(), 1):
            if not line.strip():
                continue
            try:
                rows.append(json.loads(line))
            except ValueError:
                # A driver killed mid-write leaves a torn last line; the step is replayed.
                logger.warning("%s line %d is not valid JSON (torn write?); ignoring it", self.path, n)
        return rows

    def plot(self, out: Path | None = None, eval_k: int = 8) -> Path | None:
        """Training curves: rollout accuracy, loss and held-out avg@K / pass@K."""
        rows = self.read()
        if not rows:
            return None
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        out = out or self.run_dir / "curves.png"
        panels = [
            ("rollout/accuracy", "rollout accuracy"),
            ("learner/loss", "loss"),
            (f"eval/avg@{eval_k}", f"held-out avg@{eval_k} / pass@{eval_k}"),
        ]
        fig, axes = plt.subplots(1, len(panels), figsize=(5 * len(panels), 3.6))
        for ax, (key, title) in zip(axes, panels):
            keys = [key, f"eval/pass@{eval_k}"] if key.startswith("eval/") else [key]
            for k in keys:
                pts = [(r["step"], r[k]) for r in rows if isinstance(r.get(k), (int, float))]
                if pts:
                    xs, ys = zip(*pts)
                    ax.plot(xs, ys, marker="o" if k.startswith("eval/") else None, label=k)
            ax.set_title(title)
            ax.set_xlabel("step")
            ax.grid(alpha=0.3)
            if key.startswith("eval/") and ax.get_lines():  # no evaluation yet: no legend
                ax.legend(fontsize=8)
        fig.tight_layout()
        fig.savefig(out, dpi=100)
        plt.close(fig)
        return out


def _plain(v: Any) -> Any:
    if hasattr(v, "item"):
        return v.item()
    return v
