"""l-DAE pretraining of the HDR-VAM / VAM+DRDB feature extractor (docs/reference.md, l-DAE; Chen, Liu, Xie, He 2024).

The latent: patch-wise PCA of the LDR frames. Every frame (short, medium, long, each RGB in [0, 1],
gamma domain) is cut into ``p x p`` patches (``ldae.patch``); a patch ``x`` (``D = p * p * 3`` values,
``(row, col, channel)`` order) has the latent ``z = V (x - m)`` with ``V`` the ``d x D`` matrix of the
top ``d = ldae.latent_dim`` principal directions (orthonormal rows) and ``m`` the mean patch. ``V``
and ``m`` are fitted once with NumPy, in the task's ``prepare`` hook (which the trainer calls with the
resolved training data, outside any trace), on ``ldae.pca_batches`` batches of training patches drawn
from the data pipeline (seeded with ``config.seed``: the same basis for the same seed and data), and
live in the bundle as :class:`PcaBasis` variables (not parameters), so they are checkpointed with the
run. A bundle built without ``prepare`` (restored from a checkpoint: evaluate, predict) holds zeros of
the same shapes until the checkpoint's basis replaces them.

The noise: each training image draws one ``sigma`` from ``ldae.sigmas``; every frame gets
``z' = z + sigma * eps`` (``eps ~ N(0, I_d)``, independent per patch and frame) and is mapped back with
the inverse PCA, ``V^T z' + m``. The clean residual outside the latent, ``(I - V^T V)(x - m)``, is
kept (``ldae.residual='keep'``, default): the noisy input is ``x + sigma V^T eps``, so the noise lies
entirely in the latent subspace and the rest of the image is untouched. ``'drop'`` uses
``V^T z' + m`` alone (the input loses what the latent cannot express). Noisy frames are not clipped.
The per-pixel noise RMS is ``sigma * sqrt(d / D)``.

The autoencoder: the noisy frames go through the feature extractor of an HDR-VAM built from
``config.model`` (``model.fe``, :class:`hdr_jax.models.vam.VAMFeatures`, with the DRDB stem for
``vam_drdb``) exactly as in the HDR network (``HDRVAM.features``: official 6-channel inputs and Otsu
masks, computed from the noisy frames), then a light head (1x1 conv 224 -> ``ldae.decoder_channels``,
ReLU, 3x3 conv -> 9) predicts the three clean frames. Loss: MSE to the clean frames (the paper
predicts the clean image). Only ``model.fe`` and ``head`` are trained (:data:`TRAINABLE`); the
bundle holds the whole HDR-VAM so that ``model.fe`` has exactly the structure of the downstream
model's (``config.init.feature_extractor``, :mod:`hdr_jax.pretrain`).

Evaluation (what the trainer logs for an l-DAE run): l-DAE has no HDR output, so ``predict`` returns
the denoised *medium frame* (gamma domain, clipped to [0, 1]) from the validation frames, with latent
noise of ``ldae.eval_sigma`` added first (0: the real frames as they are). ``eval/psnr_mu`` then
compares an LDR reconstruction with the HDR target: it approaches ``eval/baseline_psnr_mu`` (the
medium frame itself) as the autoencoder learns to reproduce its input, and can never reach an HDR
model's score (saturated highlights stay lost). It is a sanity check of the pretraining, not a
quality measure; ``train/loss`` against ``train/noisy_mse`` (the MSE of the noisy input) shows the
denoising.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx

from hdr_jax.models.layers import Conv2d
from hdr_jax.models.vam import FEATURE_CHANNELS, HDRVAM
from hdr_jax.tasks.base import Task, make_optimizer

RESIDUALS = ("keep", "drop")
# The variables l-DAE trains: the feature extractor of the HDR-VAM and the decoder head.
TRAINABLE = nnx.All(nnx.Param, nnx.Any(nnx.PathContains("fe"), nnx.PathContains("head")))


class PcaBasis(nnx.Variable):
  """The fitted PCA (components or mean): checkpointed state, not trained."""


# --------------------------------------------------------------------------------------------------
# Patch-wise PCA
# --------------------------------------------------------------------------------------------------


def to_patches(x, p: int):
  """``(..., H, W, C)`` -> ``(..., H/p, W/p, p*p*C)`` (H, W multiples of ``p``)."""
  *lead, h, w, c = x.shape
  x = x.reshape(*lead, h // p, p, w // p, p, c)
  x = jnp.moveaxis(x, -4, -3) if isinstance(x, jax.Array) else np.moveaxis(x, -4, -3)
  return x.reshape(*lead, h // p, w // p, p * p * c)


def from_patches(t, p: int):
  """Inverse of :func:`to_patches`: ``(..., H/p, W/p, p*p*C)`` -> ``(..., H, W, C)``."""
  *lead, hp, wp, dim = t.shape
  c = dim // (p * p)
  t = t.reshape(*lead, hp, wp, p, p, c)
  return jnp.moveaxis(t, -3, -4).reshape(*lead, hp * p, wp * p, c)


def fit_pca(patches: np.ndarray, dim: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
  """PCA of ``patches (N, D)``: ``(components (dim, D), mean (D,), explained (dim,))`` float32, rows
  orthonormal, sorted by decreasing variance, each signed so its largest-magnitude entry is positive
  (deterministic); ``explained`` is each direction's share of the total variance."""
  x = np.asarray(patches, np.float64)
  if x.ndim != 2 or not 0 < dim <= x.shape[1]:
    raise ValueError(f"fit_pca: need patches (N, D) and 0 < dim <= D, got {x.shape} and dim={dim}")
  mean = x.mean(0)
  xc = x - mean
  cov = xc.T @ xc / max(1, len(x) - 1)
  evals, evecs = np.linalg.eigh(cov)
  order = np.argsort(evals)[::-1][:dim]
  comps = evecs[:, order].T
  comps *= np.sign(comps[np.arange(dim), np.abs(comps).argmax(1)])[:, None]
  total = max(float(evals.clip(0).sum()), 1e-30)
  return comps.astype(np.float32), mean.astype(np.float32), (evals[order].clip(0) / total).astype(np.float32)


