"""Tests of hdr_jax.models.ahdrnet: size, polyphase trunk, padding, bfloat16, gradients and exact
equivalence with the official PyTorch AHDR (tests/torch_ahdr_reference.py) through weight conversion."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from hdr_jax import hdr_math
from hdr_jax.models.ahdrnet import AHDRNet, load_torch_state_dict, torch_state_dict_from_file

TORCH_TOL = 1e-5


def _abstract(**kw):
  """An AHDRNet with abstract parameters (no initialisation cost), to be filled by loading."""
  return nnx.eval_shape(lambda: AHDRNet(rngs=nnx.Rngs(0), **kw))


def _variant(model, **kw):
  """A model with ``model``'s parameters and a different configuration."""
  out = _abstract(**kw)
  nnx.update(out, nnx.state(model, nnx.Param))
  return out


def _inputs(b, h, w, seed=0):
  rng = np.random.default_rng(seed)
  frames = jnp.asarray(rng.random((b, 3, h, w, 3), dtype=np.float32))
  exposures = jnp.asarray(np.tile(np.array([-2.0, 0.0, 2.0], np.float32), (b, 1)))
  return frames, exposures


def _params(model):
  return jax.tree.leaves(nnx.state(model, nnx.Param))


def _random_model(seed=0, **kw):
  """An AHDRNet with Kaiming-normal kernels and small random biases drawn with NumPy (much faster
  than op-by-op initialisation on CPU)."""
  model = _abstract(**kw)
  rng = np.random.default_rng(seed)

  def draw(p):
    if len(p.shape) == 1:
      return 0.1 * rng.standard_normal(p.shape, dtype=np.float32)
    return np.sqrt(2.0 / np.prod(p.shape[:-1])) * rng.standard_normal(p.shape, dtype=np.float32)

  nnx.update(model, jax.tree.map(lambda p: jnp.asarray(draw(p)), nnx.state(model, nnx.Param)))
  return model


@pytest.fixture(scope="module")
def model():
  return _random_model(polyphase=True)


@pytest.fixture(scope="module")
def torch_ref():
  """(torch, reference module, a random official AHDR in float32 eval mode)."""
  torch = pytest.importorskip("torch")
  import torch_ahdr_reference as ref

  torch.backends.cudnn.allow_tf32 = False
  torch.backends.cuda.matmul.allow_tf32 = False
  torch.manual_seed(0)
  net = ref.kaiming_init_(ref.AHDR(), nonlinearity="linear").float().eval()
  return torch, ref, net


def _torch_forward(torch, net, xs_nhwc):
  with torch.no_grad():
    out = net(*[torch.from_numpy(np.ascontiguousarray(x.transpose(0, 3, 1, 2))) for x in xs_nhwc])
  return out.permute(0, 2, 3, 1).numpy()


def test_parameter_count_and_macs():
  official = _abstract()
  assert sum(p.size for p in _params(official)) == 1_441_283
  assert official.macs_per_pixel() == 1_446_720
  small = _abstract(channels=8, growth=4, n_dense=2, n_blocks=1)
  convs = [3 * 9 * 6 * 8, 9 * 16 * 16, 9 * 16 * 8, 9 * 16 * 16, 9 * 16 * 8, 9 * 24 * 8,
           9 * 8 * 4, 9 * 12 * 4, 16 * 8, 8 * 8, 9 * 8 * 8, 9 * 8 * 8, 9 * 8 * 3]
  assert small.macs_per_pixel() == sum(convs)


@pytest.mark.parametrize("polyphase,size,form", [(True, (32, 48), "concat"), (False, (32, 48), "concat"),
                                                  (True, (17, 23), "concat"), (True, (32, 48), "scatter")])
def test_matches_official_torch_model(torch_ref, polyphase, size, form):
  torch, _, net = torch_ref
  jm = _abstract(polyphase=polyphase, dense_form=form)
  load_torch_state_dict(jm, net.state_dict())
  rng = np.random.default_rng(1)
  xs = [rng.random((2, *size, 6), dtype=np.float32) for _ in range(3)]
  expected = _torch_forward(torch, net, xs)
  assert expected.std() > 0.05  # unsaturated sigmoid: the comparison is sensitive
  got = np.asarray(jm.forward_official(*map(jnp.asarray, xs)))
  assert got.shape == expected.shape and got.dtype == np.float32
  np.testing.assert_allclose(got, expected, rtol=0, atol=TORCH_TOL)


def test_load_from_saved_checkpoint_file(torch_ref, tmp_path):
  torch, _, net = torch_ref
  direct = _abstract()
  load_torch_state_dict(direct, net.state_dict())
  wrapped = {"epoch": 3, "state_dict": {"module." + k: v for k, v in net.state_dict().items()}}
  for name, ckpt in (("plain.pt", net.state_dict()), ("wrapped.pth", wrapped)):
    torch.save(ckpt, tmp_path / name)
    jm = _abstract(polyphase=False)
    load_torch_state_dict(jm, torch_state_dict_from_file(tmp_path / name))
    for a, b in zip(_params(jm), _params(direct), strict=True):
      np.testing.assert_array_equal(a, b)
  xs = [np.random.default_rng(2).random((2, 17, 23, 6), dtype=np.float32)] * 3
  np.testing.assert_allclose(np.asarray(jm.forward_official(*map(jnp.asarray, xs))),
                             _torch_forward(torch, net, xs), rtol=0, atol=TORCH_TOL)


