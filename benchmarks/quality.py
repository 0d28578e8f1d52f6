r"""Held-out quality benchmark: every model trained for the same budget, scored on real radiance maps.

1. Evaluation sets (NTIRE format) synthesised from the radiance maps given with ``--hdr`` (never used
   for training) at difficulty levels (``--levels``, default ``static,hard``): ``static`` (no camera or
   object motion, sensor noise x0.25) and ``hard`` (camera and object motion x3, sensor noise x4), and to
   tell noise from ghosting apart ``noise`` (static, noise x4) and ``motion`` (motion x3, noise x0.25)
   (``hdr_jax.synthesize`` options; the same seed, so every level holds the same crops of the maps).
2. Each model config trains through the real trainer (``hdr_jax.train.train_and_evaluate``, in this
   process) on the embedded training data, for ``--steps`` steps of batch ``--batch`` of ``--size`` x
   ``--size`` patches, once per seed. The embedded scenes are procedural, or built by the same
   synthesiser from the radiance maps of ``--train_hdr`` (which must not share a file with ``--hdr``).
   ``vam_drdb_ldae``: l-DAE pretraining (``configs/ldae.py``) for ``--ldae_fraction`` of the steps, then
   ``configs/vam_drdb.py`` from that feature extractor for the rest: the same number of steps as
   ``vam_drdb`` from scratch (an l-DAE step costs less than a regression step: its head is light and
   it skips the reconstruction network). ``gan`` (configs/gan.py) and ``ddpm`` (configs/diffusion.py,
   scored with DDIM-50 and with 1000-step ancestral sampling) run when their configs and tasks load.
3. Each run is scored with ``hdr_jax.evaluate.run`` on both levels (PSNR-mu and PSNR-L as the official
   scoring program, SSIM-mu, SSIM-L); baselines on the same scenes: the medium frame alone and a
   classical merge (:func:`merge_exposures`).
4. Output in ``--out``: ``quality.md`` (mean +- std over seeds), ``quality.json`` (every run and scene
   mean), ``quality_crops.png`` (one crop per level where the classical merge fails most: the three
   inputs, the merge, each model (first seed), the target; tone-mapped with
   ``hdr_jax.metrics_log.tonemap_for_display``) and the runs' workdirs under ``runs/``. The files are
   rewritten after every run, so an interrupted benchmark leaves what it measured.

  python benchmarks/quality.py --hdr ../shared/data/hdr/*.exr --steps=200 --size=64 --seeds=0,1,2 \
      --models=ahdrnet,vam,vam_drdb,vam_drdb_ldae --out=benchmarks/out/quality
  python benchmarks/quality.py --tiny --hdr A.exr B.exr --out=/tmp/quality     # CI-sized, about a minute

``--widths=small`` shrinks AHDRNet and the VAM+DRDB stem (CPU studies; ``--tiny`` implies it).

Besides the study's names, ``--models`` takes two kinds of entry that keep their own settings:

- ``config:NAME[:VARIANT]`` trains ``configs/NAME.py`` (``get_config(VARIANT)``) as it is written: its
  own steps, batch, patch size, widths and data, changed only in the seed and, with ``--train_hdr``, the
  radiance maps it synthesises its scenes from (kept beside ``'procedural'`` where the config mixes
  procedural scenes in). ``config:diffusion`` is the README's main job, scored with its own sampler,
  with a second row for the deterministic estimate it refines; ``config:ahdrnet:cpu`` is the CPU recipe.
- ``pretrained:NAME`` scores a model shipped in the package (``hdr_jax.pretrained``) without training,
  once; it is refused where ``--hdr`` holds a radiance map it was trained on.

  python benchmarks/quality.py --hdr HDR/{Desk,MtTamWest,StillLife}.exr \
      --train_hdr HDR/{Carrots,GoldenGate,Tree}.exr --scenes_per_hdr=2 --eval_size=128x192 --seeds=0,1 \
      --models=config:ahdrnet:cpu,pretrained:ahdrnet-merge-cpu --out=benchmarks/out/recipe_fold1
"""

from __future__ import annotations

import argparse
import datetime
import functools
import json
import platform
import re
import sys
import time
import traceback
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
MODELS = ("ahdrnet", "ahdrnet_merge", "vam", "vam_drdb", "vam_drdb_direct", "vam_drdb_ldae", "gan", "ddpm")
CONFIGS = {"ahdrnet": "ahdrnet", "ahdrnet_merge": "ahdrnet", "vam": "vam", "vam_drdb": "vam_drdb",
           "vam_drdb_direct": "vam_drdb", "vam_drdb_ldae": "vam_drdb", "gan": "gan", "ddpm": "diffusion"}
