"""HDR-VAM (Omrani & Moroni, IEEE Access 2024) and the project's VAM+DRDB, in Flax NNX.

The wiring is a transcription of the official Keras ``model.py`` and the input pipeline of its
``utils.py`` (GitHub ``AlirezaOmrani95/HDR-VAM``, TensorFlow 2.13), read for this port:

* Inputs (``utils.image_read`` / ``path_split``): short/long ``[LDR, EV-aligned LDR in the gamma
  domain]``, medium ``[LDR, LDR]``; masks from ``cv2.threshold(Y, THRESH_OTSU)`` on the 8-bit luma
  ``cv2.COLOR_RGB2YUV[..., 0]`` of each frame: the short frame keeps ``Y > t`` (``THRESH_BINARY``),
  the long frame ``Y <= t`` (``THRESH_BINARY_INV``); each mask is a 2-channel Keras input that the
  model concatenates three times (6 channels).
* ``feature_extractor``: SepConv(32) -> concat(MaxPool 2, AvgPool 2) -> SepConv(32, ReLU) -> nearest
  UpSampling 2.
* ``visual_attention``: FE(short * mask_s) + FE(long * mask_l). Reference: FE_align(medium) and
  FE_attn(medium), concatenated (64 ch).
* ``alignment_attention`` per non-reference frame: FE(LDR half, ch 0:3) and FE(aligned half, ch 3:6);
  alignment ``FE_ldr * ReLU(conv(r)) + ReLU(conv'(r))`` with ``r = ReLU(conv(FE_align(medium)))``
  (three 3x3 Conv2D(32)); attention ``SepConv(32, sigmoid)(SepConv(64, ReLU)(concat(FE_aligned,
  FE_attn(medium))))``.
* Feature map (224 ch): ``[align_s, attn_s, align_l, attn_l, visual_attention, reference]``.
* ``reconstruction``: 4 x [SepConv(64/128/256/256) -> BatchNorm -> ReLU -> concat(Avg 2, Max 2)];
  4 x [concat(x, AvgPool_k(visual_attention), AvgPool_k(reference)) -> SepConv(256/128/64/32, ReLU) ->
  UpSampling 2] with k = 16, 8, 4, 2; 1x1 SepConv(3, ReLU).
* ``refinement``: p = SepConv(3, ReLU)(reference); 3 x [concat(x, p) -> SepConv(16) -> SepConv(16,
  ReLU)]; 1x1 Conv2D(3, sigmoid) named ``Final_output``.
* Keras defaults: 'same' padding, SeparableConv2D = depthwise 3x3 (no bias) + pointwise 1x1 with bias,
  glorot-uniform kernels, zero biases; BatchNormalization momentum 0.99, epsilon 1e-3.
* Official target: ``sigmoid(gt)`` with ``gt`` the gamma-domain HDR, loss MAE; inference pads
  1060x1900 with zeros, centred, to 1088x1920 (the next multiples of 32) and maps the output back with
  ``clip(logit(out), 0) ** 2.24``.

Parameters: 570,265 in the Keras summary sense (568,857 trainable ``nnx.Param`` + 1,408 BatchNorm
moving statistics ``nnx.BatchStat``); derived from the official layer list, not from a run of Keras.

Not from the official code: the output heads other than ``'logit'``, the ``pad_multiple`` option and
the VAM+DRDB stem. BatchNorm uses batch statistics in training mode (``model.train()``, the nnx
default after construction) and moving statistics after ``model.eval()``; ``__call__(..., train=)``
overrides the mode for one call. Under data-parallel ``jax.jit`` over a global batch the batch
statistics are those of the global batch (Keras' multi-replica default would use per-replica ones).
The moving variance is updated with the biased batch variance (TF's fused kernel uses the unbiased).
Max pooling passes each window's gradient to one maximum, as TF does (:func:`_max_pool`; JAX's default
rule for ``max`` can give NaN gradients under XLA rematerialisation).

VAM+DRDB (docs/reference.md, VAM+DRDB): ``drdb_blocks > 0`` inserts a stem in front of everything that reads
the 6-channel frame inputs: for each frame ``x_i``, ``x_i + conv3x3(C -> 6)(DRDB^n(conv3x3(in -> C)([x_i, x_m])))``
with ``x_m`` the medium input (``drdb_reference=True``, so the stem can tell content from misaligned
or noisy content) and the same weights for the three frames. The DRDBs (dilation 2) run in the
polyphase layout (``polyphase=True``), the exact equivalent of the dilated form. The output conv is
zero-initialised, so an untrained stem is the identity and VAM+DRDB starts as plain VAM (official
Keras weights can be loaded into it). Default (``vam_drdb``): C=64, growth 32, 4 layers, 2 blocks (AHDRNet's widths, a
receptive field of 37 pixels): 293,446 stem parameters, 863,711 in total. Cost (XLA cost analysis of
the forward pass): plain VAM about 0.11 M MACs per pixel (0.23 TMACs for 1060x1900 padded to
1088x1920), VAM+DRDB about 0.98 M (2.06 TMACs; AHDRNet: 1.45 M per pixel), because the stem runs at
full resolution on all three frames; ``drdb_channels=32, drdb_growth=16`` cuts the stem to about a
quarter.

All feature-side modules live in ``model.fe`` (:class:`VAMFeatures`, stem included), so
``nnx.state(model.fe)`` can be copied between models (conditioning encoders, l-DAE pretraining).
"""

