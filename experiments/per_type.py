"""Held-out avg@K per problem type for runs of ``paper_table.py`` (the imperfect-teacher preset).

    .venv/bin/python experiments/per_type.py --runs runs/paper_table_imperfect \\
        --arms scope,opd,grpo,scope-topk --seeds 0,1,2 --preset imperfect-teacher

Each evaluation logs ``eval/<data_source>/avg@K`` per source; the imperfect-teacher
preset's sources are ``synthetic_arith_l<level>_<type>`` (type ``bigmul``: a
multiplication by 3 or more, the teacher's misconception; ``rest``). This prints, per
arm, the start and final avg@K of each type over its levels, weighted by the number of
test problems of each source (read from the preset's test file), mean ± std over seeds.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from collections import Counter
from pathlib import Path


def type_avg(row: dict, counts: Counter, kind: str, k: int) -> float:
    sources = [s for s in counts if s.endswith(f"_{kind}")]
    total = sum(counts[s] for s in sources)
    return sum(row[f"eval/{s}/avg@{k}"] * counts[s] for s in sources) / total


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--runs", type=Path, required=True, help="paper_table.py --out directory")
    ap.add_argument("--arms", required=True)
    ap.add_argument("--seeds", default="0,1,2")
    ap.add_argument("--preset", default="imperfect-teacher")
    ap.add_argument("--k", type=int, default=8)
    args = ap.parse_args(argv)

    import pyarrow.parquet as pq

    from scope_ray.bootstrap.build import BootstrapOptions, bootstrap

    test = bootstrap(BootstrapOptions.preset(args.preset)).test_file
    counts = Counter(pq.read_table(test, columns=["data_source"]).column("data_source").to_pylist())
    kinds = sorted({s.rsplit("_", 1)[1] for s in counts})
    print(f"test problems per source: {dict(sorted(counts.items()))}")
    print("| arm | " + " | ".join(f"{kind} start | {kind} final" for kind in kinds) + " |")
    print("|---|" + "---|---|" * len(kinds))
    for arm in args.arms.split(","):
        cells: dict[str, list[list[float]]] = {kind: [[], []] for kind in kinds}
        for seed in (int(s) for s in args.seeds.split(",")):
            path = args.runs / f"{arm}-s{seed}" / "metrics.jsonl"
            if not path.is_file():
                continue
            evals = [r for r in map(json.loads, path.read_text().splitlines()) if f"eval/avg@{args.k}" in r]
            for kind in kinds:
                cells[kind][0].append(100 * type_avg(evals[0], counts, kind, args.k))
                cells[kind][1].append(100 * type_avg(evals[-1], counts, kind, args.k))

        def fmt(xs: list[float]) -> str:
            if not xs:
                return "-"
            return f"{statistics.fmean(xs):.1f}" + (f" ± {statistics.stdev(xs):.1f}" if len(xs) > 1 else "")

        print(f"| {arm} | " + " | ".join(f"{fmt(cells[kind][0])} | {fmt(cells[kind][1])}" for kind in kinds) + " |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
