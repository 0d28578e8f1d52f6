"""One's own bracketed photos: a folder of three JPEG, PNG or TIFF frames -> the model's inputs.

A *bracket folder* holds exactly three image files (``.jpg``/``.jpeg``, ``.png``, ``.tif``/``.tiff``;
hidden files and other files are ignored) of one scene at three exposures. This module finds them,
reads their pixels and exposures, and aligns hand-held brackets:

* Pixels: 8-bit files as uint8, 16-bit PNG/TIFF as uint16 (the engine scales codes by 255 or 65535,
  so 16-bit frames keep their precision); grey images are repeated to RGB, alpha is dropped, and the
  EXIF orientation is applied (OpenCV's reader). The three frames must have the same size and depth.
* Exposures (stops): ``EV = log2(t * S / N ** 2)`` from the EXIF ExposureTime ``t``, ISO ``S``
  (ISOSpeedRatings/PhotographicSensitivity) and FNumber ``N`` (read with Pillow), or given by the
  caller (``--exposures=-2,0,2``, in file-name order). An ISO or f-number that no frame records is
  taken as equal for all three (it cancels); ExposureTime is required. The frames are sorted by
  exposure (short, medium, long) and the stops taken relative to the middle frame (medium = 0), the
  convention every model of this package is trained with.
* Linearisation is the model's: the network reads the frames as values gamma-encoded with its
  ``model.gamma`` (2.24 for every shipped model, close to sRGB's ~2.2). A camera's JPEG tone curve is
  not exactly a power law; that gamma is the stated assumption for photos.
* Alignment (:func:`align_frames`): ``mtb`` (default) shifts the short and long frames onto the medium
  by the median-threshold-bitmap translation (:func:`mtb_shift`, Ward's method, up to 63 pixels): it is
  insensitive to exposure by construction, cannot diverge, is cheap at 24 MP (benchmarks/RESULTS.md),
  and hand-held shake between bracket frames is mostly translation. ``ecc`` fits a homography (``ecc-affine``: an affine
  map) with ``findTransformECC`` on exposure-normalised grey frames, coarse to fine, for brackets with
  rotation or perspective change; ``none`` for a tripod. Uncovered borders repeat the edge pixels.
"""

from __future__ import annotations

import dataclasses
import math
from pathlib import Path

import numpy as np

from hdr_jax import fileio
from hdr_jax.constants import GAMMA

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".tif", ".tiff")
ALIGN_METHODS = ("mtb", "ecc", "ecc-affine", "none")
DEFAULT_ALIGN = "mtb"
_EXIF_IFD = 0x8769
_EXPOSURE_TIME, _F_NUMBER, _ISO = 0x829A, 0x829D, 0x8827


@dataclasses.dataclass
class Bracket:
  """Three frames of one scene, sorted short -> long: ``frames (3, H, W, 3)`` uint8 or uint16,
  ``exposures (3,)`` float32 stops relative to the middle frame, ``files`` the source of each frame,
  ``name`` the folder's name (the output's name)."""

  frames: np.ndarray
  exposures: np.ndarray
  files: tuple[Path, Path, Path]
  name: str


# --------------------------------------------------------------------------------------------------
# Finding brackets
# --------------------------------------------------------------------------------------------------


def image_files(folder) -> list[Path]:
  """The image files of ``folder`` (by suffix, hidden files skipped), sorted by name."""
  return sorted(p for p in Path(folder).iterdir()
                if p.is_file() and not p.name.startswith(".") and p.suffix.lower() in IMAGE_SUFFIXES)


def is_bracket_input(path) -> bool:
  """True when ``path`` is a folder holding image files, or subfolders that do (a folder of brackets)."""
  path = Path(path)
  if not path.is_dir():
    return False
  if image_files(path):
    return True
  return any(image_files(p) for p in path.iterdir() if p.is_dir() and not p.name.startswith("."))


