"""The Kalantari 2017 (SIG17) dataset layout and its evaluation protocol.

Layout (as Kalantari & Ramamoorthi published it, and as HDR-Transformer, SCTNet and SAFNet read it)::

  ROOT/                        e.g. Training/ or Test/ (scene folders may sit any number of levels down)
    <scene>/
      <a>.tif <b>.tif <c>.tif  three 16-bit RGB LDR frames; sorted by file name: short, medium, long
      exposure.txt             three numbers (one per line or on one line): stops above the shortest frame
      HDRImg.hdr               the label: linear Radiance RGBE HDR aligned to the medium frame, on the
                               scale of the shortest exposure (the short frame saturates at 1)

A scene's id is its folder path relative to ROOT (``PAPER/BarbequeDay``; the folder's name when ROOT
is itself a scene). Every file is validated (decoded) before any work; every problem is one
:class:`hdr_jax.fileio.DataError` naming the file.

The protocol (``docs/sig17.md``): frames are mapped to [0, 1] by :func:`hdr_jax.hdr_math.unit_frames`,
the network sees ``[LDR, LDR ** 2.2 / 2 ** stops]`` with stops counted from the shortest frame (model
``gamma=2.2``, ``exposure_reference='short'``), the label enters the project's internal convention
(gamma-domain HDR relative to the medium exposure) through :func:`hdr_jax.hdr_math.sig17_to_internal`
and predictions leave it through :func:`~hdr_jax.hdr_math.internal_to_sig17`, and the metrics are
:func:`hdr_jax.hdr_math.np_sig17_metrics` (PSNR-mu / PSNR-L / SSIM-mu / SSIM-L on linear HDR clipped
to [0, 1]). Scene dicts of this module carry ``'protocol': 'sig17'`` and the label as ``'linear_gt'``
so the shared evaluation picks this metric set.

This module also holds the small dispatch the rest of the package calls for any data folder:
:func:`detect_layout`, :func:`validate_scenes`, :func:`read_any`, :func:`frame_size`,
:func:`apply_protocol`, :func:`scene_metrics` and :func:`write_result`.
"""

from __future__ import annotations

import dataclasses
import math
import os
import re
from pathlib import Path

import numpy as np

from hdr_jax import fileio
from hdr_jax.constants import SIG17_GAMMA
from hdr_jax.fileio import cv2

LAYOUTS = ("ntire", "sig17")
PROTOCOLS = ("auto",) + LAYOUTS
EXPOSURE_FILE = "exposure.txt"
LABEL_FILE = "HDRImg.hdr"
TIFF_SUFFIXES = (".tif", ".tiff")
RESULT_SUFFIXES = (".hdr", ".exr")
# Model settings the SIG17 protocol imposes (the papers' and the official AHDRNet's input mapping).
MODEL_SETTINGS = {"gamma": SIG17_GAMMA, "exposure_reference": "short"}


@dataclasses.dataclass(frozen=True)
class Sig17Scene:
  """Paths of one SIG17 scene; ``label`` is None when the folder has no ``HDRImg.hdr``."""

  scene_id: str
  folder: Path
  frames: tuple[Path, Path, Path]
  exposures: Path
  label: Path | None

  @property
  def has_gt(self) -> bool:
    return self.label is not None


def _is_tiff(p: Path) -> bool:
  return p.suffix.lower() in TIFF_SUFFIXES and not p.name.startswith(".")


def _is_scene_dir(d: Path) -> bool:
  return (d / EXPOSURE_FILE).exists() or any(_is_tiff(p) for p in d.iterdir() if p.is_file())


def _scene_dirs(root: Path) -> list[Path]:
  """Scene folders under ``root`` (itself included), depth first in name order; hidden folders and the
  inside of a scene folder are not searched."""
  if _is_scene_dir(root):
    return [root]
  found = []
  for d in sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith(".")):
    found += _scene_dirs(d)
  return found