def _pad_to(x, p: int):
  """Edge-pads ``(..., H, W, C)`` at the bottom/right to multiples of ``p``."""
  ph, pw = (-x.shape[-3]) % p, (-x.shape[-2]) % p
  if ph or pw:
    x = jnp.pad(x, [(0, 0)] * (x.ndim - 3) + [(0, ph), (0, pw), (0, 0)], mode="edge")
  return x


@functools.partial(jax.jit, static_argnames=("p",))
def project(x, components, mean, p: int):
  """The projection of ``x (..., H, W, 3)`` onto the latent, back in pixels: ``V^T V (x - m) + m``
  per patch (any H, W: edge-padded to multiples of ``p`` and cropped back)."""
  h, w = x.shape[-3:-1]
  t = to_patches(_pad_to(x, p), p) - mean
  return from_patches((t @ components.T) @ components + mean, p)[..., :h, :w, :]


def latent_noise(x, components, mean, sigma, key, p: int, residual: str = "keep"):
  """``x (B, ..., H, W, 3)`` with Gaussian noise of std ``sigma`` (scalar or ``(B,)``) added to the
  patch-PCA latent and mapped back with the inverse PCA; ``residual='keep'`` keeps the clean part
  outside the latent (``x + sigma V^T eps``), ``'drop'`` returns ``V^T (z + sigma eps) + m``."""
  if residual not in RESIDUALS:
    raise ValueError(f"config.ldae.residual: unknown mode {residual!r}; choose one of {RESIDUALS}")
  return _latent_noise(x, components, mean, sigma, key, p, residual == "keep")


