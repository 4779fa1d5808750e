"""launch/prepare_data.py on small hand-made files in the layouts the real copies use.

Each sample mimics one public layout (column names and types), including the awkward
ones: integer and float answers, answers only inside a solution's \\boxed{}, list-valued
answers, rows with no answer, a JSON array instead of JSON lines.
"""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from scope_ray.config import load_config
from scope_ray.data import load_prompts

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = ROOT / "launch" / "prepare_data.py"


def _module():
    spec = importlib.util.spec_from_file_location("prepare_data", SCRIPT)
    mod = importlib.util.module_from_spec(spec)
    assert spec.loader is not None
    sys.modules["prepare_data"] = mod  # dataclasses resolve their module by name
    spec.loader.exec_module(mod)
    return mod


prep = _module()


def _jsonl(path: Path, rows: list[dict]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def _parquet(path: Path, rows: list[dict]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(pa.Table.from_pylist(rows), path)
    return path


@pytest.fixture
def raw(tmp_path: Path) -> Path:
    """RAW_DIR/<dataset>/... for all seven datasets."""
    r = tmp_path / "raw"
    deepmath = [
        {"question": "Compute $1+1$.", "final_answer": "2", "difficulty": 5.0, "topic": "Algebra",
         "r1_solution_1": "long...", "r1_solution_2": "long...", "r1_solution_3": "long..."},
        {"question": "Evaluate $\\int_0^1 x\\,dx$.", "final_answer": "\\frac{1}{2}", "difficulty": 6.5,
         "topic": "Calculus", "r1_solution_1": "", "r1_solution_2": "", "r1_solution_3": ""},
        {"question": "  ", "final_answer": "3", "difficulty": 1.0, "topic": "x",
         "r1_solution_1": "", "r1_solution_2": "", "r1_solution_3": ""},  # dropped: no question
    ]
    # Sharded like the real data/train-0000x-of-0000y.parquet.
    _parquet(r / "deepmath-103k" / "data" / "train-00000-of-00002.parquet", deepmath[:2])
    _parquet(r / "deepmath-103k" / "data" / "train-00001-of-00002.parquet", deepmath[2:])
    # Maxwell-Jia/AIME_2024 layout: capitalised columns, integer answers.
    _jsonl(r / "aime24" / "aime_2024.jsonl", [
        {"ID": "2024-I-1", "Problem": "Find $x$ if $x+1=34$.", "Solution": "...", "Answer": 33},
        {"ID": "2024-I-2", "Problem": "Find $y$.", "Solution": "...", "Answer": 25},
    ])
    # opencompass/AIME2025 layout, saved as a JSON array.
    (r / "aime25").mkdir(parents=True)
    (r / "aime25" / "aime2025.json").write_text(json.dumps([
        {"question": "How many primes are below 10?", "answer": "4"},
    ]))
    # math-ai/amc23: answers stored as floats.
    _parquet(r / "amc23" / "test.parquet", [
        {"id": 0, "question": "What is $3\\cdot 9$?", "answer": 27.0, "url": "u"},
        {"id": 1, "question": "What is half of 5?", "answer": 2.5, "url": "u"},
    ])
    # HuggingFaceH4/MATH-500.
    _jsonl(r / "math500" / "test.jsonl", [
        {"problem": "Simplify $\\sqrt{8}$.", "solution": "... $\\boxed{2\\sqrt{2}}$", "answer": "2\\sqrt{2}",
         "subject": "Algebra", "level": 2, "unique_id": "test/algebra/1.json"},
    ])
    # Qwen2.5-Math's Minerva copy: no answer column, the answer is boxed in the solution.
    _jsonl(r / "minerva" / "test.jsonl", [
        {"problem": "Speed of light in m/s (3 s.f.)?", "solution": "It is \\boxed{3.00e8} m/s.",
         "type": "Physics", "idx": 0},
        {"problem": "No answer here", "solution": "unboxed", "type": "x", "idx": 1},  # dropped
    ])
    # OlympiadBench: final_answer is a list; proof problems have none.
    _jsonl(r / "olympiadbench" / "test.jsonl", [
        {"id": 1606, "question": "Find all $n$.", "final_answer": ["$n=1$"], "subfield": "Number Theory",
         "answer_type": "Expression", "unit": None},
        {"id": 1607, "question": "Find $a$ and $b$.", "final_answer": ["$1$", "$2$"], "subfield": "Algebra",
         "answer_type": "Numerical", "unit": None},
        {"id": 1608, "question": "Prove it.", "final_answer": None, "subfield": "Algebra",
         "answer_type": None, "unit": None},
    ])
    return r


def _truths(path: Path) -> list[str]:
    return [rec.ground_truth for rec in load_prompts([path], on_bad_row="fail")]


def test_all_datasets_convert_to_loadable_verl_parquet(raw: Path, tmp_path: Path) -> None:
    out = tmp_path / "out"
    res = subprocess.run([sys.executable, str(SCRIPT), "all", "--raw-dir", str(raw), "--out-dir", str(out)],
                         capture_output=True, text=True, timeout=120)
    assert res.returncode == 0, res.stderr
    assert sorted(p.stem for p in out.glob("*.parquet")) == sorted(prep.DATASETS)
    assert _truths(out / "deepmath-103k.parquet") == ["2", "\\frac{1}{2}"]
    assert _truths(out / "aime24.parquet") == ["33", "25"]
    assert _truths(out / "aime25.parquet") == ["4"]
    assert _truths(out / "amc23.parquet") == ["27", "2.5"]  # no spurious ".0"
    assert _truths(out / "math500.parquet") == ["2\\sqrt{2}"]
    assert _truths(out / "minerva.parquet") == ["3.00e8"]  # from the solution's \boxed{}
    assert _truths(out / "olympiadbench.parquet") == ["$n=1$", "$1$, $2$"]
    # Every row is one user message, the data_source is the dataset name.
    recs = list(load_prompts([out / f"{n}.parquet" for n in prep.DATASETS], on_bad_row="fail"))
    assert {r.data_source for r in recs} == set(prep.DATASETS)
    assert all(len(r.messages) == 1 and r.messages[0]["role"] == "user" for r in recs)
    assert "no_question" in res.stderr and "no_answer" in res.stderr  # drops are reported


def test_row_layout_and_extra_info(raw: Path, tmp_path: Path) -> None:
    out = tmp_path / "dm.parquet"
    stats = prep.prepare("deepmath-103k", raw / "deepmath-103k", out)
    assert (stats.rows, stats.written, dict(stats.dropped)) == (3, 2, {"no_question": 1})
    row = pq.read_table(out).to_pylist()[1]
    assert row["data_source"] == "deepmath-103k" and row["ability"] == "math"
    assert row["prompt"] == [{"role": "user", "content": "Evaluate $\\int_0^1 x\\,dx$."}]
    assert row["reward_model"] == {"style": "rule", "ground_truth": "\\frac{1}{2}"}
    extra = row["extra_info"]
    assert extra["split"] == "train" and extra["index"] == 1 and extra["difficulty"] == 6.5
    assert extra["topic"] == "Calculus" and extra["source_file"] == "train-00000-of-00002.parquet"
    # The R1 solutions (most of DeepMath's bytes) are not carried along.
    assert "r1_solution_1" not in row and "r1_solution_1" not in extra


def test_rendered_prompt_gets_the_paper_instruction_once(raw: Path, tmp_path: Path) -> None:
    from scope_ray.bootstrap.tokenizer import build_tokenizer

    out = tmp_path / "aime24.parquet"
    prep.prepare("aime24", raw / "aime24", out)
    ds = load_prompts([out], tokenizer=build_tokenizer(), max_prompt_tokens=4096, on_bad_row="fail")
    text = ds.render_many(list(ds))[0].text
    assert text.count("Put your final answer within \\boxed{}.") == 1
    assert "Find $x$ if $x+1=34$." in text


def test_column_overrides_and_limit(tmp_path: Path) -> None:
    src = _jsonl(tmp_path / "custom.jsonl", [{"q": f"Q{i}?", "a": i} for i in range(5)])
    out = tmp_path / "c.parquet"
    with pytest.raises(ValueError, match="no usable rows"):
        prep.prepare("amc23", src, out)  # default columns do not exist in this layout
    assert not out.exists()
    stats = prep.prepare("amc23", src, out, question_column="q", answer_column="a", limit=3)
    assert stats.written == 3 and _truths(out) == ["0", "1", "2"]


def test_cli_errors_are_one_line_and_nonzero(tmp_path: Path) -> None:
    res = subprocess.run([sys.executable, str(SCRIPT), "aime24", "--input", str(tmp_path / "missing"),
                          "--output", str(tmp_path / "o.parquet")], capture_output=True, text=True, timeout=60)
    assert res.returncode == 1 and "no such file or directory" in res.stderr
    res = subprocess.run([sys.executable, str(SCRIPT), "all", "--raw-dir", str(tmp_path),
                          "--out-dir", str(tmp_path / "o")], capture_output=True, text=True, timeout=60)
    assert res.returncode == 1 and "no dataset found" in res.stderr


@pytest.mark.parametrize("value, expected", [
    (33, "33"), (27.0, "27"), (2.5, "2.5"), (" 7 ", "7"), ("", None), (None, None),
    (float("nan"), None), (["$1$", "$2$"], "$1$, $2$"), ([], None),
])
def test_answer_text(value, expected) -> None:
    assert prep.answer_text(value) == expected


def test_recipes_point_at_files_this_script_writes() -> None:
    names = set(prep.DATASETS)
    for recipe in (ROOT / "launch" / "configs").glob("*-*-*.yaml"):
        cfg = load_config(recipe, check_paths=False)
        if cfg.uses_embedded_models:
            continue
        for f in [*cfg.data.train_files, *cfg.data.eval_files]:
            assert Path(f).stem in names and f.endswith(".parquet"), (recipe.name, f)
