"""NTIRE scenes stored as independently compressed tiles, so a training crop decodes only the tiles under it.

A 256x256 crop of a PNG scene decodes the whole 1060x1900 frames (three 8-bit PNGs and the 16-bit
target) and throws 97 % of it away. Prepared once with this module, the same scene is a single file of
``tile`` x ``tile`` PNG tiles (128 by default), and a crop decodes the 4 to 9 tiles it covers. The
pixels are the PNG folder's exactly (lossless PNG, the target kept as the 16-bit PNG values and divided by
the same float32 alignratio on reading), so a run trained from the tiles sees bit-identical batches.

Prepare (one folder of NTIRE scenes; run it once per split)::

  python -m hdr_jax.tiles --input=/data/ntire/train --output=/data/ntire_tiles/train [--tile=128] [--workers=N]

and train with ``--config.data.prepared=/data/ntire_tiles/train``. The folder holds one ``NNNN.tiles``
file per scene and ``tiles.json``, written last: a folder without it (an interrupted preparation) is not
a dataset, and running the command again redoes it.

File layout of ``NNNN.tiles``: ``MAGIC``, a little-endian uint32 header length, the JSON header
(``id``, ``height``, ``width``, ``tile``, ``images`` (3, or 4 with the target), ``exposures``,
``alignratio``), ``(tiles_y * tiles_x * images + 1)`` little-endian uint64 offsets (relative to the first
blob), then the PNG blobs in row-major tile order, for each tile the short, medium, long frame and target.
"""

from __future__ import annotations

import argparse
import concurrent.futures
import json
import multiprocessing
import os
import struct
import sys
import time
from pathlib import Path

import numpy as np

from hdr_jax import fileio

MAGIC = b"HDRTILE1"
INDEX = "tiles.json"
FORMAT = "hdr_jax.tiles/1"
_HEAD = len(MAGIC) + 4
_FIRST_READ = 1 << 14  # bytes read at once for a header (covers the offsets of a 1060x1900 scene in 128 tiles)


# --------------------------------------------------------------------------------------------------
# Writing
# --------------------------------------------------------------------------------------------------


