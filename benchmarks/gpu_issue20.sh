#!/usr/bin/env bash
# Issue 20's prepared GPU run (H100/H200, no network): the three open speed targets against the strongest
# PyTorch peer of the same run, then cheap XLA options, at most ~9 minutes (BUDGET=530 s) in this order:
#   1. ahdr_bf16: benchmarks/models.py, AHDRNet bf16: JAX train step (batch 8 x 256^2) and full frame
#      (1060x1900), the official PyTorch AHDRNet eager / tuned (channels_last, fused Adam,
#      cudnn.benchmark) / torch.compile. Targets: train step >= 2x faster than the best peer, frame <= 20 ms.
#   2. ddpm: benchmarks/diffusion_sampling.py, the 34.3 M `full` U-Net (configs/diffusion.py:full), bf16,
#      8 x 128^2, T = 1000: the compiled loop, Python stepping, PyTorch eager / tuned / reduce-overhead
#      (the compiled step replayed as a CUDA graph) / compile. Target: a 1000-step sample <= 1.5 s.
#   3. opt_*: the bf16 frame and the JAX sampler loop again under XLA options, each in its own process
#      (OPTIONS, in order, until the budget ends): cuDNN convolution fusions (frame, loop), while loops
#      as command buffers (CUDA graphs), cuDNN runtime fusions, batch 16 (per-image time), autotune level 5.
#   4. ahdr_f32: AHDRNet's float32 train step against the fp32 peers, if time is left.
# Each step runs under `timeout` inside the budget (benchmarks/gpu_common.sh); the Python scripts have
# their own --deadline_s (no new measurement after it) and rewrite their JSON after every measurement,
# so a step cut short keeps what it measured. Everything lands in $OUT: ahdr_bf16.json, ddpm.json,
# opt_ddpm_<name>.json, opt_frame_<name>.json, ahdr_f32.json, targets.json (the table), status.jsonl,
# gpu.log. The table (benchmarks/gpu_targets.py) is printed last.
#
# Device call, from the repository root (`bash ../shared/device/wheels.sh` first, here: it fills .whl/
# with grain, ml_collections and OpenEXR, which the image lacks), carry [".whl"], timeout_s 600:
#   bash benchmarks/gpu_issue20.sh
# Local dry run on the CPU (tiny sizes, no wheel install; PyTorch eager and tuned only unless
# TINY_COMPILE=1; XLA's GPU flags parse but do nothing on a CPU):
#   ISSUE20_TINY=1 HDR_BENCH_NO_INSTALL=1 PYTHON=python OUT=/tmp/issue20 bash benchmarks/gpu_issue20.sh
# Knobs (environment): BUDGET, SKIP (comma-separated step names: preflight, ahdr_bf16, ddpm, ahdr_f32,
# opt_ddpm_<name>, opt_frame_<name>), OPTIONS, AHDR_TIMEOUT, DDPM_TIMEOUT, OPT_TIMEOUT, F32_TIMEOUT,
# TORCH_VARIANTS (the sampler's PyTorch variants), MAX_AUTOTUNE=1 (adds torch.compile max-autotune to
# the sampler's PyTorch variants: minutes of compiling, raise BUDGET and DDPM_TIMEOUT). ISSUE20_TINY
# replaces BUDGET with BUDGET_TINY (3600 s) and multiplies the timeouts by 4.
BUDGET=${BUDGET:-530}
GPU_DEFAULT_OUT=issue20
if [ -n "${ISSUE20_TINY:-}" ]; then BUDGET=${BUDGET_TINY:-3600}; fi
# shellcheck source=benchmarks/gpu_common.sh
source "$(dirname "${BASH_SOURCE[0]}")/gpu_common.sh" || exit 1  # wheels, OUT, LOG, STATUS, log, step, deadline
export XLA_PYTHON_CLIENT_PREALLOCATE=false  # JAX and PyTorch share the GPU in one process

SLOW=1
if [ -n "${ISSUE20_TINY:-}" ]; then SLOW=4; fi  # a CPU runs even the toy sizes slowly (PyTorch's bf16 most)
AHDR_TIMEOUT=${AHDR_TIMEOUT:-$((190 * SLOW))}
DDPM_TIMEOUT=${DDPM_TIMEOUT:-$((170 * SLOW))}
OPT_TIMEOUT=${OPT_TIMEOUT:-$((60 * SLOW))}
F32_TIMEOUT=${F32_TIMEOUT:-$((120 * SLOW))}
# name|target|XLA flags|extra arguments; target ddpm (the compiled 1000-step loop) or frame (bf16 frame)
OPTIONS=${OPTIONS:-"convfusion|frame|--xla_gpu_experimental_enable_conv_fusion=true|;\
convfusion|ddpm|--xla_gpu_experimental_enable_conv_fusion=true|;\
cmdbuf|ddpm|--xla_gpu_enable_command_buffer=+WHILE,+CONDITIONAL|;\
runtimefusion|frame|--xla_gpu_use_runtime_fusion=true|;\
batch16|ddpm||--batch=16;\
runtimefusion|ddpm|--xla_gpu_use_runtime_fusion=true|;\
autotune5|frame|--xla_gpu_autotune_level=5|"}
TORCH_VARIANTS=${TORCH_VARIANTS:-eager,tuned,reduce-overhead,compile}
MODELS_COMPILE=(--torch_compile)
DDPM_MAX=()
if [ -n "${MAX_AUTOTUNE:-}" ]; then DDPM_MAX=(--torch_max_autotune); fi

