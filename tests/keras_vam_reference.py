"""NumPy (float64) transcription of the official HDR-VAM Keras ``model.py`` in inference mode, for
weight-parity tests without TensorFlow.

It follows the official functions line by line and takes each layer's weights by the name Keras would
give it automatically (``separable_conv2d``, ``separable_conv2d_1``, ...; per-type counters in
creation order, optionally offset as when ``model.py``'s import-time ``model()`` call ran first), so
it checks the port's wiring and weight layout independently of ``hdr_jax.models.vam``.
"""

from __future__ import annotations

import numpy as np


def keras_name(kind: str, index: int) -> str:
  """Keras' automatic layer name: ``kind`` for the first layer, then ``kind_1``, ``kind_2``, ..."""
  return kind if index == 0 else f"{kind}_{index}"


def _shift_sum(x, k, fn):
  """'same' k x k (odd) window sum ``sum_{dy,dx} fn(x_shifted, dy, dx)`` with zero padding."""
  p = k // 2
  h, w = x.shape[1:3]
  xp = np.pad(x, ((0, 0), (p, p), (p, p), (0, 0)))
  return sum(fn(xp[:, dy:dy + h, dx:dx + w], dy, dx) for dy in range(k) for dx in range(k))


def _relu(x):
  return np.maximum(x, 0.0)


def _sigmoid(x):
  return 1.0 / (1.0 + np.exp(-x))


def _max_pool(x, k):
  b, h, w, c = x.shape
  return x.reshape(b, h // k, k, w // k, k, c).max(axis=(2, 4))


def _avg_pool(x, k):
  b, h, w, c = x.shape
  return x.reshape(b, h // k, k, w // k, k, c).mean(axis=(2, 4))


def _up(x):
  return x.repeat(2, axis=1).repeat(2, axis=2)


def _cat(xs):
  return np.concatenate(xs, axis=-1)


class KerasVAM:
  """``KerasVAM(weights, offsets)(low, medium, high, low_mask, high_mask) -> (features, logits,
  output)``; ``weights``: ``{layer name: {weight name: array}}`` as read from the Keras HDF5 file."""

  def __init__(self, weights, offsets=None):
    self.w = weights
    self.next = dict(offsets or {})

  def _take(self, kind):
    i = self.next.get(kind, 0)
    self.next[kind] = i + 1
    return self.w[keras_name(kind, i)]

  def sep(self, x, filters, k=3, act=None):
    w = self._take("separable_conv2d")
    dk, pk = w["depthwise_kernel"], w["pointwise_kernel"]
    assert dk.shape == (k, k, x.shape[-1], 1) and pk.shape == (1, 1, x.shape[-1], filters)
    y = _shift_sum(x, k, lambda xs, dy, dx: xs * dk[dy, dx, :, 0])
    y = y @ pk[0, 0] + w["bias"]
    return _relu(y) if act == "relu" else _sigmoid(y) if act == "sigmoid" else y

  def conv(self, x, filters, k, w=None):
    w = w or self._take("conv2d")
    assert w["kernel"].shape == (k, k, x.shape[-1], filters)
    return _shift_sum(x, k, lambda xs, dy, dx: xs @ w["kernel"][dy, dx]) + w["bias"]

  def bn(self, x):
    w = self._take("batch_normalization")
    return (x - w["moving_mean"]) / np.sqrt(w["moving_variance"] + 1e-3) * w["gamma"] + w["beta"]

  def feature_extractor(self, x):
    f = self.sep(x, 32)
    f = _cat([_max_pool(f, 2), _avg_pool(f, 2)])
    return _up(self.sep(f, 32, act="relu"))

  def alingment(self, xi, xr):
    r = _relu(self.conv(xr, 32, 3))
    r1 = _relu(self.conv(r, 32, 3))
    r2 = _relu(self.conv(r, 32, 3))
    return xi * r1 + r2

  def attention(self, xi, xr):
    x = self.sep(_cat([xi, xr]), 64, act="relu")
    return self.sep(x, 32, act="sigmoid")

  def alignment_attention(self, xi, r_align, r_attn):
    xi_align = self.feature_extractor(xi[..., 0:3])
    xi_attn = self.feature_extractor(xi[..., 3:])
    return self.alingment(xi_align, r_align), self.attention(xi_attn, r_attn)

  def reconstruction(self, inps, addition):
    reference = inps[..., -64:]
    x = inps
    for filters in (64, 128, 256, 256):
      x = _relu(self.bn(self.sep(x, filters)))
      x = _cat([_avg_pool(x, 2), _max_pool(x, 2)])
    for filters, k in ((256, 16), (128, 8), (64, 4), (32, 2)):
      x = _cat([x, _avg_pool(addition, k), _avg_pool(reference, k)])
      x = _up(self.sep(x, filters, act="relu"))
    return self.sep(x, 3, k=1, act="relu")

  def refinement(self, inp, reconstructed):
    inp = self.sep(inp, 3, act="relu")
    x = reconstructed
    for _ in range(3):
      x = self.sep(_cat([x, inp]), 16)
      x = self.sep(x, 16, act="relu")
    return self.conv(x, 3, 1, w=self.w["Final_output"])

  def __call__(self, low, medium, high, low_mask, high_mask):
    low, medium, high, low_mask, high_mask = (np.asarray(a, np.float64) for a in (low, medium, high, low_mask, high_mask))
    exp_low, exp_high = _cat([low_mask] * 3), _cat([high_mask] * 3)
    add = self.feature_extractor(low * exp_low) + self.feature_extractor(high * exp_high)
    r_align = self.feature_extractor(medium)
    r_attn = self.feature_extractor(medium)
    reference = _cat([r_align, r_attn])
    align_low, attention_low = self.alignment_attention(low, r_align, r_attn)
    align_high, attention_high = self.alignment_attention(high, r_align, r_attn)
    inps = _cat([align_low, attention_low, align_high, attention_high, add, reference])
    reconstructed = self.reconstruction(inps, add)
    logits = self.refinement(reference, reconstructed)
    return inps, logits, _sigmoid(logits)