# model.* settings of the models that are a config with another output head (configs/vam_drdb.py has the
# merge head, configs/ahdrnet.py the official sigmoid * max_radiance one).
MODEL_SETTINGS = {"ahdrnet_merge": dict(output_head="merge"), "vam_drdb_direct": dict(output_head="exposure")}
LEVELS = {"static": dict(camera_motion=0.0, object_motion=0.0, noise=0.25),
          "noise": dict(camera_motion=0.0, object_motion=0.0, noise=4.0),
          "motion": dict(camera_motion=3.0, object_motion=3.0, noise=0.25),
          "hard": dict(camera_motion=3.0, object_motion=3.0, noise=4.0)}
METRICS = ("psnr_mu", "psnr_l", "ssim_mu", "ssim_l")
# --widths=small: model.* overrides per model.name.
SMALL = {"ahdrnet": dict(channels=16, growth=8, n_blocks=1, n_dense=2),
         "vam_drdb": dict(drdb_blocks=1, drdb_channels=8, drdb_growth=4, drdb_layers=2),
         "unet": dict(ch=8, groups=4)}
TINY = dict(size=32, steps=4, batch=2, seeds="0", train_scenes=4, train_size=48, eval_size="32x48", scenes_per_hdr=1,
            widths="small", ddim_steps=5, crop=32)


# --------------------------------------------------------------------------------------------------
# Baselines
# --------------------------------------------------------------------------------------------------


def merge_exposures(frames, exposures) -> np.ndarray:
  """The classical multi-exposure merge (``hdr_math.merge_exposures``, no motion compensation):
  ``frames (3, H, W, 3)`` LDR in [0, 1], ``exposures (3,)`` -> gamma-domain HDR ``(H, W, 3)``."""
  from hdr_jax import hdr_math

  return np.asarray(hdr_math.gamma_encode(hdr_math.merge_exposures(frames, exposures)), np.float32)


def baseline_predictions(scene) -> dict:
  return {"medium": np.asarray(scene["frames"][1], np.float32),
          "merge": merge_exposures(scene["frames"], scene["exposures"])}


# --------------------------------------------------------------------------------------------------
# Configs and runs
# --------------------------------------------------------------------------------------------------


def load_config(name: str, arg: str = ""):
  from hdr_jax import config_base

  return config_base.load_config_file(ROOT / "configs" / f"{name}.py", arg)


