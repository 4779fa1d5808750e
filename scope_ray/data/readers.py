"""Raw row readers for parquet and JSONL files.

Readers yield `(RowRef, raw_value)` pairs and never validate row content (that
is `rows.parse_row`'s job, so skip/fail applies uniformly). Anything that makes
a *file* untrustworthy -- missing file, unknown extension, bytes that are not
parquet, a truncated parquet, a JSONL line that is not JSON or not UTF-8, a
parquet without a required column -- raises `DatasetError` naming the file,
whatever the bad-row policy: those are not row problems to skip over.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Iterator

import pyarrow as pa
import pyarrow.parquet as pq

from scope_ray.data.rows import DatasetError, RowRef

PARQUET_SUFFIXES = (".parquet", ".pq")
# HF `Dataset.to_json` writes JSON Lines under a .json name, so accept it too.
JSONL_SUFFIXES = (".jsonl", ".ndjson", ".json")

REQUIRED_COLUMNS = ("prompt", "reward_model", "data_source")
OPTIONAL_COLUMNS = ("extra_info",)

RawRow = tuple[RowRef, Any]


def file_format(path: Path) -> str:
    """'parquet' or 'jsonl' from the file name; DatasetError for anything else."""
    suffix = path.suffix.lower()
    if suffix in PARQUET_SUFFIXES:
        return "parquet"
    if suffix in JSONL_SUFFIXES:
        return "jsonl"
    raise DatasetError(
        f"{path}: unsupported file type {suffix or '(no extension)'!r}; "
        f"expected one of {PARQUET_SUFFIXES + JSONL_SUFFIXES}",
        path=str(path),
    )


def iter_raw_rows(path: Path) -> Iterator[RawRow]:
    """Yield every row of `path` with its provenance, in file order."""
    if not path.exists():
        raise DatasetError(f"{path}: file not found", path=str(path))
    if not path.is_file():
        raise DatasetError(f"{path}: not a regular file", path=str(path))
    if file_format(path) == "parquet":
        return _iter_parquet(path)
    return _iter_jsonl(path)


def _iter_parquet(path: Path) -> Iterator[RawRow]:
    name = str(path)
    try:
        parquet_file = pq.ParquetFile(path)
        columns = parquet_file.schema_arrow.names
    except (pa.ArrowException, OSError) as exc:
        raise DatasetError(f"{path}: not a readable parquet file ({exc})", path=name) from exc
    missing = [c for c in REQUIRED_COLUMNS if c not in columns]
    if missing:
        # A missing column breaks every row; reporting it once beats N row errors.
        raise DatasetError(f"{path}: missing column(s) {missing} (has {columns})", path=name)
    wanted = [c for c in REQUIRED_COLUMNS + OPTIONAL_COLUMNS if c in columns]
    return _parquet_rows(parquet_file, wanted, path)


def _parquet_rows(parquet_file: pq.ParquetFile, columns: list[str],
                  path: Path) -> Iterator[RawRow]:
    name = str(path)
    row = 0
    try:
        # Stream batches: DeepMath-size files would otherwise sit in memory twice.
        for batch in parquet_file.iter_batches(columns=columns):
            # Map columns (e.g. extra_info written as map<string, ...>) become dicts.
            for raw in batch.to_pylist(maps_as_pydicts="lossy"):
                yield RowRef(name, row), raw
                row += 1
    except (pa.ArrowException, OSError) as exc:
        raise DatasetError(f"{path}: corrupt parquet data near row {row} ({exc})",
                           path=name, row=row) from exc


def _iter_jsonl(path: Path) -> Iterator[RawRow]:
    name = str(path)
    try:
        handle = path.open("rb")
    except OSError as exc:
        raise DatasetError(f"{path}: cannot open ({exc})", path=name) from exc
    with handle:
        for index, raw_line in enumerate(handle):
            ref = RowRef(name, index, line=index + 1)
            try:
                text = raw_line.decode("utf-8")
            except UnicodeDecodeError as exc:
                raise DatasetError(f"{ref}: not valid UTF-8 ({exc})",
                                   path=name, row=index) from exc
            if not text.strip():
                continue  # blank lines (e.g. a trailing one) carry no record
            try:
                value = json.loads(text)
            except (ValueError, RecursionError) as exc:
                hint = ""
                if path.suffix.lower() == ".json" and index == 0:
                    hint = "; a .json file must be JSON Lines (one object per line)"
                raise DatasetError(f"{ref}: invalid JSON ({exc}){hint}",
                                   path=name, row=index) from exc
            yield ref, value