from __future__ import annotations

import functools
import math
import re

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from hdr_jax import hdr_math
from hdr_jax.models.layers import DRDB, Conv2d, avg_pool, polyphase_fold, polyphase_unfold

FEATURE_CHANNELS = 224
OUTPUT_HEADS = ("exposure", "sigmoid", "logit", "merge")
_MIN_MULTIPLE = 16  # four 2x poolings in the reconstruction encoder

# --------------------------------------------------------------------------------------------------
# Inputs: Otsu masks and the official 6-channel frames
# --------------------------------------------------------------------------------------------------


def luma_u8(rgb):
  """8-bit luma as ``cv2.cvtColor(uint8_rgb, COLOR_RGB2YUV)[..., 0]``: ``(..., 3)`` floats in [0, 1]
  (quantised with ``round(x * 255)``) -> ``(...)`` int32 in [0, 255] (cv2's 14-bit fixed point)."""
  q = jnp.clip(jnp.round(jnp.asarray(rgb, jnp.float32) * 255.0), 0, 255).astype(jnp.int32)
  return (q[..., 0] * 4899 + q[..., 1] * 9617 + q[..., 2] * 1868 + 8192) >> 14


def otsu_threshold(y):
  """Otsu's threshold per image as ``cv2.threshold(..., THRESH_OTSU)`` on uint8: ``(..., H, W)`` ints
  in [0, 255] -> ``(...)`` int32 ``t`` (class 0 is ``y <= t``). Maximises the between-class variance
  ``q1 q2 (mu1 - mu2)^2`` over the 256-bin histogram, skipping thresholds with an empty class (as
  cv2, ``FLT_EPSILON``); first maximum wins; 0 when every pixel has the same value."""
  y = jnp.asarray(y, jnp.int32)
  lead, n = y.shape[:-2], y.shape[-2] * y.shape[-1]
  counts = jax.vmap(lambda v: jnp.bincount(v, length=256))(y.reshape(-1, n))
  bins = jnp.arange(256, dtype=jnp.float32)
  p = counts.astype(jnp.float32) / n
  q1 = jnp.cumsum(counts, axis=-1).astype(jnp.float32) / n
  mu = jnp.sum(p * bins, axis=-1, keepdims=True)
  d = jnp.cumsum(p * (bins - mu), axis=-1)  # q1 * (mu1 - mu)
  q2 = 1.0 - q1
  eps = float(np.finfo(np.float32).eps)
  valid = (jnp.minimum(q1, q2) >= eps) & (jnp.maximum(q1, q2) <= 1.0 - eps)
  sigma = jnp.where(valid, d * d / jnp.where(valid, q1 * q2, 1.0), -1.0)
  return jnp.argmax(sigma, axis=-1).astype(jnp.int32).reshape(lead)


