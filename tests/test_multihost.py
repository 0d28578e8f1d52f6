"""Multi-process (multi-host) training on one machine: 2 processes x 2 virtual CPU devices, started as
the launch scripts start them (``python -m hdr_jax.train ... --config.distributed=true`` with
``JAX_COORDINATOR_ADDRESS``, ``JAX_NUM_PROCESSES``, ``JAX_PROCESS_ID``), against 1 process x 4
devices with the same global batch.

They train the same model: the loss curve in ``metrics.jsonl`` and the final parameters (restored
here, in a third process with one device) agree to float32 reduction-order rounding: losses within
1e-5 relative (measured 7e-8), parameters (|p| <= ~1) within 1e-6 absolute (measured 1.5e-8),
validation PSNR-mu within 1e-3 dB (measured 1e-8).
Checkpoints are written collectively (the grain iterator position of both processes), only process 0
logs and prints, and a 2-process run resumes exactly from its checkpoint.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import jax
import numpy as np
import portpicker
import pytest
from conftest import cli_env

ROOT = Path(__file__).resolve().parents[1]
GLOBAL_DEVICES = 4
TIMEOUT_S = 420

# A small AHDRNet and tiny embedded dataset (configs/ahdrnet.py:tiny); global batch 4 = one patch per device.
ARGS = [
    "--config=configs/ahdrnet.py:tiny", "--config.batch_size=4",
    "--config.checkpoint_every=2", "--config.eval_every=100", "--config.keep_checkpoints=5",
]


def train(workdir: Path, cache: Path, steps: int, processes: int) -> list[str]:
  """Runs the trainer in ``processes`` processes (all devices together: GLOBAL_DEVICES); returns each
  process's stdout, in process order. Fails with every process's output if one fails or hangs."""
  base = {"HDR_JAX_CACHE": str(cache), **cli_env(), "PYTHONPATH": str(ROOT),
          "JAX_PLATFORMS": "cpu", "JAX_NUM_CPU_DEVICES": str(GLOBAL_DEVICES // processes)}
  if processes > 1:
    base.update(JAX_COORDINATOR_ADDRESS=f"localhost:{portpicker.pick_unused_port()}",
                JAX_NUM_PROCESSES=str(processes))
  logs = workdir.parent / "logs"
  logs.mkdir(exist_ok=True)
  cmd = [sys.executable, "-m", "hdr_jax.train", f"--workdir={workdir}", *ARGS, f"--config.num_train_steps={steps}"]
  if processes > 1:
    cmd.append("--config.distributed=true")
  procs, outs = [], []
  for i in range(processes):
    out = logs / f"{workdir.name}_{steps}_p{i}"
    outs.append(out)
    env = dict(base, JAX_PROCESS_ID=str(i)) if processes > 1 else base
    with open(f"{out}.out", "w") as so, open(f"{out}.err", "w") as se:
      procs.append(subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=so, stderr=se))
  deadline = time.monotonic() + TIMEOUT_S
  try:
    while any(p.poll() is None for p in procs):
      if time.monotonic() > deadline or any(p.poll() not in (None, 0) for p in procs):
        break
      time.sleep(0.2)
  finally:
    for p in procs:
      if p.poll() is None:
        p.kill()
        p.wait()
  if any(p.returncode != 0 for p in procs):
    report = "\n".join(f"--- process {i} (rc {p.returncode}):\n{Path(f'{o}.out').read_text()[-2000:]}\n"
                       f"{Path(f'{o}.err').read_text()[-4000:]}" for i, (p, o) in enumerate(zip(procs, outs)))
    raise AssertionError(f"{processes}-process training to step {steps} failed:\n{report}")
  return [Path(f"{o}.out").read_text() for o in outs]


def log_rows(workdir: Path) -> list[dict]:
  return [json.loads(line) for line in (workdir / "metrics.jsonl").read_text().splitlines()]


def series(rows, key) -> dict[int, float]:
  return {r["step"]: r[key] for r in rows if key in r}


def checkpoint_params(workdir: Path) -> np.ndarray:
  from hdr_jax import engine

  with jax.threefry_partitionable(False):  # initial values are overwritten; faster to compile
    _, eng, state, step = engine.load_from_workdir(workdir)
  assert step == 4
  return np.concatenate([np.asarray(x).ravel() for x in jax.tree.leaves(eng.task.param_state(eng.bundle(state)))])


@pytest.mark.slow
def test_two_processes_train_like_one_and_resume(tmp_path):
  cache, single, multi = tmp_path / "cache", tmp_path / "single", tmp_path / "multi"
  train(single, cache, 4, processes=1)
  first = train(multi, cache, 2, processes=2)
  second = train(multi, cache, 4, processes=2)

  # Only process 0 prints: the start line, the resume line and the final summary.
  assert "4 device(s) (cpu), 2 process(es)" in first[0] and "parameters" not in first[1]
  assert "Resuming from step 2" in second[0] and "Resuming" not in second[1]
  for outs in (first, second):
    assert "training finished" in outs[0] and "training finished" not in outs[1]

  # Checkpoints are collective: one directory per step with every process's iterator position.
  for step in (2, 4):
    data = multi / "checkpoints" / str(step) / "data"
    names = sorted(p.name for p in data.glob("process_*.json"))
    assert names == ["process_0-of-2.json", "process_1-of-2.json"], names
    # Each process has consumed `step` batches of its own shard.
    assert all(json.loads((data / n).read_text())["next_index"] == step for n in names)
  assert json.loads((multi / "summary.json").read_text())["checkpoints"] == [2, 4]

  # One writer: every step logged exactly once, across both invocations.
  rows = log_rows(multi)
  train_steps = [r["step"] for r in rows if "train/loss" in r]
  assert train_steps == [1, 2, 3, 4], train_steps
  assert [r["step"] for r in rows if "num_params" in r] == [0]
  assert len(list((multi / "tensorboard").iterdir())) == 2  # one event file per invocation

  # The same model as one process: loss curve (the resumed steps 3-4 included) and evaluation.
  ref = log_rows(single)
  l1, l2 = series(ref, "train/loss"), series(rows, "train/loss")
  np.testing.assert_allclose([l2[s] for s in (1, 2, 3, 4)], [l1[s] for s in (1, 2, 3, 4)], rtol=1e-5)
  assert series(rows, "eval/psnr_mu")[4] == pytest.approx(series(ref, "eval/psnr_mu")[4], abs=1e-3)

  # The final checkpoints, restored in this process (1 device): the same parameters.
  p1, p2 = checkpoint_params(single), checkpoint_params(multi)
  assert p1.shape == p2.shape and not np.array_equal(p1, np.zeros_like(p1))
  np.testing.assert_allclose(p2, p1, rtol=0, atol=1e-6)
