"""Turn LOCAL copies of DeepMath-103K and the six evaluation benchmarks into the
project's verl-layout parquet (what ``scope_ray.data.load_prompts`` reads).

Nothing is downloaded: point ``--input`` at files you already have (parquet, JSONL, or
a JSON array; a directory means every such file in it, sorted), e.g. a ``git lfs``
clone or a copy on shared storage.

    python launch/prepare_data.py deepmath-103k --input /mnt/raw/DeepMath-103K/data \\
        --output /mnt/data/scope/deepmath-103k.parquet
    python launch/prepare_data.py aime24 --input /mnt/raw/aime24 --output /mnt/data/scope/aime24.parquet
    python launch/prepare_data.py all --raw-dir /mnt/raw --out-dir /mnt/data/scope

``all`` expects ``RAW_DIR/<name>`` for each dataset name below and skips missing ones.

Output rows (one per problem)::

    data_source   the dataset name (eval metrics are reported per data_source)
    prompt        [{"role": "user", "content": <question>}]   (no instruction suffix:
                  the loader appends data.prompt_suffix, "Put your final answer within
                  \\boxed{}.", when it renders the prompt)
    ability       "math"
    reward_model  {"style": "rule", "ground_truth": <answer>}
    extra_info    {"index", "split", "source_file", "orig_id", + per-dataset fields}

Column layouts differ between copies of the same benchmark; each dataset has a list of
candidate columns for the question, the answer, and a solution to take the last
``\\boxed{}`` from when there is no answer column (Minerva's usual layout). Override with
``--question-column`` / ``--answer-column`` for other layouts. Rows without a question
or an answer are dropped and counted (OlympiadBench's proof problems have no final answer).
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import sys
from collections import Counter
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

logger = logging.getLogger("prepare_data")

INPUT_SUFFIXES = (".parquet", ".jsonl", ".json", ".ndjson")


@dataclass(frozen=True)
class DatasetSpec:
    """Where one dataset keeps its question and answer, in the layouts seen in the wild."""

    split: str
    question: tuple[str, ...]
    answer: tuple[str, ...] = ()
    solution: tuple[str, ...] = ()  # take the last \boxed{} from here if no answer column
    ids: tuple[str, ...] = ("id", "ID", "unique_id", "idx", "problem_id")
    # Kept in extra_info; "difficulty" stays a number, everything else becomes a string
    # so that a column of mixed types still writes as one parquet type.
    extra: tuple[str, ...] = ()
    numeric_extra: tuple[str, ...] = field(default=())


DATASETS: dict[str, DatasetSpec] = {
    # zwhe99/DeepMath-103K: question, final_answer, difficulty, topic, r1_solution_1..3.
    # The R1 solutions (most of its 5 GB) are not needed for on-policy training.
    "deepmath-103k": DatasetSpec(
        split="train", question=("question",), answer=("final_answer",),
        extra=("topic",), numeric_extra=("difficulty",),
    ),
    # HuggingFaceH4/aime_2024 (problem, answer, solution, id, url, year),
    # Maxwell-Jia/AIME_2024 (Problem, Answer, Solution, ID), math-ai/aime24.
    "aime24": DatasetSpec(
        split="test", question=("problem", "Problem", "question"), answer=("answer", "Answer"),
        solution=("solution", "Solution"), extra=("url", "year"),
    ),
    # yentinglin/aime_2025, opencompass/AIME2025 (question, answer), math-ai/aime25.
    "aime25": DatasetSpec(
        split="test", question=("problem", "question", "Problem"), answer=("answer", "Answer"),
        solution=("solution", "Solution"), extra=("url", "year"),
    ),
    # math-ai/amc23 (question, answer as a float), knoveleng/AMC-23 (problem, answer).
    "amc23": DatasetSpec(
        split="test", question=("question", "problem"), answer=("answer",), extra=("url",),
    ),
    # HuggingFaceH4/MATH-500: problem, solution, answer, subject, level, unique_id.
    "math500": DatasetSpec(
        split="test", question=("problem",), answer=("answer",), solution=("solution",),
        extra=("subject", "level"),
    ),
    # Minerva-Math (272): Qwen2.5-Math's copy has problem + solution (answer boxed in
    # the solution); math-ai/minervamath has question + answer.
    "minerva": DatasetSpec(
        split="test", question=("problem", "question"), answer=("answer", "final_answer"),
        solution=("solution",), extra=("type",),
    ),
    # OlympiadBench (OE_TO_maths_en_COMP, 675): question, final_answer (a list of strings).
    "olympiadbench": DatasetSpec(
        split="test", question=("question", "problem"), answer=("final_answer", "answer"),
        solution=("solution",), extra=("subfield", "answer_type", "unit"),
    ),
}
BENCHMARKS = ("aime24", "aime25", "amc23", "math500", "minerva", "olympiadbench")


# ----------------------------------------------------------------------------- reading


def input_files(path: Path) -> list[Path]:
    if path.is_dir():
        files = sorted(p for p in path.rglob("*") if p.is_file() and p.suffix.lower() in INPUT_SUFFIXES)
        if not files:
            raise FileNotFoundError(f"{path}: no {'/'.join(INPUT_SUFFIXES)} files in this directory")
        return files
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such file or directory")
    return [path]


def read_rows(path: Path) -> Iterator[dict[str, Any]]:
    """Rows of one parquet / JSONL / JSON-array file, as dicts."""
    suffix = path.suffix.lower()
    if suffix == ".parquet":
        import pyarrow.parquet as pq

        pf = pq.ParquetFile(path)
        for batch in pf.iter_batches(batch_size=1024):
            yield from batch.to_pylist()
        return
    text = path.read_text(encoding="utf-8")
    if text.lstrip().startswith("["):  # a JSON array (some copies are saved that way)
        rows = json.loads(text)
        if not isinstance(rows, list):
            raise ValueError(f"{path}: expected a JSON array of objects")
        yield from rows
        return
    for lineno, line in enumerate(text.splitlines(), 1):
        if line.strip():
            try:
                yield json.loads(line)
            except json.JSONDecodeError as exc:
                raise ValueError(f"{path}:{lineno}: not JSON ({exc.msg})") from None


# ----------------------------------------------------------------------------- conversion


def answer_text(value: Any) -> str | None:
    """A ground-truth string from an answer cell: numbers without a spurious ``.0``,
    lists (OlympiadBench's multi-part answers) joined with ", "."""
    if value is None:
        return None
    if isinstance(value, bool):
        return str(value)
    if isinstance(value, float):
        if math.isnan(value):
            return None
        return str(int(value)) if value.is_integer() else repr(value)
    if isinstance(value, int):
        return str(value)
    if isinstance(value, (list, tuple)):
        parts = [answer_text(v) for v in value]
        parts = [p for p in parts if p]
        return ", ".join(parts) if parts else None
    text = str(value).strip()
    return text or None


def boxed_answer(solution: Any) -> str | None:
    if not isinstance(solution, str):
        return None
    from scope_ray.reward.extract import extract_boxed

    found = extract_boxed(solution)
    return found.answer.strip() if found.status == "found" and found.answer else None


def _first(row: dict[str, Any], columns: Sequence[str]) -> tuple[str | None, Any]:
    for col in columns:
        if col in row and row[col] is not None:
            return col, row[col]
    return None, None


@dataclass
class Stats:
    rows: int = 0
    written: int = 0
    dropped: Counter = field(default_factory=Counter)
    answer_from: Counter = field(default_factory=Counter)


def convert_rows(name: str, spec: DatasetSpec, files: Sequence[Path], *,
                 question_column: str | None = None, answer_column: str | None = None,
                 limit: int = 0) -> tuple[list[dict[str, Any]], Stats]:
    q_cols = (question_column,) if question_column else spec.question
    a_cols = (answer_column,) if answer_column else spec.answer
    stats = Stats()
    out: list[dict[str, Any]] = []
    for path in files:
        for i, row in enumerate(read_rows(path)):
            stats.rows += 1
            if not isinstance(row, dict):
                stats.dropped["not_an_object"] += 1
                continue
            _, question = _first(row, q_cols)
            if not isinstance(question, str) or not question.strip():
                stats.dropped["no_question"] += 1
                continue
            col, raw_answer = _first(row, a_cols)
            answer = answer_text(raw_answer)
            if answer is None and not answer_column:
                col, solution = _first(row, spec.solution)
                answer = boxed_answer(solution)
            if answer is None:
                stats.dropped["no_answer"] += 1
                continue
            stats.answer_from[col or "?"] += 1
            _, orig_id = _first(row, spec.ids)
            extra: dict[str, Any] = {
                "index": len(out), "split": spec.split, "source_file": path.name, "source_row": i,
                "orig_id": "" if orig_id is None else str(orig_id),
            }
            for key in spec.extra:
                extra[key] = "" if row.get(key) is None else str(row[key])
            for key in spec.numeric_extra:
                value = row.get(key)
                extra[key] = float(value) if isinstance(value, (int, float)) and not isinstance(value, bool) else None
            out.append({
                "data_source": name,
                "prompt": [{"role": "user", "content": question.strip()}],
                "ability": "math",
                "reward_model": {"style": "rule", "ground_truth": answer},
                "extra_info": extra,
            })
            if limit and len(out) >= limit:
                stats.written = len(out)
                return out, stats
    stats.written = len(out)
    return out, stats


def write_parquet(rows: list[dict[str, Any]], output: Path) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    output.parent.mkdir(parents=True, exist_ok=True)
    tmp = output.with_name(output.name + ".tmp")
    pq.write_table(pa.Table.from_pylist(rows), tmp)
    tmp.replace(output)  # never leave a half-written file under the final name


def prepare(name: str, input_path: Path, output: Path, *, question_column: str | None = None,
            answer_column: str | None = None, limit: int = 0) -> Stats:
    """Convert one dataset, write it, and read it back with the project's loader."""
    if name not in DATASETS:
        raise KeyError(f"unknown dataset {name!r}; choose from {sorted(DATASETS)}")
    files = input_files(input_path)
    rows, stats = convert_rows(name, DATASETS[name], files, question_column=question_column,
                               answer_column=answer_column, limit=limit)
    if not rows:
        raise ValueError(f"{name}: no usable rows in {input_path} (dropped: {dict(stats.dropped)}); "
                         "check --question-column / --answer-column")
    write_parquet(rows, output)
    from scope_ray.data import load_prompts

    loaded = load_prompts([output], on_bad_row="fail")
    if len(loaded) != len(rows):
        raise RuntimeError(f"{output}: wrote {len(rows)} rows but the loader read {len(loaded)}")
    logger.info("%s: %d rows from %d file(s) -> %s (%d written, dropped %s, answers from %s)",
                name, stats.rows, len(files), output, stats.written, dict(stats.dropped),
                dict(stats.answer_from))
    return stats


# ----------------------------------------------------------------------------- CLI


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("dataset", choices=[*DATASETS, "all"])
    parser.add_argument("--input", type=Path, help="a local file or directory (one dataset)")
    parser.add_argument("--output", type=Path, help="the parquet to write (one dataset)")
    parser.add_argument("--raw-dir", type=Path, help="all: RAW_DIR/<dataset> for each dataset")
    parser.add_argument("--out-dir", type=Path, help="all: writes OUT_DIR/<dataset>.parquet")
    parser.add_argument("--question-column", help="use this column for the question")
    parser.add_argument("--answer-column", help="use this column for the answer")
    parser.add_argument("--limit", type=int, default=0, help="keep the first N usable rows (0 = all)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")

    try:
        if args.dataset == "all":
            if not (args.raw_dir and args.out_dir):
                parser.error("all needs --raw-dir and --out-dir")
            done = []
            for name in DATASETS:
                src = args.raw_dir / name
                if not src.exists():
                    logger.warning("%s: %s not found, skipped", name, src)
                    continue
                prepare(name, src, args.out_dir / f"{name}.parquet", limit=args.limit)
                done.append(name)
            if not done:
                logger.error("no dataset found under %s (expected %s)", args.raw_dir, ", ".join(DATASETS))
                return 1
            return 0
        if not (args.input and args.output):
            parser.error(f"{args.dataset} needs --input and --output")
        prepare(args.dataset, args.input, args.output, question_column=args.question_column,
                answer_column=args.answer_column, limit=args.limit)
        return 0
    except (OSError, ValueError, KeyError) as exc:
        logger.error("%s", exc)
        return 1


if __name__ == "__main__":
    sys.exit(main())