def discover_scenes(folder, require_gt: bool = False) -> list[Sig17Scene]:
  """All SIG17 scenes under ``folder``, sorted by id. Each needs exactly three ``.tif`` frames and an
  ``exposure.txt``; ``HDRImg.hdr`` is needed with ``require_gt``."""
  root = Path(folder)
  if not root.is_dir():
    raise fileio.DataError(root, "folder does not exist")
  dirs = _scene_dirs(root)
  if not dirs:
    raise fileio.DataError(root, "no SIG17 scenes found (expected scene folders, at any depth, holding three "
                        f"16-bit .tif frames, {EXPOSURE_FILE} and {LABEL_FILE})")
  scenes = []
  for d in dirs:
    tifs = sorted((p for p in d.iterdir() if p.is_file() and _is_tiff(p)), key=lambda p: p.name)
    if len(tifs) != 3:
      raise fileio.DataError(d, f"expected 3 .tif LDR frames (short, medium, long by file name), found {len(tifs)}"
                          + (f": {', '.join(p.name for p in tifs)}" if tifs else ""))
    expo = d / EXPOSURE_FILE
    if not expo.is_file():
      raise fileio.DataError(expo, "file is missing (every SIG17 scene needs its exposures in stops)")
    label = d / LABEL_FILE
    if not label.is_file():
      if require_gt:
        raise fileio.DataError(label, "file is missing (the scene's HDR label is needed here)")
      label = None
    sid = d.name if d == root else d.relative_to(root).as_posix()
    scenes.append(Sig17Scene(sid, d, tuple(tifs), expo, label))
  return scenes


def read_exposure_txt(path) -> np.ndarray:
  """``exposure.txt``: three finite, strictly increasing numbers (stops; whitespace or newlines apart)."""
  path = Path(path)
  try:
    text = path.read_text()
  except (OSError, UnicodeDecodeError) as e:
    raise fileio.DataError(path, f"cannot be read ({getattr(e, 'strerror', None) or e})") from None
  try:
    values = [float(t) for t in text.split()]
  except ValueError:
    raise fileio.DataError(path, f"expected 3 numbers (stops of short, medium, long), "
                        f"found {text.strip()[:60]!r}") from None
  if len(values) != 3:
    raise fileio.DataError(path, f"expected 3 numbers (stops of short, medium, long), found {len(values)}")
  if not all(math.isfinite(v) for v in values):
    raise fileio.DataError(path, f"exposures must be finite, found {values}")
  if not values[0] < values[1] < values[2]:
    raise fileio.DataError(path, f"exposures must be strictly increasing (short < medium < long), found {values}")
  return np.asarray(values, np.float32)


def read_tiff16(path) -> np.ndarray:
  """A 16-bit RGB TIFF frame as ``uint16 (H, W, 3)`` RGB."""
  path = Path(path)
  if not path.is_file():
    raise fileio.DataError(path, "file is missing")
  img = cv2.imdecode(np.fromfile(path, dtype=np.uint8), cv2.IMREAD_UNCHANGED)
  if img is None:
    raise fileio.DataError(path, "not a readable TIFF image (corrupt or another format)")
  channels = 1 if img.ndim == 2 else img.shape[2]
  if img.dtype != np.uint16:
    bits = {np.dtype(np.uint8): "8-bit", np.dtype(np.float32): "32-bit float"}.get(img.dtype, str(img.dtype))
    raise fileio.DataError(path, f"LDR frame must be a 16-bit TIFF, found {bits}")
  if channels != 3:
    raise fileio.DataError(path, f"LDR frame must have 3 colour channels (RGB), found {channels}")
  return cv2.cvtColor(img, cv2.COLOR_BGR2RGB)


def read_label(path) -> np.ndarray:
  """``HDRImg.hdr`` as linear float32 RGB (Radiance RGBE); NaN/inf is an error, negatives become 0."""
  return fileio.read_hdr_image(path)