if [ -n "${ISSUE20_TINY:-}" ]; then
  AHDR_SIZE=(--batch=1 --patch=16 --height=32 --width=48 --repeats=2 --iters=1 --warmup=1)
  DDPM_SIZE=(--size=small --height=16 --width=16 --batch=1 --steps=10 --repeats=1 --model_set=ch=8
             --model_set=groups=4 "--model_set=ch_mult=(1,2)" "--model_set=attn_levels=(1,)")
  DDPM_PEERS=(--python_steps=3 --torch_steps=2)
  if [ -z "${TINY_COMPILE:-}" ]; then
    MODELS_COMPILE=()
    TORCH_VARIANTS=eager,tuned
  fi
  log "ISSUE20_TINY: toy sizes, the numbers mean nothing"
else
  AHDR_SIZE=(--batch=8 --patch=256 --height=1060 --width=1900 --repeats=10)
  DDPM_SIZE=(--size=full --height=128 --width=128 --batch=8 --steps=1000 --repeats=2)
  DDPM_PEERS=(--python_steps=50 --torch_steps=20)
fi

log "gpu_issue20.sh $(date -u +%FT%TZ) in $PWD, OUT=$OUT, budget ${BUDGET}s, XLA_FLAGS=${XLA_FLAGS:-}"
if command -v nvidia-smi > /dev/null; then
  nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.sm,clocks.max.sm --format=csv 2>&1 | tee -a "$LOG"
fi
step preflight 60 "$PY" -c "import sys, jax, flax, optax, ml_collections; \
print(sys.version.split()[0], 'jax', jax.__version__, 'flax', flax.__version__, jax.devices())"
TORCH=()
if "$PY" -c "import torch" > /dev/null 2>&1; then
  TORCH=(--torch)
  log "torch $("$PY" -c "import torch; print(torch.__version__, 'cuda', torch.cuda.is_available(), 'cudnn', \
torch.backends.cudnn.version())" 2>&1); C compiler for torch.compile: $(command -v gcc cc | head -1)"
else
  log "torch is not importable here: no PyTorch peer, JAX rows only"
fi

# 1. AHDRNet bf16: train step and full frame, JAX then PyTorch eager / tuned / compile
step ahdr_bf16 "$AHDR_TIMEOUT" "$PY" benchmarks/models.py --models=ahdrnet --dtypes=bfloat16 --phases=train,infer \
  "${AHDR_SIZE[@]}" "${TORCH[@]}" "${MODELS_COMPILE[@]}" --deadline_s="$(deadline "$AHDR_TIMEOUT" $((130 * SLOW)))" \
  --json="$OUT/ahdr_bf16.json"

# 2. the 1000-step sample of the 35 M U-Net
NO_TORCH=()
[ "${#TORCH[@]}" -eq 0 ] && NO_TORCH=(--no_torch)
step ddpm "$DDPM_TIMEOUT" "$PY" benchmarks/diffusion_sampling.py "${DDPM_SIZE[@]}" "${DDPM_PEERS[@]}" \
  --dtype=bfloat16 --ddim_steps=0 --peak_tflops=auto --torch_variants="$TORCH_VARIANTS" "${DDPM_MAX[@]}" \
  "${NO_TORCH[@]}" --deadline_s="$(deadline "$DDPM_TIMEOUT" $((110 * SLOW)))" --json="$OUT/ddpm.json"

# 3. XLA options, JAX only, one process each
IFS=';' read -r -a OPTION_LIST <<< "$OPTIONS"
for entry in "${OPTION_LIST[@]}"; do
  IFS='|' read -r name target flags extra <<< "$entry"
  [ -n "$name" ] || continue
  read -r -a EXTRA <<< "${extra:-}"
  if [ "$target" = ddpm ]; then
    XLA_FLAGS="${XLA_FLAGS:+$XLA_FLAGS }$flags" step "opt_ddpm_$name" "$OPT_TIMEOUT" "$PY" \
      benchmarks/diffusion_sampling.py "${DDPM_SIZE[@]}" --dtype=bfloat16 --no_torch --ddim_steps=0 --python_steps=0 \
      "${EXTRA[@]}" --json="$OUT/opt_ddpm_$name.json"
  else
    XLA_FLAGS="${XLA_FLAGS:+$XLA_FLAGS }$flags" step "opt_frame_$name" "$OPT_TIMEOUT" "$PY" \
      benchmarks/models.py --models=ahdrnet --dtypes=bfloat16 --phases=infer --inference=inprocess \
      --peak_tflops=none "${AHDR_SIZE[@]}" "${EXTRA[@]}" --json="$OUT/opt_frame_$name.json"
  fi
done

# 4. the float32 train step, if time is left
step ahdr_f32 "$F32_TIMEOUT" "$PY" benchmarks/models.py --models=ahdrnet --dtypes=float32 --phases=train \
  "${AHDR_SIZE[@]}" "${TORCH[@]}" "${MODELS_COMPILE[@]}" --deadline_s="$(deadline "$F32_TIMEOUT" $((60 * SLOW)))" \
  --json="$OUT/ahdr_f32.json"

{
  echo
  echo "================================ issue 20 ================================"
  "$PY" benchmarks/gpu_targets.py --out="$OUT" 2>&1
  echo "steps:"
  printf '  %s\n' "${SUMMARY[@]}"
  echo "total ${SECONDS}s, ${FAILED} step(s) not ok; JSON and gpu.log in $OUT"
} 2>&1 | tee -a "$LOG"
exit 0
