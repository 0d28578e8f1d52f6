"""Image files and NTIRE scene folders: reading, writing and validation with clear errors.

Every reader returns RGB float32 arrays ``(H, W, 3)``; every writer takes RGB and writes atomically
(a temporary file in the same folder, renamed when complete), so no half-written file is ever left
under the final name. Every problem with an input raises :class:`DataError` naming the file.
"""

from __future__ import annotations

import dataclasses
import os
import re
import struct
import tempfile
from pathlib import Path
from typing import Sequence

import numpy as np

os.environ.setdefault("OPENCV_IO_ENABLE_OPENEXR", "1")
import cv2  # noqa: E402  (after the environment flag)

FRAME_NAMES = ("short", "medium", "long")
_SCENE_RE = re.compile(r"^(\d{4})_(short|medium|long)\.png$")
_PNG_SIG = b"\x89PNG\r\n\x1a\n"
_PNG_IEND = b"\x00\x00\x00\x00IEND\xaeB`\x82"


class DataError(ValueError):
  """A problem with an input file or folder; the message names the path and what is wrong."""

  def __init__(self, path, problem: str):
    self.path = str(path)
    self.problem = problem
    super().__init__(f"{path}: {problem}")


# --------------------------------------------------------------------------------------------------
# Atomic writing
# --------------------------------------------------------------------------------------------------


def _default_file_mode() -> int:
  """``0o666`` less the process umask: what a plain ``open(path, 'w')`` would give."""
  mask = os.umask(0)
  os.umask(mask)
  return 0o666 & ~mask


def is_remote(path) -> bool:
  """True for object-store URLs (``gs://bucket/...``, ``s3://...``)."""
  return "://" in str(path)


def workdir_path(path):
  """A workdir as a path object: ``etils.epath.Path`` for ``gs://``/``s3://`` URLs (read and written
  through fsspec, e.g. gcsfs), else an absolute ``pathlib.Path``. (``pathlib`` would turn
  ``gs://bucket/run`` into the local folder ``gs:/bucket/run``.)"""
  if is_remote(path):
    from etils import epath

    return epath.Path(str(path))
  return Path(path).absolute()


def atomic_write_bytes(path, data: bytes) -> None:
  """Writes ``data`` to ``path`` via a temporary file in the same folder and ``os.replace``; on an
  object store (``is_remote``) the upload itself is atomic (an object appears only when complete)."""
  if is_remote(path):
    workdir_path(path).write_bytes(data)
    return
  path = Path(path)
  path.parent.mkdir(parents=True, exist_ok=True)
  fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
  try:
    os.fchmod(fd, _default_file_mode())
    with os.fdopen(fd, "wb") as f:
      f.write(data)
      f.flush()
      os.fsync(f.fileno())
    os.replace(tmp, path)
  except BaseException:
    if os.path.exists(tmp):
      os.unlink(tmp)
    raise


def writable_dir(path, what: str = "folder"):
  """Creates ``path`` (and parents) and proves it writable by creating and removing a probe file
  (``os.access`` says yes to root on a read-only mount); a ``DataError`` naming ``what`` and the path
  if not. Object-store URLs are only created (their writes are checked when they happen)."""
  folder = workdir_path(path)
  try:
    folder.mkdir(parents=True, exist_ok=True)
    if not is_remote(path):
      fd, probe = tempfile.mkstemp(prefix=".write_probe.", dir=folder)
      os.close(fd)
      os.unlink(probe)
  except OSError as e:
    raise DataError(folder, f"cannot write to this {what} ({e.strerror or e}): choose another {what} or "
                            f"fix its permissions") from None
  return folder


def save_npy(path, array) -> None:
  import io as _io

  buf = _io.BytesIO()
  np.save(buf, array)
  atomic_write_bytes(path, buf.getvalue())


# --------------------------------------------------------------------------------------------------
# PNG
# --------------------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class PngInfo:
  width: int
  height: int
  bit_depth: int
  channels: int


_PNG_CHANNELS = {0: 1, 2: 3, 3: 1, 4: 2, 6: 4}


