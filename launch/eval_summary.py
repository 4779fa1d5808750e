"""Summarise ``scope-ray eval --json`` output the way the paper's Table 1 does.

``scope-ray eval`` reports Avg@K / Pass@K per data_source and over all problems pooled.
The paper's "Average" column is the mean over the six benchmarks instead (each
benchmark weighs the same, so MATH500's 500 problems do not drown AIME's 30). This prints
both, one line per benchmark, and with ``--json`` adds the macro average to the object.

    python launch/eval_summary.py eval.json [--json]
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any


def metric_k(report: dict[str, Any]) -> int:
    keys = [k for k in report if k.startswith("avg@")]
    if len(keys) != 1:
        raise ValueError("not a `scope-ray eval --json` object: expected one avg@K key")
    return int(keys[0].split("@", 1)[1])


def macro_average(report: dict[str, Any]) -> dict[str, float]:
    """Mean over data sources of each source's avg@K and pass@K."""
    k = metric_k(report)
    sources = report.get("per_source") or {}
    if not sources:
        raise ValueError("no per_source entries in the report")
    n = len(sources)
    return {f"avg@{k}": sum(s[f"avg@{k}"] for s in sources.values()) / n,
            f"pass@{k}": sum(s[f"pass@{k}"] for s in sources.values()) / n,
            "benchmarks": n}


def table(report: dict[str, Any]) -> str:
    k = metric_k(report)
    lines = [f"{'benchmark':<16}{'problems':>9}{f'avg@{k}':>10}{f'pass@{k}':>10}"]
    for name, s in sorted(report["per_source"].items()):
        lines.append(f"{name:<16}{int(s['n']):>9}{100 * s[f'avg@{k}']:>10.1f}{100 * s[f'pass@{k}']:>10.1f}")
    macro = macro_average(report)
    lines.append(f"{'mean of benchmarks':<25}{100 * macro[f'avg@{k}']:>10.1f}{100 * macro[f'pass@{k}']:>10.1f}")
    lines.append(f"{'pooled problems':<25}{100 * report[f'avg@{k}']:>10.1f}{100 * report[f'pass@{k}']:>10.1f}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("report", type=Path, help="the JSON object `scope-ray eval --json` printed")
    p.add_argument("--json", action="store_true", help="print the report with a 'macro' entry added")
    args = p.parse_args(argv)
    report = json.loads(args.report.read_text())
    if args.json:
        print(json.dumps({**report, "macro": macro_average(report)}))
    else:
        print(table(report))
    return 0


if __name__ == "__main__":
    sys.exit(main())
