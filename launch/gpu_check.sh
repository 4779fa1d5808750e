#!/usr/bin/env bash
# The GPU check, one command (fits in 10 minutes on one H100/H200): every CUDA path at
# ~100M parameters (launch/gpu_smoke.py), then the paper's shapes against the planner's
# estimates (launch/gpu_check.py). Needs torch + transformers only; Ray, vLLM and
# DeepSpeed are used when present and reported as skipped when not.
#
#   bash launch/gpu_check.sh [OUT_DIR]      # default ./gpu_check; JSON reports land there
set -uo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
out="${1:-gpu_check}"
mkdir -p "$out"
python="${PYTHON:-python3}"
rc=0
"$python" "$root/launch/gpu_smoke.py" --out "$out/gpu_smoke.json" >/dev/null 2>"$out/gpu_smoke.log" || rc=1
"$python" "$root/launch/gpu_check.py" --out "$out/gpu_check.json" >/dev/null 2>"$out/gpu_check.log" || rc=1
"$python" - "$out" <<'PY'
import json, sys
from pathlib import Path
out = Path(sys.argv[1])
for name in ("gpu_smoke.json", "gpu_check.json"):
    p = out / name
    print(f"== {name}")
    print(p.read_text() if p.is_file() else f"(missing: see {p.with_suffix('.log')})")
PY
exit "$rc"
