"""launch/gpu_smoke.py runs on CPU with the tiny model (the CUDA paths run on a GPU box),
reports every path, and degrades to skipped paths when only torch + transformers exist.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = ROOT / "launch" / "gpu_smoke.py"


def _run(args: list[str], prelude: str = "", timeout: int = 240) -> tuple[int, dict, str]:
    # runpy keeps the script a script (its own sys.path set-up) while letting a prelude
    # hide packages first, as on a machine where they are not installed.
    code = (f"import runpy, sys\n{prelude}\nsys.argv = {[str(SCRIPT), *args]!r}\n"
            f"runpy.run_path({str(SCRIPT)!r}, run_name='__main__')\n")
    res = subprocess.run([sys.executable, "-c", code], cwd="/", capture_output=True, text=True, timeout=timeout)
    try:
        report = json.loads(res.stdout)
    except json.JSONDecodeError:
        raise AssertionError(f"stdout is not one JSON report:\n{res.stdout[-2000:]}\n{res.stderr[-3000:]}") from None
    return res.returncode, report, res.stderr


def test_every_path_runs_on_cpu_tiny(tmp_path: Path) -> None:
    out = tmp_path / "smoke.json"
    rc, report, err = _run(["--device", "cpu", "--tiny", "--out", str(out)])
    assert rc == 0, err[-3000:]
    assert json.loads(out.read_text()) == report
    s = report["sections"]
    assert report["device"] == "cpu" and report["failed"] == [] and report["skipped"] == []
    for name in ("learner", "teacher", "deepspeed", "vllm"):
        assert s[name]["status"] == "ok", (name, s[name])
        assert s[name]["tokens_per_s"] > 0
    assert s["teacher"]["finite"]
    assert s["deepspeed"]["applied"] and s["deepspeed"]["zero_stage"] == 2
    assert s["vllm"]["generated_tokens"] == s["vllm"]["sequences"] * report["batch"]["max_response_len"]


def test_only_torch_and_transformers_present_and_failures_are_reported() -> None:
    # None in sys.modules makes `import x` raise ImportError: Ray must never be needed,
    # DeepSpeed and vLLM are optional. A learner path that breaks must fail the run
    # (exit 1) and be named in the report, while the other paths still run.
    prelude = ("for m in ('ray', 'deepspeed', 'vllm'):\n    sys.modules[m] = None\n"
               "import scope_ray.algo as algo\n"
               "def broken(*a, **k):\n    raise RuntimeError('boom')\n"
               "algo.compute_loss = broken")
    rc, report, _ = _run(["--device", "cpu", "--tiny"], prelude)
    assert rc == 1
    assert report["skipped"] == ["deepspeed", "vllm"] and report["failed"] == ["learner"]
    assert "not importable" in report["sections"]["vllm"]["reason"]
    assert report["sections"]["learner"]["error"] == "RuntimeError: boom"
    assert report["sections"]["teacher"]["status"] == "ok"