def read_scene_stored(scene: Sig17Scene, with_gt: bool = True) -> dict:
  """``{'id', 'frames': (3, H, W, 3) uint16, 'exposures': (3,) stops, 'linear_gt': (H, W, 3) float32}``
  (the label only when present and ``with_gt``), sizes checked."""
  frames = [read_tiff16(p) for p in scene.frames]
  h, w = frames[0].shape[:2]
  for p, f in zip(scene.frames[1:], frames[1:]):
    if f.shape[:2] != (h, w):
      raise fileio.DataError(p, f"frame size {f.shape[0]}x{f.shape[1]} differs from the short frame's {h}x{w}")
  out = {"id": scene.scene_id, "frames": np.stack(frames), "exposures": read_exposure_txt(scene.exposures)}
  if with_gt and scene.label is not None:
    label = read_label(scene.label)
    if label.shape[:2] != (h, w):
      raise fileio.DataError(scene.label, f"label size {label.shape[0]}x{label.shape[1]} differs from the frames' {h}x{w}")
    out["linear_gt"] = label
  return out


def read_scene(scene: Sig17Scene, with_gt: bool = True) -> dict:
  """One scene as the shared evaluation reads it (like :func:`hdr_jax.fileio.read_scene`): ``frames``
  float32 in [0, 1] (``unit_frames``), ``exposures``, ``gt`` in the internal convention, ``linear_gt``
  (the label as stored) and ``protocol='sig17'``."""
  from hdr_jax import hdr_math

  raw = read_scene_stored(scene, with_gt)
  out = {"id": raw["id"], "frames": hdr_math.unit_frames(raw["frames"]), "exposures": raw["exposures"],
         "protocol": "sig17"}
  if "linear_gt" in raw:
    out["linear_gt"] = raw["linear_gt"]
    out["gt"] = hdr_math.sig17_to_internal(raw["linear_gt"], raw["exposures"])
  return out


def validate_folder(folder, require_gt: bool = False) -> list[Sig17Scene]:
  """Discovers every scene and decodes every file of it (frames, exposures, label) before any work."""
  scenes = discover_scenes(folder, require_gt=require_gt)
  for s in scenes:
    read_scene_stored(s)
  return scenes


class Sig17Source:
  """Random access over the scenes of a SIG17 folder for the grain pipeline (:mod:`hdr_jax.data`):
  ``{'frames': uint16 (3, H, W, 3), 'exposures', 'gt' (internal convention), 'id', 'index'}``."""

  def __init__(self, folder, *, require_gt: bool = True):
    self.folder = Path(folder)
    self.scenes = discover_scenes(folder, require_gt=require_gt)
    self.frame_sizes = []
    for s in self.scenes:
      self.frame_sizes.append(read_scene_stored(s)["frames"].shape[1:3])

  def __len__(self) -> int:
    return len(self.scenes)

  def __getitem__(self, index: int) -> dict:
    from hdr_jax import hdr_math

    raw = read_scene_stored(self.scenes[index])
    out = {"frames": raw["frames"], "exposures": raw["exposures"], "id": raw["id"], "index": int(index)}
    if "linear_gt" in raw:
      out["gt"] = hdr_math.sig17_to_internal(raw["linear_gt"], raw["exposures"])
    return out

  def describe(self, index: int) -> str:
    return str(self.scenes[index].folder)

  def __repr__(self) -> str:
    return f"Sig17Source({str(self.folder)!r}, {len(self)} scenes)"


def write_scene(folder, frames, stops, label=None) -> Path:
  """Writes one SIG17 scene folder: ``frames`` uint16 ``(3, H, W, 3)`` RGB as ``input_1.tif`` ..
  ``input_3.tif`` (short, medium, long by name), ``stops`` (above the shortest frame) as
  ``exposure.txt`` one per line, and the linear ``label`` as ``HDRImg.hdr``."""
  folder = Path(folder)
  frames = np.asarray(frames)
  if frames.dtype != np.uint16 or frames.shape[0] != 3 or frames.ndim != 4 or frames.shape[-1] != 3:
    raise ValueError(f"{folder}: SIG17 frames must be uint16 (3, H, W, 3), got {frames.dtype} {frames.shape}")
  for i, f in enumerate(frames, start=1):
    ok, buf = cv2.imencode(".tif", cv2.cvtColor(f, cv2.COLOR_RGB2BGR))
    if not ok:
      raise RuntimeError(f"{folder}: TIFF encoding failed")
    fileio.atomic_write_bytes(folder / f"input_{i}.tif", buf.tobytes())
  fileio.atomic_write_bytes(folder / EXPOSURE_FILE, "".join(f"{float(v):g}\n" for v in stops).encode())
  if label is not None:
    fileio.write_radiance_hdr(folder / LABEL_FILE, label)
  return folder