def vam_masks(frames):
  """Official visual-attention masks from ``frames (B, 3, H, W, 3)`` in [0, 1]: ``(short_mask,
  long_mask)``, each ``(B, H, W, 2)`` float32 in {0, 1} (2 channels as the official Keras inputs).
  Short keeps ``Y_s > t_s`` (bright areas), long keeps ``Y_l <= t_l`` (dark areas), each frame with
  its own Otsu threshold."""
  y_s, y_l = luma_u8(frames[:, 0]), luma_u8(frames[:, 2])
  t_s, t_l = otsu_threshold(y_s), otsu_threshold(y_l)
  m_s = (y_s > t_s[:, None, None]).astype(jnp.float32)[..., None]
  m_l = (y_l <= t_l[:, None, None]).astype(jnp.float32)[..., None]
  return jnp.concatenate([m_s, m_s], -1), jnp.concatenate([m_l, m_l], -1)


def vam_inputs(frames, exposures, gamma: float = hdr_math.GAMMA):
  """The official model's five inputs from ``frames (B, 3, H, W, 3)`` and ``exposures (B, 3)``:
  ``(low, medium, high, low_mask, high_mask)``; frames ``(B, H, W, 6)``, masks ``(B, H, W, 2)``."""
  frames = jnp.asarray(frames, jnp.float32)
  six = hdr_math.ldr_to_hdr_inputs(frames, exposures, gamma, domain="gamma")
  medium = jnp.concatenate([frames[:, 1], frames[:, 1]], axis=-1)
  low_mask, high_mask = vam_masks(frames)
  return six[:, 0], medium, six[:, 2], low_mask, high_mask


def _pad_centered(x, multiple: int):
  """Zero-pads ``(B, H, W, C)`` to multiples of ``multiple``, centred as the official inference
  (``cv2.copyMakeBorder`` 14/14, 10/10 for 1060x1900 -> 1088x1920); returns ``(x, (top, left))``."""
  ph, pw = (-x.shape[1]) % multiple, (-x.shape[2]) % multiple
  top, left = ph // 2, pw // 2
  if ph or pw:
    x = jnp.pad(x, ((0, 0), (top, ph - top), (left, pw - left), (0, 0)))
  return x, (top, left)


# --------------------------------------------------------------------------------------------------
# Layers
# --------------------------------------------------------------------------------------------------


def glorot_uniform(fan_in: int, fan_out: int):
  """Keras' default kernel initializer with the fans Keras computes from its own kernel shape."""
  limit = math.sqrt(6.0 / (fan_in + fan_out))

  def init(key, shape, dtype=jnp.float32):
    return jax.random.uniform(key, shape, dtype, -limit, limit)

  return init