def png_info(path) -> PngInfo:
  """Reads a PNG's header (no decoding) and checks that the file is complete (ends in IEND)."""
  path = Path(path)
  if not path.is_file():
    raise DataError(path, "file is missing")
  size = path.stat().st_size
  with open(path, "rb") as f:
    head = f.read(33)
    if len(head) < 33 or head[:8] != _PNG_SIG or head[12:16] != b"IHDR":
      raise DataError(path, "not a PNG file (bad signature or header); the file is corrupt or of another format")
    width, height, depth, ctype = struct.unpack(">IIBB", head[16:26])
    f.seek(max(0, size - 12))
    tail = f.read(12)
  if tail != _PNG_IEND:
    raise DataError(path, "PNG is truncated or corrupt (no IEND chunk at the end of the file)")
  if ctype not in _PNG_CHANNELS:
    raise DataError(path, f"PNG has an invalid colour type {ctype}")
  return PngInfo(width, height, depth, _PNG_CHANNELS[ctype] if ctype != 3 else 3)


def _decode_png(path, expect_depth: int) -> np.ndarray:
  info = png_info(path)
  if info.bit_depth != expect_depth:
    raise DataError(path, f"expected a {expect_depth}-bit PNG, found {info.bit_depth}-bit")
  if info.channels != 3:
    raise DataError(path, f"expected 3 colour channels (RGB), found {info.channels}")
  img = decode_png(np.fromfile(path, dtype=np.uint8))
  if img is None or img.shape != (info.height, info.width, 3):
    raise DataError(path, "PNG could not be decoded (corrupt image data)")
  want = np.uint8 if expect_depth == 8 else np.uint16
  if img.dtype != want:
    raise DataError(path, f"decoded to {img.dtype}, expected {np.dtype(want).name}")
  return img


def read_ldr_png_uint8(path) -> np.ndarray:
  """An 8-bit RGB PNG as ``uint8 (H, W, 3)``."""
  return _decode_png(path, 8)


def read_ldr_png(path) -> np.ndarray:
  """An 8-bit RGB LDR frame as float32 in [0, 1] (values / 255, still gamma-encoded)."""
  return read_ldr_png_uint8(path).astype(np.float32) / np.float32(255.0)


def decode_png(data) -> np.ndarray | None:
  """The image of PNG bytes (RGB for colour, values and dtype as stored), or None when they do not
  decode. Callers check the shape and dtype they expect."""
  img = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_UNCHANGED) if len(data) else None
  if img is not None and img.ndim == 3 and img.shape[2] == 3:
    img = cv2.cvtColor(img, cv2.COLOR_BGR2RGB)
  return img


def encode_png(img_rgb: np.ndarray) -> bytes:
  """PNG bytes of an RGB ``uint8``/``uint16`` image."""
  ok, buf = cv2.imencode(".png", cv2.cvtColor(img_rgb, cv2.COLOR_RGB2BGR))
  if not ok:
    raise RuntimeError("PNG encoding failed")
  return buf.tobytes()


def write_ldr_png(path, img) -> None:
  """Writes an LDR frame; float input in [0, 1] is rounded to 8 bits, uint8 is written as is."""
  img = np.asarray(img)
  if img.dtype != np.uint8:
    img = np.clip(np.round(img.astype(np.float32) * 255.0), 0, 255).astype(np.uint8)
  atomic_write_bytes(path, encode_png(img))


def read_alignratio(path) -> np.float32:
  path = Path(path)
  if not path.is_file():
    raise DataError(path, "file is missing")
  try:
    a = np.load(path, allow_pickle=False)
  except Exception as e:  # noqa: BLE001
    raise DataError(path, f"not a readable .npy file ({e})") from None
  if a.size != 1 or not np.issubdtype(a.dtype, np.number):
    raise DataError(path, f"alignratio must be one number, found shape {a.shape} dtype {a.dtype}")
  a = a.astype(np.float32).reshape(())
  if not np.isfinite(a) or a <= 0:
    raise DataError(path, f"alignratio must be a positive finite number, found {a!r}")
  return a


def png16_to_hdr(png16: np.ndarray, alignratio) -> np.ndarray:
  """The official reader's arithmetic: ``png16 (uint16 RGB) / float32 alignratio`` -> float32
  gamma-domain HDR. Every reader of the NTIRE target (files, tiles, the ArrayRecord dataset) uses it."""
  return png16 / alignratio


def read_hdr_png16(png_path, alignratio_path) -> np.ndarray:
  """The NTIRE HDR encoding, decoded exactly as the official reader does (:func:`png16_to_hdr`)."""
  align = read_alignratio(alignratio_path)
  return png16_to_hdr(_decode_png(png_path, 16), align)


