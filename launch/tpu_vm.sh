#!/usr/bin/env bash
# Train hdr_jax on a Cloud TPU VM: one host (v4-8, v5litepod-8) or a pod slice (v4-32, v5litepod-16):
# create the VM, install the package on every worker, run the same trainer command on all workers
# (one JAX process per host, jax.distributed over the slice), fetch the logs, delete the VM.
#
#   PROJECT=my-project ZONE=us-central2-b ACCELERATOR_TYPE=v4-32 \
#     WORKDIR=gs://my-bucket/runs/vam_drdb launch/tpu_vm.sh all
#   DRY_RUN=1 launch/tpu_vm.sh all      # or --dry-run: print every command, run none
#
# Subcommands: create | install | train | logs | delete | all (all five in order; the VM is deleted
# even when training fails unless KEEP_VM=1). Every variable is described in launch/README.md.
set -euo pipefail

usage() {
  echo "usage: [VAR=value ...] $0 [--dry-run] create|install|train|logs|delete|all  (see launch/README.md)"
}

REPO_ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
# shellcheck source=SCRIPTDIR/lib.sh
. "$REPO_ROOT/launch/lib.sh"
parse_cli "create install train logs delete all" "$@"

# Configuration (environment variables; see launch/README.md).
PROJECT="${PROJECT:-}"
ZONE="${ZONE:-us-central2-b}"
TPU_NAME="${TPU_NAME:-hdr-jax}"
ACCELERATOR_TYPE="${ACCELERATOR_TYPE:-v4-8}"
SPOT="${SPOT:-0}"
KEEP_VM="${KEEP_VM:-0}"
CONFIG="${CONFIG:-configs/vam_drdb.py}"
WORKDIR="${WORKDIR:-}"
TRAIN_ARGS="${TRAIN_ARGS:-}"
DATA_GCS="${DATA_GCS:-}"
DATA_DIR="${DATA_DIR:-data/ntire}"
REPO_DIR="${REPO_DIR:-hdr_jax}"
VENV="${VENV:-hdr_jax_venv}"
PYTHON_VERSION="${PYTHON_VERSION:-3.11}"
EXTRAS="${EXTRAS:-tpu}"
LOG_FILE="${LOG_FILE:-hdr_jax_train.log}"
LOG_DIR="${LOG_DIR:-tpu_logs/$TPU_NAME}"
DETACH="${DETACH:-0}"

if [[ -z "${RUNTIME_VERSION:-}" ]]; then
  case "$ACCELERATOR_TYPE" in
    v6e-*) RUNTIME_VERSION="v2-alpha-tpuv6e" ;;
    v5p-*) RUNTIME_VERSION="v2-alpha-tpuv5" ;;
    v5litepod-* | v5e-*) RUNTIME_VERSION="v2-alpha-tpuv5-lite" ;;
    *) RUNTIME_VERSION="tpu-ubuntu2204-base" ;;
  esac
fi

TARBALL="${TARBALL:-${TMPDIR:-/tmp}/hdr_jax_${TPU_NAME}.tar.gz}"