@functools.partial(jax.jit, static_argnames=("p",))
def _latent_noise(x, components, mean, sigma, key, p: int, keep):
  # ``keep`` is traced (both results computed, one kept): the random draw compiles once for both modes.
  h, w = x.shape[-3:-1]
  t = to_patches(_pad_to(x.astype(jnp.float32), p), p)
  sigma = jnp.asarray(sigma, jnp.float32)
  sigma = sigma.reshape(sigma.shape + (1,) * (t.ndim - sigma.ndim))
  noise = sigma * jax.random.normal(key, t.shape[:-1] + (components.shape[0],), jnp.float32)
  kept = t + noise @ components
  dropped = ((t - mean) @ components.T + noise) @ components + mean
  return from_patches(jnp.where(keep, kept, dropped), p)[..., :h, :w, :]


def sample_training_frames(config, train_dir, num_batches: int) -> np.ndarray:
  """``num_batches`` batches of training patches ``(N, 3, P, P, 3)`` uint8 from the run's data
  pipeline on ``train_dir`` (resolved by :func:`hdr_jax.data.resolve_data`; None for
  ``config.data.prepared``), seed ``config.seed``, one shard: the same sample on every process."""
  from hdr_jax import data

  source = data.train_source(config, None if config.data.prepared else train_dir)
  it = data.make_train_iterator(source, patch_size=config.data.patch_size, global_batch_size=config.batch_size,
                                seed=config.seed, num_workers=0)
  try:
    return np.concatenate([next(it)["frames"] for _ in range(num_batches)])
  finally:
    if hasattr(it, "close"):
      it.close()


def fit_frames_pca(frames_u8: np.ndarray, p: int, dim: int, max_patches: int, seed: int):
  """:func:`fit_pca` on ``p x p`` patches of every frame of ``frames_u8 (N, 3, P, P, 3)``, at most
  ``max_patches`` of them (a seeded random subset)."""
  t = np.asarray(to_patches(frames_u8, p)).reshape(-1, p * p * 3)
  if len(t) > max_patches:
    t = t[np.sort(np.random.default_rng(seed).choice(len(t), max_patches, replace=False))]
  return fit_pca(t.astype(np.float64) / 255.0, dim)


# --------------------------------------------------------------------------------------------------
# The bundle
# --------------------------------------------------------------------------------------------------


class DecoderHead(nnx.Module):
  """224 feature channels -> the three frames (9 channels): 1x1 conv, ReLU, 3x3 conv (``hidden=0``:
  one 3x3 conv)."""

  def __init__(self, hidden: int, *, dtype=jnp.float32, param_dtype=jnp.float32, rngs: nnx.Rngs):
    kw = dict(dtype=dtype, param_dtype=param_dtype, rngs=rngs)
    self.hidden = Conv2d(FEATURE_CHANNELS, hidden, 1, **kw) if hidden else None
    self.out = Conv2d(hidden or FEATURE_CHANNELS, 9, 3, **kw)

  def __call__(self, feats):
    if self.hidden is not None:
      feats = jax.nn.relu(self.hidden(feats))
    return self.out(feats)


class LdaeBundle(nnx.Module):
  """``model`` (the HDR-VAM whose ``fe`` is pretrained), ``head``, the PCA (``pca_components``,
  ``pca_mean``) and the optimiser of :data:`TRAINABLE`."""

  def __init__(self, model: HDRVAM, head: DecoderHead, tx: optax.GradientTransformation, components, mean):
    self.model = model
    self.head = head
    self.pca_components = PcaBasis(jnp.asarray(components, jnp.float32))
    self.pca_mean = PcaBasis(jnp.asarray(mean, jnp.float32))
    self.opt = nnx.Optimizer(self, tx, wrt=TRAINABLE)


def denoise(bundle: LdaeBundle, frames, exposures):
  """The three clean frames predicted from ``frames (B, 3, H, W, 3)``: ``(B, 3, H, W, 3)`` float32."""
  out = bundle.head(bundle.model.features(frames, exposures)).astype(jnp.float32)
  b, h, w, _ = out.shape
  return jnp.moveaxis(out.reshape(b, h, w, 3, 3), 3, 1)