def write_hdr_png16(png_path, alignratio_path, hdr) -> None:
  """The official NTIRE writer: ``alignratio = (2**16 - 1) / max``, ``png = round(hdr * alignratio)``."""
  hdr = np.asarray(hdr, dtype=np.float32)
  if hdr.ndim != 3 or hdr.shape[-1] != 3:
    raise ValueError(f"{png_path}: HDR image must be (H, W, 3), got {hdr.shape}")
  if not np.all(np.isfinite(hdr)):
    raise ValueError(f"{png_path}: HDR image contains NaN or inf; refusing to write it")
  if hdr.min() < 0:
    raise ValueError(f"{png_path}: HDR image has negative values (min {hdr.min()})")
  peak = hdr.max()
  if peak <= 0:
    raise ValueError(f"{png_path}: HDR image is all zero; the NTIRE encoding needs a positive maximum")
  align_ratio = (2**16 - 1) / peak
  if not np.isfinite(align_ratio):
    raise ValueError(f"{png_path}: maximum {peak} is too small for the NTIRE encoding")
  data = encode_png(np.round(hdr * align_ratio).astype(np.uint16))
  # The PNG is the pair's commit: an old one goes first and the new one is renamed into place last, so
  # a failure never leaves a PNG beside an alignratio it does not belong to.
  Path(png_path).unlink(missing_ok=True)
  save_npy(alignratio_path, align_ratio)
  atomic_write_bytes(png_path, data)


# --------------------------------------------------------------------------------------------------
# OpenEXR and Radiance .hdr
# --------------------------------------------------------------------------------------------------


def read_exr(path) -> np.ndarray:
  import OpenEXR

  path = Path(path)
  if not path.is_file():
    raise DataError(path, "file is missing")
  try:
    with OpenEXR.File(str(path)) as f:
      ch = {k: np.asarray(v.pixels) for k, v in f.channels().items()}
  except Exception as e:  # noqa: BLE001
    raise DataError(path, f"not a readable OpenEXR file ({e})") from None
  if "RGB" in ch or "RGBA" in ch:
    img = ch.get("RGB", ch.get("RGBA"))[..., :3]
  elif all(k in ch for k in "RGB"):
    img = np.stack([ch["R"], ch["G"], ch["B"]], axis=-1)
  elif "Y" in ch:
    img = np.repeat(ch["Y"][..., None], 3, axis=-1)
  else:
    raise DataError(path, f"no RGB or Y channels in the EXR (found {sorted(ch)})")
  return np.ascontiguousarray(img.astype(np.float32))


def write_exr(path, img, half: bool = False) -> None:
  import OpenEXR

  img = np.ascontiguousarray(np.asarray(img, np.float16 if half else np.float32))
  path = Path(path)
  path.parent.mkdir(parents=True, exist_ok=True)
  fd, tmp = tempfile.mkstemp(prefix=f".{path.stem}.", suffix=".exr", dir=path.parent)
  os.close(fd)
  try:
    header = {"compression": OpenEXR.ZIP_COMPRESSION, "type": OpenEXR.scanlineimage}
    with OpenEXR.File(header, {"RGB": img}) as f:
      f.write(tmp)
    os.chmod(tmp, _default_file_mode())
    os.replace(tmp, path)
  except BaseException:
    if os.path.exists(tmp):
      os.unlink(tmp)
    raise


def read_radiance_hdr(path) -> np.ndarray:
  path = Path(path)
  if not path.is_file():
    raise DataError(path, "file is missing")
  img = cv2.imdecode(np.fromfile(path, dtype=np.uint8), cv2.IMREAD_UNCHANGED)
  if img is None or img.ndim != 3 or img.shape[-1] != 3:
    raise DataError(path, "not a readable Radiance RGBE (.hdr) image")
  return cv2.cvtColor(img.astype(np.float32), cv2.COLOR_BGR2RGB)


def write_radiance_hdr(path, img) -> None:
  img = np.asarray(img, np.float32)
  ok, buf = cv2.imencode(".hdr", cv2.cvtColor(img, cv2.COLOR_RGB2BGR))
  if not ok:
    raise RuntimeError(f"{path}: Radiance .hdr encoding failed")
  atomic_write_bytes(path, buf.tobytes())


def read_hdr_image(path) -> np.ndarray:
  """A radiance map from ``.exr`` or ``.hdr`` as float32 RGB; NaN/inf/negative values are errors."""
  path = Path(path)
  ext = path.suffix.lower()
  if ext == ".exr":
    img = read_exr(path)
  elif ext in (".hdr", ".pic", ".rgbe"):
    img = read_radiance_hdr(path)
  else:
    raise DataError(path, f"unsupported HDR file type {ext!r} (use .exr or .hdr)")
  if not np.all(np.isfinite(img)):
    raise DataError(path, "image contains NaN or inf values")
  return np.maximum(img, 0.0)


