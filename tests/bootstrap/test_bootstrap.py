"""Bootstrap of the embedded task and models: outputs, cache reuse, crash safety, vLLM load."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from scope_ray.bootstrap.build import (
    MARKER,
    BootstrapOptions,
    bootstrap,
    default_cache_dir,
    is_complete,
)


def _questions(path: Path) -> set[str]:
    return {row["prompt"][-1]["content"] for row in pq.read_table(path).to_pylist()}


def test_reduced_preset_builds_models_and_data(tiny_bootstrap):
    art = tiny_bootstrap
    assert is_complete(art.cache_dir)
    assert art.cache_dir.name == f"bootstrap-{BootstrapOptions.tiny_for_tests().cache_key()}"
    for model_dir in (art.teacher_dir, art.student_dir):
        assert (model_dir / "config.json").is_file()
        assert (model_dir / "model.safetensors").is_file()
        assert (model_dir / "tokenizer_config.json").is_file()
    opts = BootstrapOptions.tiny_for_tests()
    train, test = _questions(art.train_file), _questions(art.test_file)
    assert (len(train), len(test)) == (opts.n_train, opts.n_test)
    assert not train & test
    assert art.metrics["teacher_final_loss"] > 0
    assert json.loads((art.cache_dir / "options.json").read_text())["n_train"] == opts.n_train


def test_teacher_and_student_share_the_tokenizer(tiny_bootstrap):
    from scope_ray.data import check_same_tokenizer

    check_same_tokenizer(tiny_bootstrap.student_dir, tiny_bootstrap.teacher_dir)


def test_default_teacher_is_bigger_and_better_trained_than_the_student():
    opts = BootstrapOptions()
    opts.validate()
    assert opts.teacher.hidden_size * opts.teacher.num_layers > opts.student.hidden_size * opts.student.num_layers
    assert opts.teacher_sft.steps > opts.student_sft.steps


def test_cache_is_reused(tiny_bootstrap):
    marker = tiny_bootstrap.cache_dir / MARKER
    stamp = marker.stat().st_mtime_ns
    import scope_ray.bootstrap.build as build

    def must_not_build(*args, **kwargs):
        raise AssertionError("the cached bootstrap was rebuilt")

    original, build.build_into = build.build_into, must_not_build
    try:
        again = bootstrap(BootstrapOptions.tiny_for_tests(), tiny_bootstrap.cache_dir.parent)
    finally:
        build.build_into = original
    assert again == tiny_bootstrap
    assert marker.stat().st_mtime_ns == stamp  # not rebuilt


def test_cache_key_depends_on_what_is_built_only():
    base = BootstrapOptions.tiny_for_tests()
    assert base.cache_key() == BootstrapOptions.tiny_for_tests().cache_key()
    assert base.cache_key() != BootstrapOptions(seed=1).cache_key()
    assert base.cache_key() != replace(base, n_train=base.n_train + 1).cache_key()
    assert base.cache_key() != replace(base, student_sft=replace(base.student_sft, lr=1e-4)).cache_key()
    # Thread count and logging change speed, not the result.
    quiet = replace(base, teacher_sft=replace(base.teacher_sft, log_every=0, num_threads=1))
    assert quiet.cache_key() == base.cache_key()


def test_imperfect_teacher_preset_keeps_the_default_cache_and_differs_only_in_the_teacher():
    """The preset is the default with a teacher misconception: its own cache entry, while
    the default's key (and so every cache already built) is unchanged by the new option."""
    default, imperfect = BootstrapOptions.preset("default"), BootstrapOptions.preset("imperfect-teacher")
    assert default == BootstrapOptions() and default.cache_key() == "a9fad1b863784bf5"
    assert replace(imperfect, teacher_mul_as_add_from=0) == default
    assert imperfect.cache_key() != default.cache_key()
    with pytest.raises(ValueError, match="unknown bootstrap preset 'perfect'"):
        BootstrapOptions.preset("perfect")


def test_half_written_cache_without_marker_is_rebuilt(tmp_path):
    opts = BootstrapOptions.tiny_for_tests()
    root = tmp_path / f"bootstrap-{opts.cache_key()}"
    (root / "student").mkdir(parents=True)
    (root / "student" / "config.json").write_text("{truncated")
    killed = tmp_path / f".{root.name}.tmp-killed"  # a build that was SIGKILLed
    (killed / "teacher").mkdir(parents=True)
    art = bootstrap(opts, tmp_path)
    assert not killed.exists()
    assert art.cache_dir == root and is_complete(root)
    assert json.loads((root / "student" / "config.json").read_text())["model_type"] == "qwen2"
    assert not [p for p in tmp_path.iterdir() if ".tmp-" in p.name]  # no temp dirs left


