"""The GAN's networks besides the regression generators: a PatchGAN discriminator with optional
spectral normalisation, and the small noise-map generator of the unconditional mode.

``PatchDiscriminator(hdr_tm, cond=None, update_sn=False)`` takes tone-mapped HDR in [0, 1]
``(B, H, W, 3)`` (and, when conditional, the reference LDR frame ``(B, H, W, 3)`` in [0, 1],
concatenated on channels) and returns one logit per overlapping patch ``(B, h, w, 1)``, float32.
Layout as pix2pix's PatchGAN: 4x4 convolutions, ``n_layers`` of them with stride 2, then two with
stride 1, LeakyReLU(0.2), no normalisation on the first and last layers.

Spectral normalisation (Miyato et al. 2018): each kernel, reshaped to a ``(kh * kw * in, out)``
matrix ``W``, is divided by an estimate of its largest singular value ``sigma = u^T W^T v`` from
power iteration, ``v = normalise(W u)``, ``u = normalise(W^T v)``, with ``u`` and ``v`` held
constant under differentiation. ``u`` is a :class:`~hdr_jax.models.layers.SpectralVector` (an
``nnx.Variable``, not a parameter: checkpointed with the model, never touched by the optimiser) that is
written back only when the caller passes ``update_sn=True`` (the discriminator's own training step).
Both are options of the one convolution layer, :class:`hdr_jax.models.layers.Conv2d`.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx

from hdr_jax import hdr_math
from hdr_jax.models.layers import Conv2d, SpectralVector, kaiming_normal, power_iteration  # noqa: F401

NORMS = ("none", "group", "instance")


def _normal_002(key, shape, dtype=jnp.float32):
  """pix2pix's kernel initialisation, N(0, 0.02)."""
  return 0.02 * jax.random.normal(key, shape, dtype)


def StridedConv(in_ch: int, out_ch: int, kernel_size: int = 4, stride: int = 1, padding: int = 1, *,  # noqa: N802
                spectral_norm: bool = False, power_iterations: int = 1, dtype=jnp.float32,
                param_dtype=jnp.float32, rngs: nnx.Rngs) -> Conv2d:
  """The discriminator's convolution: a :class:`~hdr_jax.models.layers.Conv2d` with stride, explicit
  padding and optional spectral normalisation; kernel ``(k, k, in, out)`` initialised N(0, 0.02) as
  pix2pix, zero bias. Call it as ``conv(x, update_sn=...)``."""
  return Conv2d(in_ch, out_ch, kernel_size, stride=stride, padding=padding, kernel_init=_normal_002,
                spectral_norm=spectral_norm, power_iterations=power_iterations, dtype=dtype,
                param_dtype=param_dtype, rngs=rngs)


class PatchDiscriminator(nnx.Module):
  """PatchGAN discriminator on tone-mapped HDR, optionally conditioned on the reference frame.

  Args:
    conditional: concatenate the reference LDR frame (3 channels) to the input.
    features: width of the first layer (doubled per stride-2 layer, at most 8x).
    n_layers: stride-2 layers (3: pix2pix's 70x70 receptive field).
    norm: ``'none'``, ``'group'`` (GroupNorm, ``groups`` groups) or ``'instance'`` (one group per
      channel) after every convolution but the first and the last.
    groups: GroupNorm groups.
    spectral_norm: spectrally normalise every convolution.
    power_iterations: power-iteration steps per forward pass.
    leaky_slope: LeakyReLU slope.
  """

  def __init__(self, *, conditional: bool = True, features: int = 64, n_layers: int = 3, norm: str = "none",
               groups: int = 8, spectral_norm: bool = False, power_iterations: int = 1, leaky_slope: float = 0.2,
               dtype=jnp.float32, param_dtype=jnp.float32, rngs: nnx.Rngs):
    if norm not in NORMS:
      raise ValueError(f"config.disc.norm: unknown normalisation {norm!r}; choose one of {NORMS}")
    if n_layers < 1:
      raise ValueError(f"config.disc.n_layers must be >= 1, got {n_layers}")
    kw = dict(spectral_norm=spectral_norm, power_iterations=power_iterations, dtype=dtype,
              param_dtype=param_dtype, rngs=rngs)
    widths = [features * min(2 ** i, 8) for i in range(n_layers + 1)]
    in_ch = 6 if conditional else 3
    self.convs = nnx.List(
        [StridedConv(in_ch, widths[0], 4, 2, 1, **kw)]
        + [StridedConv(widths[i - 1], widths[i], 4, 2, 1, **kw) for i in range(1, n_layers)]
        + [StridedConv(widths[n_layers - 1], widths[n_layers], 4, 1, 1, **kw)])
    self.head = StridedConv(widths[n_layers], 1, 4, 1, 1, **kw)
    if norm == "none":
      self.norms = None
    else:
      self.norms = nnx.List([
          nnx.GroupNorm(w, num_groups=w if norm == "instance" else min(groups, w), dtype=dtype,
                        param_dtype=param_dtype, rngs=rngs) for w in widths[1:]])
    self.conditional = conditional
    self.leaky_slope = leaky_slope

  def __call__(self, hdr_tm, cond=None, update_sn: bool = False):
    x = 2.0 * hdr_tm - 1.0
    if self.conditional:
      if cond is None:
        raise ValueError("a conditional discriminator needs the reference frame")
      x = jnp.concatenate([x, 2.0 * cond - 1.0], axis=-1)
    for i, conv in enumerate(self.convs):
      x = conv(x, update_sn=update_sn)
      if i > 0 and self.norms is not None:
        x = self.norms[i - 1](x)
      x = jax.nn.leaky_relu(x, self.leaky_slope)
    return self.head(x, update_sn=update_sn).astype(jnp.float32)


class NoiseGenerator(nnx.Module):
  """The unconditional generator: Gaussian noise ``(B, H, W, noise_channels)`` plus the three
  relative exposures as constant channels -> linear HDR ``(B, H, W, 3)`` in
  ``[0, max_radiance(exposures)]``. A stack of 3x3 convolutions with dilations 1, 2, 4, ... (a
  receptive field that grows with depth at full resolution) and LeakyReLU, a sigmoid exposure head.
  """

  def __init__(self, *, noise_channels: int = 8, features: int = 32, n_layers: int = 4, dtype=jnp.float32,
               param_dtype=jnp.float32, rngs: nnx.Rngs):
    if n_layers < 2:
      raise ValueError(f"config.noise_gen.n_layers must be >= 2, got {n_layers}")
    kw = dict(dtype=dtype, param_dtype=param_dtype, rngs=rngs)
    chans = [noise_channels + 3] + [features] * (n_layers - 1)
    self.body = nnx.List([Conv2d(chans[i], chans[i + 1], 3, **kw) for i in range(n_layers - 1)])
    self.out = Conv2d(features, 3, 3, kernel_init=kaiming_normal(9 * features, 1.0), **kw)
    self.noise_channels = noise_channels

  def __call__(self, noise, exposures):
    b, h, w, _ = noise.shape
    ev = hdr_math.relative_exposures(exposures).astype(noise.dtype)
    x = jnp.concatenate([noise, jnp.broadcast_to(ev[:, None, None, :] / 4.0, (b, h, w, 3))], axis=-1)
    for i, conv in enumerate(self.body):
      x = jax.nn.leaky_relu(conv(x, dilation=2 ** i), 0.2)
    out = jax.nn.sigmoid(self.out(x).astype(jnp.float32))
    return out * hdr_math.max_radiance(exposures).astype(jnp.float32)[:, None, None, None]
