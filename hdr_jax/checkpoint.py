"""Orbax checkpoints of a training bundle, its step and RNG, and the grain iterator position.

Layout: ``WORKDIR/checkpoints/<step>/{state,meta,data}`` written by an ``orbax CheckpointManager``
(atomically: an interrupted save never appears as a step), keeping the last ``keep`` checkpoints
plus the best one by validation ``best_metric`` (higher is better). ``WORKDIR/config.json`` holds
the run's config so ``evaluate``/``predict`` can rebuild the model from a workdir alone.
"""

from __future__ import annotations

import json

import jax
import ml_collections
import numpy as np
import orbax.checkpoint as ocp
from absl import logging as absl_logging
from flax import nnx

from hdr_jax import io as hio

CONFIG_FILE = "config.json"


def save_config(workdir, config) -> None:
  if jax.process_index() == 0:
    hio.atomic_write_bytes(hio.workdir_path(workdir) / CONFIG_FILE, config.to_json_best_effort(indent=2).encode())


def load_config(workdir) -> ml_collections.ConfigDict:
  path = hio.workdir_path(workdir) / CONFIG_FILE
  if not path.is_file():
    raise hio.DataError(path, "file is missing: not a hdr_jax workdir (train or convert writes it)")
  try:
    return ml_collections.ConfigDict(json.loads(path.read_text()))
  except json.JSONDecodeError as e:
    raise hio.DataError(path, f"not valid JSON ({e})") from None


def _abstract(tree, sharding=None):
  def leaf(x):
    x = np.asarray(x) if not hasattr(x, "shape") else x
    return jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=sharding if sharding is not None else getattr(x, "sharding", None))

  return jax.tree.map(leaf, tree)


_READ_ONLY_WARNINGS = ("Given directory is read only=", "CheckpointManagerOptions.read_only=True")


def _not_a_read_only_notice(record) -> bool:
  """absl log filter: drops orbax's warnings that a checkpoint folder is opened read-only."""
  return not record.getMessage().startswith(_READ_ONLY_WARNINGS)


class Checkpoints:
  """Save/restore ``(state, meta, data iterator)`` per step."""

  def __init__(self, workdir, keep: int = 3, best_metric: str = "psnr_mu", read_only: bool = False):
    self.directory = hio.workdir_path(workdir) / "checkpoints"
    self.best_metric = best_metric
    policy = ocp.checkpoint_managers.AnyPreservationPolicy([
        ocp.checkpoint_managers.LatestN(n=keep),
        ocp.checkpoint_managers.BestN(get_metric_fn=lambda m: m[best_metric], n=1,
                                      keep_checkpoints_without_metrics=False),
    ])
    if read_only:
      # Orbax warns on every read-only open that it is read-only: not news to an evaluate or predict
      # run, which only reads. (addFilter adds a filter once.)
      absl_logging.get_absl_logger().addFilter(_not_a_read_only_notice)
    options = ocp.CheckpointManagerOptions(
        preservation_policy=None if read_only else policy, create=not read_only, read_only=read_only,
        enable_async_checkpointing=False)
    if read_only and not self.directory.is_dir():
      raise hio.DataError(self.directory, "no checkpoints folder: nothing has been saved in this workdir")
    self.manager = ocp.CheckpointManager(self.directory, options=options)

  def all_steps(self) -> list[int]:
    return list(self.manager.all_steps())

  def latest_step(self) -> int | None:
    return self.manager.latest_step()

  def best_step(self) -> int | None:
    best, best_val = None, -np.inf
    for s in self.all_steps():
      m = self.metrics(s)
      if m and np.isfinite(m.get(self.best_metric, np.nan)) and m[self.best_metric] > best_val:
        best, best_val = s, m[self.best_metric]
    return best

  def metrics(self, step: int) -> dict | None:
    path = self.directory / str(step) / "meta" / "metadata"
    try:
      return json.loads(path.read_text()).get("metrics")
    except (OSError, json.JSONDecodeError):
      return None

  def save(self, step: int, state: nnx.State, *, meta: dict, data_iter=None, metrics: dict | None = None) -> None:
    """Saves ``state`` (an ``nnx.State``), ``meta`` (JSON) and the grain iterator position."""
    import grain

    meta = dict(meta, step=int(step), metrics=metrics)
    args = {"state": ocp.args.StandardSave(state.to_pure_dict()), "meta": ocp.args.JsonSave(meta)}
    if data_iter is not None:
      args["data"] = grain.checkpoint.CheckpointSave(data_iter)
    self.manager.save(step, args=ocp.args.Composite(**args), metrics=metrics, force=True)
    self.manager.wait_until_finished()

  def restore(self, step: int, state: nnx.State, *, data_iter=None, sharding=None) -> tuple[nnx.State, dict]:
    """Restores into a copy of ``state`` (which gives structure, dtypes and shardings)."""
    import grain

    if step not in self.all_steps():
      raise hio.DataError(self.directory / str(step), f"no checkpoint at step {step} (have {self.all_steps()})")
    pure = state.to_pure_dict()
    args = {"state": ocp.args.StandardRestore(_abstract(pure, sharding)), "meta": ocp.args.JsonRestore()}
    if data_iter is not None:
      args["data"] = grain.checkpoint.CheckpointRestore(data_iter)
    try:
      restored = self.manager.restore(step, args=ocp.args.Composite(**args))
    except (ValueError, KeyError, TypeError) as e:
      raise hio.DataError(self.directory / str(step), f"checkpoint does not match this model/config ({e})") from None
    nnx.replace_by_pure_dict(state, restored["state"])
    return state, restored["meta"]

  def close(self) -> None:
    self.manager.close()
