#!/usr/bin/env bash
# The prepared benchmark run for the lent GPU machine (H100/H200, 16 cores, no network), ~8 minutes wall:
#   1. benchmarks/models.py: ahdrnet, vam, vam_drdb x float32, bfloat16: JAX train step (batch 8 x 256^2),
#      full-frame inference (1060x1900), FLOPs/MFU, peak memory; the official PyTorch AHDRNet beside them
#      (when torch imports);
#   2. the input pipeline's delivered crops/s against the fastest train step;
#   3. benchmarks/diffusion_sampling.py, if present.
# Each step runs under `timeout` inside an overall budget; a failed or timed-out step is recorded and the
# rest goes on. Everything lands in $OUT: models.json, pipeline.json, diffusion_sampling.json, status.jsonl
# and gpu.log (all output); a short table is printed last.
#
# Device call (from the repository root, `.whl` made by ../shared/device/wheels.sh and named in carry):
#   bash benchmarks/gpu.sh
# Knobs (environment): BUDGET (480 s), MODELS, DTYPES, BATCH, PATCH, HEIGHT, WIDTH, REPEATS, *_TIMEOUT,
# MODELS_DEADLINE, and extra flags MODELS_ARGS (e.g. "--torch_compile"), PIPELINE_ARGS, DIFFUSION_ARGS.
# models.py runs ahdrnet (then PyTorch) first: a run cut short by its deadline loses the later models only.
# Local dry run (no wheel install, tiny sizes):
#   HDR_BENCH_NO_INSTALL=1 PYTHON=/work/venv/bin/python OUT=/tmp/gpu_out BATCH=2 PATCH=64 HEIGHT=64 WIDTH=96 \
#     REPEATS=2 MODELS=ahdrnet DTYPES=float32 PIPELINE_ARGS="--pipeline_height=128 --pipeline_width=192 \
#     --pipeline_scenes=4 --workers=0" DIFFUSION_ARGS="--size=small --height=32 --width=32 --batch=2 --steps=5" \
#     bash benchmarks/gpu.sh
if [ -z "${HDR_BENCH_NO_INSTALL:-}" ]; then
  if ! python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl; then
    echo "gpu.sh: installing .whl/*.whl failed (carry .whl, made by ../shared/device/wheels.sh)"
    exit 1
  fi
  export PYTHONPATH=/tmp/site:$PWD
else
  export PYTHONPATH=$PWD${PYTHONPATH:+:$PYTHONPATH}
fi
set -u
export PYTHONUNBUFFERED=1

PY=${PYTHON:-python3}
OUT=${OUT:-$PWD/benchmarks/out/gpu}
BUDGET=${BUDGET:-480}                  # seconds for the whole script; each step's timeout fits inside it
MODELS=${MODELS:-ahdrnet,vam,vam_drdb}
DTYPES=${DTYPES:-float32,bfloat16}
BATCH=${BATCH:-8}
PATCH=${PATCH:-256}
HEIGHT=${HEIGHT:-1060}
WIDTH=${WIDTH:-1900}
REPEATS=${REPEATS:-10}
MODELS_TIMEOUT=${MODELS_TIMEOUT:-300}
MODELS_DEADLINE=${MODELS_DEADLINE:-230}  # at most; less when the budget or MODELS_TIMEOUT is short
PIPELINE_TIMEOUT=${PIPELINE_TIMEOUT:-75}
DIFFUSION_TIMEOUT=${DIFFUSION_TIMEOUT:-300}  # the last step: in effect what is left of BUDGET
MODELS_ARGS=${MODELS_ARGS:-}
PIPELINE_ARGS=${PIPELINE_ARGS:---crops_per_scene=1,4}
DIFFUSION_ARGS=${DIFFUSION_ARGS:-}

mkdir -p "$OUT"
LOG=$OUT/gpu.log
STATUS=$OUT/status.jsonl
: > "$LOG"
: > "$STATUS"
SUMMARY=()
FAILED=0

log() { echo "$*" | tee -a "$LOG"; }