def write_synthesized(folder, scene: dict) -> Path:
  """Writes a scene of :func:`hdr_jax.synthesize.synthesize_scene` (made with ``gamma=2.2, bits=16``)
  as a SIG17 scene: stops counted from the short frame, the label its linear radiance on the short
  frame's scale, clipped to [0, 1] as SIG17 labels are."""
  e = np.asarray(scene["exposures"], np.float32)
  label = np.clip(scene["linear"] / np.float32(2.0 ** (e[1] - e[0])), 0.0, 1.0)
  return write_scene(folder, scene["frames"], e - e[0], label)


# --------------------------------------------------------------------------------------------------
# Dispatch between the NTIRE and SIG17 layouts
# --------------------------------------------------------------------------------------------------


def has_sig17_scenes(folder) -> bool:
  """Whether ``folder`` holds SIG17 scene folders that carry their own ``exposure.txt`` or label: a folder
  of bare TIFF frames is one's own bracket (:mod:`hdr_jax.brackets`), not a SIG17 scene."""
  root = Path(folder)
  return root.is_dir() and any((d / EXPOSURE_FILE).exists() or (d / LABEL_FILE).exists() for d in _scene_dirs(root))


def detect_layout(folder) -> str:
  """``'ntire'`` for a flat folder of ``NNNN_short.png``-style scenes, ``'sig17'`` for scene folders of
  ``.tif`` frames / ``exposure.txt`` (at any depth); a DataError when it is neither."""
  root = Path(folder)
  if not root.is_dir():
    raise fileio.DataError(root, "folder does not exist")
  if any(re.match(r"^\d{4}_(short|medium|long)\.png$", p.name) for p in root.iterdir()):
    return "ntire"
  if _scene_dirs(root):
    return "sig17"
  raise fileio.DataError(root, "no scenes found: neither an NTIRE folder (NNNN_short.png, NNNN_medium.png, "
                      "NNNN_long.png, NNNN_exposures.npy) nor SIG17 scene folders (three 16-bit .tif frames, "
                      f"{EXPOSURE_FILE}, {LABEL_FILE})")


def check_protocol(protocol: str, what: str = "config.data.protocol") -> str:
  if protocol not in PROTOCOLS:
    raise ValueError(f"{what}={protocol!r}: choose one of {', '.join(PROTOCOLS)}")
  return protocol


def layout_of(folder, protocol: str = "auto") -> str:
  """The layout to read ``folder`` with: detected for ``'auto'``, else ``protocol``."""
  check_protocol(protocol)
  return detect_layout(folder) if protocol == "auto" else protocol


def validate_scenes(folder, protocol: str = "auto", require_gt: bool = False) -> list:
  """Every scene of ``folder`` in its layout (``protocol``: auto, ntire or sig17), validated:
  :class:`hdr_jax.fileio.SceneFiles` or :class:`Sig17Scene`."""
  if layout_of(folder, protocol) == "sig17":
    return validate_folder(folder, require_gt=require_gt)
  return fileio.validate_folder(folder, require_gt=require_gt)


def read_any(scene, with_gt: bool = True) -> dict:
  """:func:`read_scene` for a SIG17 scene, :func:`hdr_jax.fileio.read_scene` for an NTIRE one."""
  return read_scene(scene, with_gt) if isinstance(scene, Sig17Scene) else fileio.read_scene(scene, with_gt)


