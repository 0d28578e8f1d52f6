"""Orbax checkpoints of a training bundle, its step and RNG, and the grain iterator position.

Layout: ``WORKDIR/checkpoints/<step>/{state,meta,data}`` written by an ``orbax CheckpointManager``
(atomically: an interrupted save never appears as a step), keeping the last ``keep`` checkpoints
plus the best one by validation ``best_metric`` (higher is better). ``WORKDIR/config.json`` holds
the run's config so ``evaluate``/``predict`` can rebuild the model from a workdir alone.

Faults (docs/faults.md): a step that cannot be read raises ``DamagedCheckpoint``; one written for
another model (array names or shapes differ from the stored metadata) raises ``CheckpointMismatch``;
both are ``DataError`` s with a short message (no tensorstore spec). ``restore_newest`` falls back to
older steps and moves damaged ones aside (``20`` -> ``20.damaged``), never deleting them.
"""

from __future__ import annotations

import json
import logging
import re
import sys
from pathlib import Path

import jax
import ml_collections
import numpy as np
import orbax.checkpoint as ocp
from absl import logging as absl_logging
from flax import nnx

from hdr_jax import fileio

CONFIG_FILE = "config.json"


def save_config(workdir, config) -> None:
  if jax.process_index() == 0:
    fileio.atomic_write_bytes(fileio.workdir_path(workdir) / CONFIG_FILE, config.to_json_best_effort(indent=2).encode())


def load_config(workdir) -> ml_collections.ConfigDict:
  path = fileio.workdir_path(workdir) / CONFIG_FILE
  if not path.is_file():
    raise fileio.DataError(path, "file is missing: not a hdr_jax workdir (train or convert writes it)")
  try:
    return ml_collections.ConfigDict(json.loads(path.read_text()))
  except json.JSONDecodeError as e:
    raise fileio.DataError(path, f"not valid JSON ({e})") from None


class DamagedCheckpoint(fileio.DataError):
  """A checkpoint step that cannot be read: truncated or overwritten files, a missing item."""


class CheckpointMismatch(fileio.DataError):
  """A readable checkpoint of another model: its stored array names or shapes differ."""


def short_error(e: BaseException, within=None, limit: int = 400) -> str:
  """One line of an Orbax/tensorstore error, without the tensorstore spec it appends; paths inside
  the folder ``within`` are given relative to it."""
  text = " ".join(str(e).split()) or type(e).__name__
  text = re.split(r"\s*\[tensorstore_spec|\s*See full TensorStore details", text)[0]
  if within is not None:
    text = text.replace(f"{within}/", "").replace(str(within), ".")
  return text if len(text) <= limit else text[: limit // 2 - 3] + " ... " + text[-(limit // 2 - 2):]


def _quiet_closed_loop_callbacks() -> None:
  """After a failed restore, tensorstore's still-pending reads complete into Orbax's closed event loop
  and each reports an unraisable ``RuntimeError('Event loop is closed')`` traceback on stderr, and the
  abandoned read coroutines report their own read errors ('Exception ignored in <coroutine object
  _read_array_index_and_device_put>' with the tensorstore spec): noise after the error has been
  handled. Drops exactly those; anything else goes to the previous hook."""
  previous = sys.unraisablehook
  if getattr(previous, "_hdr_jax_quiet", False):
    return

  def hook(u):
    if isinstance(u.exc_value, RuntimeError) and str(u.exc_value) == "Event loop is closed":
      return
    if "_read_array_index_and_device_put" in repr(u.object):  # an abandoned read of a damaged array
      return
    previous(u)

  hook._hdr_jax_quiet = True
  sys.unraisablehook = hook
  # A read task whose error nobody awaited (the first error already ended the restore) is reported by
  # asyncio's default handler through the 'asyncio' logger ('Task exception was never retrieved'):
  # the same noise, dropped the same way.
  logging.getLogger("asyncio").addFilter(_not_an_abandoned_read_report)


def _not_an_abandoned_read_report(record) -> bool:
  """log filter: drops asyncio's report that a failed Orbax array read (a task or the gathering future
  of several) was never awaited."""
  message = record.getMessage()
  error = record.exc_info[1] if record.exc_info else None
  return not ("exception was never retrieved" in message
              and "Encountered error while reading array index" in f"{message} {error}")


def _plain(tree):
  """Nested mappings (Orbax's metadata tree, pure state dicts) as nested plain dicts."""
  return {k: _plain(v) for k, v in tree.items()} if hasattr(tree, "items") else tree


def _key_name(path) -> str:
  return ".".join(str(getattr(k, "key", getattr(k, "idx", getattr(k, "name", k)))) for k in path)


def _differences(stored, wanted) -> list[str]:
  """Array names and shapes of a stored state tree against the model's (dtypes may differ: Orbax casts)."""
  have = {_key_name(p): tuple(x.shape) for p, x in jax.tree_util.tree_leaves_with_path(stored)}
  want = {_key_name(p): tuple(x.shape) for p, x in jax.tree_util.tree_leaves_with_path(wanted)}
  diffs = [f"{k}: not in the checkpoint" for k in want if k not in have]
  diffs += [f"{k}: not in the model" for k in have if k not in want]
  diffs += [f"{k}: checkpoint {have[k]} vs model {want[k]}" for k in want if k in have and have[k] != want[k]]
  return diffs


def copy_step(source, step: int, target, edit_meta=None) -> Path:
  """Writes checkpoint ``step`` of the workdir ``source`` (its state and meta, not the input pipeline's
  position) as the only checkpoint of the workdir ``target``, with the meta passed through
  ``edit_meta`` (e.g. to cut machine paths from its config). Orbax's commit notes name the folder they
  were written in; the copy's are reworded without it, so the copy names no path of this machine.
  Returns the copied step's folder."""
  src = Checkpoints(source, read_only=True)
  try:
    state, meta = src.read_state(step), src.read_meta(step)
  finally:
    src.close()
  meta = edit_meta(meta) if edit_meta else meta
  dst = Checkpoints(target, keep=1)
  try:
    dst.save(step, state, meta={k: v for k, v in meta.items() if k not in ("step", "metrics")},
             metrics=meta.get("metrics"))
  finally:
    dst.close()
  folder = dst.directory / str(step)
  for note in folder.rglob("commit_success.txt"):
    note.write_text("Checkpoint commit was successful")
  return folder


def free_name(path):
  """``path`` with ``.damaged`` appended, or ``.damaged.2``, ``.damaged.3``... whichever is free
  (never ``_<digits>``, which Orbax would list as a step)."""
  candidate, n = path.parent / f"{path.name}.damaged", 1
  while candidate.exists():
    n += 1
    candidate = path.parent / f"{path.name}.damaged.{n}"
  return candidate


def _abstract(tree, sharding=None):
  def leaf(x):
    x = np.asarray(x) if not hasattr(x, "shape") else x
    return jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=sharding if sharding is not None else getattr(x, "sharding", None))

  return jax.tree.map(leaf, tree)


