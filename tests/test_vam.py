"""Tests of hdr_jax.models.vam: official inputs (Otsu masks), wiring against a NumPy transcription of the
official Keras model, Keras HDF5 weights, VAM+DRDB, BatchNorm modes, bf16."""

from __future__ import annotations

import math
import random

import cv2
import h5py
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx

from hdr_jax import hdr_math
from hdr_jax.models import vam
from tests.keras_vam_reference import KerasVAM, keras_name

SMALL_DRDB = dict(drdb_blocks=1, drdb_channels=8, drdb_growth=4, drdb_layers=2)
KERAS_OFFSETS = {"separable_conv2d": 36, "conv2d": 6, "batch_normalization": 4}  # after model.py's import-time model()

# The official layers in model.py's creation order, transcribed from its source: SeparableConv2D
# (in, filters, kernel), Conv2D (in, filters, kernel), BatchNormalization channels.
_FE6, _FE3, _ATT = [(6, 32, 3), (64, 32, 3)], [(3, 32, 3), (64, 32, 3)], [(64, 64, 3), (64, 32, 3)]
OFFICIAL_SEP = (_FE6 * 4 + (_FE3 * 2 + _ATT) * 2
                + [(224, 64, 3), (128, 128, 3), (256, 256, 3), (512, 256, 3),
                   (608, 256, 3), (352, 128, 3), (224, 64, 3), (160, 32, 3), (32, 3, 1)]
                + [(64, 3, 3), (6, 16, 3), (16, 16, 3), (19, 16, 3), (16, 16, 3), (19, 16, 3), (16, 16, 3)])
OFFICIAL_CONV = [(32, 32, 3)] * 6 + [(16, 3, 1)]  # alignment x2, then Final_output
OFFICIAL_BN = [64, 128, 256, 256]

_JITTED = {}


def jit_call(model, method, *args, **static):
  """``getattr(model, method)(*args, **static)`` under ``jax.jit`` via nnx.split/merge (compiled once
  per graph, method and static arguments)."""
  graphdef, state = nnx.split(model)
  key = (graphdef, method, tuple(sorted(static.items())))
  if key not in _JITTED:
    _JITTED[key] = jax.jit(lambda st, *a: getattr(nnx.merge(graphdef, st), method)(*a, **static))
  return _JITTED[key](state, *args)


def randomize(model, seed):
  """Random parameters and BatchNorm statistics with useful scales (fast: no XLA initialisers)."""
  rng = np.random.default_rng(seed)
  for path, node in nnx.iter_graph(model):
    if isinstance(node, nnx.Variable):
      shape, name = node.get_value().shape, path[-1]
      if name == "kernel":
        value = rng.normal(0.0, 1.0 / math.sqrt(math.prod(shape[:3])), shape)
      elif name in ("var", "scale"):
        value = rng.uniform(0.5, 1.5, shape)
      else:
        value = rng.normal(0.0, 0.1, shape)
      node.set_value(jnp.asarray(value, node.get_value().dtype))
  return model


def make(seed=0, **cfg):
  """An HDRVAM with random weights (abstract construction, then :func:`randomize`)."""
  return randomize(nnx.eval_shape(lambda: vam.HDRVAM(rngs=nnx.Rngs(0), **cfg)), seed)


inputs_of = jax.jit(vam.vam_inputs)


def random_scene(b, h, w, seed=0):
  rng = np.random.default_rng(seed)
  # Smooth-ish content with bright and dark areas, quantised to 8 bits as the official PNG frames.
  base = rng.random((b, 1, h, w, 3)) * np.linspace(0.1, 1.0, w)[:, None]
  gains = np.array([0.25, 1.0, 4.0])[None, :, None, None, None]
  noise = rng.normal(0, 0.02, (b, 3, h, w, 3))
  frames = np.round(np.clip(base ** (1 / 2.24) * gains ** (1 / 2.24) + noise, 0, 1) * 255) / 255
  exposures = np.array([[-2.0, 0.0, 2.0], [-3.0, -1.0, 1.0]] * b, np.float32)[:b]
  return frames.astype(np.float32), exposures


def count(module, kind):
  return sum(x.size for x in jax.tree.leaves(nnx.state(module, kind)))


# --------------------------------------------------------------------------------------------------
# Inputs: luma, Otsu, masks
# --------------------------------------------------------------------------------------------------