def frame_size(scene) -> tuple[int, int]:
  """``(H, W)`` of a scene's frames (a PNG header for NTIRE, the decoded short frame for SIG17)."""
  if isinstance(scene, Sig17Scene):
    return read_tiff16(scene.frames[0]).shape[:2]
  info = fileio.png_info(scene.frames[0])
  return info.height, info.width


def train_source(folder, protocol: str = "auto"):
  """The training source of a data folder in its layout."""
  if layout_of(folder, protocol) == "sig17":
    return Sig17Source(folder)
  from hdr_jax import data

  return data.NtireSource(folder)


def config_protocol(config) -> str:
  """``config.data.protocol`` (``'auto'`` in configs written before it existed)."""
  return check_protocol(str(config.data.get("protocol", "auto") or "auto"))


def _model_keywords(name: str) -> set[str]:
  """The keyword arguments a registry model's constructor names (following a registry function's
  ``-> Class`` annotation when it only forwards ``**kw``)."""
  import inspect
  import typing

  from hdr_jax import models

  ctor = models.get_constructor(name)
  target = ctor.__init__ if isinstance(ctor, type) else ctor
  params = inspect.signature(target).parameters
  if any(p.kind is p.VAR_KEYWORD for p in params.values()) and not isinstance(ctor, type):
    ret = typing.get_type_hints(ctor).get("return")
    if isinstance(ret, type):
      params = inspect.signature(ret.__init__).parameters
  return set(params)


def apply_protocol(config, *folders) -> str:
  """Resolves ``config.data.protocol`` from the data ``folders`` (None entries skipped) and, for
  ``sig17``, sets the model's input convention (:data:`MODEL_SETTINGS`: gamma 2.2, stops counted from
  the short frame) where the model takes it. Writes the resolved protocol into the config (it is saved
  with the workdir) and returns it. Folders of two layouts are an error."""
  protocol = config_protocol(config)
  layouts = {str(f): detect_layout(f) for f in folders if f is not None}
  if protocol == "auto":
    found = set(layouts.values())
    if len(found) > 1:
      raise ValueError(f"config.data.protocol=auto: the data folders have different layouts ({layouts}); "
                       "use one layout, or set config.data.protocol")
    protocol = found.pop() if found else "ntire"
  if protocol == "sig17" and config.data.get("prepared"):
    raise ValueError("config.data.prepared holds NTIRE data (tiles or ArrayRecord); train on SIG17 from "
                     "config.data.root")
  for folder, layout in layouts.items():
    if layout != protocol:
      raise fileio.DataError(folder, f"is a {layout} folder but config.data.protocol={protocol!r}")
  with config.unlocked():
    config.data.protocol = protocol
    if protocol == "sig17":
      accepted = _model_keywords(config.model.name)
      for k, v in MODEL_SETTINGS.items():
        if k in accepted or k in config.model:
          config.model[k] = v
  return protocol


def warn_mismatch(config, layout: str) -> None:
  """A stderr note when a model whose config records one protocol is applied to data of the other."""
  import sys

  trained = config_protocol(config)
  if trained not in ("auto", layout):
    print(f"note: the model uses the {trained} convention (gamma {config.model.get('gamma', '?')}, stops from the "
          f"{config.model.get('exposure_reference', 'medium')} frame) and the data is {layout}", file=sys.stderr)


# --------------------------------------------------------------------------------------------------
# Metrics and results
# --------------------------------------------------------------------------------------------------


def scene_metrics(d: dict, pred: np.ndarray, ssim: bool = True) -> dict:
  """The SIG17 metrics of one internal-convention prediction against the scene's linear label
  (PSNRs only without ``ssim``)."""
  from hdr_jax import hdr_math

  return hdr_math.np_sig17_metrics(d["linear_gt"], hdr_math.internal_to_sig17(np.asarray(pred), d["exposures"]),
                                   ssim=ssim)


def baseline_linear(d: dict) -> np.ndarray:
  """The medium frame alone as a SIG17 prediction: ``ldr ** 2.2 / 2 ** stops_medium`` (stops from the short frame)."""
  e = np.asarray(d["exposures"], np.float32)
  return np.power(d["frames"][1], np.float32(SIG17_GAMMA)) / np.exp2(e[1] - e[0])