def discover(path) -> list[Path]:
  """The bracket folders of ``path``: ``path`` itself when it holds image files, else its subfolders
  that do (sorted by name). Each must hold exactly three frames: a ``DataError`` naming it otherwise."""
  path = Path(path)
  if not path.is_dir():
    raise fileio.DataError(path, "folder does not exist")
  folders = [path] if image_files(path) else sorted(
      p for p in path.iterdir() if p.is_dir() and not p.name.startswith(".") and image_files(p))
  if not folders:
    raise fileio.DataError(path, f"no bracket found: expected three image files ({', '.join(IMAGE_SUFFIXES)}) "
                        "in the folder or in each of its subfolders")
  for folder in folders:
    files = image_files(folder)
    if any(p.name.endswith("_short.png") and (folder / p.name.replace("_short.png", "_exposures.npy")).is_file()
           for p in files):
      raise fileio.DataError(folder, "holds NTIRE scene files (NNNN_short.png ...): give this folder itself as the input")
    if len(files) != 3:
      shown = ", ".join(p.name for p in files[:6]) + (", ..." if len(files) > 6 else "")
      raise fileio.DataError(folder, f"a bracket is three frames, found {len(files)} image file(s) ({shown})")
  return folders


# --------------------------------------------------------------------------------------------------
# Exposures
# --------------------------------------------------------------------------------------------------


def parse_exposures(text: str) -> np.ndarray:
  """``"-2,0,2"`` -> ``[-2, 0, 2]`` (three finite numbers in stops); a ``ValueError`` otherwise."""
  parts = [p.strip() for p in str(text).split(",")]
  try:
    values = [float(p) for p in parts]
  except ValueError:
    values = []
  if len(values) != 3 or not all(math.isfinite(v) for v in values):
    raise ValueError(f"--exposures={text!r}: expected three numbers in stops separated by commas, in the "
                     "frames' file-name order (e.g. --exposures=-2,0,2)")
  return np.asarray(values, np.float32)


def exposure_value(exposure_time: float, iso: float = 100.0, f_number: float = 1.0) -> float:
  """The exposure of a frame in stops: ``log2(t * S / N ** 2)`` (brighter image = larger value)."""
  return math.log2(exposure_time * iso / f_number**2)


def _exif_number(value):
  if isinstance(value, (tuple, list)):
    value = value[0] if value else None
  try:
    value = float(value)
  except (TypeError, ValueError, ZeroDivisionError):
    return None
  return value if math.isfinite(value) and value > 0 else None


def read_exif_exposure(path) -> dict:
  """``{"time": t, "iso": S, "f_number": N}`` from a file's EXIF (values absent from it are None)."""
  from PIL import Image, UnidentifiedImageError

  try:
    with Image.open(path) as im:
      exif = im.getexif()
      if not exif and path.suffix.lower() == ".png":  # a PNG's eXIf chunk may follow the pixels
        im.load()
        exif = im.getexif()
      tags = {**dict(exif), **dict(exif.get_ifd(_EXIF_IFD))}
  except (OSError, UnidentifiedImageError, ValueError, SyntaxError):
    return {"time": None, "iso": None, "f_number": None}
  return {"time": _exif_number(tags.get(_EXPOSURE_TIME)), "iso": _exif_number(tags.get(_ISO)),
          "f_number": _exif_number(tags.get(_F_NUMBER))}


def exif_exposures(files) -> np.ndarray:
  """The stops of ``files`` from their EXIF (absolute: ``log2(t * S / N**2)``). An ISO or f-number
  that no file records counts as equal for all; one that only some record is an error, and so is a
  missing ExposureTime (``DataError`` naming the file and the way out, ``--exposures``)."""
  exif = [read_exif_exposure(Path(f)) for f in files]
  for f, e in zip(files, exif):
    if e["time"] is None:
      raise fileio.DataError(f, "no EXIF exposure time: give the bracket's exposures in stops with "
                          "--exposures=S1,S2,S3 (file-name order, e.g. -2,0,2)")
  values = {}
  for key, default in (("iso", 100.0), ("f_number", 1.0)):
    known = [e[key] is not None for e in exif]
    if any(known) and not all(known):
      missing = next(f for f, k in zip(files, known) if not k)
      raise fileio.DataError(missing, f"EXIF has no {'ISO' if key == 'iso' else 'FNumber'} while the other "
                          "frames of its bracket do: give the exposures with --exposures=S1,S2,S3")
    values[key] = [e[key] if e[key] is not None else default for e in exif]
  return np.asarray([exposure_value(e["time"], s, n) for e, s, n in zip(exif, values["iso"], values["f_number"])],
                    np.float32)