def _grid(height: int, width: int, tile: int) -> tuple[int, int]:
  return -(-height // tile), -(-width // tile)


def encode_scene(scene_id: str, frames: np.ndarray, exposures, tile: int, gt_png16: np.ndarray | None = None,
                 alignratio=None) -> bytes:
  """The ``.tiles`` bytes of one scene: ``frames`` uint8 ``(3, H, W, 3)`` RGB, ``gt_png16`` the target's
  uint16 PNG values ``(H, W, 3)`` (or None) with its ``alignratio``."""
  frames = np.asarray(frames)
  if frames.dtype != np.uint8 or frames.ndim != 4 or frames.shape[0] != 3 or frames.shape[-1] != 3:
    raise ValueError(f"frames must be uint8 (3, H, W, 3), got {frames.dtype} {frames.shape}")
  if tile < 16:
    raise ValueError(f"tile must be at least 16 pixels, got {tile}")
  h, w = frames.shape[1:3]
  images = list(frames)
  if gt_png16 is not None:
    if gt_png16.dtype != np.uint16 or gt_png16.shape != (h, w, 3):
      raise ValueError(f"gt_png16 must be uint16 ({h}, {w}, 3), got {gt_png16.dtype} {gt_png16.shape}")
    images.append(gt_png16)
  ny, nx = _grid(h, w, tile)
  blobs = [fileio.encode_png(np.ascontiguousarray(img[ty * tile:(ty + 1) * tile, tx * tile:(tx + 1) * tile]))
           for ty in range(ny) for tx in range(nx) for img in images]
  offsets = np.zeros(len(blobs) + 1, "<u8")
  offsets[1:] = np.cumsum([len(b) for b in blobs])
  header = json.dumps({"id": scene_id, "height": int(h), "width": int(w), "tile": int(tile), "images": len(images),
                       "exposures": [float(e) for e in np.asarray(exposures, np.float32)],
                       "alignratio": None if alignratio is None else float(np.float32(alignratio))}).encode()
  return b"".join([MAGIC, struct.pack("<I", len(header)), header, offsets.tobytes(), *blobs])


def _prepare_scene(scene: fileio.SceneFiles, out: Path, tile: int) -> dict:
  raw = fileio.read_scene_stored(scene)
  name = f"{scene.scene_id}.tiles"
  fileio.atomic_write_bytes(out / name, encode_scene(scene.scene_id, raw["frames"], raw["exposures"], tile,
                                                raw.get("gt_png16"), raw.get("alignratio")))
  h, w = raw["frames"].shape[1:3]
  return {"id": scene.scene_id, "file": name, "height": int(h), "width": int(w), "has_gt": scene.has_gt}


def prepare(input_dir, output_dir, *, tile: int = 128, workers: int | None = None, verbose: bool = True) -> Path:
  """Writes every scene of the NTIRE folder ``input_dir`` as tiles into ``output_dir``; ``tiles.json``
  last. Refuses an ``output_dir`` that already holds a finished dataset."""
  input_dir, out = Path(input_dir), Path(output_dir)
  if tile < 16:
    raise ValueError(f"--tile must be at least 16 pixels, got {tile}")
  if (out / INDEX).exists():
    raise fileio.DataError(out / INDEX, "already exists: this folder holds a prepared dataset (remove it to redo)")
  if out.resolve() == input_dir.resolve():
    raise fileio.DataError(out, "the output folder must not be the input folder")
  scenes = fileio.validate_folder(input_dir, decode=False)
  out.mkdir(parents=True, exist_ok=True)
  workers = max(1, min(len(scenes), workers or os.cpu_count() or 1))
  start, rows = time.perf_counter(), []
  if workers == 1:
    rows = [_prepare_scene(s, out, tile) for s in scenes]
  else:
    with concurrent.futures.ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("spawn")) as pool:
      rows = list(pool.map(_prepare_scene, scenes, [out] * len(scenes), [tile] * len(scenes)))
  index = {"format": FORMAT, "tile": tile, "source": str(input_dir.absolute()), "scenes": rows}
  fileio.atomic_write_bytes(out / INDEX, (json.dumps(index, indent=1) + "\n").encode())
  if verbose:
    png = sum(p.stat().st_size for s in scenes for p in (*s.frames, s.gt) if p is not None)
    tiled = sum((out / r["file"]).stat().st_size for r in rows)
    print(f"prepared {len(rows)} scenes as {tile}x{tile} tiles in {out} ({time.perf_counter() - start:.1f} s, "
          f"{tiled / 2**20:.1f} MiB; the PNGs: {png / 2**20:.1f} MiB)")
  return out


# --------------------------------------------------------------------------------------------------
# Reading
# --------------------------------------------------------------------------------------------------


def _read_header(path: Path) -> tuple[dict, np.ndarray, int]:
  """``(header, offsets, data_start)`` of a ``.tiles`` file, checked against the file's size."""
  try:
    with open(path, "rb") as f:
      head = f.read(_FIRST_READ)
      size = os.fstat(f.fileno()).st_size
      if len(head) < _HEAD or head[:len(MAGIC)] != MAGIC:
        raise fileio.DataError(path, "not an hdr_jax tiles file (bad magic)")
      (n,) = struct.unpack("<I", head[len(MAGIC):_HEAD])
      try:
        header = json.loads(head[_HEAD:_HEAD + n]) if _HEAD + n <= len(head) else json.loads(
            os.pread(f.fileno(), n, _HEAD))
        ny, nx = _grid(header["height"], header["width"], header["tile"])
        count = ny * nx * header["images"] + 1
      except (ValueError, KeyError, TypeError) as e:
        raise fileio.DataError(path, f"corrupt header ({e})") from None
      start = _HEAD + n
      raw = head[start:start + 8 * count]
      if len(raw) < 8 * count:
        raw = os.pread(f.fileno(), 8 * count, start)
  except OSError as e:
    raise fileio.DataError(path, f"cannot be read ({e.strerror or e})") from None
  offsets = np.frombuffer(raw, "<u8") if len(raw) == 8 * count else None
  data_start = start + 8 * count
  if offsets is None or np.any(np.diff(offsets.astype(np.int64)) <= 0) or data_start + int(offsets[-1]) != size:
    raise fileio.DataError(path, f"truncated or corrupt ({size} bytes, the header's tile index does not match)")
  return header, offsets, data_start