# A path relative to the worker's home as pip needs it for a local project ("./dir"); absolute stays.
relative() {
  if [[ "$1" == /* ]]; then printf '%s' "$1"; else printf './%s' "$1"; fi
}

require() {
  local name
  for name in "$@"; do
    if [[ -z "${!name}" ]]; then
      echo "error: $name must be set (see launch/README.md)" >&2
      exit 2
    fi
  done
}

gcloud_tpu() {
  # gcloud compute tpus tpu-vm <verb> <args...> with this VM's zone and project.
  local verb="$1"
  shift
  run gcloud compute tpus tpu-vm "$verb" "$@" --zone="$ZONE" --project="$PROJECT"
}

ssh_all() {
  gcloud_tpu ssh "$TPU_NAME" --worker=all --command="$1"
}

do_create() {
  require PROJECT ZONE TPU_NAME ACCELERATOR_TYPE RUNTIME_VERSION
  local extra=()
  if [[ "$SPOT" == 1 ]]; then
    extra+=(--spot)
  fi
  gcloud_tpu create "$TPU_NAME" --accelerator-type="$ACCELERATOR_TYPE" --version="$RUNTIME_VERSION" "${extra[@]}"
}

do_install() {
  require PROJECT ZONE TPU_NAME
  # The committed tree (HEAD) of this checkout: uncommitted changes are not shipped.
  run git -C "$REPO_ROOT" archive --format=tar.gz --output="$TARBALL" HEAD
  gcloud_tpu scp "$TARBALL" "$TPU_NAME:hdr_jax.tar.gz" --worker=all
  # The TPU images ship Python 3.10; uv provides PYTHON_VERSION in a virtual environment.
  local cmd
  cmd="set -e; rm -rf $(cmdline "$REPO_DIR"); mkdir -p $(cmdline "$REPO_DIR")"
  cmd+="; tar -xzf hdr_jax.tar.gz -C $(cmdline "$REPO_DIR")"
  cmd+="; python3 -m pip install --user --quiet --upgrade uv"
  cmd+="; ~/.local/bin/uv venv --clear --python $(cmdline "$PYTHON_VERSION" "$VENV")"
  cmd+="; ~/.local/bin/uv pip install --python $(cmdline "$VENV/bin/python" -e "$(relative "$REPO_DIR")[$EXTRAS]")"
  if [[ -n "$DATA_GCS" ]]; then
    cmd+="; mkdir -p $(cmdline "$DATA_DIR"); gcloud storage rsync --recursive $(cmdline "$DATA_GCS" "$DATA_DIR")"
  fi
  cmd+="; $(cmdline "$VENV/bin/python") -c 'import jax; print(jax.device_count(), jax.local_device_count(), jax.devices()[0].platform)'"
  ssh_all "$cmd"
}

train_command() {
  # The same command on every worker (paths relative to the worker's home): one process per host;
  # jax.distributed.initialize() finds the slice's hosts in the TPU metadata (--config.distributed=true).
  local args=(--config="$REPO_DIR/$CONFIG" --workdir="$WORKDIR" --config.distributed=true --config.progress=false)
  if [[ -n "$DATA_GCS" ]]; then
    args+=(--config.data.root="$DATA_DIR/train" --config.data.val_root="$DATA_DIR/val")
  fi
  local extra=()
  read -r -a extra <<< "$TRAIN_ARGS"
  args+=("${extra[@]}")
  local py
  py="$(cmdline "$VENV/bin/python" -m hdr_jax.train "${args[@]}")"
  if [[ "$DETACH" == 1 ]]; then
    printf '%s' "nohup $py > $(cmdline "$LOG_FILE") 2>&1 < /dev/null &"
  else
    printf '%s' "set -o pipefail; $py 2>&1 | tee $(cmdline "$LOG_FILE")"
  fi
}

do_train() {
  require PROJECT ZONE TPU_NAME CONFIG WORKDIR
  if [[ "$WORKDIR" != gs://* ]]; then
    echo "warning: WORKDIR=$WORKDIR is not a gs:// path: a multi-host slice needs storage every host shares" >&2
  fi
  ssh_all "$(train_command)"
}

do_logs() {
  require PROJECT ZONE TPU_NAME
  run mkdir -p "$LOG_DIR"
  # Process 0 (worker 0) is the only one that writes metrics and prints the summary.
  gcloud_tpu scp "$TPU_NAME:$LOG_FILE" "$LOG_DIR/worker0_$LOG_FILE" --worker=0
  ssh_all "tail -n 5 $(cmdline "$LOG_FILE")"
  if [[ "$WORKDIR" == gs://* ]]; then
    run gcloud storage cp "$WORKDIR/metrics.jsonl" "$WORKDIR/summary.json" "$WORKDIR/config.json" "$LOG_DIR/"
  fi
}

do_delete() {
  require PROJECT ZONE TPU_NAME
  gcloud_tpu delete "$TPU_NAME" --quiet
}

# After 'all' (success or failure): fetch the logs, then delete the VM unless KEEP_VM=1.
finish() {
  local status=$?
  trap - EXIT
  do_logs || echo "warning: fetching the logs failed" >&2
  if [[ "$KEEP_VM" == 1 ]]; then
    echo "KEEP_VM=1: $TPU_NAME is still running (launch/tpu_vm.sh delete removes it)"
  else
    do_delete
  fi
  exit "$status"
}

case "$subcommand" in
  create) do_create ;;
  install) do_install ;;
  train) do_train ;;
  logs) do_logs ;;
  delete) do_delete ;;
  all)
    if [[ "$DETACH" == 1 ]]; then
      echo "error: DETACH=1 with 'all' would delete the VM while it trains" >&2
      exit 2
    fi
    do_create
    trap finish EXIT
    do_install
    do_train
    ;;
esac