_READ_ONLY_WARNINGS = ("Given directory is read only=", "CheckpointManagerOptions.read_only=True")


def _not_a_read_only_notice(record) -> bool:
  """absl log filter: drops orbax's warnings that a checkpoint folder is opened read-only."""
  return not record.getMessage().startswith(_READ_ONLY_WARNINGS)


def _not_an_unreadable_item_notice(record) -> bool:
  """absl log filter: drops Orbax's warning that an item's metadata could not be read."""
  return "was found in the checkpoint, but could not be restored" not in record.getMessage()


class Checkpoints:
  """Save/restore ``(state, meta, data iterator)`` per step."""

  def __init__(self, workdir, keep: int = 3, best_metric: str = "psnr_mu", read_only: bool = False):
    self.directory = fileio.workdir_path(workdir) / "checkpoints"
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
      raise fileio.DataError(self.directory, "no checkpoints folder: nothing has been saved in this workdir")
    import grain

    # Every item's handler is named, so the manager can also answer metadata questions (``stored_tree``)
    # without this module knowing Orbax's on-disk layout.
    handlers = {"state": ocp.StandardCheckpointHandler(), "meta": ocp.JsonCheckpointHandler(),
                "data": grain.checkpoint.CheckpointHandler()}
    self.manager = ocp.CheckpointManager(self.directory, options=options, item_handlers=handlers)

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

  def _require(self, step: int) -> None:
    if step not in self.all_steps():
      raise fileio.DataError(self.directory / str(step), f"no checkpoint at step {step} (have {self.all_steps()})")

  def read_meta(self, step: int) -> dict:
    """The meta item of ``step`` (JSON: its step, config, validation metrics...); ``DamagedCheckpoint``
    if it cannot be read."""
    self._require(step)
    path = self.directory / str(step)
    try:
      meta = self.manager.restore(step, args=ocp.args.Composite(meta=ocp.args.JsonRestore()))["meta"]
    except Exception as e:  # noqa: BLE001 - whatever Orbax raises for an unreadable item
      raise DamagedCheckpoint(path, f"checkpoint is damaged or incomplete ({short_error(e, path)})") from None
    if not isinstance(meta, dict):
      raise DamagedCheckpoint(path, "checkpoint is damaged or incomplete (its meta item is not a JSON object)")
    return meta

  def metrics(self, step: int) -> dict | None:
    """The validation metrics stored with ``step`` (None when it has none or cannot be read)."""
    try:
      return self.read_meta(step).get("metrics")
    except fileio.DataError:  # a missing or damaged step has no metrics to offer; restore() reports the damage
      return None

  def stored_tree(self, step: int) -> dict:
    """The stored state's structure, ``{key: {...: ArrayMetadata}}`` as nested dicts (shapes and dtypes
    from the checkpoint's metadata; no array is read). ``DamagedCheckpoint`` if it cannot be read."""
    self._require(step)
    path = self.directory / str(step)
    logger = absl_logging.get_absl_logger()
    logger.addFilter(_not_an_unreadable_item_notice)  # the None below says it, as one DamagedCheckpoint
    try:
      stored = self.manager.item_metadata(step)["state"]
    except Exception as e:  # an unreadable _METADATA or zarr header
      raise DamagedCheckpoint(path, f"checkpoint is damaged or incomplete ({short_error(e, path)})") from None
    finally:
      logger.removeFilter(_not_an_unreadable_item_notice)
    if stored is None:  # Orbax found the item but not its metadata file
      raise DamagedCheckpoint(path, "checkpoint is damaged or incomplete (the state's metadata, state/_METADATA, "
                                    "is missing or unreadable)")
    return _plain(stored.tree)

  def read_state(self, step: int, sharding=None) -> dict:
    """The whole stored state of ``step`` as nested dicts of arrays, structured by its own metadata
    (for reading part of another run's checkpoint, e.g. a pretrained feature extractor)."""
    abstract = jax.tree.map(lambda m: jax.ShapeDtypeStruct(tuple(m.shape), m.dtype, sharding=sharding),
                            self.stored_tree(step), is_leaf=lambda x: hasattr(x, "shape") and hasattr(x, "dtype"))
    return self.manager.restore(step, args=ocp.args.Composite(state=ocp.args.StandardRestore(abstract)))["state"]

  def save(self, step: int, state, *, meta: dict, data_iter=None, metrics: dict | None = None) -> None:
    """Saves ``state`` (an ``nnx.State``, or its pure dict), ``meta`` (JSON) and the grain iterator
    position."""
    import grain

    meta = dict(meta, step=int(step), metrics=metrics)
    pure = state.to_pure_dict() if hasattr(state, "to_pure_dict") else state
    args = {"state": ocp.args.StandardSave(pure), "meta": ocp.args.JsonSave(meta)}
    if data_iter is not None:
      args["data"] = grain.checkpoint.CheckpointSave(data_iter)
    self.manager.save(step, args=ocp.args.Composite(**args), metrics=metrics, force=True)
    self.manager.wait_until_finished()

  def restore(self, step: int, state: nnx.State, *, data_iter=None, sharding=None) -> tuple[nnx.State, dict]:
    """Restores into ``state`` (which gives structure, dtypes and shardings; left as it was when this
    raises). ``CheckpointMismatch`` if the stored array names/shapes are not the model's (compared from
    the metadata, before reading any array), ``DamagedCheckpoint`` if the step cannot be read."""
    import grain

    path = self.directory / str(step)
    _quiet_closed_loop_callbacks()
    pure = state.to_pure_dict()
    stored = self.stored_tree(step)  # no such step: a DataError saying so
    diffs = _differences(stored, pure)
    if diffs:
      raise CheckpointMismatch(
          path, f"checkpoint does not match this model/config: {len(diffs)} array(s) differ, e.g. "
          f"{'; '.join(diffs[:2])} (a checkpoint of another model: use the workdir's own config, or a new "
          f"--workdir)")
    args = {"state": ocp.args.StandardRestore(_abstract(pure, sharding)), "meta": ocp.args.JsonRestore()}
    if data_iter is not None:
      args["data"] = grain.checkpoint.CheckpointRestore(data_iter)
    try:
      restored = self.manager.restore(step, args=ocp.args.Composite(**args))
    except Exception as e:  # names and shapes match, so what fails is reading the files
      raise DamagedCheckpoint(path, f"checkpoint is damaged or incomplete ({short_error(e, path)})") from None
    meta = restored["meta"]
    if not isinstance(meta, dict) or "step" not in meta:
      raise DamagedCheckpoint(path, "checkpoint is damaged or incomplete (its meta item has no step)")
    nnx.replace_by_pure_dict(state, restored["state"])
    return state, meta

  def restore_newest(self, state: nnx.State, *, data_iter=None, sharding=None, warn=print):
    """``(state, meta, step)`` from the newest step that restores, or ``(state, None, None)`` if there
    are no steps. Damaged steps newer than it are moved aside (``warn`` gets one line per step); if
    none restores, a ``DamagedCheckpoint`` naming the folder and nothing is moved."""
    damaged = []
    for step in sorted(self.all_steps(), reverse=True):
      try:
        state, meta = self.restore(step, state, data_iter=data_iter, sharding=sharding)
      except DamagedCheckpoint as e:
        damaged.append((step, e.problem))
        continue
      for bad, problem in damaged:
        self._move_aside(bad, problem, step, warn)
      if damaged:
        self.manager.reload()  # its step list still has the moved steps
      return state, meta, step
    if not damaged:
      return state, None, None
    raise DamagedCheckpoint(
        self.directory, f"no checkpoint restores (step(s) {', '.join(str(s) for s, _ in damaged)}: "
        f"{damaged[0][1]}); move this folder aside (or train in a new --workdir) to start afresh")

  def _move_aside(self, step: int, problem: str, resumed: int, warn) -> None:
    path = self.directory / str(step)
    if jax.process_index() == 0:
      target = free_name(path)
      path.rename(target)
      warn(f"warning: {path}: {problem}; moved to {target.name}, resuming from step {resumed}")
    if jax.process_count() > 1:
      from jax.experimental import multihost_utils

      multihost_utils.sync_global_devices(f"hdr_jax_move_aside_{step}")

  def close(self) -> None:
    self.manager.close()