def otsu_numpy(y):
  """Direct transcription of OpenCV's getThreshVal_Otsu (float64, first maximum)."""
  hist = np.bincount(y.ravel(), minlength=256).astype(np.float64)
  scale = 1.0 / y.size
  mu = sum(i * hist[i] for i in range(256)) * scale
  mu1 = q1 = max_sigma = 0.0
  max_val = 0
  for i in range(256):
    p_i = hist[i] * scale
    mu1 *= q1
    q1 += p_i
    q2 = 1.0 - q1
    if min(q1, q2) < np.finfo(np.float32).eps or max(q1, q2) > 1.0 - np.finfo(np.float32).eps:
      continue
    mu1 = (mu1 + i * p_i) / q1
    mu2 = (mu - q1 * mu1) / q2
    sigma = q1 * q2 * (mu1 - mu2) ** 2
    if sigma > max_sigma:
      max_sigma, max_val = sigma, i
  return max_val


def test_luma_matches_cv2():
  rgb = np.random.default_rng(0).integers(0, 256, (3, 40, 50, 3), dtype=np.uint8)
  want = np.stack([cv2.cvtColor(im, cv2.COLOR_RGB2YUV)[..., 0] for im in rgb])
  np.testing.assert_array_equal(np.asarray(vam.luma_u8(rgb / 255.0)), want)