def write_hdr_image(path, img) -> None:
  ext = Path(path).suffix.lower()
  if ext == ".exr":
    write_exr(path, img)
  elif ext == ".hdr":
    write_radiance_hdr(path, img)
  else:
    raise ValueError(f"{path}: unsupported HDR file type {ext!r} (use .exr or .hdr)")


# --------------------------------------------------------------------------------------------------
# NTIRE scene folders
# --------------------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class SceneFiles:
  """Paths of one NTIRE scene ``NNNN``; ``gt``/``alignratio`` are None when the folder has no targets."""

  scene_id: str
  frames: tuple[Path, Path, Path]
  exposures: Path
  gt: Path | None
  alignratio: Path | None

  @property
  def has_gt(self) -> bool:
    return self.gt is not None


def discover_scenes(folder, require_gt: bool = False) -> list[SceneFiles]:
  """All scenes of an NTIRE folder, sorted by id. Every scene must have its three frames and its
  exposures; ``NNNN_gt.png`` and ``NNNN_alignratio.npy`` come together or not at all."""
  folder = Path(folder)
  if not folder.is_dir():
    raise DataError(folder, "folder does not exist")
  ids = sorted({m.group(1) for p in folder.iterdir() if (m := _SCENE_RE.match(p.name))})
  if not ids:
    raise DataError(folder, "no NTIRE scenes found (expected files named NNNN_short.png, NNNN_medium.png, "
                    "NNNN_long.png, NNNN_exposures.npy[, NNNN_gt.png, NNNN_alignratio.npy])")
  scenes = []
  for sid in ids:
    frames = tuple(folder / f"{sid}_{n}.png" for n in FRAME_NAMES)
    for p in frames + (folder / f"{sid}_exposures.npy",):
      if not p.is_file():
        raise DataError(p, f"file is missing (scene {sid} is incomplete)")
    gt, ar = folder / f"{sid}_gt.png", folder / f"{sid}_alignratio.npy"
    if gt.is_file() != ar.is_file() or (require_gt and not gt.is_file()):
      missing = gt if not gt.is_file() else ar
      raise DataError(missing, f"file is missing (scene {sid} needs both {gt.name} and {ar.name})")
    has = gt.is_file()
    scenes.append(SceneFiles(sid, frames, folder / f"{sid}_exposures.npy", gt if has else None, ar if has else None))
  return scenes


def read_exposures(path) -> np.ndarray:
  path = Path(path)
  try:
    e = np.load(path, allow_pickle=False)
  except Exception as err:  # noqa: BLE001
    raise DataError(path, f"not a readable .npy file ({err})") from None
  if not np.issubdtype(e.dtype, np.number) or e.size != 3:
    raise DataError(path, f"exposures must be 3 numbers (short, medium, long), found shape {e.shape} dtype {e.dtype}")
  e = e.astype(np.float32).reshape(3)
  if not np.all(np.isfinite(e)):
    raise DataError(path, f"exposures must be finite, found {e.tolist()}")
  if not (e[0] < e[1] < e[2]):
    raise DataError(path, f"exposures must be strictly increasing (short < medium < long), found {e.tolist()}")
  return e


def check_scene(scene: SceneFiles, decode: bool = False) -> tuple[int, int]:
  """Validates one scene (headers, sizes, bit depths, exposures, alignratio); with ``decode`` also
  decodes every image. Returns ``(height, width)``."""
  size = None
  for p in scene.frames:
    info = png_info(p)
    if info.bit_depth != 8:
      raise DataError(p, f"LDR frame must be an 8-bit PNG, found {info.bit_depth}-bit")
    if info.channels != 3:
      raise DataError(p, f"LDR frame must have 3 colour channels, found {info.channels}")
    if size is None:
      size = (info.height, info.width)
    elif (info.height, info.width) != size:
      raise DataError(p, f"frame size {info.height}x{info.width} differs from the short frame's {size[0]}x{size[1]}")
  read_exposures(scene.exposures)
  if scene.gt is not None:
    info = png_info(scene.gt)
    if info.bit_depth != 16:
      raise DataError(scene.gt, f"ground truth must be a 16-bit PNG, found {info.bit_depth}-bit")
    if info.channels != 3:
      raise DataError(scene.gt, f"ground truth must have 3 colour channels, found {info.channels}")
    if (info.height, info.width) != size:
      raise DataError(scene.gt, f"ground-truth size {info.height}x{info.width} differs from the frames' {size[0]}x{size[1]}")
    read_alignratio(scene.alignratio)
  if decode:
    read_scene(scene)
  return size