# step NAME LIMIT_S CMD...: runs CMD under timeout (capped by what is left of BUDGET), logs, records.
step() {
  local name=$1 limit=$2
  shift 2
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

log "gpu.sh $(date -u +%FT%TZ) in $PWD, OUT=$OUT, budget ${BUDGET}s"
if command -v nvidia-smi > /dev/null; then
  nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.sm,clocks.max.sm --format=csv 2>&1 | tee -a "$LOG"
fi
step preflight 60 "$PY" -c "import sys, jax, flax, optax, grain, ml_collections; \
print(sys.version.split()[0], 'jax', jax.__version__, 'flax', flax.__version__, 'optax', optax.__version__, jax.devices())"

TORCH=()
if "$PY" -c "import torch" > /dev/null 2>&1; then
  TORCH=(--torch)
  log "torch $("$PY" -c "import torch; print(torch.__version__, 'cuda', torch.cuda.is_available())" 2>&1)"
else
  log "torch is not importable here: the PyTorch comparison is skipped"
fi

# models.py starts no new measurement after its deadline: keep ~70 s for the one in flight under the timeout
DEADLINE=$((BUDGET - SECONDS - 5 - 70))
[ "$DEADLINE" -gt "$MODELS_DEADLINE" ] && DEADLINE=$MODELS_DEADLINE
[ "$DEADLINE" -gt $((MODELS_TIMEOUT - 70)) ] && DEADLINE=$((MODELS_TIMEOUT - 70))
# shellcheck disable=SC2086  # *_ARGS are word lists on purpose
step models "$MODELS_TIMEOUT" "$PY" benchmarks/models.py --models="$MODELS" --dtypes="$DTYPES" --batch="$BATCH" \
  --patch="$PATCH" --height="$HEIGHT" --width="$WIDTH" --repeats="$REPEATS" "${TORCH[@]}" \
  --deadline_s="$DEADLINE" --json="$OUT/models.json" $MODELS_ARGS

CONSUMPTION=()
[ -f "$OUT/models.json" ] && CONSUMPTION=(--consumption_from="$OUT/models.json")
# shellcheck disable=SC2086
step pipeline "$PIPELINE_TIMEOUT" "$PY" benchmarks/models.py --models= --pipeline --batch="$BATCH" --patch="$PATCH" \
  "${CONSUMPTION[@]}" --json="$OUT/pipeline.json" $PIPELINE_ARGS

if [ -f benchmarks/diffusion_sampling.py ]; then
  DIFF_HELP=$("$PY" benchmarks/diffusion_sampling.py --help 2>&1)
  DIFF=()
  grep -q -- '--json' <<< "$DIFF_HELP" && DIFF+=(--json="$OUT/diffusion_sampling.json")
  if grep -q -- '--peak_tflops' <<< "$DIFF_HELP" && [ -f "$OUT/models.json" ]; then
    # the measured matmul peak of the dtype diffusion_sampling.py runs in (its --dtype, default float32)
    DTYPE=$(grep -o -- '--dtype[= ][a-z0-9]*' <<< "$DIFFUSION_ARGS" | sed 's/--dtype[= ]//')
    PEAK=$("$PY" -c "import json, sys; p = json.load(open(sys.argv[1])).get('peaks', {}).get(sys.argv[2], {}); \
print(p.get('tflops') or '')" "$OUT/models.json" "${DTYPE:-float32}" 2>/dev/null)
    [ -n "$PEAK" ] && DIFF+=(--peak_tflops="$PEAK")
  fi
  # shellcheck disable=SC2086
  step diffusion "$DIFFUSION_TIMEOUT" "$PY" benchmarks/diffusion_sampling.py "${DIFF[@]}" $DIFFUSION_ARGS
else
  log "benchmarks/diffusion_sampling.py is absent: skipped"
fi

{
  echo
  echo "================================ summary ================================"
  SUMMARIES=()
  for f in "$OUT/models.json" "$OUT/pipeline.json"; do [ -f "$f" ] && SUMMARIES+=("$f"); done
  if [ "${#SUMMARIES[@]}" -gt 0 ]; then
    "$PY" benchmarks/models.py --summary="$(IFS=,; echo "${SUMMARIES[*]}")" 2>&1
  fi
  if [ -f "$OUT/diffusion_sampling.json" ]; then
    echo "diffusion_sampling.json (numbers, settings left out):"
    "$PY" -c "import json, sys
d = json.load(open(sys.argv[1]))
def walk(x, pre=''):
  if isinstance(x, dict):
    for k, v in x.items():
      if k not in ('args', 'settings', 'config', 'versions', 'device'): walk(v, f'{pre}{k}.')
  elif isinstance(x, (int, float)) and not isinstance(x, bool) and pre.count('.') <= 2:
    print(f'  {pre[:-1]}: {x:.4g}')
walk(d)" "$OUT/diffusion_sampling.json" 2>&1 | head -30
  fi
  echo "steps:"
  printf '  %s\n' "${SUMMARY[@]}"
  echo "total ${SECONDS}s, ${FAILED} step(s) not ok; JSON and gpu.log in $OUT"
} 2>&1 | tee -a "$LOG"
exit 0