class LdaeTask(Task):
  """Denoising pretraining (module docstring). Config: ``model`` (vam | vam_drdb and their keys),
  ``ldae.{patch, latent_dim, sigmas, residual, decoder_channels, pca_batches, pca_max_patches,
  eval_sigma}``."""

  prepares_from_data = True

  def __init__(self, config):
    super().__init__(config)
    c = config.ldae
    if config.model.name not in ("vam", "vam_drdb"):
      raise ValueError(f"config.model.name: l-DAE pretrains the HDR-VAM feature extractor (vam or vam_drdb), "
                       f"got {config.model.name!r}")
    if c.residual not in RESIDUALS:
      raise ValueError(f"config.ldae.residual: unknown mode {c.residual!r}; choose one of {RESIDUALS}")
    if config.data.patch_size % c.patch:
      raise ValueError(f"config.ldae.patch={c.patch} must divide config.data.patch_size={config.data.patch_size}")
    if not 0 < c.latent_dim <= c.patch * c.patch * 3:
      raise ValueError(f"config.ldae.latent_dim must be in [1, {c.patch * c.patch * 3}] for {c.patch}x{c.patch}x3 "
                       f"patches, got {c.latent_dim}")
    if not len(c.sigmas) or min(c.sigmas) < 0:
      raise ValueError(f"config.ldae.sigmas must be a non-empty list of noise levels >= 0, got {c.sigmas}")
    self.pca = None  # (components, mean, explained), fitted by prepare

  def prepare(self, train_dir) -> None:
    """Fits the PCA on training patches of ``train_dir`` (once per task; the trainer calls it before the
    bundle is built, outside any trace)."""
    if self.pca is None:
      c = self.config.ldae
      frames = sample_training_frames(self.config, train_dir, c.pca_batches)
      self.pca = fit_frames_pca(frames, c.patch, c.latent_dim, c.pca_max_patches, self.config.seed)

  def create(self, key) -> LdaeBundle:
    k_model, k_head = jax.random.split(key)
    model = self.build_model(self.config.model, k_model)
    head = DecoderHead(self.config.ldae.decoder_channels, dtype=self.dtype, rngs=nnx.Rngs(params=k_head))
    if self.pca is not None:
      components, mean, _ = self.pca
    else:  # not prepared: a bundle whose basis a checkpoint restores (same shapes)
      c = self.config.ldae
      dim = c.patch * c.patch * 3
      components, mean = np.zeros((c.latent_dim, dim), np.float32), np.zeros((dim,), np.float32)
    return LdaeBundle(model, head, make_optimizer(self.config.optimizer, self.config.num_train_steps), components,
                      mean)

  def param_state(self, bundle) -> nnx.State:
    return nnx.state(bundle, TRAINABLE)

  def noisy(self, bundle, frames, sigma, key):
    c = self.config.ldae
    return latent_noise(frames, bundle.pca_components[...], bundle.pca_mean[...], sigma, key, c.patch, c.residual)

  def train_step(self, bundle, batch, key):
    k_sigma, k_noise = jax.random.split(key)
    clean = batch["frames"]
    levels = jnp.asarray(self.config.ldae.sigmas, jnp.float32)
    sigma = levels[jax.random.randint(k_sigma, (clean.shape[0],), 0, len(levels))]
    noisy = self.noisy(bundle, clean, sigma, k_noise)

    def loss_fn(b):
      return jnp.mean((denoise(b, noisy, batch["exposures"]) - clean) ** 2)

    loss, grads = nnx.value_and_grad(loss_fn, argnums=nnx.DiffState(0, TRAINABLE))(bundle)
    bundle.opt.update(bundle, grads)
    return {"loss": loss, "noisy_mse": jnp.mean((noisy - clean) ** 2), "grad_norm": optax.tree.norm(grads)}

  def predict(self, bundle, frames, exposures, key):
    if self.config.ldae.eval_sigma > 0:
      frames = self.noisy(bundle, frames, self.config.ldae.eval_sigma, key)
    return jnp.clip(denoise(bundle, frames, exposures)[:, 1], 0.0, 1.0)
