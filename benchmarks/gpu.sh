#!/usr/bin/env bash
# The prepared benchmark run for the lent GPU machine (H100/H200, 16 cores, no network), ~9 minutes wall,
# in this order (what the last runs did not measure first: the H100 runs of 2026-11-26 measured AHDRNet,
# HDR-VAM and VAM+DRDB (train steps and frames), the tiles pipeline and the DDPM loop, so those come later):
#   1. benchmarks/models.py, the other model families' train steps: the `full` DDPM U-Net, l-DAE
#      pretraining and the GAN (MODELS_B, DTYPES_B: bfloat16; MODELS_B_PHASES: train; a DDPM "frame" would
#      be a whole 1000-step tiled sample of 1060x1900);
#   2. benchmarks/profile_step.py on PROFILE_TARGET in PROFILE_DTYPE (default: VAM+DRDB's bf16 train step,
#      the main regression model, at 5.8 % MFU on the H100; AHDRNet's fp32 step was profiled last time);
#   3. benchmarks/sampler_quality.py: train the small conditional DDPM, then DDIM-50 (eta 1) vs 1000
#      ancestral steps; each evaluation is printed as it ends, and the training's metrics.jsonl is kept
#      (in the last run, training and the first evaluation took more than 230 s together);
#   4. benchmarks/models.py, AHDRNet (MODELS, DTYPES: bfloat16, float32; add variants such as
#      ahdrnet@model.dense_form=concat): JAX train step (batch 8 x 256^2), full-frame inference
#      (1060x1900), FLOPs/MFU, peak memory; the official PyTorch AHDRNet beside it (when torch imports);
#   5. the input pipeline's delivered crops/s (tiles, prepared ArrayRecord, PNG; 1 crop per scene) against
#      the fastest train step of step 4;
#   6. benchmarks/diffusion_sampling.py: DDPM sampling at 8 x 128^2, T=1000, bf16, the `full` U-Net
#      (DIFFUSION_ARGS), compiled loop vs Python stepping vs PyTorch eager and tuned, DDIM-50, MFU against a
#      measured peak;
#   7. if time is left, the compiled sampling loop again with XLA's command buffers (CUDA graphs) for
#      while loops and with GroupNorm statistics reduced per channel (model.gn_stats).
# With the default BUDGET steps 4-7 are skipped (they were all measured on the H100 on 2026-11-26); set
# SKIP=models_b,profile,quality to measure them. The three open speed targets against the tuned and
# compiled PyTorch peers (torch.compile, CUDA graphs) and the XLA options are benchmarks/gpu_issue20.sh's.
# Each step runs under `timeout` inside an overall budget; a failed or timed-out step is recorded and the
# rest goes on. Everything lands in $OUT: models.json, models_b.json, pipeline.json,
# diffusion_sampling.json, diffusion_gnstats.json, diffusion_cmdbuf.json, sampler_quality.json,
# profile/summary.json, sampler_quality_metrics.jsonl, status.jsonl and gpu.log (all output); a short table is printed last.
# One JAX compilation cache (JAX_COMPILATION_CACHE_DIR, with XLA's per-fusion autotuning results) is
# shared by every step, so a convolution shape autotuned once is not autotuned again: later steps'
# compile times are those of a warm cache.
#
# Device call (from the repository root; `.whl` made by `bash benchmarks/device_wheels.sh`, which adds
# tensorboardX and tensorflow-datasets to ../shared/device/wheels.sh's set, and named in carry):
#   bash benchmarks/gpu.sh
# Knobs (environment): BUDGET (560 s), MODELS, DTYPES, MODELS_B, DTYPES_B, MODELS_B_PHASES, PROFILE_TARGET,
# PROFILE_DTYPE, BATCH, PATCH, HEIGHT, WIDTH,
# REPEATS, *_TIMEOUT, MODELS_DEADLINE, and extra flags MODELS_ARGS (e.g. "--torch_compile"), PIPELINE_ARGS,
# DIFFUSION_ARGS, QUALITY_ARGS, CMDBUF_ARGS (also used by gnstats); SKIP (comma-separated step names:
# models, pipeline, models_b, diffusion, gnstats, cmdbuf, quality, profile).
# models.py runs the models in MODELS order (PyTorch right after the first AHDRNet): a run cut short by its
# deadline loses the later ones only.
# Local dry run (no wheel install, tiny sizes):
#   HDR_BENCH_NO_INSTALL=1 PYTHON=.venv/bin/python OUT=/tmp/gpu_out BATCH=2 PATCH=64 HEIGHT=64 WIDTH=96 \
#     REPEATS=2 MODELS=ahdrnet DTYPES=float32 MODELS_B=vam PIPELINE_ARGS="--height=128 \
#     --width=192 --scenes=4 --workers=0" DIFFUSION_ARGS="--size=small --height=32 --width=32 \
#     --batch=2 --steps=5 --ddim_steps=2 --python_steps=3 --torch_steps=2 --repeats=1" SKIP=quality,profile \
#     bash benchmarks/gpu.sh
BUDGET=${BUDGET:-560}                  # seconds for the whole script; each step's timeout fits inside it
GPU_DEFAULT_OUT=gpu
# shellcheck source=benchmarks/gpu_common.sh
source "$(dirname "${BASH_SOURCE[0]}")/gpu_common.sh" || exit 1  # wheels, OUT, LOG, STATUS, log, step, deadline
MODELS=${MODELS:-ahdrnet}
DTYPES=${DTYPES:-bfloat16,float32}
MODELS_B=${MODELS_B:-diffusion:full,ldae,gan}
DTYPES_B=${DTYPES_B:-bfloat16}
MODELS_B_PHASES=${MODELS_B_PHASES:-train}
BATCH=${BATCH:-8}
PATCH=${PATCH:-256}
HEIGHT=${HEIGHT:-1060}
WIDTH=${WIDTH:-1900}
REPEATS=${REPEATS:-10}
MODELS_TIMEOUT=${MODELS_TIMEOUT:-170}
MODELS_DEADLINE=${MODELS_DEADLINE:-100}  # at most; less when the budget or MODELS_TIMEOUT is short
MODELS_B_TIMEOUT=${MODELS_B_TIMEOUT:-200}
PIPELINE_TIMEOUT=${PIPELINE_TIMEOUT:-75}
DIFFUSION_TIMEOUT=${DIFFUSION_TIMEOUT:-80}
QUALITY_TIMEOUT=${QUALITY_TIMEOUT:-230}
PROFILE_TIMEOUT=${PROFILE_TIMEOUT:-120}  # VAM+DRDB's bf16 train step compiled in 82 s
PROFILE_TARGET=${PROFILE_TARGET:-train:vam_drdb}
PROFILE_DTYPE=${PROFILE_DTYPE:-bfloat16}
CMDBUF_TIMEOUT=${CMDBUF_TIMEOUT:-45}
GNSTATS_TIMEOUT=${GNSTATS_TIMEOUT:-45}
MODELS_ARGS=${MODELS_ARGS:-}
PIPELINE_ARGS=${PIPELINE_ARGS:---crops_per_scene=1}
# PyTorch eager and tuned only here: benchmarks/gpu_issue20.sh measures the compiled variants
DIFFUSION_ARGS=${DIFFUSION_ARGS:---size=full --dtype=bfloat16 --repeats=2 --torch_steps=20 --torch_variants=eager,tuned}
CMDBUF_ARGS=${CMDBUF_ARGS:---size=full --dtype=bfloat16 --repeats=2}
QUALITY_ARGS=${QUALITY_ARGS:---train_steps=3000 --val_scenes=8 --seeds=0 --samplers=ddpm,ddim:50:1 \
--config.batch_size=32 --config.data.num_workers=4}
log "gpu.sh $(date -u +%FT%TZ) in $PWD, OUT=$OUT, budget ${BUDGET}s"
if command -v nvidia-smi > /dev/null; then
  nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.sm,clocks.max.sm --format=csv 2>&1 | tee -a "$LOG"