def validate_folder(folder, require_gt: bool = False, decode: bool | None = None) -> list[SceneFiles]:
  """Discovers and validates every scene before any work starts. ``decode=None`` decodes every
  image when the folder is small (<= 64 scenes) and checks headers and file ends otherwise."""
  scenes = discover_scenes(folder, require_gt=require_gt)
  if decode is None:
    decode = len(scenes) <= 64
  for s in scenes:
    check_scene(s, decode=decode)
  return scenes


def read_scene_stored(scene: SceneFiles, with_gt: bool = True) -> dict:
  """One scene's arrays as stored, sizes checked: ``{'id', 'frames': (3, H, W, 3) uint8, 'exposures': (3,)}``
  and, with a target (``with_gt``), ``'gt_png16': (H, W, 3) uint16`` and its float32 ``'alignratio'``
  (the gamma-domain target is :func:`png16_to_hdr` of the two)."""
  frames = [read_ldr_png_uint8(p) for p in scene.frames]
  for p, f in zip(scene.frames[1:], frames[1:]):
    if f.shape != frames[0].shape:
      raise DataError(p, f"frame size {f.shape[0]}x{f.shape[1]} differs from the short frame's "
                      f"{frames[0].shape[0]}x{frames[0].shape[1]}")
  out = {"id": scene.scene_id, "frames": np.stack(frames), "exposures": read_exposures(scene.exposures)}
  if with_gt and scene.gt is not None:
    align = read_alignratio(scene.alignratio)
    gt = _decode_png(scene.gt, 16)
    if gt.shape != frames[0].shape:
      raise DataError(scene.gt, f"ground-truth size {gt.shape[0]}x{gt.shape[1]} differs from the frames' "
                      f"{frames[0].shape[0]}x{frames[0].shape[1]}")
    out.update(gt_png16=gt, alignratio=align)
  return out


def read_scene(scene: SceneFiles, with_gt: bool = True) -> dict:
  """``{'id', 'frames': (3, H, W, 3) float32 in [0,1], 'exposures': (3,), 'gt': (H, W, 3) or absent}``."""
  raw = read_scene_stored(scene, with_gt)
  out = {"id": raw["id"], "frames": raw["frames"].astype(np.float32) / np.float32(255.0),
         "exposures": raw["exposures"]}
  if "gt_png16" in raw:
    out["gt"] = png16_to_hdr(raw["gt_png16"], raw["alignratio"])
  return out


def write_scene(folder, scene_id: str, frames: Sequence[np.ndarray], exposures, gt=None) -> None:
  """Writes one NTIRE scene: three LDR frames (float [0,1] or uint8), exposures, and optionally the
  gamma-domain HDR target in the 16-bit PNG + alignratio encoding."""
  folder = Path(folder)
  for name, f in zip(FRAME_NAMES, frames):
    write_ldr_png(folder / f"{scene_id}_{name}.png", f)
  save_npy(folder / f"{scene_id}_exposures.npy", np.asarray(exposures, np.float32))
  if gt is not None:
    write_hdr_png16(folder / f"{scene_id}_gt.png", folder / f"{scene_id}_alignratio.npy", gt)


def write_result(folder, scene_id: str, hdr, fmt: str = "ntire") -> list[Path]:
  """Writes one prediction: ``ntire`` (``NNNN.png`` + ``NNNN_alignratio.npy``, the official results
  layout), ``exr`` or ``hdr``. Returns the written paths."""
  folder = Path(folder)
  if fmt == "ntire":
    paths = [folder / f"{scene_id}.png", folder / f"{scene_id}_alignratio.npy"]
    write_hdr_png16(paths[0], paths[1], hdr)
  elif fmt in ("exr", "hdr"):
    # .exr/.hdr hold linear radiance by convention; NTIRE HDR is gamma-domain.
    from hdr_jax.constants import GAMMA

    paths = [folder / f"{scene_id}.{fmt}"]
    write_hdr_image(paths[0], np.power(np.maximum(np.asarray(hdr, np.float32), 0), GAMMA))
  else:
    raise ValueError(f"unknown output format {fmt!r} (ntire, exr or hdr)")
  return paths


def default_cache_dir() -> Path:
  """``$HDR_JAX_CACHE``, else ``~/.cache/hdr_jax``."""
  return Path(os.environ.get("HDR_JAX_CACHE") or Path.home() / ".cache" / "hdr_jax")
