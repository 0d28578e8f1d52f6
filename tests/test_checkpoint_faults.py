"""Faults around checkpoints and output folders (docs/faults.md): damaged or partial checkpoints, a
checkpoint of another model, a full disk during a save, an unwritable workdir or output folder. Each
fault gives one line naming the path and what to do, never a traceback or a tensorstore spec; a
resumed run's per-step losses equal an uninterrupted run's."""

from __future__ import annotations

import errno
import os
import shutil
from pathlib import Path

import jax
import numpy as np
import pytest

from hdr_jax import checkpoint
from hdr_jax import fileio
from test_train import ROOT, TINY, losses
from test_train import run as _run
from conftest import cli_env

# Checkpoints at steps 2 and 4 (all kept); the resumed runs go on to step 6. Evaluation only at the end.
CKPT = ["--config.checkpoint_every=2", "--config.eval_every=100", "--config.keep_checkpoints=5"]
# Every run of this module shares one persistent compilation cache (in the data cache folder, which is
# written into each workdir's config.json, so evaluate and predict use it too): each program compiles
# once for the whole module instead of once per run.
STORE_ALL = {"JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS": "0"}


def run(args, cache, check=True):
  return _run(args, cache, check=check, env_extra=STORE_ALL)


def train_args(workdir, cache, *extra):
  return [TINY, f"--workdir={workdir}",
          f"--config.compilation_cache={Path(cache) / 'xla'}", *extra]


def train(workdir, cache, *extra, check=True):
  return run(["-m", "hdr_jax.train", *train_args(workdir, cache, *extra)], cache, check=check)


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
  """``(base, reference, cache)``: a workdir trained to step 4 (checkpoints 2 and 4) and an
  uninterrupted run to step 6 to compare losses with."""
  root = tmp_path_factory.mktemp("faults")
  cache = root / "cache"
  train(root / "base", cache, "--config.num_train_steps=4", *CKPT)
  train(root / "reference", cache, "--config.num_train_steps=6", *CKPT)
  return root / "base", losses(root / "reference"), cache


def copy_of(base, tmp_path) -> Path:
  wd = tmp_path / "w"
  shutil.copytree(base, wd)
  return wd


def steps_on_disk(wd) -> list[str]:
  return sorted(p.name for p in (Path(wd) / "checkpoints").iterdir())


def assert_one_clean_line(stderr, prefix):
  lines = [l for l in stderr.splitlines() if l.startswith(prefix)]
  assert len(lines) == 1, stderr[-3000:]
  assert "Traceback" not in stderr and "tensorstore_spec" not in stderr and "Event loop" not in stderr, stderr[-3000:]
  return lines[0]


# Each damages a step folder the way a crash, a full disk, a bad copy or a stray write would.
def _largest_array_file(step_dir) -> Path:
  return max((p for p in (step_dir / "state").rglob("*") if p.is_file() and p.parent.name == "d"),
             key=lambda p: p.stat().st_size)


