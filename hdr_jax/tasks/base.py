"""What the one trainer needs from a model family.

A task owns a *bundle*: one ``nnx.Module`` holding every network and optimiser of the family (for
regression a model and its optimiser; for a GAN two of each; for diffusion also EMA weights). The
trainer splits the bundle into ``(graphdef, state)``, replicates the state over the device mesh,
and calls the task's pure methods inside ``jax.jit``:

* ``train_step(bundle, batch, key) -> dict of scalar metrics`` updates the bundle in place;
* ``predict(bundle, frames, exposures, key) -> gamma-domain HDR (B, H, W, 3)``;
* where ``has_estimate`` is true (a DDPM refining a deterministic estimate),
  ``predict_estimate(bundle, frames, exposures)`` -> that estimate, gamma-domain HDR (B, H, W, 3).

Outside any trace, the trainer calls ``prepare(train_dir)`` once, with the resolved training data, before
the bundle is built (a task that derives fixed statistics from the data, as l-DAE its PCA, fits them
there), and copies a pretrained feature extractor (``config.init.feature_extractor``) to the bundle paths
the task declares in ``feature_extractor_paths``. A task never sees the Engine.

``batch`` arrives on device with ``frames`` as float32 in [0, 1] ``(B, 3, P, P, 3)``, ``exposures``
``(B, 3)`` and ``gt`` gamma-domain ``(B, P, P, 3)``.
"""

from __future__ import annotations

import optax
from flax import nnx

from hdr_jax import models


def make_schedule(opt_cfg, num_steps: int):
  lr = opt_cfg.learning_rate
  if opt_cfg.schedule == "constant":
    sched = optax.constant_schedule(lr)
  elif opt_cfg.schedule == "step":
    boundary = max(1, int(opt_cfg.decay_at * num_steps))
    sched = optax.piecewise_constant_schedule(lr, {boundary: opt_cfg.decay_factor})
  elif opt_cfg.schedule == "cosine":
    sched = optax.cosine_decay_schedule(lr, max(1, num_steps - opt_cfg.warmup_steps))
  else:
    raise ValueError(f"config.optimizer.schedule: unknown schedule {opt_cfg.schedule!r} (step, cosine, constant)")
  if opt_cfg.warmup_steps:
    sched = optax.join_schedules(
        [optax.linear_schedule(0.0, lr, opt_cfg.warmup_steps), sched], [opt_cfg.warmup_steps])
  return sched


def make_optimizer(opt_cfg, num_steps: int) -> optax.GradientTransformation:
  """The optax optimiser and schedule described by ``config.optimizer``."""
  sched = make_schedule(opt_cfg, num_steps)
  if opt_cfg.name == "adam":
    tx = optax.adam(sched, b1=opt_cfg.b1, b2=opt_cfg.b2, eps=opt_cfg.eps)
  elif opt_cfg.name == "adamw":
    tx = optax.adamw(sched, b1=opt_cfg.b1, b2=opt_cfg.b2, eps=opt_cfg.eps, weight_decay=opt_cfg.weight_decay)
  else:
    raise ValueError(f"config.optimizer.name: unknown optimiser {opt_cfg.name!r} (adam, adamw)")
  if opt_cfg.grad_clip:
    tx = optax.chain(optax.clip_by_global_norm(opt_cfg.grad_clip), tx)
  return tx


class Task:
  """Base class; subclasses implement ``create``, ``train_step`` and ``predict``."""

  # Metric used to pick the best checkpoint (higher is better).
  best_metric = "psnr_mu"
  # Whether predict refines a deterministic estimate that predict_estimate returns (scored beside it).
  has_estimate = False
  # Whether prepare needs the training data (l-DAE's PCA): a tool that builds the bundle outside the
  # trainer (a benchmark) then resolves the data and calls prepare as the trainer does.
  prepares_from_data = False
  # Where a pretrained feature extractor (config.init.feature_extractor, hdr_jax.pretrain) is copied: paths
  # into the bundle's state. Empty: the task takes none (feature_extractor_refusal says why).
  feature_extractor_paths: tuple[tuple[str, ...], ...] = ()

  def __init__(self, config):
    self.config = config
    self.dtype = models.get_dtype(config.dtype)

  def prepare(self, train_dir) -> None:
    """Host-side set-up from the training data, run once by the trainer before any bundle is built
    (outside any trace): ``train_dir`` is the resolved training folder (:func:`hdr_jax.data.resolve_data`;
    None when ``config.data.prepared`` is set; :func:`hdr_jax.data.train_source` opens either). A bundle
    built without it (restored from a checkpoint: evaluate, predict) must still have the same structure.
    The default needs nothing."""
    del train_dir

  def create(self, key) -> nnx.Module:
    raise NotImplementedError

  def train_step(self, bundle, batch, key) -> dict:
    raise NotImplementedError

  def predict(self, bundle, frames, exposures, key):
    raise NotImplementedError

  def predict_estimate(self, bundle, frames, exposures):
    raise NotImplementedError(f"task {self.config.task!r} has no deterministic estimate")

  def receptive_radius(self, bundle) -> int | None:
    """The halo (pixels) that makes a prediction in tiles equal the whole-frame one, or None when
    ``predict`` is not translation-local (image-wide statistics, attention, GroupNorm, noise drawn
    for the whole frame): such a task predicts whole frames only (``hdr_jax.tiling``)."""
    del bundle
    return None

  def build_model(self, model_cfg, key) -> nnx.Module:
    return models.build_model(model_cfg, self.config.dtype, rngs=nnx.Rngs(params=key))

  def param_state(self, bundle) -> nnx.State:
    """The trainable parameters (counted and reported by the trainer)."""
    return nnx.state(bundle, nnx.Param)

  def on_metrics(self, step: int, scalars: dict) -> None:
    """Host-side hook called with the averaged training metrics at every log step."""

  @property
  def feature_extractor_refusal(self) -> str:
    """Why this task (as configured) takes no pretrained feature extractor (``feature_extractor_paths`` empty)."""
    return f"task {self.config.task!r} cannot start from a pretrained feature extractor"

  def lr(self, step):
    return make_schedule(self.config.optimizer, self.config.num_train_steps)(step)
