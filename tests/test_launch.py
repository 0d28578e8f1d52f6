"""The launch scripts: shellcheck, the dry runs' commands, and their real control flow with stand-in
``gcloud``/``git``/``python`` programs (what runs, in which order, and the clean-up on failure)."""

from __future__ import annotations

import os
import shlex
import shutil
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
TPU, GPU = ROOT / "launch" / "tpu_vm.sh", ROOT / "launch" / "multi_gpu.sh"
SYSTEM_PATH = "/usr/bin:/bin"


def launch(script, *args, env=None, path=SYSTEM_PATH, check=True):
  proc = subprocess.run(["bash", str(script), *args], env={"PATH": path, "HOME": "/nonexistent", **(env or {})},
                        capture_output=True, text=True, timeout=60)
  if check and proc.returncode != 0:
    raise AssertionError(f"{script.name} {args} failed ({proc.returncode}):\n{proc.stdout}\n{proc.stderr}")
  return proc


def commands(stdout: str) -> list[list[str]]:
  """The printed commands (``+ cmd``), each split into words as a shell would."""
  return [shlex.split(line[2:]) for line in stdout.splitlines() if line.startswith("+ ")]


def option(words, name):
  values = [w.split("=", 1)[1] for w in words if w.startswith(f"{name}=")]
  assert len(values) == 1, (name, words)
  return values[0]


def fake_programs(tmp_path, **scripts) -> str:
  """A PATH whose first folder holds stand-in programs (bash bodies) that log their arguments."""
  bin_dir = tmp_path / "bin"
  bin_dir.mkdir(exist_ok=True)
  for name, body in scripts.items():
    exe = bin_dir / name
    exe.write_text(f'#!/bin/bash\necho "{name} $*" >> "{tmp_path}/calls.log"\n{body}\n')
    exe.chmod(0o755)
  return f"{bin_dir}:{SYSTEM_PATH}"


TPU_ENV = {"PROJECT": "my-project", "ZONE": "us-central2-b", "TPU_NAME": "hdr-test", "ACCELERATOR_TYPE": "v4-32",
           "WORKDIR": "gs://my-bucket/runs/vam_drdb", "CONFIG": "configs/vam_drdb.py",
           "TRAIN_ARGS": "--config.batch_size=64 --config.num_train_steps=100"}


# --------------------------------------------------------------------------------------------------


def test_shellcheck():
  if shutil.which("shellcheck") is None:
    pytest.skip("shellcheck is not installed")
  # -x follows the sourced launch/lib.sh, so it is checked as part of each script.
  proc = subprocess.run(["shellcheck", "-x", str(TPU), str(GPU)], capture_output=True, text=True)
  assert proc.returncode == 0, proc.stdout