class _TiledImages:
  """A read-only array view ``(H, W, 3)`` (one image) or ``(K, H, W, 3)`` (the frames) of a ``.tiles``
  file: basic slicing decodes only the tiles under the slice; anything else decodes the whole image."""

  def __init__(self, path: Path, header: dict, offsets: np.ndarray, data_start: int, images: tuple[int, ...],
               stacked: bool, dtype, scale=None):
    self._path, self._header, self._offsets, self._start = path, header, offsets, data_start
    self._images, self._stacked, self._scale = images, stacked, scale
    self.dtype = np.dtype(dtype)
    hw = (header["height"], header["width"], 3)
    self.shape = (len(images), *hw) if stacked else hw
    self.ndim = len(self.shape)

  def __len__(self) -> int:
    return self.shape[0]

  def __array__(self, dtype=None, copy=None):
    out = self._region(0, self.shape[-3], 0, self.shape[-2])
    return out if dtype is None else out.astype(dtype)

  def __getitem__(self, key):
    key = key if isinstance(key, tuple) else (key,)
    lead = (key[0],) if self._stacked and key else ()
    spatial = key[len(lead):]
    if len(spatial) == 3 and spatial[2] == slice(None):  # [..., y, x, :]
      spatial = spatial[:2]
    if len(spatial) <= 2 and all(isinstance(s, slice) and s.step in (None, 1) for s in spatial):
      ys, xs = (*spatial, slice(None), slice(None))[:2]
      y0, y1, _ = ys.indices(self.shape[-3])
      x0, x1, _ = xs.indices(self.shape[-2])
      out = self._region(y0, max(y0, y1), x0, max(x0, x1))
      return out[lead] if lead else out
    return np.asarray(self)[key]

  def _region(self, y0: int, y1: int, x0: int, x1: int) -> np.ndarray:
    """Rows ``y0:y1`` and columns ``x0:x1`` (clipped to the image) of the view's images: one read per
    row of tiles (its blobs are contiguous), one decode per tile and image under the window."""
    t, per = self._header["tile"], self._header["images"]
    nx = _grid(self._header["height"], self._header["width"], t)[1]
    out = np.empty((len(self._images), y1 - y0, x1 - x0, 3), np.uint8 if self._scale is None else np.uint16)
    if y1 > y0 and x1 > x0:
      first_tx, last_tx = x0 // t, (x1 - 1) // t
      try:
        fd = os.open(self._path, os.O_RDONLY)
      except OSError as e:
        raise fileio.DataError(self._path, f"cannot be read ({e.strerror or e})") from None
      try:
        for ty in range(y0 // t, (y1 - 1) // t + 1):
          base = int(self._offsets[(ty * nx + first_tx) * per])
          end = int(self._offsets[(ty * nx + last_tx + 1) * per])
          row = os.pread(fd, end - base, self._start + base)
          top, bottom = max(y0, ty * t), min(y1, ty * t + t)  # image rows covered by this tile row
          for tx in range(first_tx, last_tx + 1):
            left, right = max(x0, tx * t), min(x1, tx * t + t)
            for k, image in enumerate(self._images):
              b = (ty * nx + tx) * per + image
              tile = self._decode(row[int(self._offsets[b]) - base:int(self._offsets[b + 1]) - base], ty, tx, image)
              out[k, top - y0:bottom - y0, left - x0:right - x0] = \
                  tile[top - ty * t:bottom - ty * t, left - tx * t:right - tx * t]
      finally:
        os.close(fd)
    if self._scale is not None:
      out = fileio.png16_to_hdr(out, self._scale)
    return out if self._stacked else out[0]

  def _decode(self, blob: bytes, ty: int, tx: int, image: int) -> np.ndarray:
    t, h, w = self._header["tile"], self._header["height"], self._header["width"]
    want = (min(t, h - ty * t), min(t, w - tx * t), 3)
    img = fileio.decode_png(blob)
    dtype = np.uint8 if self._scale is None else np.uint16
    if img is None or img.shape != want or img.dtype != dtype:
      raise fileio.DataError(self._path, f"corrupt tile (row {ty}, column {tx}, image {image}): "
                         f"could not be decoded to {dtype.__name__} {want}")
    return img


class TiledSource:
  """Random access over a folder written by :func:`prepare`. An element is a dict like
  ``data.NtireSource``'s, except that ``frames`` (uint8) and ``gt`` (float32, ``png16 / alignratio``) are
  lazy arrays: slicing them decodes only the tiles under the slice (``np.asarray`` decodes the whole)."""

  def __init__(self, folder):
    self.folder = Path(folder)
    index_path = self.folder / INDEX
    if not index_path.is_file():
      raise fileio.DataError(index_path, "is missing: not a prepared tiles folder (or its preparation did not finish); "
                         "prepare one with `python -m hdr_jax.tiles --input=NTIRE_DIR --output=...`")
    try:
      index = json.loads(index_path.read_text())
      if index.get("format") != FORMAT:
        raise ValueError(f"format {index.get('format')!r}, expected {FORMAT!r}")
      self.rows = [dict(r) for r in index["scenes"]]
      self.frame_sizes = [(int(r["height"]), int(r["width"])) for r in self.rows]
    except (ValueError, KeyError, TypeError) as e:
      raise fileio.DataError(index_path, f"corrupt index ({e})") from None
    # Every scene's header and tile index, checked against tiles.json and the file size before any
    # training step (a truncated or missing file fails here, naming it, not hours into a run).
    self._index = []
    for r, size in zip(self.rows, self.frame_sizes):
      path = self.folder / r["file"]
      if not path.is_file():
        raise fileio.DataError(path, f"file is missing (scene {r['id']} of {index_path})")
      header, offsets, start = _read_header(path)
      if (header["height"], header["width"]) != size or header["id"] != r["id"] or \
          (header["images"] == 4) != bool(r.get("has_gt", True)):
        raise fileio.DataError(path, f"header (scene {header['id']}, {header['height']}x{header['width']}, "
                           f"{header['images']} images) does not match {INDEX} (scene {r['id']}, "
                           f"{size[0]}x{size[1]}, has_gt={r.get('has_gt')})")
      self._index.append((header, offsets, start))

  def __len__(self) -> int:
    return len(self.rows)

  def __getitem__(self, index: int) -> dict:
    path = self.folder / self.rows[index]["file"]
    header, offsets, start = self._index[index]
    out = {"frames": _TiledImages(path, header, offsets, start, (0, 1, 2), True, np.uint8),
           "exposures": np.asarray(header["exposures"], np.float32), "id": header["id"], "index": int(index)}
    if header["images"] == 4:
      out["gt"] = _TiledImages(path, header, offsets, start, (3,), False, np.float32,
                               scale=np.float32(header["alignratio"]))
    return out

  def describe(self, index: int) -> str:
    return str(self.folder / self.rows[index]["file"])

  def __repr__(self) -> str:
    return f"TiledSource({str(self.folder)!r}, {len(self)} scenes)"


def main(argv=None) -> int:
  p = argparse.ArgumentParser(description="Prepare a folder of NTIRE scenes as tiles, so that a training crop "
                              "decodes only the tiles under it (read with --config.data.prepared=OUTPUT).")
  p.add_argument("--input", required=True, help="folder of NTIRE scenes (one split)")
  p.add_argument("--output", required=True, help="folder to write (NNNN.tiles files and tiles.json)")
  p.add_argument("--tile", type=int, default=128, help="tile size in pixels (default 128)")
  p.add_argument("--workers", type=int, default=None, help="processes (default: one per CPU)")
  args = p.parse_args(argv)
  try:
    prepare(args.input, args.output, tile=args.tile, workers=args.workers)
  except (fileio.DataError, ValueError) as e:
    print(f"error: {e}", file=sys.stderr)
    return 2
  return 0


if __name__ == "__main__":
  sys.exit(main())
