r"""The one trainer: every model family, any number of devices and hosts, one config file.

  python -m hdr_jax.train --config=configs/vam_drdb.py --workdir=runs/vam_drdb \
      [--config.batch_size=16 --config.data.root=/data/ntire/train ...]

Data parallel over a ``data`` mesh axis with ``jax.jit`` and ``NamedSharding``; Orbax checkpoints
hold the bundle (networks + optimisers), step, RNG and the grain iterator position, so running the
same command again resumes exactly where the last checkpoint left off.
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

import jax
import numpy as np
from absl import flags, logging
from ml_collections import config_flags

from hdr_jax import checkpoint as ckpt_lib
from hdr_jax import cli
from hdr_jax import engine as engine_lib
from hdr_jax import evaluation
from hdr_jax import fileio
from hdr_jax import metrics_log, sig17, tasks


def _define_flags():
  """Command-line flags, defined when the program runs (importing the module defines none)."""
  global _CONFIG, _WORKDIR
  _CONFIG = config_flags.DEFINE_config_file("config", None, "Path to a config file (configs/*.py).",
                                            lock_config=True)
  _WORKDIR = flags.DEFINE_string("workdir", None, "Directory for checkpoints, logs, images and metrics.")


class NonFiniteLossError(FloatingPointError):
  pass


def _check_config(config) -> None:
  problems = []
  if config.batch_size <= 0:
    problems.append(f"config.batch_size must be positive, got {config.batch_size}")
  if config.batch_size % jax.device_count():
    problems.append(f"config.batch_size={config.batch_size} must be a multiple of the device count "
                    f"({jax.device_count()})")
  if config.num_train_steps < 0:
    problems.append(f"config.num_train_steps must be >= 0, got {config.num_train_steps}")
  for k in ("log_every", "eval_every", "checkpoint_every"):
    if config[k] <= 0:
      problems.append(f"config.{k} must be positive, got {config[k]}")
  if config.data.patch_size <= 0 or config.data.patch_size % 8:
    problems.append(f"config.data.patch_size must be a positive multiple of 8, got {config.data.patch_size}")
  if problems:
    raise ValueError("; ".join(problems))


def make_train_iterator(config, train_dir):
  from hdr_jax import data

  return data.make_train_iterator(
      data.train_source(config, train_dir), patch_size=config.data.patch_size, global_batch_size=config.batch_size,
      seed=config.seed, shard_index=jax.process_index(), shard_count=jax.process_count(),
      num_workers=config.data.num_workers, crops_per_scene=config.data.crops_per_scene)


def train_and_evaluate(config, workdir) -> dict:
  """Trains ``config`` in ``workdir`` (resuming if it holds checkpoints); returns the final summary."""
  from hdr_jax import data as data_lib

  workdir = fileio.workdir_path(workdir)
  cli.maybe_initialize_distributed(config.distributed)
  _check_config(config)
  primary = jax.process_index() == 0
  fileio.writable_dir(workdir, "workdir")  # before any data, compilation or training step

  # Data first: every input problem surfaces before any compilation or training step.
  train_dir, val_dir = data_lib.resolve_data(config)
  # NTIRE or SIG17 (config.data.protocol, resolved from the folders and saved with the config below).
  protocol = sig17.apply_protocol(config, None if config.data.prepared else train_dir, val_dir)
  val_scenes = sig17.validate_scenes(val_dir, protocol, require_gt=True)
  if config.eval.max_scenes:
    val_scenes = val_scenes[: config.eval.max_scenes]
  train_iter = make_train_iterator(config, train_dir)

  cli.use_compilation_cache(config)
  task = tasks.get_task(config)
  task.prepare(train_dir)  # statistics of the training data (l-DAE's PCA), before the bundle is built
  engine = engine_lib.Engine(config, task=task)
  root_key = jax.random.key(config.seed)
  init_key, train_key, eval_key = jax.random.split(root_key, 3)
  state = engine.init_state(init_key)
  if config.init.feature_extractor:
    state = engine.load_feature_extractor(state, config.init.feature_extractor)

  ckpts = ckpt_lib.Checkpoints(workdir, keep=config.keep_checkpoints, best_metric=task.best_metric)
  start_step = 0
  # The newest step that restores; damaged newer ones are moved aside with a warning line each.
  state, meta, latest = ckpts.restore_newest(state, data_iter=train_iter, sharding=engine.replicated,
                                             warn=lambda line: print(line, file=sys.stderr, flush=True))
  if latest is not None:
    start_step = int(meta["step"])
    logging.info("Resumed from %s at step %d", ckpts.directory / str(latest), start_step)
    if primary:
      print(f"Resuming from step {start_step} ({ckpts.directory / str(latest)})", flush=True)
  ckpt_lib.save_config(workdir, config)

  writer = metrics_log.MetricWriter(workdir)
  if primary and start_step == 0:
    n_params = engine.param_count(state)
    writer.write_scalars(0, {"num_params": n_params})
    fileio.atomic_write_bytes(fileio.workdir_path(workdir) / "parameters.txt",
                              (engine.param_overview(state) + "\n").encode())
    print(f"{config.model.name}: {n_params:,} parameters; {jax.device_count()} device(s) "
          f"({jax.devices()[0].platform}), {jax.process_count()} process(es); "
          f"data: {config.data.prepared or train_dir}", flush=True)

  def meta_for():
    return {"rng": np.asarray(jax.random.key_data(root_key)).tolist(), "model": config.model.name,
            "task": config.task, "config": json.loads(config.to_json_best_effort())}

  def evaluate(step):
    try:
      means, _ = evaluation.evaluate_scenes(engine, state, val_scenes, key=eval_key, writer=writer, step=step,
                                            preview=config.eval.preview_scenes)
    except FloatingPointError as e:
      raise NonFiniteLossError(f"evaluation at step {step} failed: {e}; training stopped; the last good "
                               f"checkpoint ({ckpts.latest_step()}) is left intact") from None
    writer.write_scalars(step, means, prefix="eval/")
    return means

  def save(step, metrics=None):
    last_good = ckpts.latest_step()
    try:
      ckpts.save(step, state, meta=meta_for(), data_iter=train_iter, metrics=metrics)
    except Exception as e:  # a full disk, a workdir gone read-only: Orbax left only its tmp folder
      kept = (f"the last good checkpoint (step {last_good}, {ckpts.directory / str(last_good)}) is left intact; "
              f"free space or fix the workdir and rerun the same command to resume from it"
              if last_good is not None else "there is no earlier checkpoint")
      raise fileio.DataError(workdir, f"saving the checkpoint of step {step} failed ({ckpt_lib.short_error(e, workdir)}); "
                                   f"training stopped; {kept}") from None

  num_steps = config.num_train_steps
  progress = None
  if primary and config.progress and start_step < num_steps:
    from tqdm import tqdm

    progress = tqdm(total=num_steps, initial=start_step, desc="train", unit="step", dynamic_ncols=True,
                    file=sys.stderr, mininterval=1.0)

  last_eval = None
  window, t_window = [], time.perf_counter()
  pending = None  # metrics of the previous step, read after the next step is dispatched
  step = start_step

  def check(step_metrics, at_step):
    host = {k: float(v) for k, v in jax.device_get(step_metrics).items()}
    if config.nan_check and not (np.isfinite(host.get("loss", 0.0)) and host.get("params_finite", 1.0) == 1.0):
      what = "non-finite loss" if not np.isfinite(host.get("loss", 0.0)) else "non-finite parameters after the update"
      raise NonFiniteLossError(
          f"{what} (loss {host.get('loss')}) at step {at_step}: training stopped; the last good "
          f"checkpoint ({ckpts.latest_step()}) is left intact. Lower optimizer.learning_rate or set "
          f"optimizer.grad_clip.")
    return host

  try:
    while step < num_steps:
      local = next(train_iter)
      batch = engine.global_batch(local)
      state, metrics = engine.train_step(state, batch, jax.random.fold_in(train_key, step))
      step += 1
      if pending is not None:
        window.append(check(*pending))
      pending = (metrics, step)
      if progress is not None:
        progress.update(1)
      at_log = step % config.log_every == 0 or step == num_steps
      at_eval = step % config.eval_every == 0 or step == num_steps
      at_ckpt = step % config.checkpoint_every == 0 or step == num_steps
      if at_log or at_eval or at_ckpt:
        window.append(check(*pending))
        pending = None
      if at_log and window:
        dt = time.perf_counter() - t_window
        scalars = metrics_log.window_means(window)
        scalars.update(steps_per_sec=len(window) / dt, crops_per_sec=len(window) * config.batch_size / dt,
                       learning_rate=float(task.lr(step)))
        writer.write_scalars(step, scalars, prefix="train/")
        task.on_metrics(step, scalars)
        if progress is not None:
          progress.set_postfix(loss=f"{scalars['loss']:.4f}")
        window, t_window = [], time.perf_counter()
      if at_eval:
        last_eval = evaluate(step)
        if progress is not None:
          progress.write(f"step {step}: " + ", ".join(f"{k}={v:.3f}" for k, v in last_eval.items()))
      if at_ckpt:
        save(step, last_eval if at_eval else None)
  finally:
    if progress is not None:
      progress.close()
    writer.flush()

  if start_step >= num_steps and last_eval is None:
    last_eval = ckpts.metrics(ckpts.latest_step()) if ckpts.latest_step() is not None else None
    if last_eval is None:
      last_eval = evaluate(step)
  summary = {"step": step, "workdir": str(workdir), "eval": last_eval,
             "best_step": ckpts.best_step(), "checkpoints": ckpts.all_steps(),
             "metrics_log": str(workdir / "metrics.jsonl"), "tensorboard": str(workdir / "tensorboard"),
             "images": str(workdir / "images")}
  if primary:
    fileio.atomic_write_bytes(workdir / "summary.json", json.dumps(summary, indent=2).encode())
    _print_summary(summary)
  writer.close()
  ckpts.close()
  return summary


def _print_summary(summary: dict) -> None:
  ev = summary["eval"] or {}
  print("\n=== hdr_jax training finished ===")
  print(f"step {summary['step']}  (best checkpoint: step {summary['best_step']})")
  if ev:
    print(f"validation PSNR-mu {ev.get('psnr_mu', float('nan')):.2f} dB  PSNR-L {ev.get('psnr_l', float('nan')):.2f} dB"
          f"  SSIM-mu {ev.get('ssim_mu', float('nan')):.4f}")
    if "estimate_psnr_mu" in ev:
      print(f"the estimate it refines: PSNR-mu {ev['estimate_psnr_mu']:.2f} dB  PSNR-L {ev['estimate_psnr_l']:.2f} dB")
    if "baseline_psnr_mu" in ev:
      print(f"medium-frame baseline: PSNR-mu {ev['baseline_psnr_mu']:.2f} dB  PSNR-L {ev['baseline_psnr_l']:.2f} dB")
  print(f"checkpoints: {summary['workdir']}/checkpoints  (steps {summary['checkpoints']})")
  print(f"metrics:     {summary['metrics_log']}  and TensorBoard: {summary['tensorboard']}")
  print(f"images:      {summary['images']}")
  print(f"summary:     {summary['workdir']}/summary.json", flush=True)


def main(argv=None):
  _define_flags()

  def body():
    config = _CONFIG.value
    default = Path("runs") / Path(config_flags.get_config_filename(flags.FLAGS["config"])).stem
    train_and_evaluate(config, _WORKDIR.value or str(default))

  cli.run_cli(body, argv, required=(flags.FLAGS["config"],))


if __name__ == "__main__":
  main()
