#!/usr/bin/env bash
# Submit `scope-ray train` to a Ray cluster as a Ray job.
#
#   launch/ray_job/submit.sh [--address URL] [--config RECIPE] [--layout LAYOUT]
#                            [--run-dir DIR | --resume RUN_DIR] [--submission-id ID]
#                            [--no-wait] [-- OVERRIDES...]
#
#   --address        the cluster's job server (dashboard), default $RAY_ADDRESS, else
#                    http://127.0.0.1:8265 (a local `ray start --head`)
#   --config         recipe YAML; paths inside this repository are sent relative to it
#                    (the job runs in the shipped copy). No --config: the embedded tiny default.
#   --layout         a layout overlay (launch/configs/layouts/*.yaml), applied as overrides
#   --run-dir        where the run writes metrics, checkpoints, the final model: shared
#                    storage on a multi-node cluster (default: runs/ inside the job's
#                    temporary working dir, which Ray deletes with the session)
#   --resume         continue the run in RUN_DIR (shared storage) from its last valid
#                    checkpoint, with its saved config unless --config is given
#   --submission-id  a name for the job (default: Ray generates raysubmit_...)
#   --no-wait        return after submitting; follow with `ray job logs -f ID`
#   OVERRIDES        dotted config overrides, e.g. trainer.total_steps=50
#
# Token authentication (Ray 2.60): the client must send the cluster's token. When
# RAY_AUTH_MODE is unset and a token is present (RAY_AUTH_TOKEN, RAY_AUTH_TOKEN_PATH or
# ~/.ray/auth_token) this script sets RAY_AUTH_MODE=token, as `ray start` itself does.
# See launch/README.md ("Token authentication").
#
# Environment: RAY (the ray CLI, default `ray`), SCOPE_RAY_PYTHON (the interpreter on
# the cluster that runs the driver, default `python`: the image's, or the venv's first
# on PATH when the local head was started from it).
set -euo pipefail

root="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
ray_bin="${RAY:-ray}"
python_bin="${SCOPE_RAY_PYTHON:-python}"
address="${RAY_ADDRESS:-http://127.0.0.1:8265}"
config="" layout="" run_dir="" resume="" submission_id="" no_wait=()
overrides=()

die() { echo "submit.sh: $*" >&2; exit 2; }

while (($#)); do
  case "$1" in
    --address) address="${2:?--address needs a value}"; shift 2 ;;
    --config) config="${2:?--config needs a value}"; shift 2 ;;
    --layout) layout="${2:?--layout needs a value}"; shift 2 ;;
    --run-dir) run_dir="${2:?--run-dir needs a value}"; shift 2 ;;
    --resume) resume="${2:?--resume needs a value}"; shift 2 ;;
    --submission-id) submission_id="${2:?--submission-id needs a value}"; shift 2 ;;
    --no-wait) no_wait=(--no-wait); shift ;;
    -h|--help) sed -n '2,/^set -euo/p' "$0" | sed '$d; s/^# \{0,1\}//'; exit 0 ;;
    --) shift; overrides+=("$@"); break ;;
    -*) die "unknown option $1 (see --help)" ;;
    *) overrides+=("$1"); shift ;;
  esac
done

# A path inside the repository becomes relative to it: the job runs in the shipped copy.
relative_to_root() {
  local p
  p="$(realpath -m "$1")"
  if [[ "$p" == "$root"/* ]]; then echo "${p#"$root"/}"; else echo "$1"; fi
}

[[ -n "$run_dir" && -n "$resume" ]] && die "--run-dir and --resume exclude each other (a resumed run keeps its dir)"
train=("$python_bin" -m scope_ray.cli train)
[[ -n "$resume" ]] && train+=(--resume "$resume")
if [[ -n "$config" ]]; then
  [[ -f "$config" ]] || die "config $config does not exist"
  train+=(--config "$(relative_to_root "$config")")
fi
if [[ -n "$layout" ]]; then
  [[ -f "$layout" ]] || die "layout $layout does not exist"
  local_python="${SCOPE_RAY_LOCAL_PYTHON:-}"
  if [[ -z "$local_python" ]]; then
    if [[ -x "$root/.venv/bin/python" ]]; then local_python="$root/.venv/bin/python"; else local_python=python3; fi
  fi
  mapfile -t layout_args < <("$local_python" "$root/launch/layout_overrides.py" "$layout")
  ((${#layout_args[@]})) || die "layout $layout produced no overrides"
  train+=("${layout_args[@]}")
fi
[[ -n "$run_dir" ]] && train+=("trainer.run_dir=$run_dir")
train+=("${overrides[@]}")

# Token auth: follow Ray's own rule for `ray start` (token present => token mode).
if [[ -z "${RAY_AUTH_MODE:-}" ]] && { [[ -n "${RAY_AUTH_TOKEN:-}" ]] || [[ -n "${RAY_AUTH_TOKEN_PATH:-}" ]] || [[ -f "$HOME/.ray/auth_token" ]]; }; then
  export RAY_AUTH_MODE=token
fi

submit=("$ray_bin" job submit --address "$address"
        --runtime-env "$root/launch/ray_job/runtime_env.yaml" --working-dir "$root")
[[ -n "$submission_id" ]] && submit+=(--submission-id "$submission_id")
submit+=("${no_wait[@]}" -- "${train[@]}")

echo "submit.sh: ${submit[*]}" >&2
cd "$root"
exec "${submit[@]}"
