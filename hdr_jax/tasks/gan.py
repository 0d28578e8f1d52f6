"""Conditional GAN for HDR reconstruction through the shared trainer (docs/reference.md, Conditional GAN).

The bundle holds the generator (``model``: any regression network of the registry, ``model.name``
with the other ``model.*`` keys as its arguments), the PatchGAN discriminator (``disc``, built from
``disc.*``) and one optimiser for each (``opt`` from ``optimizer.*``, ``disc_opt`` from
``disc_optimizer.*``), so one Orbax checkpoint holds all four and resume is exact.

The discriminator sees ``mu_tonemap(linear / max_radiance(exposures))`` in [0, 1], the real one
from the ground truth and the fake one from the generator, concatenated with the reference
(medium) frame when conditional. Losses (H the binary cross-entropy on logits, means over patches
and batch):

* ``L_D = H(1, D(x)) + H(0, D(G))``;
* ``L_G = adv_weight * L_adv + recon_weight * mu_law_l1(G, x)`` with ``L_adv = H(1, D(G))``
  (``gan.loss='nonsaturating'``, default) or ``L_adv = -H(0, D(G)) = log(1 - D(G))``
  (``'minimax'``, the original objective).

One ``train_step`` = ``gan.d_steps`` (k) discriminator updates, then one generator update, all on
the same batch (a Python loop, unrolled under ``jit``). The conditional generator is deterministic:
its output is computed once, before the k discriminator updates, together with its pullback
(``jax.vjp``), and the generator update pulls the gradient of ``L_G`` (through the updated
discriminator) back through that same forward pass (the same gradient as a second forward pass,
without its cost). Unconditional mode (``model.conditional=False``,
the source's setting): the generator is :class:`~hdr_jax.models.discriminator.NoiseGenerator`
(``noise_gen.*``) on Gaussian noise, drawn afresh for each of the k discriminator updates and for the
generator update; there is no pairing between noise and target, so ``L_G`` is the adversarial term
alone (``recon`` is still reported).

Metrics: ``loss`` = ``g_loss`` (the generator's total), ``g_adv``, ``recon``, ``g_grad_norm``; and,
averaged over the k discriminator updates (each measured before its update), ``d_loss``,
``d_real_acc`` / ``d_fake_acc`` (fractions of real / fake patches classified correctly, logit > 0
meaning real) and ``d_grad_norm``. ``on_metrics`` (called by the trainer at every log step) warns
once when the discriminator wins outright: ``d_real_acc`` and ``d_fake_acc`` both above
``gan.warn_acc`` for ``gan.warn_window`` consecutive log points.
"""

from __future__ import annotations

import warnings

import jax
import jax.numpy as jnp
import optax
from flax import nnx

from hdr_jax import hdr_math, models
from hdr_jax.models.discriminator import NoiseGenerator, PatchDiscriminator
from hdr_jax.tasks.base import Task, make_optimizer
from hdr_jax.tasks.regression import set_mode

LOSSES = ("nonsaturating", "minimax")


class DiscriminatorWinsWarning(UserWarning):
  """The discriminator separates real from fake almost perfectly for a sustained period."""


def discriminator_loss(real_logits, fake_logits):
  """``L_D = H(1, D(x)) + H(0, D(G))`` on logits."""
  return (jnp.mean(optax.sigmoid_binary_cross_entropy(real_logits, jnp.ones_like(real_logits)))
          + jnp.mean(optax.sigmoid_binary_cross_entropy(fake_logits, jnp.zeros_like(fake_logits))))


def generator_adv_loss(fake_logits, loss: str = "nonsaturating"):
  """``H(1, D(G))`` (non-saturating) or ``-H(0, D(G))`` (minimax: minimising ``log(1 - D(G))``)."""
  if loss == "nonsaturating":
    return jnp.mean(optax.sigmoid_binary_cross_entropy(fake_logits, jnp.ones_like(fake_logits)))
  if loss == "minimax":
    return -jnp.mean(optax.sigmoid_binary_cross_entropy(fake_logits, jnp.zeros_like(fake_logits)))
  raise ValueError(f"config.gan.loss: unknown loss {loss!r}; choose one of {LOSSES}")