def test_mismatched_state_dict_is_reported(torch_ref):
  _, ref, net = torch_ref
  sd = {k: v.numpy() for k, v in net.state_dict().items()}
  del sd["RDB2.conv_1x1.bias"]
  sd["extra.weight"] = np.zeros(3, np.float32)
  sd["conv3.weight"] = np.zeros((4, 64, 3, 3), np.float32)
  jm = _abstract()
  load_torch_state_dict(jm, net.state_dict())
  before = [np.asarray(p) for p in _params(jm)]
  with pytest.raises(ValueError) as err:
    load_torch_state_dict(jm, sd)
  msg = str(err.value)
  assert "missing keys (1): RDB2.conv_1x1.bias" in msg
  assert "unexpected keys (1): extra.weight" in msg
  assert "conv3.weight: got (4, 64, 3, 3), expected (3, 64, 3, 3)" in msg
  for a, b in zip(_params(jm), before, strict=True):  # nothing was copied
    np.testing.assert_array_equal(a, b)
  smaller = ref.AHDR(n_dense=5).state_dict()  # a different architecture: dense layer 5 is missing
  with pytest.raises(ValueError, match=r"RDB1\.dense_layers\.5\.conv\.weight"):
    load_torch_state_dict(jm, smaller)


def test_polyphase_trunk_equals_dilated_trunk(model):
  dilated = _variant(model, polyphase=False)
  frames, exposures = _inputs(1, 37, 45)  # padded to 38 x 46 inside
  np.testing.assert_allclose(np.asarray(model(frames, exposures)), np.asarray(dilated(frames, exposures)),
                             rtol=1e-5, atol=1e-6)
  xs = [jnp.asarray(np.random.default_rng(3).random((2, 32, 48, 6), dtype=np.float32))] * 3
  np.testing.assert_allclose(np.asarray(model.forward_official(*xs)), np.asarray(dilated.forward_official(*xs)),
                             rtol=1e-5, atol=1e-6)


def test_odd_sizes_and_output_heads(model):
  frames, exposures = _inputs(1, 37, 45)
  out = model(frames, exposures)
  assert out.shape == (1, 37, 45, 3) and out.dtype == jnp.float32
  assert bool(jnp.all(jnp.isfinite(out)))
  sig = _variant(model, output_head="sigmoid")(frames, exposures)
  np.testing.assert_allclose(np.asarray(out), np.asarray(sig * hdr_math.max_radiance(exposures)[0]), rtol=1e-6)
  assert float(sig.min()) >= 0.0 and float(sig.max()) <= 1.0
  frames1, exposures1 = _inputs(1, 1, 3)
  assert model(frames1, exposures1).shape == (1, 1, 3, 3)
  with pytest.raises(ValueError, match="output_head"):
    _abstract(output_head="relu")


def test_bfloat16_close_to_float32(model):
  bf16 = _variant(model, dtype=jnp.bfloat16)
  assert all(p.dtype == jnp.float32 for p in _params(bf16))
  frames, exposures = _inputs(1, 37, 45)
  out16, out32 = bf16(frames, exposures), model(frames, exposures)
  assert out16.dtype == jnp.float32
  err = np.abs(np.asarray(out16 - out32)) / float(hdr_math.max_radiance(exposures)[0])  # sigmoid scale
  # bfloat16 has 8 mantissa bits; the random Kaiming-initialised net drives the sigmoid into
  # saturation, so a few pixels move more (measured: mean 2e-3, max 6e-2).
  assert 0 < err.mean() < 1e-2 and err.max() < 0.15


def test_jitted_gradient_step_is_finite():
  model = _random_model(channels=16, growth=8, n_dense=2, n_blocks=2)  # small: quick to compile
  frames, exposures = _inputs(2, 15, 16)
  target = hdr_math.gamma_decode(frames[:, 1])
  graphdef, params = nnx.split(model, nnx.Param)

  @jax.jit
  def step(params):
    def loss_fn(p):
      return hdr_math.mu_law_l1(nnx.merge(graphdef, p)(frames, exposures), target)

    loss, grads = jax.value_and_grad(loss_fn)(params)
    return loss, grads, jax.tree.map(lambda p, g: p - 1e-3 * g, params, grads)

  loss, grads, new_params = step(params)
  leaves = jax.tree.leaves(grads)
  assert np.isfinite(float(loss))
  assert all(bool(jnp.all(jnp.isfinite(g))) for g in leaves)
  assert sum(float(jnp.abs(g).sum()) for g in leaves) > 0
  loss2, _, _ = step(new_params)
  assert np.isfinite(float(loss2)) and float(loss2) < float(loss)
