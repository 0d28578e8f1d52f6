"""Conditional DDPM for HDR reconstruction through the shared trainer (docs/reference.md, Conditional DDPM).

The bundle holds the U-Net noise predictor (``model``), its optimiser (``opt``) and an exponential
moving average of its weights (``ema``: a copy of the network whose variables are :class:`EmaParam`,
so the EMA is checkpointed with the bundle but neither trained nor counted as parameters).

* ``train_step``: ``x0 = diffusion.hdr_to_x0(gt, exposures)`` (mu-law of radiance over the short
  frame's maximum, in [-1, 1]); ``t ~ U{0..T-1}``, ``x_t = q_sample(x0, t, noise)``; MSE between the
  network output and ``eps`` (or ``v``); Adam step; EMA update with decay
  ``min(ema_decay, (1 + n) / (10 + n))`` after ``n`` steps (``diffusion.ema_warmup``).
* ``predict``: the EMA network (``sampler.use_ema``), conditioning features computed once per tile,
  the configured sampler (``ddim``/``ddpm``) as one compiled loop over overlapping tiles
  (``sampler.tile_size``, ``tile_overlap``, ``tile_batch``), mapped back to gamma-domain HDR.
  Unconditional models (``model.conditional=False``) use the frames only for their size.

Residual mode (``diffusion.estimate`` = ``'merge'`` or ``'network'``; ``'none'`` diffuses the image
itself): a deterministic estimate ``e`` of the image comes first, the classical exposure merge
(``hdr_math.merge_exposures``) or a regression network trained jointly with its own loss and
optimiser (``config.estimator``: any regression model's ``model.*`` settings, by default an AHDRNet with the
merge head; ``config.estimator_optimizer``, else ``config.optimizer``).
The DDPM then diffuses the residual ``x0 = residual_scale * (hdr_to_x0(gt) - linear_to_x0(e))`` with
the U-Net conditioned on ``e`` as well as on the frames (``model.cond_estimate``, set here), and the
prediction is ``x0_to_hdr(linear_to_x0(e) + sample / residual_scale)``. With ``prediction='x0'`` and
the U-Net's zero-initialised output layer, an untrained DDPM returns the estimate exactly.
``predict_estimate`` gives ``e`` alone, which evaluation scores beside the sample.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import optax
from flax import nnx

from hdr_jax import diffusion, hdr_math
from hdr_jax.tasks.base import Task, make_optimizer

ESTIMATES = ("none", "merge", "network")


class EmaParam(nnx.Variable):
  """Exponential moving average of an ``nnx.Param``."""


def ema_copy(model: nnx.Module) -> nnx.Module:
  """A copy of ``model`` whose ``nnx.Param`` variables are :class:`EmaParam` (same values)."""
  graphdef, state = nnx.split(model)
  state = jax.tree.map(lambda v: EmaParam(jnp.copy(v.get_value())) if isinstance(v, nnx.Param) else v, state,
                       is_leaf=lambda v: isinstance(v, nnx.Variable))
  return nnx.merge(graphdef, state)


def ema_update(ema: nnx.Module, model: nnx.Module, decay) -> None:
  """``ema <- ema + (1 - decay) (params - ema)`` in place."""
  ema_state = nnx.state(ema, EmaParam)
  new = jax.tree.map(lambda e, p: e + (1.0 - decay) * (p - e), ema_state.to_pure_dict(),
                     nnx.state(model, nnx.Param).to_pure_dict())
  nnx.replace_by_pure_dict(ema_state, new)
  nnx.update(ema, ema_state)


class DiffusionBundle(nnx.Module):
  def __init__(self, model: nnx.Module, tx: optax.GradientTransformation, estimator: nnx.Module | None = None,
               estimator_tx: optax.GradientTransformation | None = None):
    self.model = model
    self.opt = nnx.Optimizer(model, tx, wrt=nnx.Param)
    self.ema = ema_copy(model)
    self.estimator = estimator
    self.estimator_opt = None if estimator is None else nnx.Optimizer(estimator, estimator_tx, wrt=nnx.Param)


class DiffusionTask(Task):

  def __init__(self, config):
    super().__init__(config)
    d = config.diffusion
    if d.prediction not in diffusion.PREDICTIONS:
      raise ValueError(f"config.diffusion.prediction: unknown {d.prediction!r}; choose one of "
                       f"{diffusion.PREDICTIONS}")
    if config.sampler.name not in diffusion.SAMPLERS:
      raise ValueError(f"config.sampler.name: unknown sampler {config.sampler.name!r}; choose one of "
                       f"{diffusion.SAMPLERS}")
    if not 0.0 <= float(config.sampler.eta) <= 1.0:
      raise ValueError(f"config.sampler.eta must be in [0, 1] (0: deterministic DDIM, 1: DDIM with the "
                       f"ancestral noise level), got {config.sampler.eta}")
    self.schedule = diffusion.schedule_from_config(d)
    diffusion.sampling_plan(config.sampler.name, d.timesteps, config.sampler.steps)  # validates steps
    self.conditional = bool(config.model.get("conditional", True))
    self.estimate = d.get("estimate", "none")
    if self.estimate not in ESTIMATES:
      raise ValueError(f"config.diffusion.estimate: unknown {self.estimate!r}; choose one of {ESTIMATES}")
    if self.estimate != "none" and not self.conditional:
      raise ValueError(f"config.diffusion.estimate={self.estimate!r} needs a conditional model "
                       "(config.model.conditional=True); use estimate='none' for unconditional generation")
    if self.estimate == "network" and "estimator" not in config:
      raise ValueError("config.diffusion.estimate='network' needs config.estimator (a regression model's "
                       "model settings, e.g. name='ahdrnet', output_head='merge')")
    self.has_estimate = self.estimate != "none"
    self.residual_scale = float(d.get("residual_scale", 1.0))
    if self.residual_scale <= 0:
      raise ValueError(f"config.diffusion.residual_scale must be positive, got {self.residual_scale}")

  @property
  def feature_extractor_paths(self):
    """A pretrained feature extractor (``config.init.feature_extractor``, an l-DAE or any HDR-VAM workdir)
    starts the conditioning encoder's VAM+DRDB feature extractor, in the network and in its EMA copy
    (``model.encoder.fe``, ``ema.encoder.fe``); the U-Net and the encoder's projection stay as initialised.
    The encoder's stem (``model.cond_vam_drdb``) must match the pretrained one. Empty without that encoder."""
    if self.conditional and self.config.model.get("cond_encoder", "vam_drdb") == "vam_drdb":
      return (("model", "encoder", "fe"), ("ema", "encoder", "fe"))
    return ()

  @property
  def feature_extractor_refusal(self) -> str:
    return (f"needs the VAM+DRDB conditioning encoder (model.conditional=True, model.cond_encoder='vam_drdb'); "
            f"this config has conditional={self.conditional}, cond_encoder={self.config.model.get('cond_encoder')!r}")

  def create(self, key) -> DiffusionBundle:
    c = self.config
    model_cfg = dict(c.model, cond_estimate=self.has_estimate)
    model = self.build_model(model_cfg, key)
    estimator = estimator_tx = None
    if self.estimate == "network":
      estimator = self.build_model(c.estimator, jax.random.fold_in(key, 1))
      estimator_tx = make_optimizer(c.get("estimator_optimizer") or c.optimizer, c.num_train_steps)
    return DiffusionBundle(model, make_optimizer(c.optimizer, c.num_train_steps), estimator, estimator_tx)

  def estimate_linear(self, bundle, frames, exposures):
    """The deterministic estimate (linear HDR, float32), or None in the plain mode."""
    if self.estimate == "merge":
      return hdr_math.merge_exposures(frames, exposures)
    if self.estimate == "network":
      bundle.estimator.eval()
      return bundle.estimator(frames, exposures).astype(jnp.float32)
    return None

  def predict_estimate(self, bundle, frames, exposures):
    """The estimate alone as gamma-domain HDR (what evaluation scores beside the sample)."""
    return hdr_math.gamma_encode(self.estimate_linear(bundle, frames, exposures))

  def train_step(self, bundle, batch, key):
    d = self.config.diffusion
    model = bundle.model
    frames, exposures = batch["frames"], batch["exposures"]
    x0 = diffusion.hdr_to_x0(batch["gt"], exposures)
    metrics = {}
    est_x0 = None
    if self.estimate == "network":
      est = bundle.estimator
      est.train()
      target = hdr_math.gamma_decode(batch["gt"])

      def est_loss_fn(m):
        pred = m(frames, exposures).astype(jnp.float32)
        return hdr_math.mu_law_l1(pred, target), pred

      (est_loss, pred), est_grads = nnx.value_and_grad(est_loss_fn, has_aux=True)(est)
      est_x0 = diffusion.linear_to_x0(pred, exposures)
      bundle.estimator_opt.update(est, est_grads)
      metrics.update(estimator_loss=est_loss, estimator_grad_norm=optax.global_norm(est_grads))
    elif self.has_estimate:  # the classical merge: nothing to train
      est_x0 = diffusion.linear_to_x0(self.estimate_linear(bundle, frames, exposures), exposures)
    if est_x0 is not None:
      est_x0 = jax.lax.stop_gradient(est_x0)
      x0 = jnp.clip(self.residual_scale * (x0 - est_x0), -1.0, 1.0)  # the range the sampler's x0 is clipped to

    def loss_fn(m):
      cond = m.encode(frames, exposures, est_x0) if self.conditional else None
      return diffusion.diffusion_loss(self.schedule, lambda x, t: m(x, t, cond), x0, key, d.prediction)

    loss, grads = nnx.value_and_grad(loss_fn)(model)
    bundle.opt.update(model, grads)
    n = bundle.opt.step[...].astype(jnp.float32)
    decay = jnp.minimum(d.ema_decay, (1.0 + n) / (10.0 + n)) if d.ema_warmup else jnp.float32(d.ema_decay)
    ema_update(bundle.ema, model, decay)
    return {"loss": loss, "grad_norm": optax.global_norm(grads), **metrics}

  def sample_x0(self, net, frames, exposures, key, est_x0=None):
    """The sampled diffusion variable ``(B, H, W, 3)`` for a batch of frames (module docstring);
    ``est_x0`` is the estimate the model conditions on in the residual mode."""
    s, d = self.config.sampler, self.config.diffusion
    b, _, h, w, _ = frames.shape
    plan = diffusion.tile_plan(h, w, s.tile_size, s.tile_overlap)
    cond_tiles = None
    if self.conditional:
      if plan.num_tiles == 1:
        cond_tiles = net.encode(frames, exposures, est_x0)[None]
      elif est_x0 is None:
        cond_tiles = jax.lax.map(lambda f: net.encode(f, exposures), diffusion.extract_tiles(frames, plan),
                                 batch_size=min(s.tile_batch, plan.num_tiles))
      else:
        cond_tiles = jax.lax.map(lambda fe: net.encode(fe[0], exposures, fe[1]),
                                 (diffusion.extract_tiles(frames, plan), diffusion.extract_tiles(est_x0, plan)),
                                 batch_size=min(s.tile_batch, plan.num_tiles))
    den = diffusion.tiled(lambda x, t, c: net(x, t, c), plan, h, w, s.tile_batch)
    return diffusion.sample(lambda x, t: den(x, t, cond_tiles), self.schedule, (b, h, w, 3), key,
                            sampler=s.name, steps=s.steps, eta=s.eta, prediction=d.prediction,
                            clip_x0=s.clip_x0)

  def predict(self, bundle, frames, exposures, key):
    net = bundle.ema if self.config.sampler.use_ema else bundle.model
    est = self.estimate_linear(bundle, frames, exposures)
    if est is None:
      return diffusion.x0_to_hdr(self.sample_x0(net, frames, exposures, key), exposures)
    est_x0 = diffusion.linear_to_x0(est, exposures)
    residual = self.sample_x0(net, frames, exposures, key, est_x0)
    return diffusion.x0_to_hdr(est_x0 + residual / self.residual_scale, exposures)
