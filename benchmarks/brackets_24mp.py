r"""Time and peak memory of ``predict`` on a large synthetic bracket (default 24 MP, 6000x4000) on the CPU.

  python benchmarks/brackets_24mp.py [--height=4000 --width=6000] [--pretrained=ahdrnet-merge-cpu]
      [--tile=512] [--align=mtb] [--keep=DIR]

Writes three JPEG frames with EXIF exposure times 1/240, 1/60 and 1/15 s (-2, 0, +2 stops) of a
synthetic scene (rectangles of radiance up to 4x the medium frame's white), runs the real entry point
``python -m hdr_jax.predict`` on them in a child process (CPU only), and reports its wall time and its
peak resident memory (``getrusage(RUSAGE_CHILDREN).ru_maxrss``: the largest child, i.e. the predict
process; the frames were written by this one) and CPU time (user + system: on a shared machine the wall
time depends on the other jobs, the CPU time much less). Prints one JSON line.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]


def write_bracket(folder: Path, height: int, width: int, seed: int = 0) -> None:
  """Three JPEGs (quality 95) with EXIF ExposureTime/FNumber/ISO of a synthetic linear scene."""
  import cv2
  from PIL import Image
  from PIL.TiffImagePlugin import IFDRational

  from hdr_jax.constants import GAMMA

  rng = np.random.default_rng(seed)
  scene = np.full((height, width), 0.15, np.float32)
  for _ in range(2000):
    y, x = int(rng.integers(0, height)), int(rng.integers(0, width))
    h, w = int(rng.integers(8, height // 8)), int(rng.integers(8, width // 8))
    scene[y:y + h, x:x + w] = rng.uniform(0.01, 4.0)
  scene = cv2.GaussianBlur(scene, (0, 0), 2.0)
  folder.mkdir(parents=True, exist_ok=True)
  for name, denominator in (("short.jpg", 240), ("medium.jpg", 60), ("long.jpg", 15)):
    code = np.clip(scene * (60 / denominator), 0, 1) ** (1 / GAMMA) * 255
    rgb = np.repeat(np.round(code).astype(np.uint8)[..., None], 3, axis=-1)
    exif = Image.Exif()
    ifd = exif.get_ifd(0x8769)
    ifd[0x829A], ifd[0x829D], ifd[0x8827] = IFDRational(1, denominator), IFDRational(28, 10), 100
    Image.fromarray(rgb).save(folder / name, exif=exif, quality=95)


def main() -> int:
  p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  p.add_argument("--height", type=int, default=4000)
  p.add_argument("--width", type=int, default=6000)
  p.add_argument("--pretrained", default="ahdrnet-merge-cpu")
  p.add_argument("--tile", type=int, default=None)
  p.add_argument("--align", default="mtb")
  p.add_argument("--keep", default=None, help="folder to keep the bracket and the outputs in (default: a temporary one)")
  args = p.parse_args()
  from hdr_jax import cli
  cli.set_cpu_xla_flags()  # the entry points' CPU flags: same numbers as the CLI
  root = Path(args.keep) if args.keep else Path(tempfile.mkdtemp(prefix="hdr_jax_24mp_"))
  write_bracket(root / "bracket", args.height, args.width)
  cmd = [sys.executable, "-m", "hdr_jax.predict", f"--pretrained={args.pretrained}", f"--input={root / 'bracket'}",
         f"--output={root / 'out'}", f"--align={args.align}"] + ([f"--tile={args.tile}"] if args.tile is not None else [])
  env = {**os.environ, "JAX_PLATFORMS": "cpu", "PYTHONPATH": str(ROOT)}
  start = time.perf_counter()
  proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True)
  wall = time.perf_counter() - start
  usage = resource.getrusage(resource.RUSAGE_CHILDREN)
  peak_kib = usage.ru_maxrss  # KiB on Linux
  if proc.returncode:
    print(proc.stderr[-3000:], file=sys.stderr)
    return proc.returncode
  print(json.dumps({"height": args.height, "width": args.width, "megapixels": round(args.height * args.width / 1e6, 1),
                    "model": args.pretrained, "tile": args.tile, "align": args.align, "wall_s": round(wall, 1),
                    "cpu_s": round(usage.ru_utime + usage.ru_stime, 1),
                    "peak_rss_gib": round(peak_kib / 2**20, 2), "cpus": os.cpu_count(), "machine": platform.machine(),
                    "processor": platform.processor() or platform.uname().machine,
                    "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
                    "predict_stdout": proc.stdout.strip().splitlines()}))
  return 0


if __name__ == "__main__":
  sys.exit(main())
