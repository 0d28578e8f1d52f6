r"""Scores a trained run on held-out photographs and ships it inside the package (``hdr_jax/pretrained``).

  python benchmarks/ship_model.py --workdir=runs/ahdrnet_cpu_fold1 --name=ahdrnet-cpu \
      --heldout ../shared/data/hdr/{Desk,MtTamWest,StillLife}.exr --out=benchmarks/out/ship

1. Held-out evaluation sets, synthesised from the ``--heldout`` radiance maps (which the run must not
   have trained on: its config names its maps) at the static and hard levels of
   ``benchmarks/quality.py`` (2 scenes of ``--size`` per map, seed 1234), scored with
   ``hdr_jax.evaluate`` beside the medium frame and the classical merge.
2. A one-scene slice (the first held-out map, hard level, 64x96) predicted through ``python -m
   hdr_jax.predict`` and scored: the number ``tests/test_pretrained.py`` reproduces from the package.
3. (unless ``--score_only``, which stops after 1 and writes ``ship.json`` with the scores: the other
   folds of a recipe) ``hdr_jax.pretrained.export``: the latest checkpoint and the config (machine paths cut to file
   names) go to ``hdr_jax/pretrained/NAME`` with a model card (``MODEL.json``) holding all of the above
   and the command that retrains the run.

Prints a table and writes ``ship.json`` in ``--out``.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path


ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))
import quality  # noqa: E402

SLICE = dict(level="hard", height=64, width=96, seed=1234)


def slice_score(name: str, photo: Path, folder: Path) -> float:
  """PSNR-mu of the shipped model ``name`` on the one-scene slice, through the predict CLI."""
  from hdr_jax import hdr_math, synthesize
  from hdr_jax import fileio

  scenes = folder / "in"
  synthesize.synthesize_folder(scenes, 1, SLICE["height"], SLICE["width"], hdr_files=[photo], seed=SLICE["seed"],
                               verbose=False, **quality.LEVELS[SLICE["level"]])
  out = folder / "out"
  subprocess.run([sys.executable, "-m", "hdr_jax.predict", f"--pretrained={name}", f"--input={scenes}",
                  f"--output={out}"], cwd=ROOT, check=True)
  gt = fileio.read_scene(fileio.validate_folder(scenes, require_gt=True)[0])["gt"]
  return float(hdr_math.np_psnr_mu(gt, fileio.read_hdr_png16(out / "0000.png", out / "0000_alignratio.npy")))


def print_table(name: str, card: dict) -> None:
  h = card["heldout"]
  print(f"| {name} | static PSNR-mu | hard PSNR-mu |\n| --- | --- | --- |")
  for row, vals in (("medium frame", h["medium"]), ("classical merge", h["merge"]), (name, h["model"])):
    print(f"| {row} | {vals['static']['psnr_mu']:.2f} | {vals['hard']['psnr_mu']:.2f} |")


def main(argv=None) -> int:
  p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  p.add_argument("--workdir", required=True, type=Path)
  p.add_argument("--name", required=True)
  p.add_argument("--heldout", nargs="+", required=True, type=Path, help="radiance maps the run never trained on")
  p.add_argument("--size", default="128x192", help="held-out scene size HxW")
  p.add_argument("--command", default="", help="the command that retrains the run (for the model card)")
  p.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "out" / "ship")
  p.add_argument("--score_only", action="store_true", help="score on the held-out maps; ship nothing")
  args = p.parse_args(argv)

  from hdr_jax import checkpoint, evaluate, pretrained, synthesize

  config = checkpoint.load_config(args.workdir)
  trained = [Path(f).name for f in config.data.embedded.hdr_files]
  shared = quality.trained_on_held_out(config, args.heldout)
  if shared:
    p.error(f"--heldout {shared} were trained on by {args.workdir}")
  h, w = (int(x) for x in args.size.split("x"))
  args.out.mkdir(parents=True, exist_ok=True)
  sets = {level: synthesize.ensure_dataset(args.out / "eval" / f"{level}_{h}x{w}", 2 * len(args.heldout), h, w,
                                           hdr_files=args.heldout, seed=1234, verbose=False, **quality.LEVELS[level])
          for level in ("static", "hard")}
  baselines = quality.scene_baselines(sets)
  scores = {}
  for level, folder in sets.items():
    result = evaluate.run(args.workdir, data=folder, json_path=args.out / f"eval_{level}.json")
    scores[level] = {k: result["mean"][k] for k in quality.METRICS}
  card = {"model": config.model.name, "trained_on": {
              "radiance_maps": trained, "scenes": config.data.embedded.train_scenes,
              "size": [config.data.embedded.height, config.data.embedded.width],
              "steps": config.num_train_steps, "batch": config.batch_size, "patch": config.data.patch_size},
          "command": args.command,
          "heldout": {"radiance_maps": [f.name for f in args.heldout], "scene_size": [h, w], "scenes_per_map": 2,
                      "seed": 1234, "levels": {lv: quality.LEVELS[lv] for lv in sets}, "model": scores,
                      "medium": {lv: baselines[lv]["medium"] for lv in sets},
                      "merge": {lv: baselines[lv]["merge"] for lv in sets}}}
  if args.score_only:
    print_table(args.name, card)
    (args.out / "ship.json").write_text(json.dumps(card, indent=2, default=float))
    return 0
  pretrained.export(args.workdir, args.name, card)
  s = dict(SLICE, hdr=args.heldout[0].name, options=quality.LEVELS[SLICE["level"]])
  s["psnr_mu"] = slice_score(args.name, args.heldout[0], args.out / "slice")
  card["slice"] = s
  pretrained.export(args.workdir, args.name, card)
  print_table(args.name, card)
  print(f"slice ({s['hdr']}, {s['level']}, {s['height']}x{s['width']}): PSNR-mu {s['psnr_mu']:.4f} dB")
  (args.out / "ship.json").write_text(json.dumps(card, indent=2, default=float))
  return 0


if __name__ == "__main__":
  raise SystemExit(main())
