"""scope_ray/controller/checkpoint.py: atomic commit, validation, pruning, skipping broken ones."""

import json
import logging

import blake3

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


def _flip(path, offset=0, n=16):
    data = bytearray(path.read_bytes())
    data[offset:offset + n] = bytes(b ^ 0xFF for b in data[offset:offset + n])
    path.write_bytes(bytes(data))


def test_manifest_holds_a_digest_of_every_file(tmp_path):
    ref = _save(tmp_path, 3)
    manifest = json.loads((ref.path / ckpt.MANIFEST).read_text())
    assert manifest["digest"] == "blake3"
    files = manifest["files"]
    assert set(files) == {"controller.json", "hf/model.safetensors"}
    entry = files["hf/model.safetensors"]
    assert entry["bytes"] == 103
    assert entry["blake3"] == blake3.blake3(b"x" * 103).hexdigest()


def test_same_size_change_in_hf_export_is_caught_and_set_aside(tmp_path, caplog):
    good = _save(tmp_path, 2)
    bad = _save(tmp_path, 4)
    _flip(bad.hf_dir / "model.safetensors", offset=50)  # same size: a size check misses it
    assert ckpt.validate(bad.path, check_digests=False) is None
    assert "hf/model.safetensors does not match its blake3 digest" in ckpt.validate(bad.path)
    with caplog.at_level(logging.WARNING):
        latest = ckpt.latest_valid(tmp_path)
    assert latest == good
    assert f"checkpoint {bad.path} is invalid" in caplog.text and "hf/model.safetensors" in caplog.text
    aside = bad.path.with_name("step_000004.invalid")
    assert aside.is_dir() and not bad.path.exists()  # kept for inspection, not deleted
    # A resumed run that saves step 4 again and prunes never counts the damaged one.
    _save(tmp_path, 3, keep=2)
    _save(tmp_path, 4, keep=2)
    assert [r.step for r in ckpt.list_checkpoints(tmp_path)] == [3, 4] and aside.is_dir()
    assert ckpt.latest_valid(tmp_path).step == 4


def test_none_valid_returns_none_and_sets_each_aside(tmp_path):
    only = _save(tmp_path, 1)
    _flip(only.path / ckpt.CONTROLLER_STATE, offset=2, n=1)
    assert ckpt.latest_valid(tmp_path) is None
    assert (ckpt.checkpoints_dir(tmp_path) / "step_000001.invalid").is_dir()


def test_legacy_manifest_with_sizes_only_still_loads(tmp_path):
    ref = _save(tmp_path, 5)
    manifest = json.loads((ref.path / ckpt.MANIFEST).read_text())
    manifest["files"] = {name: e["bytes"] for name, e in manifest["files"].items()}
    (ref.path / ckpt.MANIFEST).write_text(json.dumps(manifest))
    assert ckpt.validate(ref.path) is None
    (ref.hf_dir / "model.safetensors").write_bytes(b"short")
    assert "has 5 bytes" in ckpt.validate(ref.path)


def test_verify_checkpoint_command(tmp_path, capsys):
    from scope_ray.cli import main

    _save(tmp_path, 1)
    bad = _save(tmp_path, 2)
    assert main(["verify-checkpoint", str(tmp_path)]) == 0
    _flip(bad.hf_dir / "model.safetensors")
    assert main(["verify-checkpoint", str(tmp_path)]) == 1
    out = capsys.readouterr().out.splitlines()
    assert out[-2].startswith("ok") and "step_000001" in out[-2]
    assert out[-1].startswith("INVALID") and "step_000002" in out[-1] and "hf/model.safetensors" in out[-1]
    assert main(["verify-checkpoint", str(bad.path)]) == 1  # one checkpoint by hand
    assert bad.path.is_dir()  # read-only: nothing set aside
    assert main(["verify-checkpoint", str(tmp_path / "nothing")]) == 2