fi
step preflight 60 "$PY" -c "import sys, jax, flax, optax, grain, ml_collections, tensorboardX; \
print(sys.version.split()[0], 'jax', jax.__version__, 'flax', flax.__version__, 'optax', optax.__version__, jax.devices())"

TORCH=()
if "$PY" -c "import torch" > /dev/null 2>&1; then
  TORCH=(--torch)
  log "torch $("$PY" -c "import torch; print(torch.__version__, 'cuda', torch.cuda.is_available())" 2>&1)"
else
  log "torch is not importable here: the PyTorch comparison is skipped"
fi

# models.py starts no new measurement after its deadline (`deadline`: ~70 s kept for the one in flight)
# shellcheck disable=SC2086
step models_b "$MODELS_B_TIMEOUT" "$PY" benchmarks/models.py --models="$MODELS_B" --dtypes="$DTYPES_B" \
  --batch="$BATCH" --patch="$PATCH" --height="$HEIGHT" --width="$WIDTH" --repeats="$REPEATS" \
  --phases="$MODELS_B_PHASES" --phase_major \
  --deadline_s="$(deadline "$MODELS_B_TIMEOUT" "$MODELS_B_TIMEOUT")" --json="$OUT/models_b.json" $MODELS_ARGS

# Where a step's device time goes: every kernel of a few steps, grouped (convolutions, copies, fusions).
step profile "$PROFILE_TIMEOUT" "$PY" benchmarks/profile_step.py --target="$PROFILE_TARGET" --dtype="$PROFILE_DTYPE" \
  --batch="$BATCH" --patch="$PATCH" --steps=5 --top=30 --out="$OUT/profile"

