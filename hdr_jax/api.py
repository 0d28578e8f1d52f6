"""The Python API for notebooks: load a model, predict HDR from three frames held as NumPy arrays.

  import hdr_jax

  model = hdr_jax.load(pretrained="ahdrnet-merge-cpu")   # or hdr_jax.load("runs/ahdrnet") (a workdir)
  bracket = hdr_jax.read_bracket("photos/window")         # three frames + EXIF exposures, aligned (mtb)
  hdr = model.predict(bracket.frames, bracket.exposures)  # linear radiance (H, W, 3) float32

Conventions: ``frames`` are three LDR frames of one scene, ``(3, H, W, 3)`` or a list of three
``(H, W, 3)`` RGB arrays: uint8 or uint16 codes, or floats in [0, 1], gamma-encoded (the model's
gamma, 2.24). ``exposures`` are their three exposures in stops (any offset: only differences count);
the frames are sorted by exposure and the stops taken relative to the middle frame, as the CLI does.
The result is *linear* radiance relative to the medium frame (a pixel the medium frame records at code
value ``v`` in [0, 1] has radiance about ``v ** 2.24``; bright regions exceed 1), what ``.exr`` and
``.hdr`` files hold. ``gamma_domain=True`` returns the NTIRE convention instead (``linear ** (1 /
2.24)``, the models' raw output).

Large frames are predicted in overlapping tiles (:mod:`hdr_jax.tiling`): the same result as the whole
frame for translation-local models (AHDRNet), with the memory of one tile. Models that are not
translation-local (HDR-VAM, GAN, diffusion) predict the whole frame.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from hdr_jax import brackets as brackets_lib
from hdr_jax import hdr_math
from hdr_jax import fileio
from hdr_jax import tiling

Bracket = brackets_lib.Bracket
read_bracket = brackets_lib.read_bracket


class HDRModel:
  """A trained model ready to predict: ``config``, ``step`` (the checkpoint), ``source`` (its workdir)
  and :meth:`predict`. Made by :func:`load`."""

  def __init__(self, config, engine, state, step: int, source):
    self.config, self.step, self.source = config, step, source
    self._engine, self._state = engine, state
    self._radius = engine.receptive_radius(state)

  def __repr__(self) -> str:
    return f"HDRModel({self.config.model.name}, task {self.config.task}, step {self.step}, from {self.source})"

  @property
  def receptive_radius(self) -> int | None:
    """Pixels an output pixel depends on in each direction, or None when the model is not
    translation-local (it then predicts whole frames only)."""
    return self._radius

  def tiles_for(self, height: int, width: int, tile: int | None = None) -> int:
    """How many windows a ``height`` x ``width`` frame is predicted in (1 = the whole frame);
    ``tile`` as in :meth:`predict` (a ``ValueError`` where this model cannot be tiled)."""
    tile = self._tile(tile)
    if tile == 0:
      return 1
    return len(tiling.plan(height, width, tile, self._radius, tiling.SIZE_MULTIPLE))

  def _tile(self, tile: int | None) -> int:
    if tile is not None and (int(tile) != tile or tile < 0):
      raise ValueError(f"tile={tile!r}: expected a positive number of pixels, or 0 for the whole frame")
    if self._radius is None:
      if tile:
        raise ValueError(f"tile={tile}: model {self.config.model.name!r} (task {self.config.task}) is not "
                         "translation-local (it uses image-wide operations), so tiles would change its "
                         "output; it predicts whole frames only (leave the tile size unset, or 0)")
      return 0
    return tiling.DEFAULT_TILE if tile is None else int(tile)

  def predict(self, frames, exposures, *, tile: int | None = None, gamma_domain: bool = False,
              key=None) -> np.ndarray:
    """HDR ``(H, W, 3)`` float32 from three frames and their exposures in stops (module docstring):
    linear radiance relative to the medium frame, or the NTIRE gamma-domain values with
    ``gamma_domain=True``. ``tile``: output pixels per tile side (default :data:`tiling.DEFAULT_TILE`
    for translation-local models, which gives the whole-frame result; 0 = the whole frame at once).
    ``key``: a ``jax.random`` key for sampling models (default: the config's seed)."""
    frames, exposures = _checked(frames, exposures)
    tile = self._tile(tile)
    order = np.argsort(exposures, kind="stable")
    frames, exposures = frames[order], (exposures[order] - exposures[order][1]).astype(np.float32)

    def predict_window(window, ev):
      out = self._engine.predict(self._state, window, ev, key)[0]
      if not np.all(np.isfinite(out)):
        raise FloatingPointError("the model produced NaN/inf values")
      return out[None] if gamma_domain else hdr_math.np_gamma_decode(out)[None]

    if tile == 0:
      return predict_window(frames[None], exposures[None])[0].astype(np.float32)
    return tiling.predict_tiled(predict_window, frames, exposures, tile, self._radius, tiling.SIZE_MULTIPLE)


def _checked(frames, exposures) -> tuple[np.ndarray, np.ndarray]:
  """``frames`` as one ``(3, H, W, 3)`` array (uint8, uint16 or float32 in [0, 1]) and ``exposures``
  as ``(3,)`` float32, or a ``ValueError`` saying what is wrong."""
  if isinstance(frames, (list, tuple)):
    if len(frames) != 3:
      raise ValueError(f"frames: expected three frames (short, medium, long), got {len(frames)}")
    shapes = {np.shape(f) for f in frames}
    if len(shapes) != 1:
      raise ValueError(f"frames: the three frames must have the same shape, got {[np.shape(f) for f in frames]}")
    frames = np.stack([np.asarray(f) for f in frames])
  frames = np.asarray(frames)
  if frames.ndim != 4 or frames.shape[0] != 3 or frames.shape[-1] != 3:
    raise ValueError(f"frames: expected (3, H, W, 3) RGB frames, got shape {frames.shape}")
  if frames.dtype.kind == "f":
    frames = frames.astype(np.float32)
    if not np.all(np.isfinite(frames)) or frames.min() < 0 or frames.max() > 1:
      raise ValueError("frames: float frames must be finite values in [0, 1] (or pass uint8/uint16 codes)")
  elif frames.dtype not in (np.uint8, np.uint16):
    raise ValueError(f"frames: expected uint8, uint16 or float values in [0, 1], got {frames.dtype}")
  exposures = np.asarray(exposures, np.float64).reshape(-1)
  if exposures.shape != (3,) or not np.all(np.isfinite(exposures)):
    raise ValueError(f"exposures: expected three finite numbers in stops, got {exposures.tolist()}")
  return frames, exposures.astype(np.float32)


def load(workdir=None, *, pretrained: str | None = None, step: int | str = "latest",
         overrides: dict | None = None) -> HDRModel:
  """A model to predict with: a training ``workdir`` (``step``: an int, ``'latest'`` or ``'best'``), or
  a model shipped in the package, ``pretrained="ahdrnet-merge-cpu"`` (``hdr_jax.pretrained.available()``
  lists them; a plain name that is not a folder is taken as a shipped model too). ``overrides``:
  config settings such as ``{"sampler.steps": 50}``."""
  from hdr_jax import cli
  from hdr_jax import engine as engine_lib
  from hdr_jax import pretrained as pretrained_lib

  if (workdir is None) == (pretrained is None):
    raise ValueError("give exactly one of a workdir (a training run) and pretrained= (a shipped model)")
  if workdir is not None and not fileio.is_remote(workdir) and not Path(workdir).exists() \
      and str(workdir) in pretrained_lib.available():
    pretrained, workdir = str(workdir), None
  if pretrained is not None:
    workdir, step = pretrained_lib.path(pretrained), "latest"
  config, engine, state, chosen = engine_lib.load_from_workdir(workdir, step, overrides,
                                                               prepare=cli.use_compilation_cache)
  return HDRModel(config, engine, state, chosen, workdir)
