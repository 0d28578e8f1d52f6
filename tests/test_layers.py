"""Tests of hdr_jax.models.layers: the DRDB's two evaluation forms and bfloat16 bias gradients (Conv2d, bias_add)."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from hdr_jax.models.layers import DRDB, Conv2d, bias_add


def _loss(m, x, folded=True):
  return jnp.mean(jnp.square(m(x, folded).astype(jnp.float32)))


def _rel(a, b):
  return float(jnp.linalg.norm(a - b) / jnp.linalg.norm(b))


@pytest.mark.parametrize("folded", [False, True])
def test_drdb_scatter_form_equals_concat_form(folded):
  x = jax.random.normal(jax.random.key(1), (2, 16, 24, 16))
  concat = DRDB(16, 8, 4, 2, form="concat", rngs=nnx.Rngs(0))
  scatter = DRDB(16, 8, 4, 2, form="scatter", rngs=nnx.Rngs(0))
  for a, b in zip(jax.tree.leaves(nnx.state(concat, nnx.Param)), jax.tree.leaves(nnx.state(scatter, nnx.Param))):
    np.testing.assert_array_equal(a, b)  # same parameters: checkpoints work with either form
  ya, yb = concat(x, folded), scatter(x, folded)
  assert float(jnp.std(ya)) > 0.5  # a non-trivial output
  np.testing.assert_allclose(np.asarray(yb), np.asarray(ya), rtol=1e-5, atol=1e-5)
  ga = jax.tree.leaves(nnx.grad(_loss)(concat, x, folded))
  gb = jax.tree.leaves(nnx.grad(_loss)(scatter, x, folded))
  for a, b in zip(ga, gb, strict=True):
    assert _rel(b, a) < 1e-5


def test_drdb_forms_agree_without_dense_layers():
  x = jax.random.normal(jax.random.key(1), (1, 8, 8, 4))
  a, b = (DRDB(4, 2, 0, 2, form=f, rngs=nnx.Rngs(0)) for f in ("concat", "scatter"))
  np.testing.assert_allclose(np.asarray(b(x)), np.asarray(a(x)), rtol=1e-6, atol=1e-6)


def test_drdb_rejects_an_unknown_form():
  with pytest.raises(ValueError, match="dense_form"):
    DRDB(8, 4, 2, form="sum", rngs=nnx.Rngs(0))


@pytest.mark.parametrize("form", ["concat", "scatter"])
def test_bfloat16_gradients_accumulate_in_float32(form):
  """Every gradient of a bfloat16 DRDB, biases included, within 3 % of the float32 one. A bias
  gradient sums the output gradient over every pixel; accumulated in bfloat16 it was 14-30 % off."""
  x = jax.random.normal(jax.random.key(1), (2, 32, 48, 64))
  ref = nnx.grad(_loss)(DRDB(64, 32, 3, 2, rngs=nnx.Rngs(0)), x)
  got = nnx.grad(_loss)(DRDB(64, 32, 3, 2, form=form, dtype=jnp.bfloat16, rngs=nnx.Rngs(0)), x)
  for (path, r), (_, g) in zip(jax.tree_util.tree_leaves_with_path(ref), jax.tree_util.tree_leaves_with_path(got),
                               strict=True):
    assert g.dtype == jnp.float32
    assert _rel(g, r) < 0.03, jax.tree_util.keystr(path)


def test_conv_bias_add_keeps_the_compute_dtype():
  conv = Conv2d(4, 8, 3, dtype=jnp.bfloat16, rngs=nnx.Rngs(0))
  assert conv(jnp.ones((1, 5, 5, 4))).dtype == jnp.bfloat16


@pytest.mark.parametrize("bias_shape", [(64,), (2, 1, 1, 64)])
def test_bias_add_sums_its_bfloat16_gradient_in_float32(bias_shape):
  """A per-channel bias and a per-image one (a projected step embedding): the forward is the plain
  add in y's dtype; the bias gradient, a sum over 2 x 96 x 96 pixels, is within 1 % of the exact one
  (autodiff of the plain bfloat16 add was 30-70 % off in the U-Net)."""
  y = jax.random.normal(jax.random.key(0), (2, 96, 96, 64))
  bias = jax.random.normal(jax.random.key(1), bias_shape)
  w = jax.random.normal(jax.random.key(2), y.shape) + 1.0

  def loss(y, bias, add):
    return jnp.sum(add(y, bias).astype(jnp.float32) * w)

  exact = jax.grad(loss, 1)(y, bias, lambda a, b: a + b)
  yb = y.astype(jnp.bfloat16)
  assert bias_add(yb, bias).dtype == jnp.bfloat16
  np.testing.assert_array_equal(bias_add(yb, bias), yb + bias.astype(jnp.bfloat16))
  plain = jax.grad(loss, 1)(yb, bias, lambda a, b: a + b.astype(a.dtype))
  got = jax.grad(loss, 1)(yb, bias, bias_add)
  assert got.dtype == jnp.float32 and got.shape == bias_shape
  assert _rel(got, exact) < 0.01 < _rel(plain, exact)
  dy = jax.grad(loss, 0)(yb, bias, bias_add)
  np.testing.assert_array_equal(dy, w.astype(jnp.bfloat16))


def test_bias_add_refuses_a_bias_that_enlarges_y():
  with pytest.raises(ValueError, match="bias_add"):
    bias_add(jnp.zeros((1, 4, 4, 1)), jnp.zeros((8,)))
