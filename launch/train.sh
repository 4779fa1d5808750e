#!/usr/bin/env bash
# README command 1: set up (or reuse) .venv, then run the main job. With no arguments it
# trains the embedded default (tiny teacher and student built locally, local Ray, CPU).
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
bash "$root/launch/setup_env.sh"
cd "$root"
exec "$root/.venv/bin/scope-ray" train "$@"
