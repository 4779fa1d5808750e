#!/usr/bin/env bash
# Evaluate a model on the paper's six benchmarks at the paper's settings:
# 32 samples per problem, temperature 0.6, top-p 0.95, top-k 20, 12288 response tokens;
# Avg@32 and Pass@32 (unbiased estimator) per benchmark and their mean over benchmarks
# (Table 1 of the paper averages the six benchmarks, not the problems).
#
#   launch/eval_paper.sh MODEL_DIR [DATA_DIR] [OUT_JSON]
#
#   MODEL_DIR  a local HF model dir (a base model, or RUN_DIR/.../hf from a run)
#   DATA_DIR   where launch/prepare_data.py wrote <benchmark>.parquet (default /mnt/data/scope)
#   OUT_JSON   where to keep the raw `scope-ray eval --json` output (default MODEL_DIR/eval_paper.json)
#
# Runs vLLM in this process on this machine's GPU (one GPU is enough for 1.5B-8B models).
# On a Ray cluster: ray job submit --entrypoint-num-gpus 1 --working-dir . -- bash launch/eval_paper.sh ...
# Environment: K, TEMPERATURE, TOP_P, TOP_K, MAX_TOKENS, DTYPE, BENCHMARKS (space-separated)
# override the paper's values; SCOPE_RAY (the scope-ray command) defaults to `scope-ray`.
set -euo pipefail

root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
model="${1:?usage: eval_paper.sh MODEL_DIR [DATA_DIR] [OUT_JSON]}"
data_dir="${2:-/mnt/data/scope}"
out="${3:-$model/eval_paper.json}"
benchmarks=(${BENCHMARKS:-aime24 aime25 amc23 math500 minerva olympiadbench})
scope_ray="${SCOPE_RAY:-scope-ray}"
python_bin="${PYTHON:-python}"

files=()
for b in "${benchmarks[@]}"; do
  f="$data_dir/$b.parquet"
  [[ -f "$f" ]] || { echo "eval_paper.sh: $f is missing (run launch/prepare_data.py)" >&2; exit 2; }
  files+=("$f")
done

# shellcheck disable=SC2086 # SCOPE_RAY may be a command with arguments
$scope_ray eval --model "$model" --data "${files[@]}" \
  --k "${K:-32}" --temperature "${TEMPERATURE:-0.6}" --top-p "${TOP_P:-0.95}" --top-k "${TOP_K:-20}" \
  --max-tokens "${MAX_TOKENS:-12288}" --dtype "${DTYPE:-bfloat16}" --json > "$out.tmp"
mv "$out.tmp" "$out"
"$python_bin" "$root/launch/eval_summary.py" "$out"
