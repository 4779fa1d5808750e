"""scope_ray/controller/checkpoint.py: atomic commit, validation, pruning, skipping broken ones."""

import logging

from scope_ray.controller import checkpoint as ckpt


def _save(run, step, keep=5):
    staged = ckpt.staging_dir(run, step)
    (staged / "hf").mkdir()
    (staged / "hf" / "model.safetensors").write_bytes(b"x" * (100 + step))
    return ckpt.commit(run, staged, step, {"step": step, "sampler": {"position": step}}, keep=keep)


def test_commit_then_latest_valid(tmp_path):
    _save(tmp_path, 2)
    ref = _save(tmp_path, 4)
    latest = ckpt.latest_valid(tmp_path)
    assert latest == ref and latest.step == 4
    assert latest.controller_state()["sampler"] == {"position": 4}
    assert not any(p.name.endswith(".tmp") for p in ckpt.checkpoints_dir(tmp_path).iterdir())


def test_partial_and_corrupt_checkpoints_are_skipped_with_a_warning(tmp_path, caplog):
    _save(tmp_path, 2)
    newer = _save(tmp_path, 4)
    (newer.hf_dir / "model.safetensors").write_bytes(b"short")  # truncated after commit
    half = ckpt.checkpoints_dir(tmp_path) / "step_000006"  # renamed without manifest
    half.mkdir()
    (half / "controller.json").write_text("{}")
    with caplog.at_level(logging.WARNING):
        latest = ckpt.latest_valid(tmp_path)
    assert latest is not None and latest.step == 2
    text = caplog.text
    assert "step_000006" in text and "no manifest" in text
    assert "step_000004" in text and "model.safetensors" in text


def test_interrupted_staging_is_invisible_and_prune_keeps_newest(tmp_path):
    ckpt.staging_dir(tmp_path, 8)  # a crash mid-write leaves only a hidden temp dir
    assert ckpt.latest_valid(tmp_path) is None
    for s in (1, 2, 3, 4):
        _save(tmp_path, s, keep=2)
    assert [r.step for r in ckpt.list_checkpoints(tmp_path)] == [3, 4]
