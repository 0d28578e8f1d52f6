"""Trained models shipped inside the package, usable without training.

Each model is a folder here laid out like a training workdir (``config.json`` and one Orbax checkpoint
under ``checkpoints/<step>/``) with a ``MODEL.json`` card: what it was trained on, the command that
retrains it and its held-out scores. ``python -m hdr_jax.predict --pretrained=NAME`` and
:func:`load` use them; :func:`available` lists them.
"""

from __future__ import annotations

import json
from pathlib import Path

from hdr_jax import fileio

ROOT = Path(__file__).resolve().parent
CARD = "MODEL.json"


def available() -> list[str]:
  """Names of the shipped models (folders holding a model card)."""
  return sorted(p.name for p in ROOT.iterdir() if (p / CARD).is_file())


def path(name: str) -> Path:
  """The workdir of the shipped model ``name``; a ``DataError`` listing the available ones otherwise."""
  names = available()
  if name not in names:
    raise fileio.DataError(f"--pretrained={name}", f"no such shipped model; available: {', '.join(names) or 'none'}")
  return ROOT / name


def card(name: str) -> dict:
  """The model card of ``name`` (training data, retraining command, held-out scores)."""
  return json.loads((path(name) / CARD).read_text())


def load(name: str, overrides: dict | None = None):
  """``(config, engine, state, step)`` of the shipped model ``name``, as ``engine.load_from_workdir``."""
  from hdr_jax import cli
  from hdr_jax import engine as engine_lib

  return engine_lib.load_from_workdir(path(name), "latest", overrides, prepare=cli.use_compilation_cache)


def export(workdir, name: str, card: dict, step: int | None = None) -> Path:
  """Copies a training run's checkpoint (``step``, default the latest) and config into the package as
  the shipped model ``name``, with its model ``card``. Paths in the config that only meant something on
  the training machine are cut to file names (radiance maps) or cleared (data folders, caches)."""
  import shutil

  from hdr_jax import checkpoint

  src = fileio.workdir_path(workdir)
  config = checkpoint.load_config(src)
  ckpts = checkpoint.Checkpoints(src, read_only=True)
  step = ckpts.latest_step() if step is None else int(step)
  ckpts.close()
  if step is None:
    raise fileio.DataError(src, "no checkpoint to export")

  def local_paths_cut(cfg: dict) -> dict:
    data = dict(cfg["data"], root=None, val_root=None, prepared=None, cache_dir=None)
    data["embedded"] = dict(data["embedded"], hdr_files=[Path(p).name for p in data["embedded"]["hdr_files"]])
    return dict(cfg, data=data, compilation_cache="auto")

  out = ROOT / name
  if out.exists():
    shutil.rmtree(out)
  # The checkpoint's own copy of the config names the training machine's paths too.
  checkpoint.copy_step(src, step, out,
                       edit_meta=lambda m: dict(m, config=local_paths_cut(m["config"])) if "config" in m else m)
  config = local_paths_cut(json.loads(config.to_json_best_effort()))
  (out / checkpoint.CONFIG_FILE).write_text(json.dumps(config, indent=2))
  (out / CARD).write_text(json.dumps({"name": name, "step": step, **card}, indent=2))
  return out