def test_failed_build_leaves_no_valid_looking_cache(tmp_path, monkeypatch):
    import scope_ray.bootstrap.build as build

    def boom(out: Path, opts: BootstrapOptions) -> dict:
        (out / "teacher").mkdir()
        raise RuntimeError("killed mid-build")

    monkeypatch.setattr(build, "build_into", boom)
    with pytest.raises(RuntimeError, match="mid-build"):
        bootstrap(BootstrapOptions.tiny_for_tests(), tmp_path)
    assert not any(is_complete(p) for p in tmp_path.iterdir())
    assert not [p for p in tmp_path.iterdir() if p.is_dir()]


def test_default_cache_dir_honours_env(monkeypatch, tmp_path):
    monkeypatch.setenv("SCOPE_RAY_CACHE", str(tmp_path / "c"))
    assert default_cache_dir() == tmp_path / "c"
    monkeypatch.delenv("SCOPE_RAY_CACHE")
    assert default_cache_dir() == Path.home() / ".cache" / "scope-ray"


def _vllm_greedy(model_dir: str, prompts: list[list[int]], max_tokens: int) -> list[list[int]]:
    from vllm import SamplingParams

    from scope_ray.engines.vllm_engine import make_eval_llm

    llm = make_eval_llm(model_dir)  # what scope-ray eval and the bootstrap's evaluation use
    outs = llm.generate([{"prompt_token_ids": p} for p in prompts],
                        SamplingParams(temperature=0.0, max_tokens=max_tokens), use_tqdm=False)
    return [list(o.outputs[0].token_ids) for o in outs]


def _until_eos(ids: list[int], eos: int) -> list[int]:
    return ids[: ids.index(eos) + 1] if eos in ids else ids


def test_vllm_serves_the_student(tiny_bootstrap):
    """The eval engine (in its own process, as the product runs it) answers greedily
    exactly as transformers does with the same weights."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from scope_ray.data import load_prompts
    from scope_ray.engines.vllm_engine import run_isolated

    tok = AutoTokenizer.from_pretrained(tiny_bootstrap.student_dir)
    ds = load_prompts([tiny_bootstrap.test_file], tokenizer=tok)
    prompts = [list(r.token_ids) for r in ds.render_many(list(ds)[:4])]
    got = run_isolated(_vllm_greedy, str(tiny_bootstrap.student_dir), prompts, 12)
    model = AutoModelForCausalLM.from_pretrained(tiny_bootstrap.student_dir, dtype=torch.float32).eval()
    for p, ids in zip(prompts, got, strict=True):
        x = torch.tensor([p])
        ref = model.generate(x, attention_mask=torch.ones_like(x), do_sample=False, max_new_tokens=12)[0, len(p):]
        assert ids and _until_eos(ids, tok.eos_token_id) == _until_eos(ref.tolist(), tok.eos_token_id)


def test_bootstrap_cli_prints_the_artifact_paths(tiny_bootstrap, capsys, monkeypatch):
    import argparse

    from scope_ray.cli import add_bootstrap_arguments, run_bootstrap

    monkeypatch.setenv("COLUMNS", "400")  # keep rich from wrapping the long paths
    args = add_bootstrap_arguments(argparse.ArgumentParser()).parse_args(
        ["--cache-dir", str(tiny_bootstrap.cache_dir.parent), "--preset", "tiny"])
    assert run_bootstrap(args) == 0  # a cache hit: no rebuild
    out = capsys.readouterr().out
    for path in (tiny_bootstrap.teacher_dir, tiny_bootstrap.student_dir,
                 tiny_bootstrap.train_file, tiny_bootstrap.test_file):
        assert str(path) in out
    assert "teacher_final_loss" in out


def test_saving_a_model_draws_no_progress_bar(tmp_path, capfd):
    """The bootstrap saves two models on a user's first run; transformers' "Writing model
    shards" bar must not reach the terminal, and its progress bars stay as they were."""
    from transformers.utils import logging as hf_logging

    from scope_ray.bootstrap.models import TinyModelSpec, init_model, save_model_dir

    before = hf_logging.is_progress_bar_enabled()
    save_model_dir(init_model(TinyModelSpec(), seed=0), tmp_path / "m")
    out, err = capfd.readouterr()
    assert "Writing model shards" not in out + err
    assert (tmp_path / "m" / "model.safetensors").is_file()
    assert hf_logging.is_progress_bar_enabled() == before
