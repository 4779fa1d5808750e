"""launch/eval_paper.sh passes the paper's evaluation settings to `scope-ray eval`, and
launch/eval_summary.py averages over benchmarks the way the paper's Table 1 does.

`scope-ray eval` itself (vLLM sampling, verification, pass@k) is tested in
tests/test_evaluation.py; here a stand-in records the command line and answers with a
fixed report.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
EVAL = ROOT / "launch" / "eval_paper.sh"
SUMMARY = ROOT / "launch" / "eval_summary.py"
BENCHMARKS = ("aime24", "aime25", "amc23", "math500", "minerva", "olympiadbench")

REPORT = {
    "avg@32": 0.62, "pass@32": 0.80,
    "per_source": {
        "aime24": {"avg@32": 0.30, "pass@32": 0.70, "n": 30},
        "math500": {"avg@32": 0.90, "pass@32": 0.98, "n": 500},
    },
}


def _flag(argv: list[str], name: str) -> str:
    return argv[argv.index(name) + 1]


def test_eval_paper_uses_the_papers_settings(tmp_path: Path) -> None:
    data = tmp_path / "data"
    data.mkdir()
    for b in BENCHMARKS:
        (data / f"{b}.parquet").write_bytes(b"")
    record = tmp_path / "argv.json"
    fake = tmp_path / "scope-ray"
    fake.write_text(f"#!{sys.executable}\nimport json, sys\n"
                    f"json.dump(sys.argv[1:], open({str(record)!r}, 'w'))\n"
                    f"print(json.dumps({REPORT!r}))\n")
    fake.chmod(0o755)
    out = tmp_path / "eval.json"
    res = subprocess.run(["bash", str(EVAL), "/mnt/models/m", str(data), str(out)],
                         env={"PATH": "/usr/bin:/bin", "SCOPE_RAY": str(fake), "PYTHON": sys.executable},
                         capture_output=True, text=True, timeout=60)
    assert res.returncode == 0, res.stderr
    argv = json.loads(record.read_text())
    assert argv[0] == "eval" and _flag(argv, "--model") == "/mnt/models/m"
    assert (_flag(argv, "--k"), _flag(argv, "--temperature"), _flag(argv, "--top-p"), _flag(argv, "--top-k")) \
        == ("32", "0.6", "0.95", "20")
    assert _flag(argv, "--max-tokens") == "12288" and "--json" in argv
    files = argv[argv.index("--data") + 1: argv.index("--k")]
    assert [Path(f).stem for f in files] == list(BENCHMARKS)
    assert json.loads(out.read_text()) == REPORT
    # The real `scope-ray eval` parser accepts exactly this command line.
    import argparse

    from scope_ray.cli import add_eval_arguments

    args = add_eval_arguments(argparse.ArgumentParser()).parse_args(argv[1:])
    assert (args.k, args.temperature, args.top_p, args.top_k, args.max_tokens) == (32, 0.6, 0.95, 20, 12288)
    assert "mean of benchmarks" in res.stdout and "60.0" in res.stdout  # (30 + 90) / 2


def test_eval_paper_refuses_missing_benchmark_files(tmp_path: Path) -> None:
    res = subprocess.run(["bash", str(EVAL), "/m", str(tmp_path)], capture_output=True, text=True, timeout=60,
                         env={"PATH": "/usr/bin:/bin", "SCOPE_RAY": "/bin/false"})
    assert res.returncode == 2 and "aime24.parquet is missing" in res.stderr


def test_macro_average_weighs_benchmarks_equally(tmp_path: Path) -> None:
    path = tmp_path / "r.json"
    path.write_text(json.dumps(REPORT))
    res = subprocess.run([sys.executable, str(SUMMARY), str(path), "--json"], capture_output=True, text=True,
                         timeout=60)
    macro = json.loads(res.stdout)["macro"]
    assert macro["avg@32"] == pytest.approx(0.60) and macro["pass@32"] == pytest.approx(0.84)
    assert macro["benchmarks"] == 2
    # Pooling problems instead would let MATH500 dominate: the two must differ here.
    assert macro["avg@32"] != pytest.approx(REPORT["avg@32"])
