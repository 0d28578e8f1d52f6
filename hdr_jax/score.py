"""Scores a results folder against references, as the NTIRE HDR challenge's scoring program does.

``python -m hdr_jax.score --ref=DIR --res=DIR [--json=PATH] [--official-output=DIR]``
``python -m hdr_jax.score --protocol=sig17 --ref=SIG17_ROOT --res=DIR [--json=PATH]``

With ``--protocol=sig17`` the references are the labelled scenes of a SIG17 root and the results are
linear ``<scene id>.hdr`` (or ``.exr``) files, the id being the scene's folder path under the root
(what ``python -m hdr_jax.predict`` writes); the scores are PSNR-mu, PSNR-L, SSIM-mu and SSIM-L of the
SIG17 protocol (:func:`hdr_jax.sig17.score_folders`, docs/sig17.md). The rest of this page is the
NTIRE protocol (the default).

Results: ``NNNN.png`` (16-bit) + ``NNNN_alignratio.npy`` per scene. References: an NTIRE scene folder
(its ``NNNN_gt.png`` + ``NNNN_alignratio.npy``) or the official ``ref`` layout (only the HDR PNGs and
their ``.npy`` files, any names).

The official program (CodaLab ``evaluate.py`` of NTIRE 2021/2022 HDR) lists the ``.png`` and ``.npy``
files of ``ref/`` and ``res/``, sorts each list, requires the four lengths to be equal and zips them;
each image is read with ``data_io.imread_uint16_png`` (``cv2`` BGR->RGB uint16 / float32 alignratio);
PSNR-L is ``normalized_psnr(ref, res, max(ref))``, PSNR-mu is ``psnr_tanh_norm_mu_tonemap(ref, res,
percentile=99, gamma=2.24)``; the scores are their means, written to ``scores.txt`` as
``PSNR:%f`` / ``MuPSNR:%f`` / ``ExtraRuntime:%f`` / ``ExtraPlatform:%d`` / ``ExtraData:%d``.

Here files are paired by scene id when every name carries one (``NNNN[_gt].png`` /
``NNNN_alignratio.npy``), and it is checked that the official sorted-list pairing gives the same
pairs; names without ids are paired by the sorted lists, as the official program does. Decoding
(:func:`hdr_jax.fileio.read_hdr_png16`) and metrics (:func:`hdr_jax.hdr_math.np_psnr_mu`,
:func:`~hdr_jax.hdr_math.np_psnr_l`) follow the official arithmetic. Every input problem is one
:class:`hdr_jax.fileio.DataError` naming the file, raised before any image is decoded where possible.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import json
import re
import sys
from pathlib import Path

import numpy as np

from hdr_jax import hdr_math, fileio

_FRAME_RE = re.compile(r"^\d{4}_(%s)\.png$" % "|".join(fileio.FRAME_NAMES))


@dataclasses.dataclass(frozen=True)
class Item:
  """One HDR image: its 16-bit PNG, its alignratio file and its key (scene id or file stem)."""

  key: str
  png: Path
  npy: Path


def _key(name: str, tag: str) -> str:
  stem = name[:-4]
  return stem[: -len(tag)] if tag and stem.endswith(tag) else stem


def _folder_items(folder: Path, role: str, png_tag: str) -> tuple[list[Item], bool]:
  """The (png, npy) items of a flat folder and whether they are paired by id (else sorted lists)."""
  names = sorted(p.name for p in folder.iterdir() if p.is_file())
  pngs = [n for n in names if n.lower().endswith(".png")]
  npys = [n for n in names if n.lower().endswith(".npy")]
  if not pngs and not npys:
    raise fileio.DataError(folder, f"empty {role} folder: no .png / .npy files")
  png_keys = [_key(n, png_tag) for n in pngs]
  npy_keys = [_key(n, "_alignratio") for n in npys]
  if not all(k.isdigit() for k in png_keys + npy_keys):
    if len(pngs) != len(npys):
      raise fileio.DataError(folder, f"{len(pngs)} .png files but {len(npys)} .npy files; the official scoring "
                         "program pairs the sorted lists one to one")
    return [Item(_key(p, png_tag), folder / p, folder / a) for p, a in zip(pngs, npys)], False
  for keys, files in ((png_keys, pngs), (npy_keys, npys)):
    seen = {}
    for k, n in zip(keys, files):
      if k in seen:
        raise fileio.DataError(folder / n, f"duplicate file for scene {k} (also {seen[k]})")
      seen[k] = n
  png_of, npy_of = dict(zip(png_keys, pngs)), dict(zip(npy_keys, npys))
  for k, n in png_of.items():
    if k not in npy_of:
      raise fileio.DataError(folder / n, f"unpaired file: its alignratio file {k}_alignratio.npy is missing")
  for k, n in npy_of.items():
    if k not in png_of:
      raise fileio.DataError(folder / n, f"unpaired file: no PNG for scene {k} ({k}{png_tag}.png is missing)")
  for p, a in zip(pngs, npys):
    if _key(p, png_tag) != _key(a, "_alignratio"):
      raise fileio.DataError(folder / p, f"the official scoring program pairs the sorted file lists and would pair "
                         f"it with {a}; use ids of equal length (e.g. 0001)")
  return [Item(k, folder / png_of[k], folder / npy_of[k]) for k in png_keys], True


def _reference_items(ref_dir: Path) -> tuple[list[Item], bool]:
  if any(_FRAME_RE.match(p.name) for p in ref_dir.iterdir()):
    scenes = fileio.discover_scenes(ref_dir, require_gt=True)
    return [Item(s.scene_id, s.gt, s.alignratio) for s in scenes], True
  return _folder_items(ref_dir, "reference", "_gt")


def pair_folders(ref_dir, res_dir) -> list[tuple[Item, Item]]:
  """Pairs every reference image with its result (see the module docstring); raises DataError."""
  ref_dir, res_dir = Path(ref_dir), Path(res_dir)
  for d in (ref_dir, res_dir):
    if not d.is_dir():
      raise fileio.DataError(d, "folder does not exist")
  refs, ref_ids = _reference_items(ref_dir)
  ress, res_ids = _folder_items(res_dir, "results", "")
  if not (ref_ids and res_ids):
    if len(refs) != len(ress):
      raise fileio.DataError(res_dir, f"expected {len(refs)} results (one per reference image in {ref_dir}), "
                         f"found {len(ress)}")
    return list(zip(refs, ress))
  res_of = {r.key: r for r in ress}
  ref_keys = {r.key for r in refs}
  for r in refs:
    if r.key not in res_of:
      raise fileio.DataError(res_dir / f"{r.key}.png", f"file is missing: no result for reference scene {r.key} "
                         f"({r.png.name})")
  for s in ress:
    if s.key not in ref_keys:
      raise fileio.DataError(s.png, f"extra result: no reference scene {s.key} in {ref_dir}")
  for r, s in zip(refs, ress):
    if r.key != s.key:
      raise fileio.DataError(s.png, f"the official scoring program pairs the sorted file lists and would score it "
                         f"against {r.png.name}; use ids of equal length (e.g. 0001)")
  return [(r, res_of[r.key]) for r in refs]


def _png16_size(path: Path) -> tuple[int, int]:
  info = fileio.png_info(path)
  if info.bit_depth != 16:
    raise fileio.DataError(path, f"expected a 16-bit PNG (NTIRE HDR encoding), found {info.bit_depth}-bit")
  if info.channels != 3:
    raise fileio.DataError(path, f"expected 3 colour channels (RGB), found {info.channels}")
  return info.height, info.width


@contextlib.contextmanager
def _os_errors_as_data_errors(item: Item):
  try:
    yield
  except OSError as e:
    raise fileio.DataError(e.filename or item.png, f"cannot be read ({e.strerror or e})") from None


def _check_item(item: Item) -> tuple[int, int]:
  with _os_errors_as_data_errors(item):
    size = _png16_size(item.png)
    fileio.read_alignratio(item.npy)
  return size


def _read(item: Item) -> np.ndarray:
  with _os_errors_as_data_errors(item):
    return fileio.read_hdr_png16(item.png, item.npy)


def score_pair(ref: Item, res: Item) -> dict:
  """PSNR-mu and PSNR-L of one result, with the official arithmetic."""
  ref_img, res_img = _read(ref), _read(res)
  if not np.all(np.isfinite(res_img)):
    raise fileio.DataError(res.png, "decoded result contains NaN or inf")
  if not ref_img.max() > 0:
    raise fileio.DataError(ref.png, "reference image is all zero: PSNR-L and PSNR-mu are undefined")
  with np.errstate(divide="ignore", invalid="ignore"):
    psnr_mu = hdr_math.np_psnr_mu(ref_img, res_img)
    psnr_l = hdr_math.np_psnr_l(ref_img, res_img)
  if np.isnan(psnr_mu) or np.isnan(psnr_l):
    raise fileio.DataError(res.png, f"score is NaN (PSNR-mu {psnr_mu}, PSNR-L {psnr_l}); the reference "
                       f"{ref.png.name} has a 99th percentile of 0")
  return {"id": ref.key, "ref": ref.png.name, "res": res.png.name, "psnr_mu": psnr_mu, "psnr_l": psnr_l}


def score_folders(ref_dir, res_dir) -> dict:
  """Scores ``res_dir`` against ``ref_dir``: ``{'ref_dir', 'res_dir', 'count', 'scenes': [{'id', 'ref',
  'res', 'psnr_mu', 'psnr_l'}], 'mean': {'psnr_mu', 'psnr_l'}}``. Validates every pair (headers,
  alignratios, sizes) before decoding any image; raises :class:`hdr_jax.fileio.DataError`."""
  pairs = pair_folders(ref_dir, res_dir)
  for ref, res in pairs:
    ref_size, res_size = _check_item(ref), _check_item(res)
    if ref_size != res_size:
      raise fileio.DataError(res.png, f"size {res_size[0]}x{res_size[1]} differs from the reference {ref.png.name}'s "
                         f"{ref_size[0]}x{ref_size[1]}")
  scenes = [score_pair(ref, res) for ref, res in pairs]
  mean = {k: float(np.mean([s[k] for s in scenes])) for k in ("psnr_mu", "psnr_l")}
  return {"ref_dir": str(ref_dir), "res_dir": str(res_dir), "count": len(scenes), "scenes": scenes, "mean": mean}


def read_readme(res_dir) -> tuple[float, int, int]:
  """``(runtime, cpu, data)`` from the results' ``readme*`` file as the official program parses it
  (the first four lines with a ':'; fields stay -1 from the first that fails)."""
  runtime, cpu, data = -1.0, -1, -1
  names = [p for p in sorted(Path(res_dir).iterdir()) if p.name.lower().startswith("readme") and p.is_file()]
  if names:
    try:
      lines = [line.strip() for line in names[0].read_text().splitlines() if ":" in line]
      runtime = float(":".join(lines[0].split(":")[1:]))
      cpu = int(":".join(lines[1].split(":")[1:]))
      data = int(":".join(lines[2].split(":")[1:]))
    except (ValueError, IndexError, OSError, UnicodeDecodeError):
      pass
  return runtime, cpu, data


def official_scores_txt(result: dict, runtime: float = -1.0, cpu: int = -1, data: int = -1) -> str:
  """The official program's ``scores.txt`` text (PSNR is PSNR-L, MuPSNR is PSNR-mu)."""
  return (f"PSNR:{result['mean']['psnr_l']:f}\nMuPSNR:{result['mean']['psnr_mu']:f}\n"
          f"ExtraRuntime:{runtime:f}\nExtraPlatform:{cpu:d}\nExtraData:{data:d}\n")


