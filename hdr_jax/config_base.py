"""Defaults shared by every config in ``configs/``; each config file starts from :func:`get_base_config`.

Every key can be overridden on the command line: ``--config.batch_size=16 --config.data.root=/data/train``.
"""

from __future__ import annotations

import ast
import importlib.util
from pathlib import Path

import ml_collections
from ml_collections import config_dict


def get_base_config() -> ml_collections.ConfigDict:
  c = ml_collections.ConfigDict()
  c.task = "regression"  # regression | gan | diffusion | ldae
  c.seed = 0
  c.batch_size = 8  # global batch (all processes and devices together)
  c.num_train_steps = 1000
  c.log_every = 50
  c.eval_every = 500
  c.checkpoint_every = 500
  c.keep_checkpoints = 3  # the last N checkpoints are kept, plus the best by validation PSNR-mu
  c.dtype = "float32"  # computation dtype: float32 | bfloat16 (parameters and optimiser stay float32)
  c.distributed = "auto"  # auto: jax.distributed.initialize() when a multi-process environment is detected
  c.progress = True  # progress bar with rate and ETA
  c.nan_check = True  # stop with a clear message on a NaN/inf loss, before any checkpoint of it
  # Persistent XLA compilation cache: auto (GPU/TPU: $HDR_JAX_CACHE/xla or ~/.cache/hdr_jax/xla; CPU: off),
  # '' (off) or a directory. A restarted run loads its compiled programs instead of recompiling them.
  c.compilation_cache = "auto"

  # Data. Training: data.prepared, else data.root, else the embedded dataset (synthesised once into
  # data.cache_dir). Validation: data.val_root, else data.root, else the embedded validation set.
  c.data = ml_collections.ConfigDict()
  # Layout and protocol of the data: auto (detected from the folders), ntire, or sig17 (Kalantari 2017:
  # gamma 2.2, stops from the short frame, linear labels, the SIG17 metrics; docs/sig17.md).
  c.data.protocol = "auto"
  c.data.root = config_dict.placeholder(str)  # training folder (NTIRE: NNNN_short.png, ...; or SIG17)
  c.data.val_root = config_dict.placeholder(str)  # NTIRE validation folder (with NNNN_gt.png)
  # Training data prepared once: a tiles folder (`python -m hdr_jax.tiles`) or an ArrayRecord data_dir
  # (`python -m hdr_jax.tfds_ntire`).
  c.data.prepared = config_dict.placeholder(str)
  c.data.patch_size = 256
  c.data.num_workers = 0  # grain worker processes (0: in-process)
  c.data.crops_per_scene = 1  # patches cut from each decoded scene (>1 divides the decoding cost per patch)
  c.data.cache_dir = config_dict.placeholder(str)  # default: $HDR_JAX_CACHE or ~/.cache/hdr_jax
  c.data.embedded = ml_collections.ConfigDict()
  c.data.embedded.train_scenes = 64
  c.data.embedded.val_scenes = 4
  c.data.embedded.height = 256
  c.data.embedded.width = 256
  c.data.embedded.val_height = 256
  c.data.embedded.val_width = 384
  c.data.embedded.seed = 0
  c.data.embedded.hdr_files = ()  # real radiance maps (.exr/.hdr) to build scenes from
  # Per-scene variety of the training scenes (the validation scenes keep the default motion and noise):
  # a share without any motion, a motion scale drawn from (low, high), a noise scale drawn from
  # (low, high) log-uniformly; () and 0 keep the defaults (motion and noise scale 1).
  c.data.embedded.static_fraction = 0.0
  c.data.embedded.motion_range = ()
  c.data.embedded.noise_range = ()

  # Evaluation on whole validation frames.
  c.eval = ml_collections.ConfigDict()
  c.eval.max_scenes = 0  # 0: all validation scenes
  c.eval.preview_scenes = 2  # tone-mapped preview images written per evaluation

  c.model = ml_collections.ConfigDict()
  c.model.name = "ahdrnet"

  c.optimizer = ml_collections.ConfigDict()
  c.optimizer.name = "adam"  # adam | adamw
  c.optimizer.learning_rate = 1e-4
  c.optimizer.b1 = 0.9
  c.optimizer.b2 = 0.999
  c.optimizer.eps = 1e-8
  c.optimizer.weight_decay = 0.0
  c.optimizer.schedule = "step"  # step (x decay_factor after decay_at * steps) | cosine | constant
  c.optimizer.decay_at = 0.8
  c.optimizer.decay_factor = 0.1
  c.optimizer.warmup_steps = 0
  c.optimizer.grad_clip = 0.0  # global-norm clipping; 0 disables

  c.init = ml_collections.ConfigDict()
  c.init.feature_extractor = config_dict.placeholder(str)  # workdir of an l-DAE pretraining run
  return c


