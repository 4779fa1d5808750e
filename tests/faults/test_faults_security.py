"""Nothing we load can run code: weights and checkpoints go through safetensors or
``torch.load(weights_only=True)`` (DeepSpeed's own loader included), and our sources use
no unpickling, ``eval`` or ``exec``. Hostile model output is covered by
tests/reward/test_reward_hostile.py."""

from __future__ import annotations

import ast
import pickle
from pathlib import Path
from typing import Any

import pytest
import ray
import torch

REPO = Path(__file__).resolve().parents[2]
OUR_CODE = ("scope_ray", "actors", "launch", "bench")

UNPICKLERS = {"pickle", "cPickle", "cloudpickle", "dill", "marshal", "shelve", "joblib"}
UNSAFE_YAML = {"load", "load_all", "unsafe_load", "unsafe_load_all", "full_load", "full_load_all"}


def _dotted(node: ast.AST) -> str:
    if isinstance(node, ast.Name):
        return node.id
    if isinstance(node, ast.Attribute):
        return f"{_dotted(node.value)}.{node.attr}"
    return ""


def _keyword_is_true(call: ast.Call, name: str) -> bool:
    return any(k.arg == name and isinstance(k.value, ast.Constant) and k.value.value is True for k in call.keywords)


def unsafe_calls(source: str) -> list[tuple[int, str]]:
    """(line, what) for every call that could execute code hidden in data or text."""
    found = []
    for node in ast.walk(ast.parse(source)):
        if not isinstance(node, ast.Call):
            continue
        name = _dotted(node.func)
        head, _, leaf = name.rpartition(".")
        if name == "torch.load" and not _keyword_is_true(node, "weights_only"):
            found.append((node.lineno, "torch.load without weights_only=True"))
        elif head in UNPICKLERS and leaf in ("load", "loads", "Unpickler", "open"):
            found.append((node.lineno, name))
        elif name in ("eval", "exec", "builtins.eval", "builtins.exec", "compile"):
            found.append((node.lineno, name))
        elif head == "yaml" and leaf in UNSAFE_YAML:
            found.append((node.lineno, f"{name} (use yaml.safe_load)"))
        elif name in ("np.load", "numpy.load") and _keyword_is_true(node, "allow_pickle"):
            found.append((node.lineno, f"{name}(allow_pickle=True)"))
    return found


def test_the_scanner_sees_what_it_must() -> None:
    bad = ("import torch, pickle, yaml\ntorch.load(p)\ntorch.load(p, weights_only=False)\npickle.loads(b)\n"
           "eval(s)\nexec(s)\nyaml.load(t)\nnp.load(f, allow_pickle=True)\n")
    assert [line for line, _ in unsafe_calls(bad)] == [2, 3, 4, 5, 6, 7, 8]
    assert unsafe_calls("torch.load(p, weights_only=True)\nyaml.safe_load(t)\nmodel.eval()\n") == []


def _our_python_files() -> list[Path]:
    """Our packages' sources, not caches or generated run output (dot-dirs such as
    bench/.cache hold DeepSpeed's zero_to_fp32.py, which is not our code)."""
    files = []
    for d in OUR_CODE:
        for p in sorted((REPO / d).rglob("*.py")) if (REPO / d).is_dir() else []:
            if not any(part.startswith(".") or part == "__pycache__" for part in p.relative_to(REPO).parts):
                files.append(p)
    return files


def test_our_sources_have_no_unsafe_loads() -> None:
    files = _our_python_files()
    assert len(files) > 30
    problems = [f"{p.relative_to(REPO)}:{line}: {what}" for p in files for line, what in unsafe_calls(p.read_text())]
    assert not problems, "\n".join(problems)


class _Payload:
    """Unpickling this runs ``touch <marker>``: what a crafted checkpoint would do."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):  # noqa: ANN204
        import os

        return (os.system, (f"touch {self.marker}",))


def _plant(path: Path, marker: Path) -> None:
    # torch's own file format, so a weights_only=False load would unpickle (and run) it.
    torch.save({"module": _Payload(marker)}, path)


def test_safe_torch_load_refuses_code_and_reads_tensors(tmp_path) -> None:
    from scope_ray.learner.safe_load import safe_torch_load

    ok = tmp_path / "ok.pt"
    torch.save({"w": torch.ones(2), "step": 3, "ds_version": "0.19.8"}, ok)
    assert safe_torch_load(str(ok))["step"] == 3
    bad, marker = tmp_path / "bad.pt", tmp_path / "pwned"
    _plant(bad, marker)
    with pytest.raises(pickle.UnpicklingError):
        safe_torch_load(str(bad))
    assert not marker.exists()


def test_deepspeed_checkpoint_load_refuses_a_planted_pickle(ray_session, tiny_model_dir, tmp_path) -> None:
    """Through the real learner actor and DeepSpeed's load_checkpoint: the planted file
    is refused, its payload does not run, and a genuine checkpoint still loads."""
    from actors.learner import LearnerFailure, LearnerGroup
    from scope_ray.learner import LearnerOptions

    def perturb(worker: Any) -> None:  # nested: pickled by value for the actor
        with torch.no_grad():
            for p in worker.core.engine.module.parameters():
                p.add_(1.0)

    group = LearnerGroup(str(tiny_model_dir), LearnerOptions(zero_stage=2, num_cpus=0.5), 1, timeout_s=300)
    try:
        saved = group.export_weights()
        group.save_checkpoint(str(tmp_path / "ck"), tag="t")
        # Through the safe loader a genuine checkpoint restores the weights it holds.
        ray.get(group.workers[0].__ray_call__.remote(perturb))
        moved = group.export_weights()
        assert not any(torch.equal(saved[k], moved[k]) for k in saved)
        group.load_checkpoint(str(tmp_path / "ck"), tag="t")
        restored = group.export_weights()
        assert all(torch.equal(saved[k], restored[k]) for k in saved)
        (victim,) = (tmp_path / "ck" / "t").glob("*model_states.pt")
        marker = tmp_path / "pwned"
        _plant(victim, marker)
        with pytest.raises(LearnerFailure, match="load_checkpoint.*Weights only load failed"):
            group.load_checkpoint(str(tmp_path / "ck"), tag="t")
        assert not marker.exists()
    finally:
        group.shutdown()
    assert ray.is_initialized()
