#!/usr/bin/env bash
# README command 2: set up (or reuse) .venv, then run the whole test suite.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
bash "$root/launch/setup_env.sh"
cd "$root"
exec "$root/.venv/bin/python" -m pytest tests "$@"