def test_tpu_vm_dry_run_prints_every_step(tmp_path):
  # Stand-in gcloud/git record any call: a dry run must make none.
  path = fake_programs(tmp_path, gcloud="exit 0", git="exit 0")
  env = dict(TPU_ENV, DATA_GCS="gs://my-bucket/ntire")
  out = launch(TPU, "all", env=dict(env, DRY_RUN="1"), path=path).stdout
  assert out == launch(TPU, "--dry-run", "all", env=env, path=path).stdout
  assert not (tmp_path / "calls.log").exists()

  cmds = commands(out)
  tpu = [c for c in cmds if c[:4] == ["gcloud", "compute", "tpus", "tpu-vm"]]
  assert [c[4] for c in tpu] == ["create", "scp", "ssh", "ssh", "scp", "ssh", "delete"]
  for c in tpu:
    assert "hdr-test" in c[5] and "--zone=us-central2-b" in c and "--project=my-project" in c
  create, ship, install, train, fetch, tail, delete = tpu
  assert option(create, "--accelerator-type") == "v4-32" and option(create, "--version") == "tpu-ubuntu2204-base"
  assert cmds[1][:2] == ["git", "-C"] and "archive" in cmds[1]
  assert "--worker=all" in ship and ship[6] == "hdr-test:hdr_jax.tar.gz"
  setup = option(install, "--command")
  assert "--worker=all" in install and "tar -xzf hdr_jax.tar.gz" in setup and "'./hdr_jax[tpu]'" in setup
  assert "gcloud storage rsync --recursive gs://my-bucket/ntire data/ntire" in setup
  assert "--worker=all" in train
  run = shlex.split(option(train, "--command").split(";", 1)[1].split("2>&1")[0])
  assert run[:3] == ["hdr_jax_venv/bin/python", "-m", "hdr_jax.train"]
  assert option(run, "--config") == "hdr_jax/configs/vam_drdb.py"
  assert option(run, "--workdir") == "gs://my-bucket/runs/vam_drdb"
  assert option(run, "--config.distributed") == "true"
  assert option(run, "--config.data.root") == "data/ntire/train"
  assert run[-2:] == ["--config.batch_size=64", "--config.num_train_steps=100"]
  assert "--worker=0" in fetch and "tail" in option(tail, "--command")
  assert ["gcloud", "storage", "cp", "gs://my-bucket/runs/vam_drdb/metrics.jsonl"] == cmds[-2][:4]
  assert "--quiet" in delete and cmds[-1] == delete
  # The remote commands are valid shell.
  for c in (install, train, tail):
    subprocess.run(["bash", "-n", "-c", option(c, "--command")], check=True)


def test_tpu_vm_runtime_versions_and_required_variables(tmp_path):
  for accel, version in (("v5litepod-16", "v2-alpha-tpuv5-lite"), ("v5p-8", "v2-alpha-tpuv5"),
                         ("v6e-8", "v2-alpha-tpuv6e"), ("v4-32", "tpu-ubuntu2204-base")):
    (create,) = commands(launch(TPU, "--dry-run", "create", env=dict(TPU_ENV, ACCELERATOR_TYPE=accel)).stdout)
    assert option(create, "--version") == version
  (create,) = commands(launch(TPU, "--dry-run", "create", env=dict(TPU_ENV, SPOT="1", RUNTIME_VERSION="x")).stdout)
  assert "--spot" in create and option(create, "--version") == "x"
  proc = launch(TPU, "--dry-run", "train", env={k: v for k, v in TPU_ENV.items() if k != "WORKDIR"}, check=False)
  assert proc.returncode == 2 and "WORKDIR must be set" in proc.stderr
  proc = launch(TPU, "--dry-run", "train", env=dict(TPU_ENV, WORKDIR="runs/local"))
  assert "not a gs:// path" in proc.stderr
  assert launch(TPU, "bogus", check=False).returncode == 2
  (train,) = commands(launch(TPU, "--dry-run", "train", env=dict(TPU_ENV, DETACH="1")).stdout)
  assert option(train, "--command").startswith("nohup ") and option(train, "--command").endswith("&")


def test_tpu_vm_all_cleans_up_after_a_failed_training(tmp_path):
  # gcloud fails when asked to train: the logs are still fetched and the VM deleted; the exit status
  # is the failure's.
  path = fake_programs(tmp_path, gcloud='[[ "$*" == *hdr_jax.train* ]] && exit 7; exit 0', git="exit 0")
  proc = launch(TPU, "all", env=dict(TPU_ENV, TARBALL=str(tmp_path / "t.tar.gz"), LOG_DIR=str(tmp_path / "logs")),
                path=path, check=False)
  assert proc.returncode == 7, proc.stderr
  calls = [line.split()[:5] for line in (tmp_path / "calls.log").read_text().splitlines()]
  verbs = [c[4] if c[0] == "gcloud" and c[1] == "compute" else " ".join(c[:3]) for c in calls]
  assert verbs == ["create", "git -C " + str(ROOT), "scp", "ssh", "ssh", "scp", "ssh", "gcloud storage cp", "delete"]
  assert (tmp_path / "logs").is_dir()