def sort_by_exposure(files, exposures) -> tuple[tuple[Path, ...], np.ndarray]:
  """Frames and stops sorted short -> long, the stops relative to the middle frame. Three different
  exposures are needed (a ``DataError`` naming the frames otherwise)."""
  exposures = np.asarray(exposures, np.float64)
  order = np.argsort(exposures, kind="stable")
  files, exposures = tuple(Path(files[i]) for i in order), exposures[order]
  for a, b, ea, eb in zip(files, files[1:], exposures, exposures[1:]):
    if eb - ea < 1e-3:
      raise fileio.DataError(a.parent, f"{a.name} and {b.name} have the same exposure ({ea:+.2f} stops): "
                          "a bracket needs three different exposures")
  return files, (exposures - exposures[1]).astype(np.float32)


# --------------------------------------------------------------------------------------------------
# Pixels
# --------------------------------------------------------------------------------------------------


def read_frame(path) -> np.ndarray:
  """An image file as RGB ``(H, W, 3)`` uint8 (8-bit files) or uint16 (16-bit PNG/TIFF)."""
  import cv2

  path = Path(path)
  if not path.is_file():
    raise fileio.DataError(path, "file is missing")
  data = np.fromfile(path, np.uint8)
  img = cv2.imdecode(data, cv2.IMREAD_COLOR | cv2.IMREAD_ANYDEPTH) if data.size else None
  if img is None:
    raise fileio.DataError(path, "cannot be read as an image (unreadable, truncated or not a JPEG/PNG/TIFF)")
  if img.dtype not in (np.uint8, np.uint16):
    raise fileio.DataError(path, f"{img.dtype} pixels: frames must be 8-bit or 16-bit images")
  return cv2.cvtColor(img, cv2.COLOR_BGR2RGB)


def read_bracket(folder, exposures=None, align: str = DEFAULT_ALIGN, gamma: float = GAMMA) -> Bracket:
  """The bracket of ``folder`` (exactly three image files): frames sorted short -> long, their stops
  relative to the middle frame, and the short and long frames aligned onto the medium one with
  ``align`` (:data:`ALIGN_METHODS`; ``gamma`` normalises exposure for ``ecc``). ``exposures``: the
  frames' stops in file-name order (a sequence or a ``"-2,0,2"`` string); by default from the EXIF
  (see the module docstring)."""
  folder = Path(folder)
  if not folder.is_dir() or not image_files(folder):
    raise fileio.DataError(folder, "not a bracket folder (three JPEG, PNG or TIFF frames)")
  if align not in ALIGN_METHODS:
    raise ValueError(f"align={align!r}: choose one of {', '.join(ALIGN_METHODS)}")
  (folder,) = discover(folder)
  files = image_files(folder)
  if exposures is None:
    ev = exif_exposures(files)
  else:
    ev = parse_exposures(exposures) if isinstance(exposures, str) else np.asarray(exposures, np.float32).reshape(-1)
    if ev.shape != (3,) or not np.all(np.isfinite(ev)):
      raise ValueError(f"exposures: expected three finite numbers in stops, got {exposures!r}")
  files, ev = sort_by_exposure(files, ev)
  frames = [read_frame(f) for f in files]
  for f, img in zip(files[1:], frames[1:]):
    if img.shape != frames[0].shape:
      raise fileio.DataError(f, f"frame is {img.shape[1]}x{img.shape[0]}, {files[0].name} is "
                          f"{frames[0].shape[1]}x{frames[0].shape[0]}: the three frames must have the same size")
    if img.dtype != frames[0].dtype:
      raise fileio.DataError(f, f"frame is {img.dtype.itemsize * 8}-bit, {files[0].name} is "
                          f"{frames[0].dtype.itemsize * 8}-bit: the three frames must have the same depth")
  frames, _ = align_frames(np.stack(frames), ev, align, gamma, where=str(folder))
  return Bracket(frames, ev, files, folder.name)


# --------------------------------------------------------------------------------------------------
# Alignment
# --------------------------------------------------------------------------------------------------


def _grey_unit(frame: np.ndarray) -> np.ndarray:
  import cv2

  grey = cv2.cvtColor(frame, cv2.COLOR_RGB2GRAY)
  return grey.astype(np.float32) / np.float32(np.iinfo(frame.dtype).max if frame.dtype.kind == "u" else 1.0)


