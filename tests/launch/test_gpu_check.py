"""launch/gpu_check.py (the paper-shape GPU figures) runs on CPU with tiny shapes where
only torch and transformers exist, and reports the planner's estimate beside each figure."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = ROOT / "launch" / "gpu_check.py"


def test_gpu_check_runs_without_ray_vllm_or_deepspeed(tmp_path: Path) -> None:
    out = tmp_path / "check.json"
    code = ("import runpy, sys\nfor m in ('ray', 'deepspeed', 'vllm'):\n    sys.modules[m] = None\n"
            f"sys.argv = {[str(SCRIPT), '--device', 'cpu', '--tiny', '--steps', '1', '--out', str(out)]!r}\n"
            f"runpy.run_path({str(SCRIPT)!r}, run_name='__main__')\n")
    res = subprocess.run([sys.executable, "-c", code], cwd="/", capture_output=True, text=True, timeout=240)
    assert res.returncode == 0, res.stderr[-3000:]
    report = json.loads(res.stdout)
    assert json.loads(out.read_text()) == report and report["failed"] == [] and report["shapes"] == "tiny"
    for name in ("learner", "teacher"):
        s = report[name]
        assert s["status"] == "ok" and s["tokens_per_s"] > 0 and s["planner_estimate_gib"] >= 0
    # On CPU the learner's memory is measured (peak RSS), the GPU-only MFU is not.
    assert report["learner"]["peak_over_weights_gib"] is not None and report["learner"]["mfu"] is None
    assert set(report["learner"]["planner_parts_gib"]) == {"gradients", "activations", "log-prob chunk"}


def test_gpu_check_sh_runs_both_scripts_and_prints_their_reports() -> None:
    text = (ROOT / "launch" / "gpu_check.sh").read_text()
    assert "launch/gpu_smoke.py" in text and "launch/gpu_check.py" in text
    assert subprocess.run(["bash", "-n", str(ROOT / "launch" / "gpu_check.sh")]).returncode == 0