def set_tiny(c: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
  """The run that the ``:tiny`` variants of ``configs/`` share (tests, quick checks): batches of 2
  patches of 32x32 from a tiny embedded dataset (4 training scenes of 48x64, 2 validation scenes of
  40x56), a log line every step, no progress bar. Each config shrinks its own model."""
  c.batch_size = 2
  c.data.patch_size = 32
  c.data.embedded.update(train_scenes=4, val_scenes=2, height=48, width=64, val_height=40, val_width=56)
  c.log_every = 1
  c.progress = False
  return c


def load_config_file(path, arg: str = "") -> ml_collections.ConfigDict:
  """``get_config()`` (``get_config(arg)`` for a variant, as ``configs/gan.py:vam``) of a config file
  (``configs/<name>.py``), loaded by path as the trainer does."""
  path = Path(path)
  if not path.is_file():
    raise FileNotFoundError(f"{path} does not exist")
  spec = importlib.util.spec_from_file_location(f"_hdr_jax_config_{path.stem}", path)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module.get_config(arg) if arg else module.get_config()


_TRUE, _FALSE = ("true", "1", "yes"), ("false", "0", "no")


def _typed(node, key: str, value, name: str):  # name: the override as written, for errors
  """``value`` for the existing field ``node[key]``, read as the trainer's ``--config.KEY=VALUE`` reads
  it: text for a bool (``true``/``False``/``1``...), a number or a tuple is converted to the field's
  type, an int given for a float is a float; anything else is left to the ConfigDict's own type check."""
  kind = node.get_ref(key).get_type()
  if isinstance(value, str) and kind is bool:
    if value.lower() not in _TRUE + _FALSE:
      raise ValueError(f"{name}: expected true or false")
    return value.lower() in _TRUE
  if isinstance(value, str) and kind in (int, float):
    try:
      return kind(value)
    except ValueError:
      raise ValueError(f"{name}: expected {'an integer' if kind is int else 'a number'}") from None
  if isinstance(value, str) and kind in (tuple, list):
    try:
      parsed = ast.literal_eval(value)
    except (ValueError, SyntaxError):
      raise ValueError(f"{name}: expected a {kind.__name__} such as (1, 2) or ('a', 'b')") from None
    return kind(parsed) if isinstance(parsed, (tuple, list)) else kind((parsed,))
  if isinstance(value, list) and kind is tuple:
    return tuple(value)
  if isinstance(value, int) and not isinstance(value, bool) and kind is float:
    return float(value)
  return value


# Sections whose keys are a model builder's keyword arguments: a config lists the ones it changes and the
# builder defaults the rest (models.build_model), so any of them may be added.
OPEN_SECTIONS = ("model", "estimator")


def _literal(value):
  """A value for a key added to an open section: a Python literal where the text is one, else the text."""
  if not isinstance(value, str):
    return value
  try:
    return ast.literal_eval(value)
  except (ValueError, SyntaxError):
    return value


def apply_overrides(config, overrides: dict | None):
  """Sets dotted keys (``{"model.gamma": 2.2}``) on a ConfigDict: the ``--config.KEY=VALUE`` of the
  programs that load a workdir's or a shipped model's config, read as the trainer reads it (values for
  an existing field take its type: :func:`_typed`). A key the config lacks is added in an
  :data:`OPEN_SECTIONS` section (a model builder's argument) and is an error naming the settings there
  are anywhere else; so is a value of the wrong type."""
  for k, v in (overrides or {}).items():
    *path, last = k.split(".")
    name = f"--config.{k}={v}"  # as written on the command line (the value as parsed)
    node = config
    try:
      for i, p in enumerate(path):
        if isinstance(node, ml_collections.ConfigDict) and p not in node:
          raise ValueError(f"{name}: no such setting ({'.'.join(path[:i + 1])} is not in the config)")
        node = node[p]
      if not isinstance(node, ml_collections.ConfigDict):
        raise ValueError(f"{name}: {'.'.join(path)} is not a group of settings")
      if last in node:
        if isinstance(node[last], ml_collections.ConfigDict):
          example = next(iter(node[last]), "...")
          raise ValueError(f"{name}: {k} is a group of settings; set its fields ({k}.{example}=...)")
        node[last] = _typed(node, last, v, name)
      elif path and path[0] in OPEN_SECTIONS:
        node[last] = _literal(v)
      else:
        raise ValueError(f"{name}: no such setting (the settings of {'.'.join(path) or 'the config'} are "
                         f"{', '.join(sorted(node))})")
    except (KeyError, AttributeError, TypeError) as e:
      raise ValueError(f"{name}: {e}") from None
  return config