def result_path(folder, scene_id: str, fmt: str = "hdr") -> Path:
  """Where a scene's result goes: ``folder/<scene id>.<fmt>`` (the id is the scene's relative path)."""
  return Path(folder) / f"{scene_id}.{fmt}"


def write_result(folder, d: dict, pred, fmt: str = "hdr") -> list[Path]:
  """Writes one internal-convention prediction as SIG17 linear HDR (``hdr`` Radiance RGBE or ``exr``)."""
  from hdr_jax import hdr_math

  if fmt not in ("hdr", "exr"):
    raise ValueError(f"--format={fmt}: SIG17 results are written as linear 'hdr' (default) or 'exr'")
  path = result_path(folder, d["id"], fmt)
  fileio.write_hdr_image(path, hdr_math.internal_to_sig17(np.asarray(pred), d["exposures"]))
  return [path]


def pair_results(ref_dir, res_dir) -> list[tuple[Sig17Scene, Path]]:
  """Pairs every labelled scene of the SIG17 root ``ref_dir`` with ``res_dir/<scene id>.hdr`` (or
  ``.exr``); missing, doubled and extra result files are errors."""
  ref_dir, res_dir = Path(ref_dir), Path(res_dir)
  scenes = discover_scenes(ref_dir, require_gt=True)
  if not res_dir.is_dir():
    raise fileio.DataError(res_dir, "folder does not exist")
  pairs, used = [], set()
  for s in scenes:
    found = [result_path(res_dir, s.scene_id, ext[1:]) for ext in RESULT_SUFFIXES]
    found = [p for p in found if p.is_file()]
    if not found:
      raise fileio.DataError(result_path(res_dir, s.scene_id), f"file is missing: no result for scene {s.scene_id} "
                          f"(expected {s.scene_id}.hdr or {s.scene_id}.exr)")
    if len(found) > 1:
      raise fileio.DataError(found[0], f"two results for scene {s.scene_id}: {found[0].name} and {found[1].name}")
    pairs.append((s, found[0]))
    used.add(found[0].resolve())
  for dirpath, _, names in os.walk(res_dir):
    for n in sorted(names):
      p = Path(dirpath) / n
      if p.suffix.lower() in RESULT_SUFFIXES and not n.startswith(".") and p.resolve() not in used:
        sid = p.relative_to(res_dir).with_suffix("").as_posix()
        raise fileio.DataError(p, f"extra result: no scene {sid} in {ref_dir}")
  return pairs


def score_folders(ref_dir, res_dir) -> dict:
  """Scores a results folder against a SIG17 root (see :func:`pair_results`): every label and result
  is read and checked before any score; ``{'ref_dir', 'res_dir', 'count', 'scenes': [{'id', 'res',
  'psnr_mu', 'psnr_l', 'ssim_mu', 'ssim_l'}], 'mean': {...}}``."""
  from hdr_jax import hdr_math

  pairs = pair_results(ref_dir, res_dir)

  def load(scene, res):
    label, pred = read_label(scene.label), fileio.read_hdr_image(res)
    if pred.shape != label.shape:
      raise fileio.DataError(res, f"size {pred.shape[0]}x{pred.shape[1]} differs from the label {scene.label}'s "
                          f"{label.shape[0]}x{label.shape[1]}")
    return label, pred

  for scene, res in pairs:  # every file checked before any score (decoded again below: one pair in memory)
    load(scene, res)
  rows = [{"id": s.scene_id, "res": r.relative_to(res_dir).as_posix(), **hdr_math.np_sig17_metrics(*load(s, r))}
          for s, r in pairs]
  keys = ("psnr_mu", "psnr_l", "ssim_mu", "ssim_l")
  mean = {k: float(np.mean([r[k] for r in rows])) for k in keys}
  return {"ref_dir": str(ref_dir), "res_dir": str(res_dir), "protocol": "sig17", "count": len(rows),
          "scenes": rows, "mean": mean}