def _windows(x, k: int):
  """``(B, H, W, C) -> (B, H/k, W/k, C, k*k)``: the non-overlapping ``k x k`` windows, row-major."""
  b, h, w, c = x.shape
  return x.reshape(b, h // k, k, w // k, k, c).transpose(0, 1, 3, 5, 2, 4).reshape(b, h // k, w // k, c, k * k)


@functools.partial(jax.custom_jvp, nondiff_argnums=(1,))
def _max_pool(x, k: int):
  """Keras ``MaxPooling2D(k)`` (valid, stride k). The derivative routes each window's gradient to
  one maximum (the first, row-major; TF's max-pool gradient also picks a single element), chosen
  from ``x`` alone, so it is always finite. JAX's own rule for ``max`` divides by the number of
  elements equal to the separately computed maximum; when XLA rematerialises the pooled operand in
  the backward pass with another rounding (a different fusion, bf16 excess precision), that count
  can be 0 and the gradient 0/0 = NaN while the loss stays finite."""
  b, h, w, c = x.shape
  return x.reshape(b, h // k, k, w // k, k, c).max(axis=(2, 4))


@_max_pool.defjvp
def _max_pool_jvp(k, primals, tangents):
  (x,), (t,) = primals, tangents
  first = jnp.argmax(_windows(x, k), axis=-1)
  chosen = first[..., None] == jnp.arange(k * k)
  return _max_pool(x, k), jnp.sum(jnp.where(chosen, _windows(t, k), 0), axis=-1)


def _upsample(x, k: int = 2):
  return jnp.repeat(jnp.repeat(x, k, axis=1), k, axis=2)


class SeparableConv2d(nnx.Module):
  """Keras ``SeparableConv2D(out, k, padding='same')``: depthwise ``k x k`` (multiplier 1, no bias;
  ``depthwise.kernel`` is Keras' ``(k, k, in, 1)`` transposed to ``(k, k, 1, in)``), then pointwise
  1x1 with bias (``pointwise.kernel (1, 1, in, out)``, ``pointwise.bias``)."""

  def __init__(self, in_ch: int, out_ch: int, kernel_size: int = 3, *, dtype=jnp.float32,
               param_dtype=jnp.float32, rngs: nnx.Rngs):
    k2 = kernel_size * kernel_size
    self.depthwise = Conv2d(in_ch, in_ch, kernel_size, use_bias=False, groups=in_ch, dtype=dtype,
                            param_dtype=param_dtype, kernel_init=glorot_uniform(k2 * in_ch, k2), rngs=rngs)
    self.pointwise = Conv2d(in_ch, out_ch, 1, dtype=dtype, param_dtype=param_dtype,
                            kernel_init=glorot_uniform(in_ch, out_ch), rngs=rngs)

  def __call__(self, x):
    return self.pointwise(self.depthwise(x))


def _conv(in_ch, out_ch, k, **kw):
  """Keras ``Conv2D(out, k, padding='same')`` with its default initializers."""
  return Conv2d(in_ch, out_ch, k, kernel_init=glorot_uniform(k * k * in_ch, k * k * out_ch), **kw)


class FeatureExtractor(nnx.Module):
  """Official ``feature_extractor``: ``sep1`` (in -> 32), concat(MaxPool 2, AvgPool 2), ``sep2``
  (64 -> 32, ReLU), nearest 2x upsampling. H and W must be even."""

  def __init__(self, in_ch: int, **kw):
    self.sep1 = SeparableConv2d(in_ch, 32, 3, **kw)
    self.sep2 = SeparableConv2d(64, 32, 3, **kw)

  def __call__(self, x):
    f = self.sep1(x)
    f = jnp.concatenate([_max_pool(f, 2), avg_pool(f, 2)], axis=-1)
    return _upsample(jax.nn.relu(self.sep2(f)))


class Alignment(nnx.Module):
  """Official ``alingment``: ``r = ReLU(conv_ref(ref))``; ``x * ReLU(conv_mul(r)) + ReLU(conv_add(r))``."""

  def __init__(self, **kw):
    self.conv_ref = _conv(32, 32, 3, **kw)
    self.conv_mul = _conv(32, 32, 3, **kw)
    self.conv_add = _conv(32, 32, 3, **kw)

  def __call__(self, x, ref):
    r = jax.nn.relu(self.conv_ref(ref))
    return x * jax.nn.relu(self.conv_mul(r)) + jax.nn.relu(self.conv_add(r))


class Attention(nnx.Module):
  """Official ``attention``: ``sigmoid(sep2(ReLU(sep1(concat(x, ref)))))``, 64 -> 64 -> 32."""

  def __init__(self, **kw):
    self.sep1 = SeparableConv2d(64, 64, 3, **kw)
    self.sep2 = SeparableConv2d(64, 32, 3, **kw)

  def __call__(self, x, ref):
    return jax.nn.sigmoid(self.sep2(jax.nn.relu(self.sep1(jnp.concatenate([x, ref], axis=-1)))))


class DRDBStem(nnx.Module):
  """VAM+DRDB stem (see module docstring): ``x + conv_out(DRDB^n(conv_in([x, ref])))``; the DRDBs
  run folded (``polyphase=True``) or dilated, with identical results. H and W must be even."""

  def __init__(self, *, blocks: int, channels: int, growth: int, layers: int, reference: bool,
               polyphase: bool, dense_form: str = "scatter", **kw):
    self.reference = reference
    self.polyphase = polyphase
    self.conv_in = Conv2d(12 if reference else 6, channels, 3, **kw)
    self.drdbs = nnx.List([DRDB(channels, growth, layers, dilation=2, form=dense_form, **kw) for _ in range(blocks)])
    self.conv_out = Conv2d(channels, 6, 3, kernel_init=nnx.initializers.zeros, **kw)

  def __call__(self, x, ref):
    h = self.conv_in(jnp.concatenate([x, ref], axis=-1) if self.reference else x)
    if self.polyphase:
      h = polyphase_fold(h, 2)
    for drdb in self.drdbs:
      h = drdb(h, folded=self.polyphase)
    if self.polyphase:
      h = polyphase_unfold(h, 2)
    return x.astype(h.dtype) + self.conv_out(h)


class VAMFeatures(nnx.Module):
  """Everything up to the official 224-channel feature map. Stable attribute names:

  ``stem`` (:class:`DRDBStem` or None), ``va_short``/``va_long`` (visual attention FEs on the masked
  frames), ``ref_align``/``ref_attn`` (reference FEs of the medium frame), ``short_ldr``/``long_ldr``
  and ``short_aligned``/``long_aligned`` (FEs of channels 0:3 / 3:6), ``align_short``/``align_long``
  (:class:`Alignment`), ``attn_short``/``attn_long`` (:class:`Attention`).

  ``__call__(low, medium, high, low_mask, high_mask)``: official inputs (frames ``(B, H, W, 6)``,
  masks ``(B, H, W, 2)``, H and W even) -> ``(B, H, W, 224)`` ``[align_s, attn_s, align_l, attn_l,
  visual_attention, reference]``.
  """

  def __init__(self, *, stem: DRDBStem | None = None, **kw):
    self.stem = stem
    self.va_short, self.va_long = FeatureExtractor(6, **kw), FeatureExtractor(6, **kw)
    self.ref_align, self.ref_attn = FeatureExtractor(6, **kw), FeatureExtractor(6, **kw)
    self.short_ldr, self.short_aligned = FeatureExtractor(3, **kw), FeatureExtractor(3, **kw)
    self.align_short, self.attn_short = Alignment(**kw), Attention(**kw)
    self.long_ldr, self.long_aligned = FeatureExtractor(3, **kw), FeatureExtractor(3, **kw)
    self.align_long, self.attn_long = Alignment(**kw), Attention(**kw)

  def __call__(self, low, medium, high, low_mask, high_mask):
    if self.stem is not None:
      b = low.shape[0]
      out = self.stem(jnp.concatenate([low, medium, high]), jnp.concatenate([medium] * 3))
      low, medium, high = out[:b], out[b:2 * b], out[2 * b:]
    low_mask = jnp.concatenate([low_mask] * 3, axis=-1).astype(low.dtype)
    high_mask = jnp.concatenate([high_mask] * 3, axis=-1).astype(high.dtype)
    va = self.va_short(low * low_mask) + self.va_long(high * high_mask)
    r_align, r_attn = self.ref_align(medium), self.ref_attn(medium)
    align_s = self.align_short(self.short_ldr(low[..., :3]), r_align)
    attn_s = self.attn_short(self.short_aligned(low[..., 3:]), r_attn)
    align_l = self.align_long(self.long_ldr(high[..., :3]), r_align)
    attn_l = self.attn_long(self.long_aligned(high[..., 3:]), r_attn)
    return jnp.concatenate([align_s, attn_s, align_l, attn_l, va, r_align, r_attn], axis=-1)


class Reconstruction(nnx.Module):
  """Official ``reconstruction``: ``enc``/``bn`` (4 levels), ``dec`` (4 levels), ``out`` (1x1)."""

  def __init__(self, **kw):
    bn_kw = {k: kw[k] for k in ("dtype", "param_dtype", "rngs")}
    self.enc = nnx.List([SeparableConv2d(i, o, 3, **kw)
                         for i, o in ((224, 64), (128, 128), (256, 256), (512, 256))])
    self.bn = nnx.List([nnx.BatchNorm(c, momentum=0.99, epsilon=1e-3, **bn_kw) for c in (64, 128, 256, 256)])
    self.dec = nnx.List([SeparableConv2d(i, o, 3, **kw)
                         for i, o in ((608, 256), (352, 128), (224, 64), (160, 32))])
    self.out = SeparableConv2d(32, 3, 1, **kw)

  def __call__(self, feats, use_running_average=None):
    va, ref = feats[..., 128:160], feats[..., 160:]
    x = feats
    for conv, bn in zip(self.enc, self.bn):
      x = jax.nn.relu(bn(conv(x), use_running_average=use_running_average))
      x = jnp.concatenate([avg_pool(x, 2), _max_pool(x, 2)], axis=-1)
    for k, conv in zip((16, 8, 4, 2), self.dec):
      x = jnp.concatenate([x, avg_pool(va, k).astype(x.dtype), avg_pool(ref, k).astype(x.dtype)], axis=-1)
      x = _upsample(jax.nn.relu(conv(x)))
    return jax.nn.relu(self.out(x))


class Refinement(nnx.Module):
  """Official ``refinement``: ``proj`` (64 -> 3, ReLU) of the reference features, ``convs`` (3 pairs
  of SepConv(16), the second with ReLU, each pair fed ``concat(x, proj)``), ``final`` (1x1 Conv2D,
  Keras name ``Final_output``). Returns the logits (pre-sigmoid)."""

  def __init__(self, out_ch: int = 3, **kw):
    self.proj = SeparableConv2d(64, 3, 3, **kw)
    self.convs = nnx.List([SeparableConv2d(i, 16, 3, **kw) for i in (6, 16, 19, 16, 19, 16)])
    if out_ch == 3:
      self.final = _conv(16, 3, 1, **kw)
    else:  # the merge head's 6 outputs (not an official layer): zero at initialisation
      self.final = Conv2d(16, out_ch, 1, kernel_init=nnx.initializers.zeros, **kw)

  def __call__(self, ref, x):
    p = jax.nn.relu(self.proj(ref))
    for i in range(3):
      x = self.convs[2 * i](jnp.concatenate([x, p.astype(x.dtype)], axis=-1))
      x = jax.nn.relu(self.convs[2 * i + 1](x))
    return self.final(x)


# --------------------------------------------------------------------------------------------------
# The model
# --------------------------------------------------------------------------------------------------


class HDRVAM(nnx.Module):
  """HDR-VAM; with ``drdb_blocks > 0`` the project's VAM+DRDB (module docstring).

  ``__call__(frames (B, 3, H, W, 3) in [0, 1], exposures (B, 3), train=None) -> (B, H, W, 3)``
  float32, any H, W (zero-padded centred to ``pad_multiple``, a multiple of 16, and cropped back).
  ``output_head``: ``'exposure'`` (default, project convention) ``sigmoid(z) * max_radiance`` = linear
  HDR relative to the medium frame; ``'logit'`` the official mapping ``max(z, 0) ** gamma`` (z = logit
  of the official sigmoid output = gamma-domain HDR), linear HDR; ``'sigmoid'`` the raw ``sigmoid(z)``
  (official target domain ``sigmoid(gt_gamma)``); ``'merge'`` (not official) a zero-initialised 6-channel
  last layer giving merge-weight gains and a residual bounded by ``merge_residual`` in the mu-law domain
  (:func:`hdr_math.merge_head`: untrained, the classical merge). ``train``: None uses the module mode
  (``model.train()`` / ``model.eval()``), True/False forces batch / moving BatchNorm statistics.
  """

  def __init__(self, *, drdb_blocks: int = 0, drdb_channels: int = 64, drdb_growth: int = 32,
               drdb_layers: int = 4, drdb_reference: bool = True, gamma: float = hdr_math.GAMMA,
               output_head: str = "exposure", merge_residual: float = 0.25, polyphase: bool = True,
               dense_form: str = "scatter",
               pad_multiple: int = 32, dtype=jnp.float32, param_dtype=jnp.float32, rngs: nnx.Rngs):
    if output_head not in OUTPUT_HEADS:
      raise ValueError(f"output_head must be one of {OUTPUT_HEADS}, got {output_head!r}")
    if pad_multiple % _MIN_MULTIPLE:
      raise ValueError(f"pad_multiple must be a multiple of {_MIN_MULTIPLE}, got {pad_multiple}")
    kw = dict(dtype=dtype, param_dtype=param_dtype, rngs=rngs)
    stem = None
    if drdb_blocks > 0:
      stem = DRDBStem(blocks=drdb_blocks, channels=drdb_channels, growth=drdb_growth, layers=drdb_layers,
                      reference=drdb_reference, polyphase=polyphase, dense_form=dense_form, **kw)
    self.fe = VAMFeatures(stem=stem, **kw)
    self.recon = Reconstruction(**kw)
    self.refine = Refinement(6 if output_head == "merge" else 3, **kw)
    self.gamma = gamma
    self.output_head = output_head
    self.merge_residual = merge_residual
    self.pad_multiple = pad_multiple

  def logits(self, low, medium, high, low_mask, high_mask, train: bool | None = None):
    """Official-input forward to the pre-sigmoid output ``z`` (H, W multiples of 16)."""
    h, w = low.shape[1:3]
    if h % _MIN_MULTIPLE or w % _MIN_MULTIPLE:
      raise ValueError(f"HDR-VAM needs H and W multiples of {_MIN_MULTIPLE}, got {h}x{w}")
    use_running_average = None if train is None else not train
    feats = self.fe(low, medium, high, low_mask, high_mask)
    x = self.recon(feats, use_running_average)
    return self.refine(feats[..., 160:], x).astype(jnp.float32)

  def forward_official(self, low, medium, high, low_mask, high_mask, train: bool | None = None):
    """The official Keras model: inputs ``input_low``, ``input_medium``, ``input_high`` ``(B, H, W,
    6)`` and ``input_low_mask``, ``input_high_mask`` ``(B, H, W, 2)`` -> ``Final_output`` (sigmoid)."""
    return jax.nn.sigmoid(self.logits(low, medium, high, low_mask, high_mask, train))

  def _padded_inputs(self, frames, exposures):
    inputs = vam_inputs(frames, exposures, self.gamma)
    padded = [_pad_centered(x, self.pad_multiple) for x in inputs]
    return [x for x, _ in padded], padded[0][1]

  def features(self, frames, exposures):
    """The 224-channel feature map ``(B, H, W, 224)`` (cropped to the input size)."""
    h, w = frames.shape[2:4]
    inputs, (top, left) = self._padded_inputs(frames, exposures)
    return self.fe(*inputs)[:, top:top + h, left:left + w]

  def __call__(self, frames, exposures, train: bool | None = None):
    h, w = frames.shape[2:4]
    inputs, (top, left) = self._padded_inputs(frames, exposures)
    z = self.logits(*inputs, train=train)[:, top:top + h, left:left + w]
    if self.output_head == "merge":
      return hdr_math.merge_head(frames, exposures, z, self.merge_residual, self.gamma)
    if self.output_head == "logit":
      return hdr_math.gamma_decode(z, self.gamma)
    s = jax.nn.sigmoid(z)
    if self.output_head == "sigmoid":
      return s
    return s * hdr_math.max_radiance(exposures)[:, None, None, None].astype(jnp.float32)


VAM_DRDB_DEFAULTS = dict(drdb_blocks=2, drdb_channels=64, drdb_growth=32, drdb_layers=4, drdb_reference=True)


def vam(**kw) -> HDRVAM:
  """Registry constructor for ``'vam'``: plain HDR-VAM."""
  return HDRVAM(**kw)


def vam_drdb(**kw) -> HDRVAM:
  """Registry constructor for ``'vam_drdb'``: :data:`VAM_DRDB_DEFAULTS`, overridable by ``kw``."""
  return HDRVAM(**{**VAM_DRDB_DEFAULTS, **kw})


# --------------------------------------------------------------------------------------------------
# Official Keras weights
# --------------------------------------------------------------------------------------------------


def keras_layers(model: HDRVAM) -> dict[str, list]:
  """The model's modules per Keras layer type, in the official ``model.py`` creation order (the order
  of Keras' automatic name suffixes): ``separable_conv2d`` (36), ``conv2d`` (6),
  ``batch_normalization`` (4) and ``Final_output`` (1). The DRDB stem has no Keras counterpart."""
  fe, rec, ref = model.fe, model.recon, model.refine
  fes = [fe.va_short, fe.va_long, fe.ref_align, fe.ref_attn]
  seps = [s for f in fes for s in (f.sep1, f.sep2)]
  for ldr, aligned, attn in ((fe.short_ldr, fe.short_aligned, fe.attn_short),
                             (fe.long_ldr, fe.long_aligned, fe.attn_long)):
    seps += [ldr.sep1, ldr.sep2, aligned.sep1, aligned.sep2, attn.sep1, attn.sep2]
  seps += [*rec.enc, *rec.dec, rec.out, ref.proj, *ref.convs]
  convs = [c for a in (fe.align_short, fe.align_long) for c in (a.conv_ref, a.conv_mul, a.conv_add)]
  return {"separable_conv2d": seps, "conv2d": convs, "batch_normalization": list(rec.bn),
          "Final_output": [ref.final]}


def keras_weights(module) -> dict:
  """``{keras weight name: (nnx.Variable, to_keras, from_keras)}`` for one Keras-mapped module."""
  same = (lambda a: a, lambda a: a)
  if isinstance(module, SeparableConv2d):
    swap = (lambda a: a.transpose(0, 1, 3, 2),) * 2  # (k, k, 1, in) <-> Keras (k, k, in, 1)
    return {"depthwise_kernel": (module.depthwise.kernel, *swap),
            "pointwise_kernel": (module.pointwise.kernel, *same), "bias": (module.pointwise.bias, *same)}
  if isinstance(module, Conv2d):
    return {"kernel": (module.kernel, *same), "bias": (module.bias, *same)}
  return {"gamma": (module.scale, *same), "beta": (module.bias, *same),
          "moving_mean": (module.mean, *same), "moving_variance": (module.var, *same)}


def _h5_attr_list(group, name):
  """A Keras HDF5 string-list attribute, also when Keras split it into ``name0``, ``name1``, ..."""
  if name in group.attrs:
    values = list(group.attrs[name])
  else:
    values, i = [], 0
    while f"{name}{i}" in group.attrs:
      values += list(group.attrs[f"{name}{i}"])
      i += 1
  return [v.decode("utf8") if isinstance(v, bytes) else str(v) for v in values]


def read_keras_h5(path) -> dict[str, dict[str, np.ndarray]]:
  """``{layer name: {weight name: array}}`` from a Keras HDF5 file (Keras 2 ``model.save``/
  ``save_weights`` ``.h5``, or Keras 3's legacy ``.h5``); weight names without scope and ``:0``."""
  import h5py  # optional dependency (extra 'keras')

  with h5py.File(path, "r") as f:
    root = f["model_weights"] if "model_weights" in f else f
    names = _h5_attr_list(root, "layer_names")
    if not names:
      raise ValueError(f"{path}: not a Keras HDF5 weights file (no 'layer_names'); a Keras 3 '.weights.h5' "
                       "names layers in Functional order, which cannot be mapped: save with model.save('x.h5')")
    layers = {}
    for name in names:
      g = root[name]
      layers[name] = {wn.split("/")[-1].split(":")[0]: np.asarray(g[wn]) for wn in _h5_attr_list(g, "weight_names")}
  return layers


def load_keras_h5(model: HDRVAM, path) -> None:
  """Loads the official Keras HDR-VAM weights into ``model`` (in place; the DRDB stem is left as is).

  Layers are matched per type by the numeric suffix of their automatic Keras names (creation order,
  robust to the offset that the official ``model.py``'s import-time ``model()`` call adds), plus
  ``Final_output``. Raises ValueError listing every missing, extra or mis-shaped weight; nothing is
  assigned unless everything matches."""
  layers = read_keras_h5(path)
  found = {kind: [] for kind in ("separable_conv2d", "conv2d", "batch_normalization")}
  errors, final = [], []
  for name, weights in layers.items():
    if not weights:
      continue
    m = re.fullmatch(r"(separable_conv2d|conv2d|batch_normalization)(?:_(\d+))?", name)
    if name == "Final_output":
      final.append((name, weights))
    elif m:
      found[m[1]].append((int(m[2] or 0), name, weights))
    else:
      errors.append(f"unexpected layer with weights: {name!r} ({sorted(weights)})")
  found = {k: [(n, w) for _, n, w in sorted(v)] for k, v in found.items()}
  found["Final_output"] = final
  updates = []
  for kind, modules in keras_layers(model).items():
    got = found[kind]
    if len(got) != len(modules):
      errors.append(f"{kind}: expected {len(modules)} layers, file has {len(got)} ({[n for n, _ in got]})")
      continue
    for module, (name, weights) in zip(modules, got):
      spec = keras_weights(module)
      for wname in sorted(set(weights) - set(spec)):
        errors.append(f"{name}: unexpected weight {wname!r}")
      for wname, (var, to_keras, from_keras) in spec.items():
        want = to_keras(np.zeros(var.get_value().shape)).shape
        if wname not in weights:
          errors.append(f"{name}: missing weight {wname!r} {want}")
        elif weights[wname].shape != want:
          errors.append(f"{name}/{wname}: expected shape {want}, file has {weights[wname].shape}")
        else:
          updates.append((var, from_keras(weights[wname])))
  if errors:
    raise ValueError(f"{path}: Keras weights do not match HDR-VAM:\n  " + "\n  ".join(errors))
  for var, value in updates:
    var.set_value(jnp.asarray(value, var.get_value().dtype))
