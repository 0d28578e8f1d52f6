"""Input-pipeline throughput: training crops/s from raw NTIRE PNGs vs the prepared formats.

Synthesizes an NTIRE folder (hdr_jax.synthesize), prepares it as tiles (``hdr_jax.tiles``) and, when the
``tfds`` extra is installed, with the ``ntire_hdr`` TFDS builder, then times batches of
``patch``x``patch`` training triplets from each source (PNG, tiles, prepared via tfds, prepared via the
TF-free ArrayRecord reader) with 0 (in-process), 1 and 2 worker processes.

  python benchmarks/input_pipeline.py --height=1060 --width=1900 --scenes=8 [--sources=png,tiles] [--json=PATH]
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import platform
import shutil
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import common  # noqa: E402  (benchmarks/common.py)


def main(argv=None) -> dict:
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--height", type=int, default=1060)
  parser.add_argument("--width", type=int, default=1900)
  parser.add_argument("--scenes", type=int, default=8)
  parser.add_argument("--patch", type=int, default=256)
  parser.add_argument("--batch", type=int, default=8, help="triplets per batch")
  parser.add_argument("--batches", type=int, default=12, help="timed batches per configuration")
  parser.add_argument("--warmup", type=int, default=2, help="untimed batches (worker start-up) first")
  parser.add_argument("--workers", default="0,1,2", help="comma-separated worker-process counts")
  parser.add_argument("--crops_per_scene", default="1", help="comma-separated patches per scene read")
  parser.add_argument("--threads", type=int, default=1, help="reader threads per process")
  parser.add_argument("--prefetch", type=int, default=2, help="buffered batches (per worker)")
  parser.add_argument("--sources", default="png,tiles,prepared/tfds,prepared/array_record",
                      help="comma-separated, from png, tiles, prepared/tfds, prepared/array_record (the last two "
                      "are skipped, and reported, without tensorflow_datasets or when preparing them fails)")
  parser.add_argument("--tile", type=int, default=128, help="tile size of the tiles source")
  parser.add_argument("--workdir", default=None, help="where to build the data (default: a temporary folder)")
  parser.add_argument("--json", default="benchmarks/out/input_pipeline.json")
  args = parser.parse_args(argv)

  from hdr_jax import synthesize

  wanted = [s for s in args.sources.split(",") if s]
  unknown = set(wanted) - set(common.PIPELINE_SOURCES)
  if unknown:
    parser.error(f"unknown --sources {sorted(unknown)}")
  workdir = Path(args.workdir or tempfile.mkdtemp(prefix="hdr_input_bench_"))
  try:
    folder = workdir / "ntire"
    if not folder.is_dir():
      synthesize.synthesize_folder(folder, args.scenes, args.height, args.width, seed=0, verbose=False)
    sources, prepared = common.pipeline_sources(folder, workdir, wanted, tile=args.tile)
    results = []
    for crops in (int(c) for c in args.crops_per_scene.split(",")):
      for name, source in sources.items():
        for workers in (int(w) for w in args.workers.split(",")):
          r = {"source": name, **common.delivered_rate(
              source, patch=args.patch, batch=args.batch, workers=workers, crops=crops, threads=args.threads,
              prefetch=args.prefetch, warmup=args.warmup, batches=args.batches)}
          gc.collect()  # finish closed worker iterators now, not at interpreter exit
          results.append(r)
          print(f"{name:22s} crops/scene={crops} workers={workers}  {r['crops_per_s']:8.1f} crops/s  "
                f"{r['ms_per_batch']:8.1f} ms/batch  (start-up {r['startup_s']:.1f} s)", flush=True)
    report = {
        "config": {k: v for k, v in vars(args).items() if k not in ("json", "workdir")},
        "machine": {"cpus": os.cpu_count(), "python": platform.python_version(), "platform": platform.platform()},
        "png_bytes": common.folder_bytes(folder), "prepared": prepared,
        "results": results,
    }
  finally:
    if not args.workdir:
      shutil.rmtree(workdir, ignore_errors=True)

  print(f"\n{args.scenes} scenes {args.height}x{args.width}, batch {args.batch} x {args.patch}x{args.patch}, "
        f"{args.threads} reader thread(s)/process, {os.cpu_count()} CPUs")
  print(f"PNG folder {report['png_bytes'] / 2**20:.1f} MiB" + "".join(
      f"; {name} {p['bytes'] / 2**20:.1f} MiB (prepared in {p['prepare_s']:.1f} s)" for name, p in prepared.items()
      if "bytes" in p) + "\n")
  counts = sorted({r["workers"] for r in results})
  print(f"{'crops/s':36s}" + "".join(f"{f'{w} workers':>12s}" for w in counts))
  for key in dict.fromkeys((r["source"], r["crops_per_scene"]) for r in results):
    row = {r["workers"]: r["crops_per_s"] for r in results if (r["source"], r["crops_per_scene"]) == key}
    print(f"{f'{key[0]} ({key[1]} crop/scene)':36s}" + "".join(f"{row[w]:12.1f}" for w in counts))
  out = Path(args.json)
  out.parent.mkdir(parents=True, exist_ok=True)
  out.write_text(json.dumps(report, indent=2))
  print(f"\nwrote {out}")
  return report


if __name__ == "__main__":
  sys.exit(main() and 0)