def test_otsu_matches_numpy_and_cv2():
  rng = np.random.default_rng(1)
  h, w = 48, 64
  images = [
      rng.integers(0, 256, (h, w)),
      np.concatenate([rng.normal(50, 12, h * w // 3), rng.normal(190, 25, h * w - h * w // 3)]),
      rng.normal(120, 6, h * w),
      rng.gamma(1.5, 20, h * w),
      np.full(h * w, 77),
      np.where(rng.random(h * w) < 0.2, 10, 240),
      np.concatenate([rng.normal(30, 5, h * w // 10), rng.normal(100, 30, h * w - h * w // 10)]),
      rng.integers(0, 256, (h, w)) ** 2 // 255,
  ]
  y = np.stack([np.clip(np.round(im), 0, 255).astype(np.uint8).reshape(h, w) for im in images])
  got = np.asarray(jax.jit(vam.otsu_threshold)(y))
  assert got.dtype == np.int32 and got.shape == (len(images),)
  want = [otsu_numpy(im) for im in y]
  want_cv2 = [int(cv2.threshold(im, 0, 255, cv2.THRESH_BINARY + cv2.THRESH_OTSU)[0]) for im in y]
  assert want == want_cv2
  np.testing.assert_array_equal(got, want)
  assert got[4] == 0  # constant image
  assert 10 <= got[5] < 240  # two values: any split between them
  # Leading axes are kept.
  np.testing.assert_array_equal(np.asarray(vam.otsu_threshold(y.reshape(2, 4, h, w))), np.reshape(want, (2, 4)))


def test_official_inputs_and_masks():
  frames, exposures = random_scene(2, 24, 40, seed=3)
  low, medium, high, low_mask, high_mask = (np.asarray(a) for a in inputs_of(frames, exposures))
  assert low.shape == medium.shape == high.shape == (2, 24, 40, 6) and low_mask.shape == (2, 24, 40, 2)
  for b in range(2):
    ev = exposures[b] - exposures[b, 1]
    for x, i in ((low, 0), (high, 2)):
      np.testing.assert_array_equal(x[b, ..., :3], frames[b, i])
      want = ((frames[b, i] ** 2.24) * 2.0 ** (-ev[i])) ** (1 / 2.24)  # official utils.ev_alignment
      np.testing.assert_allclose(x[b, ..., 3:], want, rtol=2e-6, atol=1e-6)
    np.testing.assert_array_equal(medium[b], np.concatenate([frames[b, 1]] * 2, -1))
    # Official utils.image_read: Otsu on the YUV luma of the uint8 RGB image.
    for mask, i, mode in ((low_mask, 0, cv2.THRESH_BINARY), (high_mask, 2, cv2.THRESH_BINARY_INV)):
      u8 = np.round(frames[b, i] * 255).astype(np.uint8)
      _, want = cv2.threshold(cv2.cvtColor(u8, cv2.COLOR_RGB2YUV)[..., 0], 0, 255, mode + cv2.THRESH_OTSU)
      np.testing.assert_array_equal(mask[b], np.stack([want > 0] * 2, -1).astype(np.float32))
      assert 0 < mask[b].mean() < 1
    # Short keeps the bright areas, long the dark ones.
    y_s, y_l = np.asarray(vam.luma_u8(frames[b, 0])), np.asarray(vam.luma_u8(frames[b, 2]))
    assert y_s[low_mask[b, ..., 0] > 0].min() > y_s[low_mask[b, ..., 0] == 0].max()
    assert y_l[high_mask[b, ..., 0] > 0].max() < y_l[high_mask[b, ..., 0] == 0].min()


# --------------------------------------------------------------------------------------------------
# Architecture
# --------------------------------------------------------------------------------------------------


def test_param_counts_and_official_layer_table():
  plain = nnx.eval_shape(lambda: vam.vam(rngs=nnx.Rngs(0)))
  assert count(plain, nnx.Param) == 568_857 and count(plain, nnx.BatchStat) == 1_408
  assert count(plain.fe, nnx.Param) == 93_252
  drdb = nnx.eval_shape(lambda: vam.vam_drdb(rngs=nnx.Rngs(0)))
  assert count(drdb.fe.stem, nnx.Param) == 293_446
  assert count(drdb, nnx.Param) + count(drdb, nnx.BatchStat) == 863_711
  layers = vam.keras_layers(plain)
  assert [(s.depthwise.kernel.shape, s.pointwise.kernel.shape) for s in layers["separable_conv2d"]] == [
      ((k, k, 1, i), (1, 1, i, o)) for i, o, k in OFFICIAL_SEP]
  assert [c.kernel.shape for c in layers["conv2d"] + layers["Final_output"]] == [
      (k, k, i, o) for i, o, k in OFFICIAL_CONV]
  assert [bn.scale.shape[0] for bn in layers["batch_normalization"]] == OFFICIAL_BN
  assert all(bn.momentum == 0.99 and bn.epsilon == 1e-3 for bn in layers["batch_normalization"])
  # The Keras summary's total of the official layer table (non-trainable BN statistics included).
  keras_total = (sum(k * k * i + i * o + o for i, o, k in OFFICIAL_SEP)
                 + sum(k * k * i * o + o for i, o, k in OFFICIAL_CONV) + 4 * sum(OFFICIAL_BN))
  assert keras_total == 570_265 == count(plain, nnx.Param) + count(plain, nnx.BatchStat)


def test_keras_default_initialisation():
  sep = vam.SeparableConv2d(64, 32, 3, rngs=nnx.Rngs(0))
  conv = vam._conv(32, 16, 3, rngs=nnx.Rngs(1))
  # glorot_uniform with Keras' fans: depthwise (3, 3, 64, 1), pointwise (1, 1, 64, 32), conv (3, 3, 32, 16).
  for kernel, fan_in, fan_out in ((sep.depthwise.kernel, 9 * 64, 9), (sep.pointwise.kernel, 64, 32),
                                  (conv.kernel, 9 * 32, 9 * 16)):
    limit = math.sqrt(6 / (fan_in + fan_out))
    k = np.asarray(kernel[...])
    assert np.abs(k).max() <= limit and np.abs(k).max() > 0.9 * limit
    assert abs(k.std() - limit / math.sqrt(3)) < 0.1 * limit
  assert sep.depthwise.bias is None and not np.any(sep.pointwise.bias[...]) and not np.any(conv.bias[...])


def test_forward_any_size_heads_and_padding():
  model = make(seed=4)
  frames, exposures = random_scene(2, 19, 29, seed=4)

  def heads(m, fr, ex):
    outs = {}
    for head in ("exposure", "sigmoid", "logit"):  # the merge head has its own last layer: test_merge_head.py
      m.output_head = head
      outs[head] = m(fr, ex, train=False)
    inputs = [vam._pad_centered(x, m.pad_multiple)[0] for x in vam.vam_inputs(fr, ex)]
    return outs, m.logits(*inputs, train=False), m.forward_official(*inputs, train=False), m.features(fr, ex)

  graphdef, state = nnx.split(model)
  outs, z, official, feats = jax.jit(lambda st, fr, ex: heads(nnx.merge(graphdef, st), fr, ex))(state, frames, exposures)
  assert z.shape == (2, 32, 32, 3) and feats.shape == (2, 19, 29, vam.FEATURE_CHANNELS)
  np.testing.assert_allclose(official, jax.nn.sigmoid(z), rtol=1e-6)
  z = z[:, 6:25, 1:30]  # centred padding: 13 rows -> 6 top, 3 columns -> 1 left
  max_rad = np.array([4.0, 4.0])[:, None, None, None]
  np.testing.assert_allclose(outs["sigmoid"], jax.nn.sigmoid(z), rtol=1e-6)
  np.testing.assert_allclose(outs["exposure"], jax.nn.sigmoid(z) * max_rad, rtol=1e-6)
  np.testing.assert_allclose(outs["logit"], np.maximum(z, 0) ** 2.24, rtol=1e-5, atol=1e-7)
  for out in outs.values():
    assert out.shape == (2, 19, 29, 3) and out.dtype == jnp.float32 and np.isfinite(out).all()
  assert float(jnp.std(z)) > 1e-2 and float(jnp.max(z)) > 0  # a non-degenerate network
  with pytest.raises(ValueError, match="multiples of 16"):
    model.logits(*(np.zeros((1, 24, 32, c), np.float32) for c in (6, 6, 6, 2, 2)))


def test_vam_drdb_polyphase_equals_dilated_and_starts_as_identity():
  # Real initialisation: the stem's output conv is zero, so an untrained stem is the identity.
  stem = vam.DRDBStem(blocks=1, channels=8, growth=4, layers=2, reference=True, polyphase=True, rngs=nnx.Rngs(0))
  assert not np.any(stem.conv_out.kernel[...]) and not np.any(stem.conv_out.bias[...])
  assert np.std(stem.conv_in.kernel[...]) > 0
  # Random weights (non-zero output conv): polyphase layout == dilated convolutions.
  model = make(seed=5, **SMALL_DRDB)
  graphdef, state = nnx.split(model.fe.stem)

  def both(st, x, ref):
    s = nnx.merge(graphdef, st)
    folded = s(x, ref)
    s.polyphase = False
    return folded, s(x, ref)

  rng = np.random.default_rng(5)
  x, ref = (jnp.asarray(rng.random((2, 12, 20, 6)), jnp.float32) for _ in range(2))
  folded, dilated = jax.jit(both)(state, x, ref)
  np.testing.assert_allclose(folded, dilated, rtol=1e-5, atol=1e-6)
  assert float(jnp.max(jnp.abs(folded - x))) > 1e-2
  # The stem feeds every branch of the VAM features; with the plain-VAM part of the state copied,
  # a zero output conv gives plain VAM exactly.
  plain = make(seed=6)
  nnx.update(model.fe, nnx.state(plain.fe))
  frames, exposures = random_scene(2, 32, 32, seed=5)
  inputs = inputs_of(frames, exposures)
  want = jit_call(plain.fe, "__call__", *inputs)
  assert not np.allclose(jit_call(model.fe, "__call__", *inputs), want, atol=1e-3)
  model.fe.stem.conv_out.kernel[...] = 0.0
  model.fe.stem.conv_out.bias[...] = 0.0
  np.testing.assert_allclose(jit_call(model.fe, "__call__", *inputs), want, rtol=1e-5, atol=1e-6)


def test_batchnorm_modes_and_jitted_grad_step():
  model = make(seed=7)  # nnx default after construction: training mode
  bns = list(model.recon.bn)
  assert not any(bn.use_running_average for bn in bns)
  for bn in bns:
    bn.mean[...], bn.var[...] = 0.0, 1.0
  frames, exposures = random_scene(2, 32, 32, seed=7)
  target = hdr_math.gamma_decode(jnp.asarray(frames[:, 1]) * 1.1)
  graphdef, params, rest = nnx.split(model, nnx.Param, ...)

  @jax.jit
  def step(params, rest):
    def loss_fn(p):
      m = nnx.merge(graphdef, p, rest, copy=True)  # copy: BatchStat mutated inside the grad trace
      loss = hdr_math.mu_law_l1(m(frames, exposures), target)
      return loss, nnx.state(m, nnx.BatchStat)
    (loss, stats), grads = jax.value_and_grad(loss_fn, has_aux=True)(params)
    return loss, stats, grads

  loss, stats, grads = step(params, rest)
  leaves = jax.tree.leaves(grads)
  assert np.isfinite(float(loss)) and all(np.isfinite(g).all() for g in leaves)
  assert sum(float(jnp.sum(jnp.abs(g))) for g in leaves) > 0
  mean0 = stats["recon"]["bn"][0]["mean"][...]
  assert float(jnp.max(jnp.abs(mean0))) > 0  # moving statistics updated (momentum 0.99)
  np.testing.assert_array_equal(model.recon.bn[0].mean[...], 0.0)  # functional: model untouched

  # Batch statistics make sample 0 depend on sample 1 in training mode, not in eval mode.
  other = frames.copy()
  other[1] = frames[1, :, ::-1]
  both = [jit_call(model, "logits", *inputs_of(f, exposures), train=t) for t in (True, False) for f in (frames, other)]
  assert not np.allclose(both[0][0], both[1][0], atol=1e-4)
  np.testing.assert_allclose(both[2][0], both[3][0], rtol=1e-5, atol=1e-6)
  model.eval()
  assert all(bn.use_running_average for bn in bns)
  model.train()
  assert not any(bn.use_running_average for bn in bns)


def test_max_pool_gradient_goes_to_one_maximum_per_window():
  rng = np.random.default_rng(10)
  x = rng.normal(size=(2, 6, 8, 3)).astype(np.float32)
  x[0, 0:2, 0:2, 0] = 0.0  # an all-equal window (as after a ReLU)
  x[1, 2:4, 4:6, 2] = [[0.5, 2.0], [2.0, -1.0]]  # a tie between two maxima
  for dtype in (jnp.float32, jnp.bfloat16):
    xd = jnp.asarray(x, dtype)
    np.testing.assert_array_equal(vam._max_pool(xd, 2), xd.reshape(2, 3, 2, 4, 2, 3).max(axis=(2, 4)))
  w = jnp.asarray(rng.uniform(1.0, 2.0, (2, 3, 4, 3)), jnp.float32)
  g = np.asarray(jax.jit(jax.grad(lambda v: jnp.sum(vam._max_pool(v, 2) * w)))(jnp.asarray(x)))
  windows = g.reshape(2, 3, 2, 4, 2, 3)
  # Exactly one element per window gets the whole gradient (JAX's rule for max splits it on ties).
  np.testing.assert_array_equal((windows != 0).sum(axis=(2, 4)), 1)
  np.testing.assert_array_equal(windows.sum(axis=(2, 4)), w)
  assert g[0, 0, 0, 0] == w[0, 0, 0, 0] and g[1, 2, 5, 2] == w[1, 1, 2, 2]  # the first maximum, row-major
  _, t = jax.jvp(lambda v: vam._max_pool(v, 2), (jnp.asarray(x),), (jnp.asarray(x) * 2,))
  np.testing.assert_array_equal(t, 2 * vam._max_pool(jnp.asarray(x), 2))


def test_vam_drdb_adam_steps_stay_finite():
  # Regression: the second training step of VAM+DRDB (stem output conv zero at the start, non-zero
  # after the first update) was reported to give NaN in the gradients with a finite loss.
  model = make(seed=9, drdb_blocks=2, drdb_channels=16, drdb_growth=8, drdb_layers=2)
  model.fe.stem.conv_out.kernel[...] = 0.0  # as initialised: the stem starts as the identity
  model.fe.stem.conv_out.bias[...] = 0.0
  opt = nnx.Optimizer(model, optax.adam(1e-3), wrt=nnx.Param)

  @nnx.jit
  def step(model, opt, frames, exposures, target):
    grads = nnx.grad(lambda m: hdr_math.mu_law_l1(m(frames, exposures), target))(model)
    opt.update(model, grads)
    return grads

  def finite(state):
    return all(np.isfinite(np.asarray(v)).all() for v in jax.tree.leaves(state))

  for i in range(3):
    frames, exposures = random_scene(2, 32, 32, seed=20 + i)
    target = hdr_math.gamma_decode(jnp.asarray(frames[:, 1]) * 1.1)
    grads = step(model, opt, frames, exposures, target)
    assert finite(grads), f"step {i}: non-finite gradients"
    assert finite(nnx.state(model)), f"step {i}: non-finite parameters or statistics"
    drdb = sum(float(jnp.sum(jnp.abs(v))) for v in jax.tree.leaves(grads["fe"]["stem"]["drdbs"]))
    # Step 0: the zero output conv blocks the stem's gradients; afterwards they flow.
    assert (drdb == 0) if i == 0 else (drdb > 0), (i, drdb)
  assert float(jnp.max(jnp.abs(model.fe.stem.conv_out.kernel[...]))) > 0


def test_bfloat16_close_to_float32():
  frames, exposures = random_scene(2, 32, 32, seed=8)
  inputs = inputs_of(frames, exposures)
  out = {}
  for dtype in (jnp.float32, jnp.bfloat16):
    model = make(seed=8, dtype=dtype)
    assert model.recon.enc[0].pointwise.kernel.dtype == jnp.float32
    out[dtype] = jit_call(model, "logits", *inputs, train=False)
  z32, z16 = out[jnp.float32], out[jnp.bfloat16]
  assert z16.dtype == jnp.float32
  # bf16 has an 8-bit mantissa: after ~25 layers the logits agree to a few percent of their spread.
  err = float(jnp.sqrt(jnp.mean((z16 - z32) ** 2)) / jnp.std(z32))
  assert err < 0.05, err
  assert float(jnp.max(jnp.abs(z16 - z32)) / jnp.std(z32)) < 0.3


# --------------------------------------------------------------------------------------------------
# Keras HDF5 weights
# --------------------------------------------------------------------------------------------------


def export_keras_h5(model, path, style="keras2", offsets=KERAS_OFFSETS, drop=None, bad_shape=None):
  """Writes ``model``'s weights as the official Keras model's ``model.save('weights.h5')`` would (TF
  2.13 / Keras 2 layout: ``model_weights/<layer>/<layer>/<weight>:0``; ``style='keras3'``: Keras 3's
  legacy h5 names ``model_weights/<layer>/<weight>``). Layer names get Keras' automatic per-type
  suffixes; weightless layers are included and the layer order is shuffled (Keras stores its
  topological order, which differs from creation order)."""
  layers = [("input_low", {}), ("concatenate", {}), ("max_pooling2d_3", {}), ("up_sampling2d", {})]
  for kind, modules in vam.keras_layers(model).items():
    for i, module in enumerate(modules):
      name = kind if kind == "Final_output" else keras_name(kind, i + offsets.get(kind, 0))
      weights = {w: np.asarray(to_keras(np.asarray(var[...])))
                 for w, (var, to_keras, _) in vam.keras_weights(module).items()}
      layers.append((name, weights))
  random.Random(0).shuffle(layers)
  with h5py.File(path, "w") as f:
    f.attrs["backend"], f.attrs["keras_version"] = b"tensorflow", b"2.13.1"
    root = f.create_group("model_weights")
    root.attrs["layer_names"] = [name.encode() for name, _ in layers if name != drop]
    for name, weights in layers:
      if name == drop:
        continue
      g = root.create_group(name)
      names = []
      for w, value in weights.items():
        if (name, w) == bad_shape:
          value = value[..., :-1]
        full = f"{name}/{w}:0" if style == "keras2" else w
        g.create_dataset(full, data=value)
        names.append(full.encode())
      g.attrs["weight_names"] = np.array(names, dtype="S") if names else np.zeros((0,), "S1")


def test_keras_h5_round_trip_matches_numpy_reference(tmp_path):
  source, target = make(seed=11), make(seed=12)
  path = tmp_path / "weights.h5"
  export_keras_h5(source, path)
  vam.load_keras_h5(target, path)
  for a, b in zip(jax.tree.leaves(nnx.state(source)), jax.tree.leaves(nnx.state(target))):
    np.testing.assert_array_equal(a, b)
  frames, exposures = random_scene(2, 32, 32, seed=11)
  inputs = inputs_of(frames, exposures)
  z = jit_call(target, "logits", *inputs, train=False)
  np.testing.assert_array_equal(z, jit_call(source, "logits", *inputs, train=False))
  feats = jit_call(target.fe, "__call__", *inputs)
  # Independent NumPy transcription of the official model.py on the same HDF5 file.
  ref_feats, ref_z, ref_out = KerasVAM(vam.read_keras_h5(path), KERAS_OFFSETS)(*inputs)
  scale = np.std(ref_z)
  assert scale > 1e-2
  np.testing.assert_allclose(feats, ref_feats, rtol=1e-4, atol=1e-4 * np.std(ref_feats))
  np.testing.assert_allclose(z, ref_z, rtol=1e-4, atol=1e-4 * scale)
  np.testing.assert_allclose(jax.nn.sigmoid(z), ref_out, atol=1e-6)

  # Keras 3 legacy names, no offset; also into VAM+DRDB (stem untouched).
  export_keras_h5(source, path, style="keras3", offsets={})
  drdb = make(seed=13, **SMALL_DRDB)
  stem_before = np.asarray(drdb.fe.stem.conv_in.kernel[...])
  vam.load_keras_h5(drdb, path)
  np.testing.assert_array_equal(drdb.refine.final.kernel[...], source.refine.final.kernel[...])
  np.testing.assert_array_equal(drdb.fe.attn_long.sep2.depthwise.kernel[...], source.fe.attn_long.sep2.depthwise.kernel[...])
  np.testing.assert_array_equal(drdb.fe.stem.conv_in.kernel[...], stem_before)


def test_keras_h5_errors(tmp_path):
  model = make(seed=14)
  path = tmp_path / "bad.h5"
  export_keras_h5(model, path, drop="conv2d_8", bad_shape=("separable_conv2d_40", "pointwise_kernel"))
  before = np.asarray(model.fe.va_short.sep1.pointwise.kernel[...])
  fresh = make(seed=15)
  with pytest.raises(ValueError) as info:
    vam.load_keras_h5(fresh, path)
  msg = str(info.value)
  assert "conv2d: expected 6 layers, file has 5" in msg
  assert "separable_conv2d_40/pointwise_kernel: expected shape (1, 1, 6, 32), file has (1, 1, 6, 31)" in msg
  assert not np.array_equal(fresh.fe.va_short.sep1.pointwise.kernel[...], before)  # nothing assigned
  with h5py.File(tmp_path / "k3.weights.h5", "w") as f:
    f.create_group("layers/separable_conv2d/vars").create_dataset("0", data=np.zeros((3, 3, 6, 1)))
  with pytest.raises(ValueError, match="no 'layer_names'"):
    vam.load_keras_h5(fresh, tmp_path / "k3.weights.h5")


@pytest.mark.parametrize("padding,dilation", [(1, 1), (0, 1), (2, 2)])
def test_depthwise_conv_as_shifted_macs_equals_grouped_convolution(padding, dilation):
  """layers.depthwise_conv (what SeparableConv2d's depthwise half runs) equals XLA's grouped
  convolution: values and both gradients, float32."""
  from hdr_jax.models.layers import depthwise_conv

  kx, kk, kg = jax.random.split(jax.random.key(3), 3)
  x = jax.random.normal(kx, (2, 9, 12, 5))
  kernel = jax.random.normal(kk, (3, 3, 1, 5))

  def conv(x, kernel):
    return jax.lax.conv_general_dilated(x, kernel, (1, 1), [(padding, padding)] * 2, rhs_dilation=(dilation,) * 2,
                                        dimension_numbers=("NHWC", "HWIO", "NHWC"), feature_group_count=5,
                                        precision=jax.lax.Precision.HIGHEST)

  y_ref = conv(x, kernel)
  y = depthwise_conv(x, kernel, padding, dilation)
  assert y.shape == y_ref.shape
  np.testing.assert_allclose(y, y_ref, atol=1e-5, rtol=1e-5)
  g = jax.random.normal(kg, y.shape)
  grads = jax.grad(lambda a, b: jnp.sum(depthwise_conv(a, b, padding, dilation) * g), argnums=(0, 1))(x, kernel)
  grads_ref = jax.grad(lambda a, b: jnp.sum(conv(a, b) * g), argnums=(0, 1))(x, kernel)
  for a, b in zip(grads, grads_ref):
    np.testing.assert_allclose(a, b, atol=1e-4, rtol=1e-5)
  # bfloat16 inputs: accumulated in float32, returned in bfloat16.
  yb = depthwise_conv(x.astype(jnp.bfloat16), kernel.astype(jnp.bfloat16), padding, dilation)
  assert yb.dtype == jnp.bfloat16
  np.testing.assert_allclose(yb.astype(jnp.float32), y_ref, atol=0.1, rtol=0.05)
