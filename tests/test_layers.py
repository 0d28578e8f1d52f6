"""Tests of hdr_jax.models.layers: the DRDB's two evaluation forms and bfloat16 bias gradients."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from hdr_jax.models.layers import DRDB, Conv2d


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