def format_table(result: dict) -> str:
  width = max([5] + [len(s["id"]) for s in result["scenes"]])
  cols = [(k, t) for k, t in (("psnr_mu", "PSNR-mu"), ("psnr_l", "PSNR-L"), ("ssim_mu", "SSIM-mu"),
                              ("ssim_l", "SSIM-L")) if k in result["mean"]]
  lines = [f"{'scene':<{width}}  " + "  ".join(f"{t:>10}" for _, t in cols)]
  lines += [f"{s['id']:<{width}}  " + "  ".join(f"{s[k]:>10.4f}" for k, _ in cols) for s in result["scenes"]]
  m = result["mean"]
  lines.append(f"{'mean':<{width}}  " + "  ".join(f"{m[k]:>10.4f}" for k, _ in cols) + f"  ({result['count']} images)")
  return "\n".join(lines)


def main(argv=None) -> int:
  parser = argparse.ArgumentParser(prog="python -m hdr_jax.score", description=__doc__.split("\n")[0])
  parser.add_argument("--ref", required=True, help="reference folder (NTIRE scenes or the official 'ref' layout)")
  parser.add_argument("--res", required=True, help="results folder (NNNN.png + NNNN_alignratio.npy)")
  parser.add_argument("--json", help="write per-scene and mean scores to this JSON file")
  parser.add_argument("--official-output", help="write the official program's scores.txt into this folder "
                      "(NTIRE only)")
  parser.add_argument("--protocol", choices=("ntire", "sig17"), default="ntire",
                      help="ntire (default): the NTIRE scoring program; sig17: a SIG17 root against .hdr results")
  args = parser.parse_args(argv)
  if args.protocol == "sig17" and args.official_output:
    parser.error("--official-output writes the NTIRE program's scores.txt; it does not apply to --protocol=sig17")
  try:
    if args.protocol == "sig17":
      from hdr_jax import sig17

      result = sig17.score_folders(args.ref, args.res)
    else:
      result = score_folders(args.ref, args.res)
  except fileio.DataError as e:
    print(f"error: {e}", file=sys.stderr)
    return 1
  print(format_table(result))
  if args.json:
    fileio.atomic_write_bytes(args.json, (json.dumps(result, indent=2) + "\n").encode())
  if args.official_output:
    text = official_scores_txt(result, *read_readme(args.res))
    fileio.atomic_write_bytes(Path(args.official_output) / "scores.txt", text.encode())
  return 0


if __name__ == "__main__":
  sys.exit(main())