def exposure_normalised_grey(frame: np.ndarray, ev_rel: float, ceiling: float, gamma: float) -> np.ndarray:
  """A frame's grey image brought to the medium exposure and re-encoded: ``min(g ** gamma / 2 ** ev_rel,
  ceiling) / ceiling`` to the power ``1 / gamma``. With ``ceiling`` the lowest clipping level of the
  pair, both images of a pair clip at the same radiance, so they look alike where either is valid."""
  linear = np.power(_grey_unit(frame), gamma) / np.float32(2.0**ev_rel)
  return np.power(np.minimum(linear, ceiling) / ceiling, 1.0 / gamma).astype(np.float32)


def _threshold_bitmaps(grey: np.ndarray, exclude: int = 4) -> tuple[np.ndarray, np.ndarray]:
  """Ward's median threshold bitmap (``grey > median``) and exclusion bitmap (pixels more than
  ``exclude`` codes from the median: the only ones compared) of a uint8 grey image."""
  counts = np.bincount(grey.ravel(), minlength=256)
  median = int(np.searchsorted(np.cumsum(counts), (grey.size + 1) // 2))
  return grey > median, np.abs(grey.astype(np.int16) - median) > exclude


def _bitmap_error(ref: tuple, mov: tuple, dy: int, dx: int) -> int:
  """Differing compared pixels of the reference bitmaps and the moving ones shifted by ``(dy, dx)``
  (``moved[y, x] = mov[y - dy, x - dx]``), over the overlap."""
  h, w = ref[0].shape
  ys, ye, xs, xe = max(0, dy), min(h, h + dy), max(0, dx), min(w, w + dx)
  r = (slice(ys, ye), slice(xs, xe))
  m = (slice(ys - dy, ye - dy), slice(xs - dx, xe - dx))
  return int(np.count_nonzero((ref[0][r] ^ mov[0][m]) & ref[1][r] & mov[1][m]))


def mtb_shift(reference: np.ndarray, moving: np.ndarray, max_bits: int = 6) -> tuple[int, int]:
  """The translation ``(dx, dy)`` that moves ``moving`` onto ``reference`` (RGB frames of any exposure),
  by median threshold bitmaps (Ward 2003): coarse to fine over ``max_bits`` halvings (shifts up to
  ``2 ** max_bits - 1`` pixels), each level testing the 9 one-pixel steps around the doubled shift.
  OpenCV's ``AlignMTB.calculateShift`` does the same search but keeps the first of equal errors, which
  on frames with large flat areas drifts by (-1, -1) per level (-63 pixels on a still bracket); here a
  tie keeps the shift found so far."""
  import cv2

  def grey8(frame):
    g = cv2.cvtColor(frame, cv2.COLOR_RGB2GRAY)
    return g if g.dtype == np.uint8 else (g >> 8).astype(np.uint8)

  levels = [(grey8(reference), grey8(moving))]
  bits = int(np.clip(min(max_bits, math.floor(math.log2(max(1, min(reference.shape[:2])))) - 4), 0, max_bits))
  for _ in range(bits):
    a, b = levels[-1]
    half = lambda x: cv2.resize(x, (max(1, x.shape[1] // 2), max(1, x.shape[0] // 2)), interpolation=cv2.INTER_AREA)
    levels.append((half(a), half(b)))
  dy = dx = 0
  for a, b in reversed(levels):
    dy, dx = 2 * dy, 2 * dx
    ref, mov = _threshold_bitmaps(a), _threshold_bitmaps(b)
    best, step = _bitmap_error(ref, mov, dy, dx), (0, 0)
    for sy in (-1, 0, 1):
      for sx in (-1, 0, 1):
        if (sy, sx) != (0, 0):
          err = _bitmap_error(ref, mov, dy + sy, dx + sx)
          if err < best:
            best, step = err, (sy, sx)
    dy, dx = dy + step[0], dx + step[1]
  return dx, dy


def _ecc_warp(reference: np.ndarray, moving: np.ndarray, motion: int, levels_from: int = 512) -> np.ndarray:
  """The 3x3 (homography) or 2x3 (affine) warp taking ``reference`` coordinates to ``moving`` ones,
  from ECC coarse to fine (the long side halved down to ``levels_from`` pixels, at most 2048 at the
  finest level: beyond that ECC costs much and gains little)."""
  import cv2

  h, w = reference.shape
  scales = []
  s = min(1.0, 2048.0 / max(h, w))
  while True:
    scales.append(s)
    if max(h, w) * s / 2 < levels_from:
      break
    s /= 2
  homography = motion == cv2.MOTION_HOMOGRAPHY
  warp = np.eye(3, dtype=np.float32)
  criteria = (cv2.TERM_CRITERIA_EPS | cv2.TERM_CRITERIA_COUNT, 100, 1e-5)
  previous = None
  for s in reversed(scales):
    size = (max(8, round(w * s)), max(8, round(h * s)))
    ref = cv2.resize(reference, size, interpolation=cv2.INTER_AREA)
    mov = cv2.resize(moving, size, interpolation=cv2.INTER_AREA)
    if previous is not None:  # carry the warp to this level's pixel grid
      r = s / previous
      warp = np.diag([r, r, 1.0]).astype(np.float32) @ warp @ np.diag([1 / r, 1 / r, 1.0]).astype(np.float32)
    current = warp if homography else warp[:2].copy()
    _, current = cv2.findTransformECC(ref, mov, current, motion, criteria, None, 5)
    warp = current if homography else np.vstack([current, [0, 0, 1]]).astype(np.float32)
    previous = s
  r = 1.0 / previous
  return np.diag([r, r, 1.0]).astype(np.float32) @ warp @ np.diag([1 / r, 1 / r, 1.0]).astype(np.float32)


def align_frames(frames: np.ndarray, exposures, method: str = DEFAULT_ALIGN, gamma: float = GAMMA,
          where: str = "bracket") -> tuple[np.ndarray, list]:
  """``frames (3, H, W, 3)`` (short, medium, long) with the short and long frames warped onto the
  medium one, and the motion found for each (``(dx, dy)`` pixels for ``mtb``, a 3x3 matrix for ``ecc``).
  ``method``: :data:`ALIGN_METHODS`. ``where`` names the input in errors (ECC may not converge)."""
  import cv2

  if method not in ALIGN_METHODS:
    raise ValueError(f"--align={method}: choose one of {', '.join(ALIGN_METHODS)}")
  if method == "none":
    return frames, [None, None, None]
  frames = np.array(frames)  # a copy: the input stays as it was
  h, w = frames.shape[1:3]
  ev = np.asarray(exposures, np.float64) - float(exposures[1])
  motions = [None, None, None]
  for i in (0, 2):
    if method == "mtb":
      dx, dy = mtb_shift(frames[1], frames[i])
      motions[i] = (dx, dy)
      if dx or dy:  # moving the frame by (dx, dy) aligns it with the reference
        shift = np.float32([[1, 0, dx], [0, 1, dy]])
        frames[i] = cv2.warpAffine(frames[i], shift, (w, h), flags=cv2.INTER_NEAREST, borderMode=cv2.BORDER_REPLICATE)
      continue
    ceiling = float(min(1.0, 2.0 ** -ev[i]))  # the brighter frame of the pair clips first
    ref = exposure_normalised_grey(frames[1], 0.0, ceiling, gamma)
    mov = exposure_normalised_grey(frames[i], ev[i], ceiling, gamma)
    motion = cv2.MOTION_HOMOGRAPHY if method == "ecc" else cv2.MOTION_AFFINE
    try:
      warp = _ecc_warp(ref, mov, motion)
    except cv2.error:
      raise fileio.DataError(where, f"--align={method} did not converge for the {('short', '', 'long')[i]} frame "
                          "(too little texture or too much motion): try --align=mtb or --align=none") from None
    motions[i] = warp
    flags = cv2.INTER_LINEAR | cv2.WARP_INVERSE_MAP  # warp maps reference pixels to moving ones
    if motion == cv2.MOTION_HOMOGRAPHY:
      frames[i] = cv2.warpPerspective(frames[i], warp, (w, h), flags=flags, borderMode=cv2.BORDER_REPLICATE)
    else:
      frames[i] = cv2.warpAffine(frames[i], warp[:2], (w, h), flags=flags, borderMode=cv2.BORDER_REPLICATE)
  return frames, motions


# --------------------------------------------------------------------------------------------------
# Predicting bracket folders (``python -m hdr_jax.predict --input=BRACKETS``)
# --------------------------------------------------------------------------------------------------

OUTPUT_FORMATS = ("exr", "hdr")


def check_inputs(input_dir, exposures=None) -> list[tuple[Path, np.ndarray]]:
  """Every bracket of ``input_dir`` checked before any model is loaded or file decoded: three frames
  that open as images of one size, and their exposures (``exposures``: the ``--exposures`` string or
  three numbers, in file-name order; None for EXIF). Returns ``(folder, stops in file-name order)`` per bracket; a ``DataError`` or
  ``ValueError`` naming the file or flag otherwise."""
  from PIL import Image, UnidentifiedImageError

  given = None
  if isinstance(exposures, str) and exposures.strip():
    given = parse_exposures(exposures)
  elif exposures is not None and not isinstance(exposures, str):
    given = parse_exposures(",".join(str(float(e)) for e in np.ravel(exposures)))
  out = []
  for folder in discover(input_dir):
    files = image_files(folder)
    sizes = []
    for f in files:
      try:
        with Image.open(f) as im:
          sizes.append(im.size)
      except UnidentifiedImageError:
        raise fileio.DataError(f, "cannot be read as an image (not a JPEG, PNG or TIFF file, or a damaged one)") from None
      except (OSError, ValueError, SyntaxError) as e:
        raise fileio.DataError(f, f"cannot be read as an image ({e})") from None
    for f, size in zip(files[1:], sizes[1:]):
      if size != sizes[0]:
        raise fileio.DataError(f, f"frame is {size[0]}x{size[1]}, {files[0].name} is {sizes[0][0]}x{sizes[0][1]}: "
                            "the three frames must have the same size")
    ev = given if given is not None else exif_exposures(files)
    sort_by_exposure(files, ev)  # three different exposures
    out.append((folder, ev))
  return out


def predict_folder(model, input_dir, output_dir, fmt: str = "exr", exposures=None, align: str = DEFAULT_ALIGN,
                   tile: int | None = None, checked=None, verbose: bool = True) -> list[Path]:
  """Predicts every bracket of ``input_dir`` with ``model`` (an ``hdr_jax.api.HDRModel``) into
  ``output_dir``: ``NAME.exr`` or ``NAME.hdr`` (linear radiance relative to the medium frame) and
  ``NAME_preview.png`` (:func:`hdr_jax.hdr_math.np_reinhard_tonemap`), ``NAME`` the bracket folder's
  name. ``checked``: :func:`check_inputs`'s result, if already computed. Returns the files written."""
  import time

  from hdr_jax import hdr_math

  if fmt not in OUTPUT_FORMATS:
    raise ValueError(f"--format={fmt}: bracket folders are written as {' or '.join(OUTPUT_FORMATS)} "
                     "(linear radiance); the ntire format is for NTIRE scene folders")
  if align not in ALIGN_METHODS:
    raise ValueError(f"--align={align}: choose one of {', '.join(ALIGN_METHODS)}")
  checked = checked if checked is not None else check_inputs(input_dir, exposures)
  written = []
  for folder, ev in checked:
    t0 = time.perf_counter()
    bracket = read_bracket(folder, ev, align=align)
    h, w = bracket.frames.shape[1:3]
    hdr = model.predict(bracket.frames, bracket.exposures, tile=tile)
    paths = [Path(output_dir) / f"{bracket.name}.{fmt}", Path(output_dir) / f"{bracket.name}_preview.png"]
    try:
      fileio.write_hdr_image(paths[0], hdr)
      fileio.write_ldr_png(paths[1], hdr_math.np_reinhard_tonemap(hdr))
    except OSError as e:  # each file is atomic, so what is there is complete
      raise fileio.DataError(Path(output_dir).absolute(), f"cannot write the result of {folder} "
                          f"({e.strerror or e}); the {len(written)} file(s) written before it are complete") from None
    written += paths
    if verbose:
      stops = ", ".join(f"{e:+g}" for e in bracket.exposures)
      print(f"{folder}: {w}x{h}, {[f.name for f in bracket.files]} at {stops} stops, align {align}, "
            f"{model.tiles_for(h, w, tile)} tile(s), {time.perf_counter() - t0:.1f} s -> {paths[0]}", flush=True)
  return written