def disc_input(linear, exposures):
  """What the discriminator sees: ``mu_tonemap`` of linear HDR over ``max_radiance``, in [0, 1]."""
  scale = hdr_math.max_radiance(exposures).astype(jnp.float32)[:, None, None, None]
  return hdr_math.mu_tonemap(jnp.clip(linear / scale, 0.0, 1.0))


class GanBundle(nnx.Module):
  def __init__(self, model: nnx.Module, disc: nnx.Module, tx: optax.GradientTransformation,
               disc_tx: optax.GradientTransformation):
    self.model = model
    self.disc = disc
    self.opt = nnx.Optimizer(model, tx, wrt=nnx.Param)
    self.disc_opt = nnx.Optimizer(disc, disc_tx, wrt=nnx.Param)


class GanTask(Task):

  def __init__(self, config):
    super().__init__(config)
    g = config.gan
    if g.loss not in LOSSES:
      raise ValueError(f"config.gan.loss: unknown loss {g.loss!r}; choose one of {LOSSES}")
    if int(g.d_steps) < 1:
      raise ValueError(f"config.gan.d_steps must be >= 1, got {g.d_steps}")
    self.conditional = bool(config.model.get("conditional", True))
    if self.conditional and config.model.name in models.REGISTRY and config.model.name not in models.GENERATORS:
      raise ValueError(f"config.model.name: {config.model.name!r} is not a regression network; the GAN "
                       "generator must map (frames, exposures) to HDR (e.g. vam_drdb, vam, ahdrnet)")
    self.d_steps = int(g.d_steps)
    self._wins = 0
    self._warned = False

  # config.init.feature_extractor (an l-DAE or any HDR-VAM workdir) starts the generator's feature
  # extractor (model.fe of an HDR-VAM generator); the discriminator stays as initialised.
  feature_extractor_paths = (("model", "fe"),)

  # ---------------------------------------------------------------------------------------------
  def create(self, key) -> GanBundle:
    g_key, d_key = jax.random.split(key)
    kw = dict(dtype=self.dtype, param_dtype=jnp.float32)
    if self.conditional:
      model = self.build_model({k: v for k, v in dict(self.config.model).items() if k != "conditional"}, g_key)
    else:
      model = NoiseGenerator(**dict(self.config.noise_gen), **kw, rngs=nnx.Rngs(params=g_key))
    disc = PatchDiscriminator(conditional=self.conditional, **dict(self.config.disc), **kw,
                              rngs=nnx.Rngs(params=d_key))
    n = self.config.num_train_steps
    return GanBundle(model, disc, make_optimizer(self.config.optimizer, n),
                     make_optimizer(self.config.disc_optimizer, n * self.d_steps))

  def param_state(self, bundle) -> nnx.State:
    """The generator's parameters (the network that evaluate/predict use)."""
    return nnx.state(bundle.model, nnx.Param)

  # ---------------------------------------------------------------------------------------------
  def _noise(self, key, frames):
    b, _, h, w, _ = frames.shape
    return jax.random.normal(key, (b, h, w, self.config.noise_gen.noise_channels), jnp.float32)

  def generate(self, model, frames, exposures, key):
    """Linear HDR ``(B, H, W, 3)`` float32 from the generator (noise from ``key`` if unconditional)."""
    x = model(frames, exposures) if self.conditional else model(self._noise(key, frames), exposures)
    return x.astype(jnp.float32)

  def train_step(self, bundle, batch, key):
    gcfg = self.config.gan
    model, disc = bundle.model, bundle.disc
    set_mode(model, True)
    frames, exposures = batch["frames"], batch["exposures"]
    b = frames.shape[0]
    target = hdr_math.gamma_decode(batch["gt"])
    real = disc_input(target, exposures)
    cond = frames[:, 1] if self.conditional else None
    keys = jax.random.split(key, self.d_steps + 1)

    # The generator's forward pass for its own update, with the pullback to its parameters.
    graphdef, params, rest = nnx.split(model, nnx.Param, ...)

    def forward(p):
      m = nnx.merge(graphdef, p, rest, copy=True)
      return self.generate(m, frames, exposures, keys[-1]), nnx.state(m, nnx.Not(nnx.Param))

    fake, pullback, new_rest = jax.vjp(forward, params, has_aux=True)
    nnx.update(model, new_rest)

    # k discriminator updates on the same batch (fresh noise for each when unconditional).
    d_stats = []
    for i in range(self.d_steps):
      fake_i = fake if self.conditional else self.generate(model, frames, exposures, keys[i])
      d_in = jnp.concatenate([real, jax.lax.stop_gradient(disc_input(fake_i, exposures))])
      d_cond = jnp.concatenate([cond, cond]) if self.conditional else None

      def d_loss_fn(d):
        logits = d(d_in, d_cond, update_sn=True)
        real_l, fake_l = logits[:b], logits[b:]
        acc = (jnp.mean((real_l > 0).astype(jnp.float32)), jnp.mean((fake_l < 0).astype(jnp.float32)))
        return discriminator_loss(real_l, fake_l), acc

      (d_loss, (acc_real, acc_fake)), d_grads = nnx.value_and_grad(d_loss_fn, has_aux=True)(disc)
      bundle.disc_opt.update(disc, d_grads)
      d_stats.append(jnp.stack([d_loss, acc_real, acc_fake, optax.tree.norm(d_grads)]))
    d_loss, acc_real, acc_fake, d_grad_norm = jnp.mean(jnp.stack(d_stats), axis=0)

    # One generator update against the updated discriminator.
    def g_loss_fn(fake):
      adv = generator_adv_loss(disc(disc_input(fake, exposures), cond), gcfg.loss)
      recon = hdr_math.mu_law_l1(fake, target)
      total = gcfg.adv_weight * adv + (gcfg.recon_weight * recon if self.conditional else 0.0)
      return total, (adv, recon)

    (g_loss, (adv, recon)), d_fake = jax.value_and_grad(g_loss_fn, has_aux=True)(fake)
    (g_grads,) = pullback(d_fake)
    bundle.opt.update(model, g_grads)
    return {"loss": g_loss, "g_loss": g_loss, "g_adv": adv, "recon": recon, "d_loss": d_loss,
            "d_real_acc": acc_real, "d_fake_acc": acc_fake, "g_grad_norm": optax.tree.norm(g_grads),
            "d_grad_norm": d_grad_norm}

  def predict(self, bundle, frames, exposures, key):
    model = bundle.model
    set_mode(model, False)
    return hdr_math.gamma_encode(self.generate(model, frames, exposures, key))

  # ---------------------------------------------------------------------------------------------
  def on_metrics(self, step: int, scalars: dict) -> None:
    """Warns once when the discriminator wins outright for ``gan.warn_window`` log points in a row."""
    g = self.config.gan
    if scalars.get("d_real_acc", 0.0) > g.warn_acc and scalars.get("d_fake_acc", 0.0) > g.warn_acc:
      self._wins += 1
    else:
      self._wins = 0
    if self._wins >= g.warn_window and not self._warned:
      self._warned = True
      msg = (f"step {step}: the discriminator wins outright (real and fake accuracy > {g.warn_acc} for "
             f"{self._wins} consecutive log points): the generator's adversarial gradient has vanished. "
             "Consider disc.spectral_norm=True, a lower disc_optimizer.learning_rate, gan.d_steps=1 or "
             "gan.loss='nonsaturating'.")
      warnings.warn(msg, DiscriminatorWinsWarning, stacklevel=2)
      if jax.process_index() == 0:
        print(f"WARNING: {msg}", flush=True)
