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
constant under differentiation. ``u`` is a :class:`SpectralVector` (an ``nnx.Variable``, not a
parameter: checkpointed with the model, never touched by the optimiser) that is written back only
when the caller passes ``update_sn=True`` (the discriminator's own training step).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx

from hdr_jax import hdr_math
from hdr_jax.models.layers import Conv2d, kaiming_normal

NORMS = ("none", "group", "instance")


class SpectralVector(nnx.Variable):
  """The power-iteration vector ``u`` of a spectrally normalised kernel."""


def _normalise(x, eps: float = 1e-12):
  return x / (jnp.linalg.norm(x) + eps)


def power_iteration(w_mat, u, iterations: int):
  """``(sigma, u)`` for a matrix ``(n, m)`` and a start vector ``u`` ``(m,)``; ``u`` and ``v`` are
  treated as constants, so ``sigma``'s gradient flows into ``w_mat`` only."""
  w_const = jax.lax.stop_gradient(w_mat)
  v = None
  for _ in range(iterations):
    v = _normalise(w_const @ u)
    u = _normalise(w_const.T @ v)
  u, v = jax.lax.stop_gradient(u), jax.lax.stop_gradient(v)
  return jnp.dot(v, w_mat @ u), u


class StridedConv(nnx.Module):
  """A 2-D convolution with stride, explicit padding and optional spectral normalisation.

  Kernel ``(k, k, in, out)`` + bias; initialised N(0, 0.02) as pix2pix."""

  def __init__(self, in_ch: int, out_ch: int, kernel_size: int = 4, stride: int = 1, padding: int = 1, *,
               spectral_norm: bool = False, power_iterations: int = 1, dtype=jnp.float32,
               param_dtype=jnp.float32, rngs: nnx.Rngs):
    self.kernel = nnx.Param(0.02 * jax.random.normal(rngs.params(), (kernel_size, kernel_size, in_ch, out_ch),
                                                     param_dtype))
    self.bias = nnx.Param(jnp.zeros((out_ch,), param_dtype))
    self.stride = stride
    self.padding = padding
    self.spectral_norm = spectral_norm
    self.power_iterations = power_iterations
    self.dtype = dtype
    self.u = SpectralVector(_normalise(jax.random.normal(rngs.params(), (out_ch,), jnp.float32))) \
        if spectral_norm else None

  def normalized_kernel(self, update: bool = False, iterations: int | None = None):
    """The kernel divided by its estimated largest singular value (the raw kernel without spectral
    normalisation); ``update`` stores the new power-iteration vector."""
    kernel = self.kernel[...]
    if not self.spectral_norm:
      return kernel
    w_mat = kernel.reshape(-1, kernel.shape[-1]).astype(jnp.float32)
    sigma, u = power_iteration(w_mat, self.u[...], iterations or self.power_iterations)
    if update:
      self.u[...] = u
    return (kernel / sigma).astype(kernel.dtype)

  def __call__(self, x, update_sn: bool = False):
    p = self.padding
    y = jax.lax.conv_general_dilated(
        x.astype(self.dtype), self.normalized_kernel(update_sn).astype(self.dtype), (self.stride, self.stride),
        [(p, p), (p, p)], dimension_numbers=("NHWC", "HWIO", "NHWC"))
    return (y.astype(jnp.float32) + self.bias[...].astype(jnp.float32)).astype(self.dtype)  # as layers.Conv2d


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
      x = conv(x, update_sn)
      if i > 0 and self.norms is not None:
        x = self.norms[i - 1](x)
      x = jax.nn.leaky_relu(x, self.leaky_slope)
    return self.head(x, update_sn).astype(jnp.float32)


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
