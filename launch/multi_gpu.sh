#!/usr/bin/env bash
# Train hdr_jax on one machine with several NVIDIA GPUs.
#
# Default: one process drives every GPU (data parallel over all local devices):
#   launch/multi_gpu.sh install
#   CONFIG=configs/vam_drdb.py WORKDIR=runs/vam_drdb launch/multi_gpu.sh train   (paths: from the current directory)
# NUM_PROCESSES=N: N processes on this machine, each with its share of GPUS (CUDA_VISIBLE_DEVICES),
# joined by jax.distributed (JAX_COORDINATOR_ADDRESS, JAX_NUM_PROCESSES, JAX_PROCESS_ID):
#   NUM_PROCESSES=4 GPUS=0,1,2,3 launch/multi_gpu.sh train
# DRY_RUN=1 (or --dry-run) prints every command instead of running it.
# Every variable is described in launch/README.md.
set -euo pipefail

usage() {
  echo "usage: [VAR=value ...] $0 [--dry-run] install|train  (see launch/README.md)"
}

REPO_ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
# shellcheck source=SCRIPTDIR/lib.sh
. "$REPO_ROOT/launch/lib.sh"
parse_cli "install train" "$@"

PYTHON="${PYTHON:-python3}"
EXTRAS="${EXTRAS:-cuda}"
CONFIG="${CONFIG:-$REPO_ROOT/configs/vam_drdb.py}"
WORKDIR="${WORKDIR:-runs/$(basename "${CONFIG%%:*}" .py)}"
TRAIN_ARGS="${TRAIN_ARGS:-}"
NUM_PROCESSES="${NUM_PROCESSES:-1}"
GPUS="${GPUS:-}"
COORDINATOR_ADDRESS="${COORDINATOR_ADDRESS:-localhost:12355}"
LOG_DIR="${LOG_DIR:-$WORKDIR/launch_logs}"

do_install() {
  run "$PYTHON" -m pip install -e "${REPO_ROOT}[$EXTRAS]"
  run "$PYTHON" -c 'import jax; print(jax.device_count(), "device(s):", jax.devices())'
}

# The GPU indices to use: GPUS, else every GPU nvidia-smi lists.
gpu_list() {
  if [[ -n "$GPUS" ]]; then
    printf '%s' "$GPUS"
  elif command -v nvidia-smi > /dev/null; then
    nvidia-smi --query-gpu=index --format=csv,noheader | paste -sd, -
  else
    echo "error: nvidia-smi not found: set GPUS=0,1,... (the GPU indices to use)" >&2
    exit 2
  fi
}

pids=()

# Ends the processes this script started (by their ids) when it exits early.
stop_started() {
  local pid
  for pid in "${pids[@]}"; do
    kill "$pid" 2> /dev/null || true
  done
  for pid in "${pids[@]}"; do
    wait "$pid" 2> /dev/null || true
  done
}

do_train() {
  local train=("$PYTHON" -m hdr_jax.train --config="$CONFIG" --workdir="$WORKDIR")
  local extra=()
  read -r -a extra <<< "$TRAIN_ARGS"

  if [[ "$NUM_PROCESSES" == 1 ]]; then
    if [[ -n "$GPUS" ]]; then
      run env CUDA_VISIBLE_DEVICES="$GPUS" "${train[@]}" "${extra[@]}"
    else
      run "${train[@]}" "${extra[@]}"
    fi
    return
  fi

  if ! [[ "$NUM_PROCESSES" =~ ^[1-9][0-9]*$ ]]; then
    echo "error: NUM_PROCESSES must be a positive integer, got '$NUM_PROCESSES'" >&2
    exit 2
  fi
  local gpus
  IFS=, read -r -a gpus <<< "$(gpu_list)"
  if (( ${#gpus[@]} == 0 || ${#gpus[@]} % NUM_PROCESSES != 0 )); then
    echo "error: ${#gpus[@]} GPU(s) (${gpus[*]}) cannot be split evenly over NUM_PROCESSES=$NUM_PROCESSES" >&2
    exit 2
  fi
  local per=$(( ${#gpus[@]} / NUM_PROCESSES )) i visible
  run mkdir -p "$LOG_DIR"
  trap stop_started EXIT
  for (( i = 0; i < NUM_PROCESSES; i++ )); do
    visible="$(IFS=,; echo "${gpus[*]:i*per:per}")"
    local cmd=(env CUDA_VISIBLE_DEVICES="$visible" JAX_COORDINATOR_ADDRESS="$COORDINATOR_ADDRESS"
               JAX_NUM_PROCESSES="$NUM_PROCESSES" JAX_PROCESS_ID="$i"
               "${train[@]}" --config.distributed=true "${extra[@]}")
    printf '+ %s > %s 2>&1 &\n' "$(cmdline "${cmd[@]}")" "$(quote "$LOG_DIR/process_$i.log")"
    if [[ "$DRY_RUN" != 1 ]]; then
      "${cmd[@]}" > "$LOG_DIR/process_$i.log" 2>&1 &
      pids+=("$!")
    fi
  done
  [[ "$DRY_RUN" != 1 ]] || return 0
  echo "started ${#pids[@]} processes (${pids[*]}); process 0 logs to $LOG_DIR/process_0.log"
  # Wait for all; the first failure stops the others (they would wait for it forever).
  local status=0
  for (( i = 0; i < ${#pids[@]}; i++ )); do
    if ! wait -n; then
      status=1
      echo "error: a training process failed; stopping the others. Logs: $LOG_DIR/process_*.log" >&2
      tail -n 20 "$LOG_DIR"/process_*.log >&2 || true
      stop_started
      break
    fi
  done
  trap - EXIT
  return "$status"
}

case "$subcommand" in
  install) do_install ;;
  train) do_train ;;
esac
