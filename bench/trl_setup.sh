#!/usr/bin/env bash
# Create (or reuse) .venv-trl: TRL's own virtual environment for bench/trl_peer.py.
#
# Kept apart from the project's .venv so TRL's dependency pins never touch scope-ray's
# stack. torch is pinned to the same CPU build (2.13.0): the local wheel if pip's
# configuration has one, else PyTorch's CPU index, never a CUDA build from PyPI.
# transformers is pinned to the version scope-ray's .venv uses, so both sides load the
# same model code. Idempotent: returns at once when the stamp matches this script.
# The installed versions are written to .venv-trl/versions.json.
set -euo pipefail

root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
venv="$root/.venv-trl"
python_bin="${PYTHON:-python3}"
trl_pin="trl==1.16.*"
transformers_pin="transformers==5.19.0"

stamp="$venv/.trl-env"
want="$(cat "$root/bench/trl_setup.sh" "$root/launch/install_cpu_torch.sh" | sha256sum | cut -d' ' -f1)"
if [[ -f "$stamp" && "$(cat "$stamp")" == "$want" ]]; then
  exit 0
fi

echo "[trl-setup] preparing $venv" >&2
[[ -x "$venv/bin/python" ]] || "$python_bin" -m venv "$venv"
pip=("$venv/bin/python" -m pip --disable-pip-version-check)
"${pip[@]}" install -q --upgrade pip

# torch first, the same CPU build as .venv (never a CUDA build from PyPI).
bash "$root/launch/install_cpu_torch.sh" "$venv/bin/python"

# TRL and the matching transformers; a constraint keeps pip from replacing torch.
constraints="$(mktemp)"
trap 'rm -f "$constraints"' EXIT
"$venv/bin/python" -c "import torch; print('torch==' + torch.__version__)" > "$constraints"
"${pip[@]}" install -q "$trl_pin" "$transformers_pin" "accelerate" -c "$constraints"
# Anything that drags in CUDA-built torch companions would break imports on CPU torch.
"${pip[@]}" uninstall -q -y torchvision torchaudio torchcodec triton 2>/dev/null || true

"$venv/bin/python" - "$venv/versions.json" <<'PY'
import json, sys
from importlib.metadata import version
import torch, transformers, trl, accelerate  # noqa: F401
from trl import DistillationConfig, DistillationTrainer  # noqa: F401
assert "cuda" not in torch.__version__ and not torch.version.cuda, f"expected a CPU torch, got {torch.__version__}"
v = {p: version(p) for p in ("torch", "trl", "transformers", "accelerate", "datasets")}
json.dump(v, open(sys.argv[1], "w"), indent=1)
print("[trl-setup] versions:", v, file=sys.stderr)
PY
echo "$want" > "$stamp"
echo "[trl-setup] ready: $venv" >&2