def truncate_array_file(step_dir):
  f = _largest_array_file(step_dir)
  os.truncate(f, f.stat().st_size // 2)


def random_bytes_in_array_file(step_dir):
  """The issue's reproduction: 100 random bytes over the start of the file in ``state/d/``."""
  (f,) = list((step_dir / "state" / "d").iterdir())
  data = bytearray(f.read_bytes())
  data[:100] = np.random.default_rng(0).integers(0, 256, 100, dtype=np.uint8).tobytes()
  f.write_bytes(bytes(data))


def missing_meta(step_dir):
  shutil.rmtree(step_dir / "meta")


def missing_data_json(step_dir):
  for f in (step_dir / "data").glob("process_*.json"):
    f.unlink()


def uncommitted_step_folder(step_dir):
  """A step folder as a save that stopped half-way leaves it where renames are not atomic (a copy, a
  non-atomic remote mount): no commit marker (``commit_success.txt``, written last before Orbax's
  rename) and no array data yet. Orbax lists it as a step all the same (on a local disk it checks only
  the name), so the restore has to find it unreadable."""
  (step_dir / "commit_success.txt").unlink()
  (step_dir / "_CHECKPOINT_METADATA").unlink()
  shutil.rmtree(step_dir / "state" / "ocdbt.process_0")


DAMAGE = [truncate_array_file, random_bytes_in_array_file, missing_meta, missing_data_json, uncommitted_step_folder]


@pytest.mark.parametrize("damage", DAMAGE, ids=lambda f: f.__name__)
def test_train_moves_a_damaged_checkpoint_aside_and_resumes_from_the_one_before(runs, tmp_path, damage):
  base, reference, cache = runs
  wd = copy_of(base, tmp_path)
  damage(wd / "checkpoints" / "4")
  proc = train(wd, cache, "--config.num_train_steps=6", *CKPT)
  line = assert_one_clean_line(proc.stderr, "warning:")
  assert f"{wd / 'checkpoints' / '4'}: checkpoint is damaged or incomplete" in line, line
  assert line.endswith("moved to 4.damaged, resuming from step 2"), line
  assert "Resuming from step 2" in proc.stdout
  assert steps_on_disk(wd) == ["2", "4", "4.damaged", "6"]  # 4 saved again; the damaged one kept
  resumed = losses(wd)
  for s in (3, 4, 5, 6):
    assert resumed[s] == pytest.approx(reference[s], rel=1e-6, abs=1e-7), (s, resumed, reference)


def test_a_moved_aside_or_unfinished_folder_is_not_a_step(runs, tmp_path):
  """Orbax lists ``<step>`` names only: ``4.damaged``, ``4.damaged.2`` and its own unfinished
  ``6.orbax-checkpoint-tmp`` (an interrupted save on a local disk) are not steps; a free name is
  found when ``4.damaged`` is taken."""
  base, _, _ = runs
  ckdir = copy_of(base, tmp_path) / "checkpoints"
  shutil.copytree(ckdir / "4", ckdir / "4.damaged")
  shutil.copytree(ckdir / "4", ckdir / "6.orbax-checkpoint-tmp")
  assert checkpoint.free_name(ckdir / "4") == ckdir / "4.damaged.2"
  (ckdir / "4.damaged.2").mkdir()
  assert checkpoint.free_name(ckdir / "4") == ckdir / "4.damaged.3"
  ckpts = checkpoint.Checkpoints(ckdir.parent, read_only=True)
  assert ckpts.all_steps() == [2, 4] and ckpts.latest_step() == 4
  ckpts.close()


def test_copy_step_writes_one_step_elsewhere_without_this_machines_paths(runs, tmp_path):
  """``checkpoint.copy_step`` (how a model is shipped): the step's state and edited meta, and nothing of
  the input pipeline, as the only step of another workdir; its files name no folder of the source or the
  copy; a step the source lacks is one error naming it, and nothing is written."""
  base, _, _ = runs
  folder = checkpoint.copy_step(base, 2, tmp_path / "copy", edit_meta=lambda m: dict(m, note="edited"))
  assert folder == tmp_path / "copy" / "checkpoints" / "2"
  src = checkpoint.Checkpoints(base, read_only=True)
  dst = checkpoint.Checkpoints(tmp_path / "copy", read_only=True)
  assert dst.all_steps() == [2] and dst.read_meta(2)["note"] == "edited"
  assert dst.read_meta(2)["step"] == 2 and dst.metrics(2) == src.metrics(2)
  want, got = src.read_state(2), dst.read_state(2)
  flat = lambda t: dict(jax.tree_util.tree_leaves_with_path(t))  # noqa: E731
  assert flat(want).keys() == flat(got).keys()
  for k, x in flat(want).items():
    np.testing.assert_array_equal(np.asarray(x), np.asarray(flat(got)[k]))
  src.close()
  dst.close()
  assert not (folder / "data").exists()
  for f in folder.rglob("*"):
    if f.is_file():
      text = f.read_bytes()
      assert str(tmp_path).encode() not in text and str(base).encode() not in text, f
  with pytest.raises(fileio.DataError, match=r"no checkpoint at step 3 \(have \[2, 4\]\)"):
    checkpoint.copy_step(base, 3, tmp_path / "none")
  assert not (tmp_path / "none").exists()


@pytest.mark.parametrize("entry", ["evaluate", "predict"])
def test_read_only_users_name_the_damaged_step_suggest_another_and_move_nothing(runs, tmp_path, entry,
                                                                                tiny_scene_dir):
  base, _, cache = runs
  wd = copy_of(base, tmp_path)
  random_bytes_in_array_file(wd / "checkpoints" / "4")
  args = [f"--workdir={wd}"] + ([f"--input={tiny_scene_dir}", f"--output={tmp_path / 'out'}"]
                                if entry == "predict" else [])
  proc = run(["-m", f"hdr_jax.{entry}", *args], cache, check=False)
  assert proc.returncode == 1
  line = assert_one_clean_line(proc.stderr, "error:")
  assert f"{wd / 'checkpoints' / '4'}: checkpoint is damaged or incomplete" in line
  assert line.endswith("use --step=2 (available: 2)"), line
  assert steps_on_disk(wd) == ["2", "4"]


def test_no_checkpoint_restores_is_one_error_and_nothing_is_moved(runs, tmp_path):
  base, _, cache = runs
  wd = copy_of(base, tmp_path)
  random_bytes_in_array_file(wd / "checkpoints" / "4")
  missing_meta(wd / "checkpoints" / "2")
  proc = train(wd, cache, "--config.num_train_steps=6", *CKPT, check=False)
  assert proc.returncode == 1
  line = assert_one_clean_line(proc.stderr, "error:")
  assert line.startswith(f"error: {wd / 'checkpoints'}: no checkpoint restores (step(s) 4, 2:"), line
  assert "move this folder aside (or train in a new --workdir)" in line
  assert steps_on_disk(wd) == ["2", "4"]


def test_a_checkpoint_of_another_model_is_a_short_mismatch_error(runs, tmp_path):
  """Wider layers: names match, shapes differ. Found from the stored metadata before any array is read;
  a mismatch is not damage, so nothing is moved and older steps are not tried."""
  base, _, cache = runs
  wd = copy_of(base, tmp_path)
  proc = train(wd, cache, "--config.num_train_steps=6", *CKPT, "--config.model.channels=24", check=False)
  assert proc.returncode == 1
  line = assert_one_clean_line(proc.stderr, "error:")
  assert f"{wd / 'checkpoints' / '4'}: checkpoint does not match this model/config:" in line, line
  assert "checkpoint (16,) vs model (24,)" in line or "vs model" in line
  assert len(line) < 500 and "ShapeDtypeStruct" not in line, line
  assert steps_on_disk(wd) == ["2", "4"]


def test_mismatch_and_damage_are_told_apart_in_process(runs, tmp_path):
  """``Checkpoints.restore`` raises ``CheckpointMismatch`` for another model's tree (a block more:
  names differ) and ``DamagedCheckpoint`` for unreadable metadata, which would look like a tree
  difference if the metadata were trusted."""
  import jax

  from hdr_jax import engine

  base, _, _ = runs
  wd = copy_of(base, tmp_path)
  config = checkpoint.load_config(wd)
  (wd / "checkpoints" / "2" / "state" / "_METADATA").unlink()
  config.model.n_blocks = 2
  e = engine.Engine(config)
  ckpts = checkpoint.Checkpoints(wd, read_only=True)
  with pytest.raises(checkpoint.CheckpointMismatch, match=r"array\(s\) differ, e.g. .*not in the checkpoint"):
    ckpts.restore(4, e.init_state(jax.random.key(0)))
  with pytest.raises(checkpoint.DamagedCheckpoint, match="_METADATA"):
    ckpts.restore(2, e.init_state(jax.random.key(0)))
  ckpts.close()


_ENOSPC_AT_STEP_6 = r"""
import errno, sys
from orbax.checkpoint._src.path import atomicity
finalize = atomicity.AtomicRenameTemporaryPath.finalize
async def full_disk(self):  # everything written into the tmp folder, then the disk is full
  if self.get_final().name == "6":
    raise OSError(errno.ENOSPC, "No space left on device")
  return await finalize(self)
atomicity.AtomicRenameTemporaryPath.finalize = full_disk
from hdr_jax import train
train.main(["train", *sys.argv[1:]])
"""


def test_a_full_disk_during_a_save_stops_and_the_last_good_checkpoint_resumes(runs, tmp_path):
  base, reference, cache = runs
  wd = copy_of(base, tmp_path)
  proc = run(["-c", _ENOSPC_AT_STEP_6, *train_args(wd, cache, "--config.num_train_steps=6", *CKPT)], cache,
             check=False)
  assert proc.returncode == 1
  line = assert_one_clean_line(proc.stderr, "error:")
  assert line.startswith(f"error: {wd}: saving the checkpoint of step 6 failed ("), line
  assert "No space left on device" in line and f"last good checkpoint (step 4, {wd / 'checkpoints' / '4'})" in line
  # The half-written save is Orbax's tmp folder, not a step.
  assert [p for p in steps_on_disk(wd) if p.isdigit()] == ["2", "4"]
  proc = train(wd, cache, "--config.num_train_steps=6", *CKPT)
  assert "Resuming from step 4" in proc.stdout and "warning:" not in proc.stderr
  assert steps_on_disk(wd) == ["2", "4", "6"]
  resumed = losses(wd)
  for s in (5, 6):
    assert resumed[s] == pytest.approx(reference[s], rel=1e-6, abs=1e-7), (s, resumed, reference)


def test_an_unwritable_workdir_is_refused_before_anything_runs(tmp_path):
  """A path under a regular file cannot be created even by root (for whom a chmod 0o555 folder is
  writable); nothing is compiled or synthesised first."""
  (tmp_path / "afile").write_text("x")
  wd = tmp_path / "afile" / "run"
  proc = train(wd, tmp_path / "cache", "--config.num_train_steps=2", check=False)
  assert proc.returncode == 1
  line = assert_one_clean_line(proc.stderr, "error:")
  assert line.startswith(f"error: {wd}: cannot write to this workdir ("), line
  assert "parameters" not in proc.stdout and not (tmp_path / "cache").exists()


def test_writable_dir_probes_with_a_real_write(tmp_path, monkeypatch):
  """What a chmod 0o555 folder does to a non-root user: the probe file cannot be created."""
  folder = tmp_path / "ro"
  folder.mkdir()

  def refuse(*a, **k):
    raise PermissionError(errno.EACCES, "Permission denied")

  monkeypatch.setattr(fileio.tempfile, "mkstemp", refuse)
  with pytest.raises(fileio.DataError, match=r"ro: cannot write to this workdir \(Permission denied\)"):
    fileio.writable_dir(folder, "workdir")


def test_predict_into_an_unwritable_output_is_one_error_naming_it(runs, tmp_path, tiny_scene_dir):
  base, _, cache = runs
  (tmp_path / "afile").write_text("x")
  out = tmp_path / "afile" / "out"
  proc = run(["-m", "hdr_jax.predict", f"--workdir={base}", f"--input={tiny_scene_dir}", f"--output={out}"],
             cache, check=False)
  assert proc.returncode == 1
  line = assert_one_clean_line(proc.stderr, "error:")
  assert line.startswith(f"error: {out}: cannot write to this output folder ("), line


@pytest.mark.parametrize("failing", [".png", ".npy"])
def test_a_failed_result_write_never_leaves_a_png_beside_a_stale_alignratio(tmp_path, monkeypatch, failing):
  """A scene predicted again into the same folder: if a write fails, no ``NNNN.png`` is left (the
  old one is removed first, the new one renamed in last), so no PNG pairs with the wrong alignratio."""
  fileio.write_result(tmp_path, "0000", np.full((8, 8, 3), 0.5, np.float32))
  write = fileio.atomic_write_bytes

  def full_disk(path, data):
    if str(path).endswith(failing):
      raise OSError(errno.ENOSPC, "No space left on device")
    write(path, data)

  monkeypatch.setattr(fileio, "atomic_write_bytes", full_disk)
  with pytest.raises(OSError):
    fileio.write_result(tmp_path, "0000", np.full((8, 8, 3), 2.0, np.float32))
  assert not (tmp_path / "0000.png").exists()
  assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []


def test_sigkill_inside_checkpoint_writes_then_rerun_resumes_with_the_same_losses(runs, tmp_path):
  """SIGKILL while Orbax writes a step (its ``<step>.orbax-checkpoint-tmp`` folder exists), twice,
  then the same command to the end: each rerun resumes from the last committed step, the half-written
  folder is never taken for a step, and the per-step losses equal an uninterrupted run's."""
  import signal
  import subprocess
  import sys
  import time

  _, reference, cache = runs
  wd = tmp_path / "w"
  args = [sys.executable, "-m", "hdr_jax.train",
          *train_args(wd, cache, "--config.num_train_steps=6", "--config.checkpoint_every=1",
                      "--config.eval_every=100", "--config.keep_checkpoints=10")]
  env = {"HDR_JAX_CACHE": str(cache), **cli_env(), "PYTHONPATH": str(ROOT), "JAX_PLATFORMS": "cpu",
         **STORE_ALL}
  killed_in = []
  for target in ("2", "4"):  # kill inside the write of this step (or, if missed, the first later one)
    proc = subprocess.Popen(args, cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 300
    while proc.poll() is None and time.time() < deadline:
      tmp = [p.name for p in (wd / "checkpoints").glob("*.orbax-checkpoint-tmp*")] if (wd / "checkpoints").is_dir() else []
      if tmp and int(tmp[0].split(".")[0]) >= int(target):
        proc.send_signal(signal.SIGKILL)
        killed_in.append(tmp[0])
        break
      time.sleep(0.002)
    proc.wait(timeout=60)
  assert killed_in, "never caught a save in progress"
  proc = train(wd, cache, "--config.num_train_steps=6", "--config.checkpoint_every=1", "--config.eval_every=100",
               "--config.keep_checkpoints=10")
  assert "Resuming from step" in proc.stdout and "warning:" not in proc.stderr, (proc.stdout, proc.stderr[-2000:])
  assert [p for p in steps_on_disk(wd) if p.isdigit()] == ["1", "2", "3", "4", "5", "6"]
  resumed = losses(wd)
  assert sorted(resumed) == [1, 2, 3, 4, 5, 6]
  for s in resumed:
    assert resumed[s] == pytest.approx(reference[s], rel=1e-6, abs=1e-7), (s, killed_in, resumed, reference)
