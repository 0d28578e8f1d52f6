"""Starting a network from a pretrained feature extractor (``config.init.feature_extractor=WORKDIR``).

:func:`load_feature_extractor` reads the latest checkpoint of a training workdir (an l-DAE run of
``configs/ldae.py``; any workdir whose bundle holds an HDR-VAM at ``model`` works) and copies its
feature-extractor state ``model.fe`` (:class:`hdr_jax.models.vam.VAMFeatures`, DRDB stem included)
into the current bundle, leaving everything else (reconstruction, refinement, optimiser state) as
initialised. Both runs must build the same feature extractor (same ``model.name`` and ``model.*``
keys): every array is checked by path and shape against the checkpoint's metadata before anything
is read or copied.

``paths`` names where the copy goes: what the task declares in ``feature_extractor_paths`` (the
regression and GAN generator: ``model.fe``; a diffusion U-Net's encoder and its EMA copy:
``model.encoder.fe`` and ``ema.encoder.fe``); :meth:`hdr_jax.engine.Engine.load_feature_extractor`
passes them.
"""

from __future__ import annotations

from pathlib import Path

import jax
import numpy as np
from flax import nnx
from flax.nnx import traversals

from hdr_jax import checkpoint
from hdr_jax import fileio

SOURCE = ("model", "fe")


def _subtree(tree, path):
  """``tree[path[0]][path[1]]...`` matching keys as strings (checkpoints spell list indices so); None
  where a key is missing."""
  for k in path:
    if not hasattr(tree, "items"):
      return None
    tree = next((v for x, v in tree.items() if str(x) == str(k)), None)
    if tree is None:
      return None
  return tree


def _flat(tree) -> dict:
  """``{'a/b/0/kernel': leaf}`` with string keys, of nested dicts (``Checkpoints.stored_tree`` and
  ``read_state``, pure state dicts)."""
  return {"/".join(str(k) for k in kp): v for kp, v in traversals.flatten_mapping(tree).items()}


def _describe(config) -> str:
  model = dict(config.model) if "model" in config else {}
  name = model.pop("name", "?")
  return f"{name} {model}" if model else str(name)


class PretrainedCheckpoint:
  """The latest checkpoint of a workdir: ``config``, ``step``, ``shapes`` (``{path: (shape, dtype)}``
  of its ``model.fe``, from the metadata alone) and :meth:`read`."""

  def __init__(self, workdir):
    self.workdir = Path(workdir)
    self.config = checkpoint.load_config(self.workdir)
    ckpts = checkpoint.Checkpoints(self.workdir, read_only=True)
    try:
      self.step = ckpts.latest_step()
      if self.step is None:
        raise fileio.DataError(ckpts.directory, "no checkpoint found in this workdir")
      self.tree = ckpts.stored_tree(self.step)
    finally:
      ckpts.close()
    fe = _subtree(self.tree, SOURCE)
    if fe is None:
      raise fileio.DataError(self.workdir, f"its checkpoint (task {self.config.get('task', '?')!r}, model "
                          f"{_describe(self.config)}) holds no feature extractor at {'.'.join(SOURCE)}")
    self.shapes = {k: (tuple(m.shape), np.dtype(m.dtype)) for k, m in _flat(fe).items()}

  def read(self, sharding=None) -> dict:
    """``{path: array}`` of ``model.fe`` (the whole checkpointed state is restored, then cut)."""
    ckpts = checkpoint.Checkpoints(self.workdir, read_only=True)
    try:
      state = ckpts.read_state(self.step, sharding)
    finally:
      ckpts.close()
    return _flat(_subtree(state, SOURCE))


def load_feature_extractor(state: nnx.State, workdir, paths=(SOURCE,), *, config, sharding=None) -> nnx.State:
  """Copies the ``model.fe`` state of ``workdir``'s latest checkpoint into ``state`` (a bundle state of
  the run configured by ``config``) at each of ``paths``, its arrays read with ``sharding``; returns
  ``state``. Raises ValueError naming the workdir, both models and the mismatching arrays when the
  feature extractors differ."""
  src = PretrainedCheckpoint(workdir)
  pure = state.to_pure_dict()
  targets = []
  for path in paths:
    where = ".".join(path)
    dst = _subtree(pure, path)
    if dst is None:
      raise ValueError(f"config.init.feature_extractor={workdir}: this model ({_describe(config)}) has no "
                       f"feature extractor at {where} to take that run's (model {_describe(src.config)})")
    shapes = {k: tuple(np.shape(v)) for k, v in _flat(dst).items()}
    problems = [f"missing in the checkpoint: {k} {shapes[k]}" for k in sorted(set(shapes) - set(src.shapes))]
    problems += [f"not in this model: {k} {src.shapes[k][0]}" for k in sorted(set(src.shapes) - set(shapes))]
    problems += [f"{k}: checkpoint {src.shapes[k][0]}, this model {shapes[k]}"
                 for k in sorted(set(shapes) & set(src.shapes)) if shapes[k] != src.shapes[k][0]]
    if problems:
      shown = problems[:12] + ([f"... and {len(problems) - 12} more"] if len(problems) > 12 else [])
      raise ValueError(
          f"config.init.feature_extractor={workdir}: its feature extractor (model {_describe(src.config)}, step "
          f"{src.step}) does not match this model's {where} (model {_describe(config)}); use the same "
          f"model.name and model.* settings in both runs. Mismatching arrays:\n  " + "\n  ".join(shown))
    targets.append((path, {k: np.dtype(getattr(v, "dtype", np.float32)) for k, v in _flat(dst).items()}))
  fe = src.read(sharding)
  updates = {tuple(path) + tuple(k.split("/")): v.astype(dtypes[k]) for path, dtypes in targets for k, v in fe.items()}
  nnx.replace_by_pure_dict(state, traversals.unflatten_mapping(updates))
  if jax.process_index() == 0:
    print(f"feature extractor: {len(fe)} arrays of {workdir} (step {src.step}) copied into "
          f"{', '.join('.'.join(p) for p in paths)}", flush=True)
  return state
