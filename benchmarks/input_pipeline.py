"""Input-pipeline throughput: training crops/s from raw NTIRE PNGs vs the prepared formats.

Synthesizes an NTIRE folder (hdr_jax.synthesize), prepares it as tiles (``hdr_jax.tiles``) and, when the
``tfds`` extra is installed, with the ``ntire_hdr`` TFDS builder, then times batches of
``patch``x``patch`` training triplets from each source (PNG, tiles, prepared via tfds, prepared via the
TF-free ArrayRecord reader) with 0 (in-process), 1 and 2 worker processes (``--workers=auto``: the CPUs
less 2, at most 14). A configuration that fails is recorded and the others go on.

``--consumption_from=JSON`` (a ``benchmarks/models.py`` report) sets the best delivered rate per
crops-per-scene beside the fastest JAX train step's consumption: target ratio >= 1.5 (the GPU check of
``benchmarks/gpu.sh``).

  python benchmarks/input_pipeline.py --height=1060 --width=1900 --scenes=8 [--sources=png,tiles] [--json=PATH]
  python benchmarks/input_pipeline.py --scenes=16 --workers=auto --threads=4 --prefetch=4 \
      --sources=tiles,prepared/array_record,png --consumption_from=benchmarks/out/models.json
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

TARGET = 1.5  # delivered crops/s over the fastest train step's consumption


def fastest_consumer(rows) -> dict | None:
  """The JAX train row of a ``models.py`` report with the highest crops/s."""
  best = None
  for r in rows:
    tr = r.get("train") or {}
    if r["framework"] == "jax" and tr.get("crops_per_s") and (best is None or tr["crops_per_s"] > best["crops_per_s"]):
      best = {"model": r["model"], "dtype": r["dtype"], "crops_per_s": tr["crops_per_s"],
              "ms_per_step": tr["ms_per_step"], "batch": tr.get("batch")}
  return best


def synthesize(folder: Path, scenes: int, height: int, width: int) -> None:
  """Scenes in parallel processes (one scene per task; identical to a sequential ``synthesize_folder``)."""
  import concurrent.futures
  import multiprocessing

  from hdr_jax import synthesize as synth

  procs = max(1, min(scenes, os.cpu_count() or 1))
  if procs == 1:
    synth.synthesize_folder(folder, scenes, height, width, seed=0, verbose=False)
    return
  with concurrent.futures.ProcessPoolExecutor(procs, mp_context=multiprocessing.get_context("spawn")) as pool:
    jobs = [pool.submit(synth.synthesize_folder, folder, 1, height, width, seed=0, start_index=i, verbose=False)
            for i in range(scenes)]
    for job in jobs:
      job.result()


def _workers(text: str) -> list[int]:
  if text == "auto":
    return [max(0, min(14, (os.cpu_count() or 1) - 2))]
  return [int(w) for w in text.split(",") if w.strip()]


def main(argv=None) -> dict:
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--height", type=int, default=1060)
  parser.add_argument("--width", type=int, default=1900)
  parser.add_argument("--scenes", type=int, default=8)
  parser.add_argument("--patch", type=int, default=256)
  parser.add_argument("--batch", type=int, default=8, help="triplets per batch")
  parser.add_argument("--batches", type=int, default=12, help="timed batches per configuration")
  parser.add_argument("--warmup", type=int, default=2, help="untimed batches (worker start-up) first")
  parser.add_argument("--workers", default="0,1,2", help="comma-separated worker-process counts, or auto")
  parser.add_argument("--crops_per_scene", default="1", help="comma-separated patches per scene read")
  parser.add_argument("--threads", type=int, default=1, help="reader threads per process")
  parser.add_argument("--prefetch", type=int, default=2, help="buffered batches (per worker)")
  parser.add_argument("--sources", default="png,tiles,prepared/tfds,prepared/array_record",
                      help="comma-separated, from png, tiles, prepared/tfds, prepared/array_record (the last two "
                      "are skipped, and reported, without tensorflow_datasets or when preparing them fails)")
  parser.add_argument("--tile", type=int, default=128, help="tile size of the tiles source")
  parser.add_argument("--workdir", default=None, help="where to build the data (default: a temporary folder)")
  parser.add_argument("--consumption_from", default=None, help="a models.py JSON: compare with its fastest train step")
  parser.add_argument("--json", default="benchmarks/out/input_pipeline.json")
  args = parser.parse_args(argv)

  consumption = None
  if args.consumption_from:
    try:
      consumption = fastest_consumer(json.loads(Path(args.consumption_from).read_text()).get("rows", []))
    except (OSError, ValueError, KeyError, AttributeError) as e:
      parser.error(f"--consumption_from={args.consumption_from}: not a readable models.py report ({type(e).__name__}: {e})")
  wanted = [s for s in args.sources.split(",") if s]
  unknown = set(wanted) - set(common.PIPELINE_SOURCES)
  if unknown:
    parser.error(f"unknown --sources {sorted(unknown)}")
  workdir = Path(args.workdir or tempfile.mkdtemp(prefix="hdr_input_bench_"))
  try:
    folder = workdir / "ntire"
    if not folder.is_dir():
      synthesize(folder, args.scenes, args.height, args.width)
    sources, prepared = common.pipeline_sources(folder, workdir, wanted, tile=args.tile)
    results, failed = [], []
    for crops in (int(c) for c in args.crops_per_scene.split(",")):
      for name, source in sources.items():
        for workers in _workers(args.workers):
          what = f"{name:22s} crops/scene={crops} workers={workers}"
          try:  # at least max(warmup, workers) batches untimed (worker start-up), three per worker timed
            r = {"source": name, **common.delivered_rate(
                source, patch=args.patch, batch=args.batch, workers=workers, crops=crops, threads=args.threads,
                prefetch=args.prefetch, warmup=max(args.warmup, workers), batches=max(args.batches, 3 * workers))}
          except Exception as e:  # noqa: BLE001 - one failing configuration must not end the benchmark
            failed.append(f"{what.split()[0]} crops/scene={crops} workers={workers}: {type(e).__name__}: {e}")
            print(f"{what}: FAILED {failed[-1]}", flush=True)
            continue
          finally:
            gc.collect()  # finish closed worker iterators now, not at interpreter exit
          results.append(r)
          print(f"{what}  {r['crops_per_s']:8.1f} crops/s  "
                f"{r['ms_per_batch']:8.1f} ms/batch  (start-up {r['startup_s']:.1f} s)", flush=True)
    best = {}
    for r in results:
      if r["crops_per_s"] > best.get(str(r["crops_per_scene"]), {}).get("crops_per_s", 0.0):
        best[str(r["crops_per_scene"])] = r
    report = {
        "config": {k: v for k, v in vars(args).items() if k not in ("json", "workdir")},
        "machine": {"cpus": os.cpu_count(), "python": platform.python_version(), "platform": platform.platform()},
        "png_bytes": common.folder_bytes(folder), "prepared": prepared,
        "results": results, "failures": failed, "consumption": consumption, "target_ratio": TARGET,
        "ratio": {c: b["crops_per_s"] / consumption["crops_per_s"] for c, b in best.items()} if consumption else None,
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
    print(f"{f'{key[0]} ({key[1]} crop/scene)':36s}" + "".join(f"{row[w]:12.1f}" if w in row else f"{'-':>12s}"
                                                            for w in counts))
  if consumption:
    print(f"\nfastest train step: {consumption['model']} {consumption['dtype']} consumes "
          f"{consumption['crops_per_s']:.1f} crops/s")
    for crops, ratio in report["ratio"].items():
      print(f"crops/scene={crops}: best {best[crops]['crops_per_s']:.1f} crops/s ({best[crops]['source']}, "
            f"{best[crops]['workers']} workers) = {ratio:.2f}x the consumption (target >= {TARGET}x: "
            f"{'met' if ratio >= TARGET else 'NOT met'})")
  for f in failed:
    print(f"FAILED {f}")
  print(f"\nwrote {common.write_json(args.json, report)}")
  return report


if __name__ == "__main__":
  sys.exit(main() and 0)
