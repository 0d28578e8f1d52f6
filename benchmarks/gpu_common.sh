# shellcheck shell=bash disable=SC2034  # PY, SUMMARY etc. are used by the scripts that source this
# Shared by the prepared GPU runs (benchmarks/gpu.sh, benchmarks/gpu_issue20.sh); sourced, not run.
# Installs the carried wheels (.whl/, made by ../shared/device/wheels.sh or benchmarks/device_wheels.sh)
# unless HDR_BENCH_NO_INSTALL is set (a local dry run), then defines the run's bookkeeping:
#   PY (python3, or $PYTHON), OUT ($OUT, else benchmarks/out/<default_out>), BUDGET (seconds for the
#   whole script; the caller sets the default first), LOG=$OUT/gpu.log, STATUS=$OUT/status.jsonl,
#   one JAX compilation cache for every step, and
#   log MESSAGE                  - echo and append to $LOG;
#   step NAME LIMIT_S CMD...     - CMD under `timeout` (capped by what is left of BUDGET; skipped when
#                                  under 20 s are left or NAME is in $SKIP), logged, recorded in $STATUS
#                                  and in SUMMARY (FAILED counts the steps that were not ok);
#   deadline TIMEOUT CAP         - seconds a script with its own --deadline_s may start measurements in,
#                                  keeping ~70 s for the one in flight under TIMEOUT.
# Usage: GPU_DEFAULT_OUT=gpu; BUDGET=${BUDGET:-560}; source benchmarks/gpu_common.sh
if [ -z "${HDR_BENCH_NO_INSTALL:-}" ]; then
  if ! python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl; then
    echo "installing .whl/*.whl failed (carry .whl, made by ../shared/device/wheels.sh)"
    exit 1
  fi
  export PYTHONPATH=/tmp/site:$PWD
else
  export PYTHONPATH=$PWD${PYTHONPATH:+:$PYTHONPATH}
fi
set -u
export PYTHONUNBUFFERED=1

PY=${PYTHON:-python3}
OUT=${OUT:-$PWD/benchmarks/out/${GPU_DEFAULT_OUT:-gpu}}
BUDGET=${BUDGET:-560}
SKIP=${SKIP:-}
mkdir -p "$OUT"
export JAX_COMPILATION_CACHE_DIR=${JAX_COMPILATION_CACHE_DIR:-/tmp/hdr_jax_compile_cache}
export JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS=${JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS:-1}
LOG=$OUT/gpu.log
STATUS=$OUT/status.jsonl
: > "$LOG"
: > "$STATUS"
SUMMARY=()
FAILED=0

log() { echo "$*" | tee -a "$LOG"; }

step() {
  local name=$1 limit=$2
  shift 2
  if [[ ",$SKIP," == *",$name,"* ]]; then
    log "=== $name: skipped (SKIP)"
    return
  fi
  local left=$((BUDGET - SECONDS - 5))
  if [ "$left" -lt "$limit" ]; then limit=$left; fi
  local status rc took start=$SECONDS
  if [ "$limit" -lt 20 ]; then
    status=SKIPPED rc=-1
    log "=== $name: skipped, ${left}s of the ${BUDGET}s budget left"
  else
    log "=== $name (timeout ${limit}s): $*"
    timeout -k 15 "$limit" "$@" 2>&1 | tee -a "$LOG"
    rc=${PIPESTATUS[0]}
    if [ "$rc" -eq 0 ]; then status=ok; elif [ "$rc" -eq 124 ] || [ "$rc" -eq 137 ]; then status=TIMEOUT; else status=FAILED; fi
  fi
  took=$((SECONDS - start))
  [ "$status" = ok ] || FAILED=$((FAILED + 1))
  SUMMARY+=("$(printf '%-12s %-8s rc=%-4s %4ss' "$name" "$status" "$rc" "$took")")
  printf '{"step": "%s", "status": "%s", "rc": %s, "seconds": %s, "limit_s": %s}\n' \
    "$name" "$status" "$rc" "$took" "$limit" >> "$STATUS"
}

deadline() {  # deadline TIMEOUT CAP
  local d=$((BUDGET - SECONDS - 5 - 70))
  [ "$d" -gt "$2" ] && d=$2
  [ "$d" -gt $(($1 - 70)) ] && d=$(($1 - 70))
  echo "$d"
}