# shellcheck disable=SC2086
step quality "$QUALITY_TIMEOUT" "$PY" benchmarks/sampler_quality.py --workdir=/tmp/hdr_sampler_quality \
  --json="$OUT/sampler_quality.json" $QUALITY_ARGS
cp /tmp/hdr_sampler_quality/metrics.jsonl "$OUT/sampler_quality_metrics.jsonl" 2> /dev/null

# shellcheck disable=SC2086  # *_ARGS are word lists on purpose
step models "$MODELS_TIMEOUT" "$PY" benchmarks/models.py --models="$MODELS" --dtypes="$DTYPES" --batch="$BATCH" \
  --patch="$PATCH" --height="$HEIGHT" --width="$WIDTH" --repeats="$REPEATS" "${TORCH[@]}" \
  --deadline_s="$(deadline "$MODELS_TIMEOUT" "$MODELS_DEADLINE")" --json="$OUT/models.json" $MODELS_ARGS

CONSUMPTION=()
[ -f "$OUT/models.json" ] && CONSUMPTION=(--consumption_from="$OUT/models.json")
# shellcheck disable=SC2086
step pipeline "$PIPELINE_TIMEOUT" "$PY" benchmarks/input_pipeline.py --scenes=16 --workers=auto --threads=4 \
  --prefetch=4 --batches=24 --sources=tiles,prepared/array_record,png --batch="$BATCH" --patch="$PATCH" \
  "${CONSUMPTION[@]}" --json="$OUT/pipeline.json" $PIPELINE_ARGS

# shellcheck disable=SC2086  # *_ARGS are word lists on purpose
step diffusion "$DIFFUSION_TIMEOUT" "$PY" benchmarks/diffusion_sampling.py --json="$OUT/diffusion_sampling.json" \
  --peak_tflops=auto $DIFFUSION_ARGS

# The compiled sampling loop with XLA's while loops recorded as CUDA graphs (command buffers).
# shellcheck disable=SC2086
XLA_FLAGS="${XLA_FLAGS:+$XLA_FLAGS }--xla_gpu_enable_command_buffer=+WHILE,+CONDITIONAL" \
  step cmdbuf "$CMDBUF_TIMEOUT" "$PY" benchmarks/diffusion_sampling.py --json="$OUT/diffusion_cmdbuf.json" \
  --no_torch --ddim_steps=0 --python_steps=20 $CMDBUF_ARGS

# The same compiled loop with GroupNorm's statistics reduced per channel first (compare with the same
# U-Net's row of the diffusion step above).
# shellcheck disable=SC2086
step gnstats "$GNSTATS_TIMEOUT" "$PY" benchmarks/diffusion_sampling.py --json="$OUT/diffusion_gnstats.json" \
  --no_torch --ddim_steps=0 --python_steps=20 --model_set=gn_stats=channel $CMDBUF_ARGS

find "$OUT" -name '*.xplane.pb' -delete 2> /dev/null

{
  echo
  echo "================================ summary ================================"
  SUMMARIES=()
  for f in "$OUT/models.json" "$OUT/models_b.json"; do [ -f "$f" ] && SUMMARIES+=("$f"); done
  if [ "${#SUMMARIES[@]}" -gt 0 ]; then
    "$PY" benchmarks/models.py --summary="$(IFS=,; echo "${SUMMARIES[*]}")" 2>&1
  fi
  [ -f "$OUT/pipeline.json" ] && "$PY" -c "import json, sys
d = json.load(open(sys.argv[1]))
print('pipeline.json: best delivered / fastest train step per crops/scene:', d.get('ratio'), '(target', d.get('target_ratio'), ')')
[print('  FAILED', f) for f in d.get('failures', [])]" "$OUT/pipeline.json" 2>&1
  for f in diffusion_sampling diffusion_gnstats diffusion_cmdbuf sampler_quality; do
    [ -f "$OUT/$f.json" ] || continue
    echo "$f.json:"
    "$PY" -c "import json, sys
d = json.load(open(sys.argv[1]))
for size, r in d.get('sizes', {}).items():
  for row in r['rows']:
    print(f\"  {size:8s} {row['method'][:40]:40s} {1e3 * row['s_per_step']:8.3f} ms/step {row['s_per_sample']:7.2f} s/sample\")
for k, a in (d.get('summary') or {}).items():
  print(f\"  {k:14s} PSNR-mu {a['psnr_mu']:.2f} (sd {a['psnr_mu_sd']:.2f}) gap {a['gap_to_reference_db']:+.2f} dB\")" \
      "$OUT/$f.json" 2>&1 | head -30
  done
  echo "steps:"
  printf '  %s\n' "${SUMMARY[@]}"
  echo "total ${SECONDS}s, ${FAILED} step(s) not ok; JSON and gpu.log in $OUT"
} 2>&1 | tee -a "$LOG"
exit 0
