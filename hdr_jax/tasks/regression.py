"""Regression training (AHDRNet, HDR-VAM, VAM+DRDB): the papers' mu-law L1 loss on linear HDR."""

from __future__ import annotations

import jax.numpy as jnp
import optax
from flax import nnx

from hdr_jax import hdr_math
from hdr_jax.tasks.base import Task, make_optimizer


class RegressionBundle(nnx.Module):
  def __init__(self, model: nnx.Module, tx: optax.GradientTransformation):
    self.model = model
    self.opt = nnx.Optimizer(model, tx, wrt=nnx.Param)


def set_mode(module: nnx.Module, train: bool) -> None:
  """Switches BatchNorm-style layers between batch and running statistics."""
  module.train() if train else module.eval()


class RegressionTask(Task):
  # config.init.feature_extractor: an l-DAE (or any HDR-VAM) workdir's model.fe starts this model.fe.
  feature_extractor_paths = (("model", "fe"),)

  def create(self, key) -> RegressionBundle:
    model = self.build_model(self.config.model, key)
    return RegressionBundle(model, make_optimizer(self.config.optimizer, self.config.num_train_steps))

  def train_step(self, bundle, batch, key):
    del key
    model = bundle.model
    set_mode(model, True)
    target = hdr_math.gamma_decode(batch["gt"])

    def loss_fn(m):
      pred = m(batch["frames"], batch["exposures"]).astype(jnp.float32)
      return hdr_math.mu_law_l1(pred, target)

    loss, grads = nnx.value_and_grad(loss_fn)(model)
    bundle.opt.update(model, grads)
    return {"loss": loss, "grad_norm": optax.global_norm(grads)}

  def predict(self, bundle, frames, exposures, key):
    del key
    model = bundle.model
    set_mode(model, False)
    return hdr_math.gamma_encode(model(frames, exposures).astype(jnp.float32))

  def receptive_radius(self, bundle) -> int | None:
    """The model's own ``receptive_radius()`` (AHDRNet); None for a model without one (HDR-VAM's
    Otsu masks threshold the whole frame, so it is not translation-local)."""
    radius = getattr(bundle.model, "receptive_radius", None)
    return radius() if callable(radius) else None
