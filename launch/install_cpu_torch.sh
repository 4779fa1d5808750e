#!/usr/bin/env bash
# Install the CPU build of torch 2.13.0 into the environment of PYTHON (argument 1),
# unless it is already there. Shared by launch/setup_env.sh and bench/trl_setup.sh.
#
# Why a step of its own: a plain `pip install torch==2.13.0` resolves to a multi-GB CUDA
# build from PyPI. "+cpu" matches only a CPU build, which PyPI does not carry: a pip
# configured with a local wheel (find-links) finds it directly; elsewhere it comes from
# PyTorch's CPU index (SCOPE_RAY_TORCH_INDEX overrides that address).
set -euo pipefail

python="$1"
torch_pin="torch==2.13.0+cpu"
torch_index="${SCOPE_RAY_TORCH_INDEX:-https://download.pytorch.org/whl/cpu}"

if "$python" -c "import torch, sys; sys.exit(torch.__version__ != '2.13.0+cpu')" 2>/dev/null; then
  exit 0
fi
pip=("$python" -m pip --disable-pip-version-check)
"${pip[@]}" install -q "$torch_pin" 2>/dev/null \
  || "${pip[@]}" install -q "$torch_pin" --extra-index-url "$torch_index"
