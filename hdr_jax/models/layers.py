"""Building blocks shared by the model families: the one convolution layer (:class:`Conv2d`: call-time
dilation, strides, spectral normalisation, the bias gradient summed in float32), average pooling, the
polyphase fold that turns dilation-2 convolutions into plain ones, the DRDB, and a depthwise
convolution written as shifted multiply-adds.

All tensors are NHWC. Parameters are stored in ``param_dtype`` (float32); computation runs in
``dtype`` (float32 or bfloat16).
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
from flax import nnx


def kaiming_normal(fan_in: int, gain: float = math.sqrt(2.0)):
  """PyTorch ``kaiming_normal_`` (fan_in mode): normal with std ``gain / sqrt(fan_in)``."""
  std = gain / math.sqrt(fan_in)

  def init(key, shape, dtype=jnp.float32):
    return std * jax.random.normal(key, shape, dtype)

  return init


def depthwise_conv(x, kernel, padding: int, dilation: int = 1):
  """Depthwise (one filter per channel) stride-1 convolution as ``k*k`` shifted multiply-adds.

  ``x (B, H, W, C)``, ``kernel (k, k, 1, C)`` (the HWIO kernel of ``feature_group_count=C``),
  zero padding ``padding`` on each side. Equal to ``lax.conv_general_dilated(...,
  feature_group_count=C)`` up to summation order; the products and their sum are float32 (the
  result is cast back to ``x.dtype``). Why not the convolution: XLA's GPU compiler autotunes every
  grouped convolution and its two gradients (108 of the 272 convolutions of the VAM+DRDB train
  step), and its CPU backend computes a depthwise kernel gradient as a dense C x C convolution. Here
  forward and both gradients are elementwise fusions and small reductions, memory-bound and cheap
  (9 multiply-adds per output for 3x3).
  """
  k = kernel.shape[0]
  b, h, w, c = x.shape
  ho, wo = h + 2 * padding - dilation * (k - 1), w + 2 * padding - dilation * (k - 1)
  xp = jnp.pad(x, ((0, 0), (padding, padding), (padding, padding), (0, 0))).astype(jnp.float32)
  kf = kernel.reshape(k, k, c).astype(jnp.float32)
  y = None
  for i in range(k):
    for j in range(k):
      tap = xp[:, i * dilation:i * dilation + ho, j * dilation:j * dilation + wo] * kf[i, j]
      y = tap if y is None else y + tap
  return y.astype(x.dtype)


@jax.custom_vjp
def bias_add(y, bias):
  """``y + bias`` in ``y``'s dtype, with ``bias``'s gradient summed in float32.

  ``bias`` broadcasts against ``y`` without enlarging it: a per-channel bias ``(C,)``, or a
  per-image one such as a projected step embedding ``(B, 1, 1, C)``. Its gradient sums the output
  gradient over the broadcast axes (every pixel). In bfloat16, as autodiff of a plain add does it,
  that sum loses most of its digits: a bfloat16 U-Net's bias gradients were 30-70 % off the float32
  ones (tests/test_diffusion.py). The forward is the plain add, so XLA still fuses it into the
  producer. ``bias``'s gradient has ``bias``'s dtype.
  """
  if jnp.broadcast_shapes(y.shape, bias.shape) != y.shape:
    raise ValueError(f"bias_add: a bias of shape {bias.shape} would enlarge y of shape {y.shape}")
  return y + bias.astype(y.dtype)


def _bias_add_fwd(y, bias):
  return bias_add(y, bias), bias


def _bias_add_bwd(bias, dy):
  lead = dy.ndim - bias.ndim
  db = jnp.sum(dy.astype(jnp.float32), axis=tuple(range(lead)))
  db = jnp.sum(db, axis=tuple(i for i, n in enumerate(bias.shape) if n == 1), keepdims=True)
  return dy, db.astype(bias.dtype)


bias_add.defvjp(_bias_add_fwd, _bias_add_bwd)


class SpectralVector(nnx.Variable):
  """The power-iteration vector ``u`` of a spectrally normalised kernel (``Conv2d(spectral_norm=True)``)."""


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


BIAS_PRECISIONS = ("float32", "compute")


class Conv2d(nnx.Module):
  """The 2-D convolution of every model family (NHWC), its bias gradient summed in float32.

  Kernel ``(k, k, in / groups, out)`` (PyTorch's ``(out, in, kh, kw)`` transposed by (2, 3, 1, 0)),
  bias ``(out,)`` (``use_bias``), and with ``spectral_norm`` the power-iteration vector ``u``.

  * Initialisation: ``kernel_init(key, shape, dtype)`` (default: PyTorch's Kaiming normal); the bias is
    zeros, drawn with a key of its own only when ``bias_init`` is given (``nnx.Conv``'s key use, so a
    U-Net's seeds give the values they gave with ``nnx.Conv``); ``u`` draws the next key.
  * ``stride``; ``padding``: ``'SAME'`` (XLA's, with strides), an int on every side, or None: 'same'
    for the dilation of the call. ``__call__(x, dilation=1, padding=None)`` may choose both per call.
  * A depthwise convolution (``groups == in == out``) runs as :func:`depthwise_conv`.
  * ``spectral_norm``: the kernel divided by its largest singular value, estimated by
    ``power_iterations`` steps of :func:`power_iteration` from ``u``; ``__call__(..., update_sn=True)``
    stores the new ``u`` (:meth:`normalized_kernel`).
  * The bias, ``bias_precision``: ``'float32'`` adds output and bias in float32 and rounds once to the
    compute dtype (its gradient, a sum over every output pixel, then accumulates in float32: in
    bfloat16 it was 14-30 % off on CPU; tests/test_layers.py); ``'compute'`` rounds the bias to the
    compute dtype and adds it there (``nnx.Conv``'s forward) with :func:`bias_add`, which sums its
    gradient in float32 (the U-Net's layers).
  """

  def __init__(self, in_ch: int, out_ch: int, kernel_size: int | tuple = 3, *, stride: int | tuple = 1,
               padding: int | str | None = None, use_bias: bool = True, groups: int = 1, kernel_init=None,
               bias_init=None, bias_precision: str = "float32", spectral_norm: bool = False,
               power_iterations: int = 1, dtype=jnp.float32, param_dtype=jnp.float32, rngs: nnx.Rngs):
    k, kw = (kernel_size, kernel_size) if isinstance(kernel_size, int) else tuple(kernel_size)
    if k != kw:
      raise ValueError(f"Conv2d: square kernels only, got {kernel_size}")
    if bias_precision not in BIAS_PRECISIONS:
      raise ValueError(f"Conv2d: unknown bias_precision {bias_precision!r}; choose one of {BIAS_PRECISIONS}")
    kernel_init = kernel_init or kaiming_normal(in_ch // groups * k * k)
    self.kernel = nnx.Param(kernel_init(rngs.params(), (k, k, in_ch // groups, out_ch), param_dtype))
    if not use_bias:
      self.bias = None
    elif bias_init is None:
      self.bias = nnx.Param(jnp.zeros((out_ch,), param_dtype))
    else:
      self.bias = nnx.Param(bias_init(rngs.params(), (out_ch,), param_dtype))
    self.u = SpectralVector(_normalise(jax.random.normal(rngs.params(), (out_ch,), jnp.float32))) \
        if spectral_norm else None
    self.kernel_size = k
    self.stride = (stride, stride) if isinstance(stride, int) else tuple(stride)
    self.padding = padding
    self.groups = groups
    self.bias_precision = bias_precision
    self.spectral_norm = spectral_norm
    self.power_iterations = power_iterations
    self.dtype = dtype

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

  def __call__(self, x, dilation: int = 1, padding: int | str | None = None, *, update_sn: bool = False):
    if padding is None:
      padding = self.padding if self.padding is not None else dilation * (self.kernel_size - 1) // 2
    kernel = self.normalized_kernel(update_sn).astype(self.dtype)
    if self.groups > 1 and self.groups == x.shape[-1] == kernel.shape[-1]:
      y = depthwise_conv(x.astype(self.dtype), kernel, padding, dilation)
    else:
      y = self._conv(x, kernel, padding, dilation)
    if self.bias is None:
      return y
    if self.bias_precision == "compute":
      return bias_add(y, self.bias[...])
    # The add in float32, fused into the cast.
    return (y.astype(jnp.float32) + self.bias[...].astype(jnp.float32)).astype(self.dtype)

  def _conv(self, x, kernel, padding, dilation):
    pads = padding if isinstance(padding, str) else [(padding, padding), (padding, padding)]
    return jax.lax.conv_general_dilated(
        x.astype(self.dtype), kernel, self.stride, pads, rhs_dilation=(dilation, dilation),
        dimension_numbers=("NHWC", "HWIO", "NHWC"), feature_group_count=self.groups)


def avg_pool(x, k: int):
  """``k x k`` average pooling with stride ``k`` (Keras ``AveragePooling2D(k)``, valid): ``(B, H, W, C)
  -> (B, H/k, W/k, C)``, H and W multiples of ``k``; ``k == 1`` returns ``x``. The mean is in
  ``x``'s dtype (jnp.mean sums low-precision floats in float32)."""
  if k == 1:
    return x
  b, h, w, c = x.shape
  return x.reshape(b, h // k, k, w // k, k, c).mean(axis=(2, 4)).astype(x.dtype)


def polyphase_fold(x, factor: int = 2):
  """``(B, H, W, C) -> (factor**2 * B, H/factor, W/factor, C)``: the sub-images ``x[:, i::f, j::f]``
  stacked into the batch (sub-image ``(i, j)`` at batch block ``i * f + j``). H and W must be
  multiples of ``factor``. A dilation-``f`` 3x3 convolution with padding ``f`` on ``x`` equals a
  plain 3x3 convolution with padding 1 on the folded tensor (docs/reference.md, AHDRNet, polyphase trunk)."""
  b, h, w, c = x.shape
  x = x.reshape(b, h // factor, factor, w // factor, factor, c)
  x = x.transpose(2, 4, 0, 1, 3, 5)
  return x.reshape(factor * factor * b, h // factor, w // factor, c)


def polyphase_unfold(x, factor: int = 2):
  """Inverse of :func:`polyphase_fold`."""
  fb, hh, ww, c = x.shape
  b = fb // (factor * factor)
  x = x.reshape(factor, factor, b, hh, ww, c).transpose(2, 3, 0, 4, 1, 5)
  return x.reshape(b, hh * factor, ww * factor, c)


def pad_to_multiple(x, multiple: int, mode: str = "reflect"):
  """Pads ``(B, H, W, C)`` at the bottom/right to multiples of ``multiple``; returns ``(x, (H, W))``."""
  h, w = x.shape[1], x.shape[2]
  ph, pw = (-h) % multiple, (-w) % multiple
  if ph or pw:
    mode = mode if (mode != "reflect" or (ph < h and pw < w)) else "edge"
    x = jnp.pad(x, ((0, 0), (0, ph), (0, pw), (0, 0)), mode=mode)
  return x, (h, w)


DENSE_FORMS = ("concat", "scatter")


class DRDB(nnx.Module):
  """Dilated residual dense block (docs/reference.md, AHDRNet): ``n_layers`` dense layers
  ``ReLU(conv3x3(c -> growth, dilation))`` concatenated onto their input, a 1x1 fusion conv back to
  ``channels``, plus the block input.

  ``__call__(x, folded=False)``: with ``folded=True`` the input is already in the polyphase layout of
  :func:`polyphase_fold` (factor = dilation) and the dense convs run undilated, which is exactly the
  same computation and much faster to differentiate under XLA.

  ``form`` chooses how the dense layers are evaluated; the parameters and the function are the same
  (``'scatter'``, the default, is the faster one on GPU: benchmarks/RESULTS.md):

  - ``'concat'`` (the paper's wiring): layer ``l`` convolves the concatenation of the block input and
    all earlier layer outputs. Each concatenation is a full copy of everything before it.
  - ``'scatter'``: a convolution is linear in its input channels, so layer ``l``'s pre-activation is
    the sum over the pieces ``j <= l`` (block input, then each layer output) of the piece convolved
    with its rows of layer ``l``'s kernel. Each piece is convolved once, as soon as it exists, with
    its rows of every later layer's kernel stacked along the output channels (one convolution with
    ``growth * (n_layers - j)`` outputs), and layer ``l`` adds its slices of those outputs. No
    concatenation is copied except the last one, which the 1x1 fusion reads. The same multiply-adds,
    summed in a different order (float32 rounding differs at ~1e-6 relative; in bfloat16 each piece's
    part is rounded before the float32 sum).
  """

  def __init__(self, channels: int = 64, growth: int = 32, n_layers: int = 6, dilation: int = 2, *,
               form: str = "scatter", dtype=jnp.float32, param_dtype=jnp.float32, rngs: nnx.Rngs):
    if form not in DENSE_FORMS:
      raise ValueError(f"dense_form must be one of {DENSE_FORMS}, got {form!r}")
    self.dilation = dilation
    self.form = form
    self.channels = channels
    self.growth = growth
    self.dense = nnx.List([
        Conv2d(channels + i * growth, growth, 3, dtype=dtype, param_dtype=param_dtype, rngs=rngs)
        for i in range(n_layers)
    ])
    self.fuse = Conv2d(channels + n_layers * growth, channels, 1, dtype=dtype, param_dtype=param_dtype, rngs=rngs)

  def __call__(self, x, folded: bool = False):
    d = 1 if folded else self.dilation
    if self.form == "scatter":
      return self._scatter(x, d)
    feats = x
    for conv in self.dense:
      feats = jnp.concatenate([feats, jax.nn.relu(conv(feats, dilation=d))], axis=-1)
    return self.fuse(feats) + x.astype(feats.dtype)

  def _scatter(self, x, d):
    n, g = len(self.dense), self.growth
    dtype = self.fuse.dtype  # (a block may have no dense layers)
    x = x.astype(dtype)
    pieces = [x]
    partial = []  # partial[j][..., (l - j) * g:(l - j + 1) * g]: piece j's part of layer l's pre-activation
    for l in range(n):
      # Piece l (the block input, then layer l-1's output) is new: convolve it once with its rows of
      # the kernels of layers l..n-1.
      rows = slice(0, self.channels) if l == 0 else slice(self.channels + (l - 1) * g, self.channels + l * g)
      kernel = jnp.concatenate([self.dense[k].kernel[...][:, :, rows, :] for k in range(l, n)], axis=-1)
      partial.append(self.dense[l]._conv(pieces[l], kernel.astype(dtype), d, d))
      pre = self.dense[l].bias[...].astype(jnp.float32)  # the sum in float32 (one fusion), then cast
      for j in range(l + 1):
        pre = pre + partial[j][..., (l - j) * g:(l - j + 1) * g].astype(jnp.float32)
      pieces.append(jax.nn.relu(pre).astype(dtype))
    return self.fuse(jnp.concatenate(pieces, axis=-1)) + x