def test_multi_gpu_dry_runs():
  env = {"CONFIG": "configs/ahdrnet.py", "WORKDIR": "runs/a", "TRAIN_ARGS": "--config.batch_size=32"}
  (one,) = commands(launch(GPU, "--dry-run", "train", env=env).stdout)
  assert one == ["python3", "-m", "hdr_jax.train", "--config=configs/ahdrnet.py", "--workdir=runs/a",
                 "--config.batch_size=32"]
  (sub,) = commands(launch(GPU, "--dry-run", "train", env=dict(env, GPUS="1,2")).stdout)
  assert sub[:2] == ["env", "CUDA_VISIBLE_DEVICES=1,2"] and sub[2:] == one
  install = commands(launch(GPU, "--dry-run", "install", env={"PYTHON": "py"}).stdout)
  assert install[0] == ["py", "-m", "pip", "install", "-e", f"{ROOT}[cuda]"]

  out = launch(GPU, "--dry-run", "train", env=dict(env, NUM_PROCESSES="2", GPUS="0,1,2,3",
                                                     COORDINATOR_ADDRESS="localhost:9999")).stdout
  procs = [c for c in commands(out) if c[0] == "env"]
  assert len(procs) == 2
  for i, c in enumerate(procs):
    assert c[1:5] == [f"CUDA_VISIBLE_DEVICES={'0,1' if i == 0 else '2,3'}", "JAX_COORDINATOR_ADDRESS=localhost:9999",
                      "JAX_NUM_PROCESSES=2", f"JAX_PROCESS_ID={i}"]
    assert c[5:c.index(">")] == one[:5] + ["--config.distributed=true", "--config.batch_size=32"]
    assert c[c.index(">"):] == [">", f"runs/a/launch_logs/process_{i}.log", "2>&1", "&"]

  bad = launch(GPU, "--dry-run", "train", env=dict(env, NUM_PROCESSES="3", GPUS="0,1,2,3"), check=False)
  assert bad.returncode == 2 and "cannot be split evenly" in bad.stderr


def test_multi_gpu_processes_get_their_environment_and_a_failure_stops_the_rest(tmp_path):
  # A stand-in python: prints its environment and arguments; with FAIL_ID set, that process fails
  # at once and the others would wait for it forever (as real ones wait for a missing peer).
  fake = tmp_path / "python"
  fake.write_text('#!/bin/bash\necho "id=$JAX_PROCESS_ID n=$JAX_NUM_PROCESSES coord=$JAX_COORDINATOR_ADDRESS '
                  'gpus=$CUDA_VISIBLE_DEVICES args=$*"\n'
                  '[[ -n "$FAIL_ID" ]] || exit 0\n[[ "$JAX_PROCESS_ID" == "$FAIL_ID" ]] && exit 3\nexec sleep 60\n')
  fake.chmod(0o755)
  env = {"PYTHON": str(fake), "NUM_PROCESSES": "2", "GPUS": "0,1", "WORKDIR": str(tmp_path / "run"),
         "COORDINATOR_ADDRESS": "localhost:1234"}
  launch(GPU, "train", env=env)
  logs = tmp_path / "run" / "launch_logs"
  for i in (0, 1):
    line = (logs / f"process_{i}.log").read_text()
    assert line.startswith(f"id={i} n=2 coord=localhost:1234 gpus={i} args=-m hdr_jax.train"), line
    assert "--config.distributed=true" in line

  proc = launch(GPU, "train", env=dict(env, FAIL_ID="1"), check=False)
  assert proc.returncode != 0 and "failed; stopping the others" in proc.stderr
  # Process 0 (which would have waited 60 s) was ended, not waited for.
  started = proc.stdout.split("started 2 processes (")[1].split(")")[0].split()
  for pid in started:
    with pytest.raises(ProcessLookupError):
      os.kill(int(pid), 0)