def base_config(name: str, args, seed: int, steps: int):
  """A config file's config with the benchmark's data, budget and (``--widths=small``) sizes."""
  c = load_config(name)
  c.seed = seed
  c.num_train_steps = steps
  c.batch_size = args.batch
  c.data.patch_size = args.size
  c.data.crops_per_scene = args.crops_per_scene
  c.data.cache_dir = str(args.out / "cache")
  # The trainer's own validation: one scene of the evaluation size (its compiled predict is reused).
  c.data.embedded.update(train_scenes=args.train_scenes, height=args.train_size, width=args.train_size, val_scenes=1,
                         val_height=args.eval_hw[0], val_width=args.eval_hw[1], seed=0,
                         hdr_files=tuple(str(f) for f in args.train_hdr))
  c.log_every = max(1, steps // 10)
  c.eval_every = c.checkpoint_every = max(1, steps)
  c.keep_checkpoints = 1
  c.progress = False
  c.eval.preview_scenes = 0
  if args.widths == "small" and c.model.name in SMALL:
    c.model.update(SMALL[c.model.name])
  if args.widths == "small" and "cond_vam_drdb" in c.model:
    c.model.cond_vam_drdb.update(SMALL["vam_drdb"])
  return c


def split_entry(model: str) -> tuple[str, str, str, list[str]]:
  """``config:NAME[:VARIANT][@KEY=VALUE...]`` or ``pretrained:NAME`` -> ``(kind, NAME, VARIANT, [KEY=VALUE, ...])``."""
  spec, *sets = model.split("@")
  kind, name, arg = (spec.split(":", 2) + ["", ""])[:3]
  return kind, name, arg, sets


def as_configured(model: str, args, seed: int):
  """The config of a ``config:NAME[:VARIANT][@KEY=VALUE...]`` entry: as written, but for the seed, the
  maps and the entry's own ``@KEY=VALUE`` settings (the benchmarks' per-entry ``--config.KEY=VALUE``)."""
  from hdr_jax import cli, config_base

  _, name, arg, sets = split_entry(model)
  c = load_config(name, arg)
  c.seed = seed
  if args and args.train_hdr:
    procedural = ("procedural",) if "procedural" in c.data.embedded.hdr_files else ()
    c.data.embedded.hdr_files = procedural + tuple(str(f) for f in args.train_hdr)
  return config_base.apply_overrides(c, cli.parse_overrides(sets, flag="@"))


def trained_on_held_out(config, held_out: list[Path]) -> list[str]:
  """The file names of the ``held_out`` radiance maps that ``config`` synthesises training scenes from."""
  trained = {Path(f).name for f in config.data.embedded.hdr_files if f != "procedural"}
  return sorted(trained & {f.name for f in held_out})


def eval_variants(model: str, args) -> dict:
  """``{suffix: (method name, evaluate overrides)}``: the sampler settings a model is scored with."""
  if ":" in model:  # config: and pretrained: entries keep their own sampler
    return {"": (model, {})}
  if model == "ddpm":
    return {f"_ddim{args.ddim_steps}": (f"ddpm (DDIM-{args.ddim_steps}, eta {args.ddim_eta:g})",
                                        {"sampler.name": "ddim", "sampler.steps": args.ddim_steps,
                                         "sampler.eta": args.ddim_eta}),
            "_ddpm": ("ddpm (1000-step)", {"sampler.name": "ddpm"})}
  return {"": ({"vam_drdb_ldae": "vam_drdb + l-DAE"}.get(model, model), {})}


def _num_params(workdir: Path) -> int | None:
  if not (workdir / "metrics.jsonl").is_file():  # a shipped model keeps no training log
    return None
  for line in (workdir / "metrics.jsonl").read_text().splitlines():
    row = json.loads(line)
    if "num_params" in row:
      return int(row["num_params"])
  return None


def check_same_config(config, workdir: Path) -> None:
  """A workdir from an earlier run of the benchmark is reused (finished) or resumed (interrupted) only
  when it was started with this very config: other settings under the same ``--out`` are an error."""
  saved = workdir / "config.json"
  if not saved.is_file():
    return
  from flax.nnx import traversals

  old, new = (traversals.flatten_mapping(json.loads(text), sep=".")
              for text in (saved.read_text(), config.to_json_best_effort()))
  if new.get("data.protocol") == "auto":  # the trainer saves the layout it detected in place of 'auto'
    new["data.protocol"] = old.get("data.protocol")
  diff = sorted(k for k in old.keys() | new.keys() if old.get(k) != new.get(k))
  if diff:
    shown = ", ".join(f"{k}: {old.get(k)!r} -> {new.get(k)!r}" for k in diff[:5])
    raise SystemExit(f"{saved}: this run was started with other settings ({shown}{', ...' if len(diff) > 5 else ''}); "
                     f"use another --out or delete {workdir}")


def train(config, workdir: Path) -> dict:
  """Trains (or finds finished) ``config`` in ``workdir``: ``{'seconds', 'params'}``."""
  from hdr_jax import train as train_lib

  check_same_config(config, workdir)
  summary, done = workdir / "summary.json", workdir / "quality_run.json"
  if done.is_file() and json.loads(summary.read_text())["step"] == config.num_train_steps:
    return json.loads(done.read_text())
  start = time.perf_counter()
  train_lib.train_and_evaluate(config, workdir)
  out = {"seconds": time.perf_counter() - start, "params": _num_params(workdir)}
  done.write_text(json.dumps(out))
  return out


def run_model(model: str, seed: int, args, eval_dirs: dict) -> list[dict]:
  """Trains one model for one seed and scores it on every level: one row per evaluation variant."""
  from hdr_jax import checkpoint, evaluate, pretrained

  runs = args.out / "runs"
  folder = re.sub(r"[^A-Za-z0-9_.-]", "_", model)
  workdir = out = runs / f"{folder}_s{seed}"
  info = {}
  if model.startswith("pretrained:"):
    workdir, out = pretrained.path(split_entry(model)[1]), runs / folder
    config = checkpoint.load_config(workdir)
    info["train"] = {"seconds": None, "params": None}
  elif model.startswith("config:"):
    config = as_configured(model, args, seed)
  elif model == "vam_drdb_ldae":
    pre = max(1, round(args.steps * args.ldae_fraction))
    ldae = base_config("ldae", args, seed, pre)
    ldae.model = base_config("vam_drdb", args, seed, 1).model
    info["pretrain"] = train(ldae, runs / f"ldae_s{seed}")
    config = base_config("vam_drdb", args, seed, args.steps - pre)
    config.init.feature_extractor = str(runs / f"ldae_s{seed}")
  else:
    config = base_config(CONFIGS[model], args, seed, args.steps)
    config.model.update(MODEL_SETTINGS.get(model, {}))
  shared = trained_on_held_out(config, args.hdr)
  if shared:
    raise ValueError(f"{model} trains on the held-out maps {shared}")
  if "train" not in info:
    info["train"] = train(config, workdir)
  out.mkdir(parents=True, exist_ok=True)
  rows = []
  for suffix, (method, overrides) in eval_variants(model, args).items():
    levels, estimate = {}, {}
    for level, folder in eval_dirs.items():
      result = evaluate.run(workdir, data=folder, step="latest", json_path=out / f"eval_{level}{suffix}.json",
                            overrides=overrides)
      levels[level] = {k: result["mean"][k] for k in METRICS}
      if "estimate_psnr_mu" in result["mean"]:  # a model that refines a deterministic estimate
        estimate[level] = {k: result["mean"][f"estimate_{k}"] for k in ("psnr_mu", "psnr_l")}
    seconds = info["train"]["seconds"]
    if seconds is not None:
      seconds += info.get("pretrain", {}).get("seconds", 0.0)
    row = {"method": method, "model": model, "seed": seed, "workdir": str(workdir),
           "overrides": overrides, "params": info["train"]["params"] or _num_params(workdir),
           "train_seconds": seconds, "learning_rate": config.optimizer.learning_rate, "levels": levels}
    rows.append(row)
    if estimate:
      rows.append({**row, "method": f"{method}, its estimate", "estimate": True, "levels": estimate})
  return rows


# --------------------------------------------------------------------------------------------------
# Evaluation data, figure, report
# --------------------------------------------------------------------------------------------------


def make_eval_sets(args) -> dict:
  from hdr_jax import synthesize

  h, w = args.eval_hw
  n = len(args.hdr) * args.scenes_per_hdr
  return {level: synthesize.ensure_dataset(args.out / "eval" / f"{level}_n{n}_{h}x{w}", n, h, w, hdr_files=args.hdr,
                                           seed=args.eval_seed, verbose=False, **kw)
          for level, kw in args.levels.items()}


def scene_baselines(eval_dirs: dict) -> dict:
  """Per level: mean metrics of the medium frame and the classical merge over the level's scenes."""
  from hdr_jax import evaluation
  from hdr_jax import fileio

  out = {}
  for level, folder in eval_dirs.items():
    rows = {"medium": [], "merge": []}
    for s in fileio.validate_folder(folder, require_gt=True):
      d = fileio.read_scene(s)
      for name, pred in baseline_predictions(d).items():
        rows[name].append(evaluation.scene_metrics(d["gt"], pred))
    out[level] = {name: {k: float(np.mean([r[k] for r in r_])) for k in METRICS} for name, r_ in rows.items()}
  return out


def pick_crop(eval_dir, crop: int) -> dict:
  """The scene and ``crop`` x ``crop`` window (stride crop/2) where the classical merge is worst
  (mean absolute difference of the tone-mapped merge and target)."""
  from hdr_jax import fileio, metrics_log

  best = None
  for s in fileio.validate_folder(eval_dir, require_gt=True):
    d = fileio.read_scene(s)
    h, w = d["gt"].shape[:2]
    c = min(crop, h, w)
    tonemap = functools.partial(metrics_log.tonemap_for_display, ref_gamma=d["gt"])
    err = np.abs(tonemap(merge_exposures(d["frames"], d["exposures"])) - tonemap(d["gt"])).mean(-1)
    for y in range(0, h - c + 1, max(1, c // 2)):
      for x in range(0, w - c + 1, max(1, c // 2)):
        e = float(err[y:y + c, x:x + c].mean())
        if best is None or e > best["error"]:
          best = {"scene": s, "id": d["id"], "y": y, "x": x, "size": c, "error": e}
  return best


def model_prediction(workdir, scene, overrides) -> np.ndarray:
  """A trained model's gamma-domain prediction for one scene (``engine.load_from_workdir``)."""
  import jax

  from hdr_jax import cli
  from hdr_jax import engine as engine_lib
  from hdr_jax import fileio

  config, engine, state, _ = engine_lib.load_from_workdir(workdir, "latest", overrides,
                                                          prepare=cli.use_compilation_cache)
  d = fileio.read_scene(scene)
  frames = np.round(d["frames"] * 255).astype(np.uint8)[None]
  return engine.predict(state, frames, d["exposures"][None], jax.random.key(config.seed))[0]


LABEL_SCALE, LABEL_LINE = 0.35, 13  # cv2.FONT_HERSHEY_SIMPLEX scale and line height (pixels) of column labels


def wrap_label(name: str, width: int) -> list[str]:
  """``name`` in lines that each fit ``width`` pixels at the label font: breaks at spaces, and inside a
  word only when the word alone is wider than a column."""
  from hdr_jax.fileio import cv2

  def fits(text):
    return cv2.getTextSize(text, cv2.FONT_HERSHEY_SIMPLEX, LABEL_SCALE, 1)[0][0] <= width

  lines = []
  for word in name.split():
    if lines and fits(f"{lines[-1]} {word}"):
      lines[-1] = f"{lines[-1]} {word}"
      continue
    while not fits(word) and len(word) > 1:
      cut = max(k for k in range(1, len(word) + 1) if k == 1 or fits(word[:k]))
      lines.append(word[:cut])
      word = word[cut:]
    lines.append(word)
  return lines or [""]


def write_figure(path: Path, crops: dict, columns: list[str]) -> None:
  """Rows = levels, columns = inputs, methods, target; labels drawn with cv2.putText."""
  from hdr_jax import fileio
  from hdr_jax.fileio import cv2

  rows = []
  for level, tiles in crops.items():
    rows.append(np.concatenate([tiles[c] for c in columns], axis=1))
  grid = np.concatenate(rows, axis=0)
  tile = grid.shape[1] // len(columns)
  scale = max(1, 128 // tile)
  grid = np.repeat(np.repeat(grid, scale, 0), scale, 1)
  tile *= scale
  grid = np.clip(np.round(grid * 255), 0, 255).astype(np.uint8)
  labels = [wrap_label(name, tile - 6) for name in columns]
  header = np.full((LABEL_LINE * max(map(len, labels)) + 5, grid.shape[1], 3), 255, np.uint8)
  for i, lines in enumerate(labels):
    for j, line in enumerate(lines):
      cv2.putText(header, line, (i * tile + 3, LABEL_LINE * (j + 1)), cv2.FONT_HERSHEY_SIMPLEX, LABEL_SCALE,
                  (0, 0, 0), 1, cv2.LINE_AA)
  for r, level in enumerate(crops):  # the row's level and scene id on its first tile, white on black outline
    for colour, thickness in (((0, 0, 0), 3), ((255, 255, 255), 1)):
      cv2.putText(grid, level, (3, (r + 1) * tile - 5), cv2.FONT_HERSHEY_SIMPLEX, 0.35, colour, thickness, cv2.LINE_AA)
  fileio.write_ldr_png(path, np.concatenate([header, grid], axis=0))


def figure_tiles(eval_dirs: dict, crop: int, runs: list[dict]) -> tuple[dict, list[str]]:
  from hdr_jax import fileio, metrics_log

  first_seed = {}
  for r in runs:
    if not r.get("estimate"):  # the figure shows what a model predicts
      first_seed.setdefault(r["method"], r)
  crops, columns = {}, None
  for level, folder in eval_dirs.items():
    at = pick_crop(folder, crop)
    d = fileio.read_scene(at["scene"])
    sl = np.s_[at["y"]:at["y"] + at["size"], at["x"]:at["x"] + at["size"]]
    gt = d["gt"][sl]
    tiles = {"short": d["frames"][0][sl], "medium": d["frames"][1][sl], "long": d["frames"][2][sl],
             "merge": metrics_log.tonemap_for_display(merge_exposures(d["frames"], d["exposures"])[sl], gt)}
    for method, r in first_seed.items():
      tiles[method] = metrics_log.tonemap_for_display(model_prediction(r["workdir"], at["scene"], r["overrides"])[sl],
                                                      gt)
    tiles["target"] = metrics_log.tonemap_for_display(gt, gt)
    crops[f"{level} {at['id']}"] = {k: np.asarray(v, np.float32) for k, v in tiles.items()}
    columns = list(tiles)
  return crops, columns


def summarise(runs: list[dict], baselines: dict) -> dict:
  """``{method: {level: {metric: [mean, std, n]}}}`` (std over seeds, ddof 0)."""
  table = {label: {level: {k: [by[name][k], 0.0, 1] for k in METRICS} for level, by in baselines.items()}
           for name, label in (("medium", "medium frame"), ("merge", "classical merge"))}
  methods = []
  for r in runs:
    if r["method"] not in methods:
      methods.append(r["method"])
  for m in methods:
    rs = [r for r in runs if r["method"] == m]
    table[m] = {level: {k: [float(np.mean(vals)), float(np.std(vals)), len(vals)]
                        for k in METRICS if k in rs[0]["levels"][level] for vals in [[r["levels"][level][k] for r in rs]]}
                for level in rs[0]["levels"]}
    table[m]["params"] = rs[0]["params"]
    table[m]["lr"] = rs[0]["learning_rate"]
    if rs[0]["train_seconds"] is not None:
      table[m]["train_seconds"] = float(np.mean([r["train_seconds"] for r in rs]))
  return table


def markdown(report: dict) -> str:
  s = report["setup"]
  ldae = (f"; vam_drdb + l-DAE: {s['ldae_steps']} l-DAE steps + {s['steps'] - s['ldae_steps']} fine-tuning steps"
          if "vam_drdb_ldae" in s["models"] else "")
  lines = [f"# Quality benchmark ({s['date']})", "",
           f"Training: {s['steps']} steps, batch {s['batch']} of {s['size']}x{s['size']} patches "
           f"({s['crops_per_scene']} per scene read), embedded {_train_data(s)} ({s['train_scenes']} scenes of "
           f"{s['train_size']}x{s['train_size']}), model widths: {s['widths']}, each model with its config's optimiser "
           f"(lr column), seeds {s['seeds']}{ldae}. Evaluation: {s['eval_scenes']} scenes of "
           f"{s['eval_hw'][0]}x{s['eval_hw'][1]} per level from {len(s['hdr'])} held-out radiance maps "
           f"({', '.join(Path(p).name for p in s['hdr'])}); "
           + "; ".join(f"{lv} = {kw}" for lv, kw in s["levels"].items()) + ". "
           f"Machine: {s['machine']}.", "",
           *(["Rows named `config:...` trained as their config file is written (its own steps, batch, "
              "patch size and widths, changed only in the seed and, where training maps are named above, "
              "those), `pretrained:...` rows are shipped models scored as they are, and an `..., its estimate` "
              "row is the deterministic estimate that the model above it refines.", ""] if any(":" in m for m in s["models"]) else []),
           "Mean ± std over seeds (population std). PSNR in dB (official NTIRE arithmetic), SSIM on the "
           "mu-tonemapped (SSIM-mu) and gamma-domain (SSIM-L) images. 'train s' is the wall time of the trainer "
           "(compilation and its own validation included).", ""]
  head = (["method", "params", "lr"] + [f"{lv} {m}" for lv in s["levels"] for m in ("PSNR-mu", "PSNR-L", "SSIM-mu")]
          + ["train s"])
  lines += ["| " + " | ".join(head) + " |", "|" + " --- |" * len(head)]

  def cell(v, digits):
    if v is None:
      return "-"
    mean, std, n = v
    return f"{mean:.{digits}f}" if n == 1 else f"{mean:.{digits}f} ± {std:.{digits}f}"

  for method, row in report["table"].items():
    cells = [method, f"{row['params']:,}" if row.get("params") else "-", f"{row['lr']:g}" if "lr" in row else "-"]
    for lv in s["levels"]:
      cells += [cell(row[lv]["psnr_mu"], 2), cell(row[lv]["psnr_l"], 2), cell(row[lv].get("ssim_mu"), 4)]
    cells.append(f"{row['train_seconds']:.0f}" if "train_seconds" in row else "-")
    lines.append("| " + " | ".join(cells) + " |")
  if report["notes"]:
    lines += ["", "Notes:", ""] + [f"- {n}" for n in report["notes"]]
  lines += ["", f"Figure: `{report['figure']}` (rows: levels; columns: inputs, merge, each method at seed "
            f"{s['seeds'][0]}, target; crop where the classical merge is worst)." if report.get("figure") else ""]
  return "\n".join(lines) + "\n"


def _train_data(setup) -> str:
  files = setup.get("train_hdr") or []
  if not files:
    return "procedural data"
  return f"data synthesised from {len(files)} radiance maps ({', '.join(Path(p).name for p in files)})"


def _machine() -> str:
  import jax

  d = jax.devices()[0]
  return f"{d.device_kind} ({d.platform}), {platform.node()}, jax {jax.__version__}"


def write_report(args, runs, baselines, notes, figure=None) -> dict:
  from hdr_jax import fileio

  report = {"setup": {"date": datetime.date.today().isoformat(), "machine": _machine(), "steps": args.steps,
                      "size": args.size, "batch": args.batch, "crops_per_scene": args.crops_per_scene,
                      "seeds": args.seeds, "models": args.models,
                      "widths": args.widths, "train_scenes": args.train_scenes, "train_size": args.train_size,
                      "ldae_steps": max(1, round(args.steps * args.ldae_fraction)), "eval_hw": list(args.eval_hw),
                      "eval_scenes": len(args.hdr) * args.scenes_per_hdr, "hdr": [str(p) for p in args.hdr],
                      "train_hdr": [str(p) for p in args.train_hdr],
                      "levels": args.levels, "command": sys.argv},
            "baselines": baselines, "table": summarise(runs, baselines), "runs": runs, "notes": notes,
            "figure": str(figure) if figure else None}
  fileio.atomic_write_bytes(args.out / "quality.json", json.dumps(report, indent=2).encode())
  fileio.atomic_write_bytes(args.out / "quality.md", markdown(report).encode())
  return report


# --------------------------------------------------------------------------------------------------


def available(model: str) -> str | None:
  """None when ``model`` can run here, else why not."""
  from hdr_jax import tasks

  try:
    if model.startswith("pretrained:"):
      from hdr_jax import pretrained

      pretrained.path(split_entry(model)[1])
      return None
    config = as_configured(model, None, 0) if model.startswith("config:") else load_config(CONFIGS[model])
    tasks.get_task(config)
  except Exception as e:  # configs/tasks still being written by others
    return f"{type(e).__name__}: {e}"
  return None


def parse_args(argv):
  p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  p.add_argument("--hdr", nargs="+", required=True, type=Path, help="held-out radiance maps (.exr/.hdr)")
  p.add_argument("--train_hdr", nargs="*", default=[], type=Path,
                 help="radiance maps to synthesise the training scenes from (default: procedural scenes); "
                      "none of them may be one of --hdr")
  p.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "out" / "quality")
  p.add_argument("--models", default="ahdrnet,vam,vam_drdb,vam_drdb_ldae,gan,ddpm",
                 help=f"comma-separated, from {','.join(MODELS)}")
  p.add_argument("--seeds", default=None, help="comma-separated training seeds (default 0,1,2)")
  p.add_argument("--steps", type=int, default=None, help="training steps per model (default 200)")
  p.add_argument("--size", type=int, default=None, help="training patch size, a multiple of 8 (default 64)")
  p.add_argument("--batch", type=int, default=None, help="batch size (default 8)")
  p.add_argument("--crops_per_scene", type=int, default=1, help="training patches per decoded scene (default 1)")
  p.add_argument("--train_scenes", type=int, default=None, help="embedded training scenes (default 32)")
  p.add_argument("--train_size", type=int, default=None, help="embedded training frame size (default 2 * size)")
  p.add_argument("--eval_size", default=None, help="evaluation frames HxW (default 2size x 3size)")
  p.add_argument("--scenes_per_hdr", type=int, default=None, help="evaluation scenes per radiance map (default 1)")
  p.add_argument("--eval_seed", type=int, default=1234)
  p.add_argument("--levels", default="static,hard", help=f"comma-separated evaluation levels, from {','.join(LEVELS)}")
  p.add_argument("--widths", choices=("full", "small"), default=None, help="model sizes (default full)")
  p.add_argument("--ldae_fraction", type=float, default=0.5, help="share of the steps spent on l-DAE pretraining")
  p.add_argument("--ddim_steps", type=int, default=None, help="DDIM steps of the ddpm model's fast sampler (50)")
  p.add_argument("--ddim_eta", type=float, default=1.0,
                 help="eta of that sampler (default 1: stochastic DDIM, see benchmarks/RESULTS.md)")
  p.add_argument("--crop", type=int, default=None, help="figure crop size (default 96)")
  p.add_argument("--budget", type=float, default=0, help="seconds; no new training run starts after it (0: none)")
  p.add_argument("--tiny", action="store_true", help=f"CI preset: {TINY} (explicit flags win)")
  args = p.parse_args(argv)
  defaults = dict(size=64, steps=200, batch=8, seeds="0,1,2", train_scenes=32, train_size=None, eval_size=None,
                  scenes_per_hdr=1, widths="full", ddim_steps=50, crop=96)
  for k, v in {**defaults, **(TINY if args.tiny else {})}.items():
    if getattr(args, k) is None:
      setattr(args, k, v)
  args.seeds = [int(s) for s in str(args.seeds).split(",")]
  # Comma-separated, but not inside an entry's (...) or [...] value (@data.embedded.motion_range=(0.5,3.0)).
  args.models = [m.strip() for m in re.split(r",(?![^(\[]*[)\]])", args.models) if m.strip()]
  levels = [lv.strip() for lv in args.levels.split(",") if lv.strip()]
  if not levels or set(levels) - set(LEVELS) or len(set(levels)) != len(levels):
    p.error(f"--levels: {args.levels!r}; give distinct names from {list(LEVELS)}")
  args.levels = {lv: LEVELS[lv] for lv in levels}
  unknown = sorted(m for m in set(args.models) - set(MODELS) if not m.startswith(("config:", "pretrained:")))
  if unknown:
    p.error(f"--models: unknown {unknown}; choose from {MODELS}, config:NAME[:VARIANT] or pretrained:NAME")
  for m in args.models:
    kind, name, _, _ = split_entry(m)
    if kind == "config" and not (ROOT / "configs" / f"{name}.py").is_file():
      p.error(f"--models: {m}: no configs/{name}.py")
    if kind == "pretrained":
      from hdr_jax import checkpoint, fileio, pretrained

      try:
        shared = trained_on_held_out(checkpoint.load_config(pretrained.path(name)), args.hdr)
      except fileio.DataError as e:
        p.error(f"--models: {e}")
      if shared:
        p.error(f"--models: {m} was trained on {shared}: leave them out of --hdr")
  if args.size % 8:
    p.error(f"--size must be a multiple of 8, got {args.size}")
  args.train_size = args.train_size or 2 * args.size
  args.eval_hw = tuple(int(x) for x in args.eval_size.split("x")) if args.eval_size else (2 * args.size, 3 * args.size)
  for f in [*args.hdr, *args.train_hdr]:
    if not f.is_file():
      p.error(f"{f}: no such radiance map")
  held_out = {f.resolve() for f in args.hdr}
  shared = [str(f) for f in args.train_hdr if f.resolve() in held_out]
  if shared:
    p.error(f"--train_hdr shares {shared} with the held-out --hdr maps; the evaluation set must not be trained on")
  args.train_hdr = [f.absolute() for f in args.train_hdr]
  if not 0.0 <= args.ddim_eta <= 1.0:
    p.error(f"--ddim_eta must be in [0, 1], got {args.ddim_eta}")
  if not 0 < args.ldae_fraction < 1:
    p.error("--ldae_fraction must be in (0, 1)")
  args.out = args.out.absolute()
  return args


def main(argv=None) -> int:
  args = parse_args(argv)
  args.out.mkdir(parents=True, exist_ok=True)
  from hdr_jax import cli
  cli.set_cpu_xla_flags()  # the entry points' CPU flags: the same numbers as the train CLI
  import jax
  from absl import logging

  jax.config.update("jax_compilation_cache_dir", str(args.out / "jax_cache"))  # seeds reuse compiled programs
  logging.set_verbosity(logging.WARNING)  # Orbax logs every checkpoint at INFO
  start = time.perf_counter()
  eval_dirs = make_eval_sets(args)
  baselines = scene_baselines(eval_dirs)
  notes, runs, failed = [], [], False
  models = []
  for m in args.models:
    why = available(m)
    if why:
      notes.append(f"{m}: skipped, its config or task does not load ({why})")
    else:
      models.append(m)
  write_report(args, runs, baselines, notes)
  for seed in args.seeds:
    for m in models:
      if m.startswith("pretrained:") and seed != args.seeds[0]:  # trained once: scored once
        continue
      if args.budget and time.perf_counter() - start > args.budget:
        notes.append(f"{m} seed {seed}: skipped, --budget={args.budget:.0f} s reached")
        continue
      print(f"=== quality: {m} seed {seed} ===", flush=True)
      try:
        runs += run_model(m, seed, args, eval_dirs)
      except Exception as e:
        traceback.print_exc()
        notes.append(f"{m} seed {seed}: failed ({type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''})")
        failed = failed or m in ("ahdrnet", "vam", "vam_drdb", "vam_drdb_ldae")
      write_report(args, runs, baselines, notes)
  figure = None
  if runs:
    crops, columns = figure_tiles(eval_dirs, args.crop, runs)
    figure = args.out / "quality_crops.png"
    write_figure(figure, crops, columns)
  report = write_report(args, runs, baselines, notes, figure)
  print(markdown(report))
  print(f"wrote {args.out / 'quality.md'}, {args.out / 'quality.json'}" + (f", {figure}" if figure else ""))
  return 1 if failed else 0


if __name__ == "__main__":
  sys.exit(main())
