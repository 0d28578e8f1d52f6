"""Conditional DDPM: schedule identities, samplers (compiled == Python loop, DDIM(eta=1) == DDPM),
tiling (exact single tile, seamless blending), the HDR <-> x0 mapping, EMA bookkeeping, training
lowers the loss, unconditional mode, the VAM+DRDB encoder, and the real entry point end to end."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from hdr_jax import diffusion, engine, hdr_math
from hdr_jax.models.unet import UNet
from hdr_jax.tasks.diffusion import DiffusionTask, EmaParam

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from configs.diffusion import get_config  # noqa: E402
from conftest import cli_env

TINY_MODEL = dict(ch=8, ch_mult=(1, 2), num_res_blocks=1, attn_levels=(), head_dim=8, groups=4,
                  cond_channels=4, cond_conv_hidden=8)


def tiny_config(**sampler):
  """The plain DDPM (the image itself diffused, eps-prediction); the residual mode has its own tests."""
  c = get_config()
  c.model.update(TINY_MODEL)
  c.model.cond_encoder = "conv"
  c.diffusion.estimate = "none"
  c.diffusion.prediction = "eps"
  c.diffusion.timesteps = 20
  c.sampler.update({**dict(name="ddim", steps=4, tile_size=64, tile_overlap=8, tile_batch=2), **sampler})
  c.batch_size = 4
  c.optimizer.schedule = "constant"
  c.optimizer.warmup_steps = 0
  return c


def randomized(module, seed, scale=0.2):
  """Perturbs every parameter (the zero-initialised output layers make an untrained U-Net output 0);
  NumPy noise, so no random-number program is compiled."""
  state = nnx.state(module, (nnx.Param, EmaParam))
  rng = np.random.default_rng(seed)
  nnx.update(module, jax.tree.map(lambda p: p + scale * rng.standard_normal(p.shape, np.float32), state))
  return module


def build(fn):
  """``fn()`` (a module) initialised in one compiled program, as the engine does (eager construction
  compiles every initializer separately: slow on CPU)."""
  graphdef, _ = nnx.split(nnx.eval_shape(fn))
  with jax.threefry_partitionable(False):
    return nnx.merge(graphdef, jax.jit(lambda: nnx.state(fn()))())


@pytest.fixture(scope="module")
def tiny_model():
  """An unconditional tiny U-Net with random weights and its jitted forward."""
  m = randomized(build(lambda: UNet(**TINY_MODEL, conditional=False, rngs=nnx.Rngs(0))), 1)
  return m, jax.jit(lambda x, t: m(x, t))


@pytest.fixture(scope="module")
def cond_engine():
  """The trainer's engine for the tiny conditional config (its jitted train step is shared) and a
  function giving a fresh copy of its initial state (the train step donates its input)."""
  e = engine.Engine(tiny_config())
  host = jax.device_get(e.init_state(jax.random.key(0)))
  return e, lambda: jax.device_put(host, e.replicated)


def random_batch(e, n=4, size=16, seed=0):
  rng = np.random.default_rng(seed)
  return e.global_batch({"frames": rng.integers(0, 256, (n, 3, size, size, 3), dtype=np.uint8),
                         "exposures": np.tile(np.float32([[-2, 0, 2]]), (n, 1)),
                         "gt": rng.uniform(0, 1.5, (n, size, size, 3)).astype(np.float32)})


# --------------------------------------------------------------------------------------------------
# Schedules


@pytest.mark.parametrize("kind", ["linear", "cosine"])
def test_schedule_closed_forms(kind):
  T = 1000
  s = diffusion.make_schedule(kind, T, 1e-4, 0.02)
  b = np.asarray(diffusion.betas_for(kind, T, 1e-4, 0.02))
  if kind == "linear":
    np.testing.assert_allclose(b, np.linspace(1e-4, 0.02, T), rtol=1e-12)
  else:  # abar_t = f(t) / f(0) while betas are below the cap
    f = np.cos((np.arange(T + 1) / T + 0.008) / 1.008 * np.pi / 2) ** 2
    ok = b < 0.999
    np.testing.assert_allclose(np.cumprod(1 - b)[ok], (f[1:] / f[0])[ok], rtol=1e-9)
  abar = np.cumprod(1 - b)
  abar_prev = np.concatenate([[1.0], abar[:-1]])
  np.testing.assert_allclose(s.alphas_cumprod, abar, rtol=1e-6)
  np.testing.assert_allclose(s.alphas_cumprod_prev, abar_prev, rtol=1e-6)
  # Posterior q(x_{t-1} | x_t, x0) as the product of two Gaussians (independent of the code's formulas):
  # precision = alpha_t / beta_t + 1 / (1 - abar_{t-1}), mean = (sqrt(alpha_t) x_t / beta_t +
  # sqrt(abar_{t-1}) x0 / (1 - abar_{t-1})) / precision.
  t = np.arange(1, T)
  alpha = 1 - b[t]
  prec = alpha / b[t] + 1 / (1 - abar_prev[t])
  np.testing.assert_allclose(s.posterior_variance[t], 1 / prec, rtol=1e-5)
  np.testing.assert_allclose(s.posterior_variance, b * (1 - abar_prev) / (1 - abar), rtol=1e-5)
  np.testing.assert_allclose(s.posterior_mean_coef1[t], np.sqrt(abar_prev[t]) / (1 - abar_prev[t]) / prec, rtol=1e-5)
  np.testing.assert_allclose(s.posterior_mean_coef2[t], np.sqrt(alpha) / b[t] / prec, rtol=1e-5)
  assert s.posterior_mean_coef1[0] == pytest.approx(1.0) and s.posterior_mean_coef2[0] == pytest.approx(0.0)
  np.testing.assert_allclose(np.exp(s.posterior_log_variance[1:]), s.posterior_variance[1:], rtol=1e-5)


def test_q_sample_and_targets():
  s = diffusion.make_schedule("linear", 100)
  k1, k2 = jax.random.split(jax.random.key(0))
  x0 = jax.random.uniform(k1, (3, 4, 4, 3), minval=-1, maxval=1)
  noise = jax.random.normal(k2, x0.shape)
  t = jnp.array([0, 50, 99])
  xt = diffusion.q_sample(s, x0, t, noise)
  for pred in ("eps", "v"):
    target = diffusion.model_target(s, x0, t, noise, pred)
    x0_hat, eps_hat = diffusion.predict_x0_eps(s, xt, t, target, pred, clip_x0=False)
    np.testing.assert_allclose(x0_hat, x0, atol=2e-3)
    np.testing.assert_allclose(eps_hat, noise, atol=2e-3)


@pytest.mark.parametrize("prediction", ["eps", "v", "x0"])
def test_samplers_recover_x0_with_an_oracle_model(prediction):
  """A model that knows x0 (its output is the exact eps or v of x_t) makes every sampler return x0."""
  s = diffusion.make_schedule("linear", 1000)
  x0 = jax.random.uniform(jax.random.key(0), (1, 4, 4, 3), minval=-1, maxval=1)

  def oracle(x, t):
    abar = s.alphas_cumprod[t]
    eps = (x - jnp.sqrt(abar) * x0) / jnp.sqrt(1 - abar)
    if prediction == "x0":
      return jnp.broadcast_to(x0, x.shape)
    return eps if prediction == "eps" else jnp.sqrt(abar) * eps - jnp.sqrt(1 - abar) * x0

  for sampler, steps, eta in (("ddpm", None, 0.0), ("ddim", 7, 0.0), ("ddim", 7, 1.0)):
    out = jax.jit(lambda k: diffusion.sample(oracle, s, x0.shape, k, sampler=sampler, steps=steps, eta=eta,
                                             prediction=prediction))(jax.random.key(1))
    np.testing.assert_allclose(out, x0, atol=1e-5)


def test_ddim_eta1_all_steps_has_ancestral_coefficients():
  s = diffusion.make_schedule("linear", 1000)
  t = jnp.arange(1000)
  sigma, _ = diffusion.ddim_sigma(s, t, t - 1, 1.0)
  np.testing.assert_allclose(sigma[1:] ** 2, s.posterior_variance[1:], rtol=1e-4)
  assert float(sigma[0]) == 0.0
  # The whole update: same x_t, model output and noise give the same x_{t-1}, for every t.
  k1, k2, k3 = jax.random.split(jax.random.key(1), 3)
  x = jax.random.normal(k1, (1000, 2, 2, 3))
  out = jax.random.normal(k2, x.shape)
  z = jax.random.normal(k3, x.shape)
  for clip in (False, True):
    a = diffusion.ddpm_step(s, x, t, out, z, clip_x0=clip)
    b = diffusion.ddim_step(s, x, t, t - 1, out, z, eta=1.0, clip_x0=clip)
    np.testing.assert_allclose(a, b, rtol=1e-3, atol=1e-4)


def test_ddim_timesteps():
  np.testing.assert_array_equal(diffusion.ddim_timesteps(10, 10), np.arange(9, -1, -1))
  ts = diffusion.ddim_timesteps(1000, 50)
  assert len(ts) == 50 and ts[0] == 999 and ts[-1] == 0 and np.all(np.diff(ts) < 0)
  with pytest.raises(ValueError):
    diffusion.ddim_timesteps(10, 11)


# --------------------------------------------------------------------------------------------------
# Samplers


SCHED = diffusion.make_schedule("linear", 10, 1e-3, 0.3)
SHAPE = (2, 8, 8, 3)


def _compiled(apply, key, **kw):
  return np.asarray(jax.jit(lambda k: diffusion.sample(apply, SCHED, SHAPE, k, **kw))(key))


def _python_loop(apply, key, sampler, steps=None, eta=0.0, numpy_ddpm=False):
  """Reference: the jitted model called once per step from Python; the update in NumPy (Ho et al.'s
  Algorithm 2, no clipping) or with the library's step function (clipping x0)."""
  ts, ts_prev = diffusion.sampling_plan(sampler, SCHED.timesteps, steps)
  k_init, k_loop = diffusion.sampler_keys(key)
  x = np.asarray(jax.random.normal(k_init, SHAPE))
  b = np.asarray(SCHED.betas, np.float64)
  abar = np.cumprod(1 - b)
  for i, (t, tp) in enumerate(zip(ts, ts_prev)):
    z = np.asarray(jax.random.normal(jax.random.fold_in(k_loop, i), SHAPE))
    eps = np.asarray(apply(jnp.asarray(x, jnp.float32), jnp.int32(t)))
    if numpy_ddpm:
      sigma = np.sqrt(b[t] * (1 - abar[t - 1]) / (1 - abar[t])) if t > 0 else 0.0
      x = (x - b[t] / np.sqrt(1 - abar[t]) * eps) / np.sqrt(1 - b[t]) + sigma * z
    else:
      x = np.asarray(diffusion.sampler_update(SCHED, sampler, jnp.asarray(x), jnp.int32(t), jnp.int32(tp), eps, z,
                                              eta=eta))
  return x


def test_compiled_ddpm_equals_python_loop_of_algorithm2(tiny_model):
  _, apply = tiny_model
  key = jax.random.key(7)
  compiled = _compiled(apply, key, sampler="ddpm", clip_x0=False)
  np.testing.assert_allclose(compiled, _python_loop(apply, key, "ddpm", numpy_ddpm=True), rtol=1e-4, atol=1e-4)
  assert np.abs(compiled).max() > 0.1


def test_compiled_ddim_equals_python_loop_and_is_deterministic(tiny_model):
  _, apply = tiny_model
  run = jax.jit(lambda k: diffusion.sample(apply, SCHED, SHAPE, k, sampler="ddim", steps=4, eta=0.5))
  key = jax.random.key(7)
  compiled = np.asarray(run(key))
  np.testing.assert_allclose(compiled, _python_loop(apply, key, "ddim", 4, 0.5), rtol=1e-4, atol=1e-4)
  np.testing.assert_array_equal(compiled, np.asarray(run(key)))
  assert not np.allclose(compiled, np.asarray(run(jax.random.key(8))))


def test_ddim_eta1_all_steps_equals_ddpm_samples(tiny_model):
  _, apply = tiny_model
  key = jax.random.key(3)
  a = _compiled(apply, key, sampler="ddpm")
  b = _compiled(apply, key, sampler="ddim", steps=SCHED.timesteps, eta=1.0)
  np.testing.assert_allclose(a, b, atol=2e-4)


# --------------------------------------------------------------------------------------------------
# Tiles


def test_tile_plan_partition_of_unity():
  plan = diffusion.tile_plan(100, 150, 48, 12)
  th, tw = plan.size
  total = np.zeros((100, 150))
  cover = np.zeros((100, 150), int)
  for (y, x), w in zip(plan.offsets, plan.weights):
    assert 0 <= y <= 100 - th and 0 <= x <= 150 - tw
    total[y:y + th, x:x + tw] += w
    cover[y:y + th, x:x + tw] += 1
  np.testing.assert_allclose(total, 1.0, atol=1e-6)
  assert cover.min() >= 1 and plan.num_tiles == len(np.unique(plan.offsets[:, 0])) * len(np.unique(plan.offsets[:, 1]))
  ys = np.unique(plan.offsets[:, 0])
  assert np.all(th - np.diff(ys) >= 12)  # overlaps at least tile_overlap
  one = diffusion.tile_plan(40, 60, 64, 8)
  assert one.num_tiles == 1 and one.size == (40, 60) and np.all(one.weights == 1.0)


def _blur(x, t, c):
  """A stand-in denoiser with tile-border artefacts: 5x5 box blur with zero padding."""
  del t, c
  k = jnp.ones((5, 5, 1, 1), x.dtype) / 25.0
  xc = x.transpose(3, 0, 1, 2).reshape(-1, x.shape[1], x.shape[2], 1)
  y = jax.lax.conv_general_dilated(xc, k, (1, 1), "SAME", dimension_numbers=("NHWC", "HWIO", "NHWC"))
  return y.reshape(x.shape[3], x.shape[0], x.shape[1], x.shape[2]).transpose(1, 2, 3, 0)


def test_tiled_blending_has_no_seams():
  h, w = 64, 96
  yy, xx = np.mgrid[0:h, 0:w]
  x = jnp.asarray(np.stack([1.0 + 0.5 * np.sin(xx / 20.0) + yy / 80.0] * 3, -1)[None], jnp.float32)
  full = np.asarray(_blur(x, 0, None))[0, 8:-8, 8:-8]  # away from the frame border

  def grad_stats(out, plan):
    """Largest |horizontal step| within 3 pixels of a tile edge, on the central rows."""
    d = np.abs(np.diff(np.asarray(out)[0, 8:-8, :, 0], axis=1))  # d[:, j] = out[j + 1] - out[j]
    tw = plan.size[1]
    edges = {int(o) + tw for o in plan.offsets[:, 1] if o + tw < w} | {int(o) for o in plan.offsets[:, 1] if o > 0}
    return d[:, sorted({j for e in edges for j in range(e - 4, e + 3)})].max()

  plan = diffusion.tile_plan(h, w, 32, 12)
  blended = diffusion.tiled(_blur, plan, h, w, tile_batch=3)(x, 0, None)
  err = np.abs(np.asarray(blended)[0, 8:-8, 8:-8] - full).max()
  seam = grad_stats(blended, plan)
  inside = np.abs(np.diff(full[..., 0], axis=1)).max()
  assert seam <= 1.05 * inside, (seam, inside)
  assert err < 1e-5  # the artefacts lie in the zero-weight margins: blending recovers the whole-frame output
  # Without overlap ramps the same tiles leave visible seams: the checks have teeth.
  hard = diffusion.tile_plan(h, w, 32, 0)
  naive = diffusion.tiled(_blur, hard, h, w)(x, 0, None)
  seam_naive = grad_stats(naive, hard)
  err_naive = np.abs(np.asarray(naive)[0, 8:-8, 8:-8] - full).max()
  assert seam_naive > 3 * inside and err_naive > 0.5, (seam_naive, inside, err_naive)


def test_tiled_sampling(cond_engine):
  """One tile covering the frame is exactly the untiled sampler; several tiles run, really tile, and
  stay close to the whole-frame sample (same noise; the tiles see most of the frame)."""
  e, fresh = cond_engine
  bundle = e.bundle(fresh())
  net = randomized(bundle.ema, 1, scale=0.05)
  frames = jnp.asarray(np.random.default_rng(0).uniform(0, 1, (1, 3, 40, 56, 3)), jnp.float32)
  exposures = jnp.asarray([[-2.0, 0.0, 2.0]])
  key = jax.random.key(5)
  whole_task = DiffusionTask(tiny_config(tile_size=64))
  s = whole_task.config.sampler

  def untiled(frames, exposures, key):
    cond = net.encode(frames, exposures)
    return diffusion.sample(lambda x, t: net(x, t, cond), whole_task.schedule, (1, 40, 56, 3), key,
                            sampler=s.name, steps=s.steps, eta=s.eta)

  whole = np.asarray(jax.jit(lambda f, e, k: whole_task.sample_x0(net, f, e, k))(frames, exposures, key))
  np.testing.assert_array_equal(whole, np.asarray(jax.jit(untiled)(frames, exposures, key)))
  tiled_task = DiffusionTask(tiny_config(tile_size=32, tile_overlap=8))
  assert diffusion.tile_plan(40, 56, 32, 8).num_tiles == 4
  tiled = np.asarray(jax.jit(lambda f, e, k: tiled_task.sample_x0(net, f, e, k))(frames, exposures, key))
  assert tiled.shape == (1, 40, 56, 3) and np.all(np.isfinite(tiled))
  assert not np.array_equal(tiled, whole)
  assert np.mean(np.abs(tiled - whole)) < 0.1 * np.mean(np.abs(whole))


# --------------------------------------------------------------------------------------------------
# HDR mapping, EMA, training


def test_x0_round_trip():
  rng = np.random.default_rng(0)
  exposures = jnp.asarray([[-2.0, 0.0, 2.0], [-3.0, -1.0, 1.0]])
  m = np.asarray(hdr_math.max_radiance(exposures))  # 4, 4
  gt = rng.uniform(0, 1, (2, 8, 8, 3)) * (m[:, None, None, None] ** (1 / 2.24))
  x0 = diffusion.hdr_to_x0(jnp.asarray(gt, jnp.float32), exposures)
  assert float(x0.min()) >= -1 and float(x0.max()) <= 1
  np.testing.assert_allclose(diffusion.x0_to_hdr(x0, exposures), gt, rtol=2e-4, atol=2e-5)
  ends = diffusion.x0_to_hdr(jnp.broadcast_to(jnp.asarray([-1.0, 1.0, 3.0])[None, None, :, None], (2, 1, 3, 3)),
                            exposures)
  np.testing.assert_allclose(ends[:, 0, :, 0], [[0.0, 4 ** (1 / 2.24), 4 ** (1 / 2.24)]] * 2, rtol=1e-5)
  above = diffusion.hdr_to_x0(jnp.full((1, 2, 2, 3), 10.0), exposures[:1])
  np.testing.assert_allclose(above, 1.0)


def test_ema_is_checkpointed_not_counted_and_follows_params(cond_engine):
  e, fresh = cond_engine
  state = fresh()
  bundle = e.bundle(state)
  n_model = sum(x.size for x in jax.tree.leaves(nnx.state(bundle.model, nnx.Param)))
  assert sum(x.size for x in jax.tree.leaves(e.task.param_state(bundle))) == n_model
  ema0 = jax.tree.map(np.array, nnx.state(bundle.ema, EmaParam).to_pure_dict())  # the step donates state
  assert sum(x.size for x in jax.tree.leaves(ema0)) == n_model
  assert "ema" in state.to_pure_dict()
  state, _ = e.train_step(state, random_batch(e), jax.random.key(1))
  bundle = e.bundle(state)
  p1 = nnx.state(bundle.model, nnx.Param).to_pure_dict()
  ema1 = nnx.state(bundle.ema, EmaParam).to_pure_dict()
  d = 2.0 / 11.0  # warm-up decay after the first step: min(0.999, (1 + 1) / (10 + 1))
  jax.tree.map(lambda a, p, b: np.testing.assert_allclose(b, d * a + (1 - d) * p, rtol=1e-5, atol=1e-7),
               ema0, p1, ema1)


def test_training_lowers_denoising_loss(cond_engine):
  e, fresh = cond_engine
  state = fresh()
  rng = np.random.default_rng(0)
  yy, xx = np.mgrid[0:16, 0:16] / 16.0
  gt = np.stack([np.stack([0.3 + 0.5 * yy * a, 0.2 + 0.6 * xx * a, 0.5 * np.ones_like(xx)], -1)
                 for a in rng.uniform(0.5, 1.5, 4)]).astype(np.float32)
  frames = np.stack([np.clip(gt * 2.0 ** ev, 0, 1) for ev in (-2, 0, 2)], 1)
  batch = e.global_batch({"frames": np.round(frames * 255).astype(np.uint8),
                          "exposures": np.tile(np.float32([[-2, 0, 2]]), (4, 1)), "gt": gt})

  @jax.jit
  def eval_loss(state):
    m = nnx.merge(e.graphdef, state).model
    x0 = diffusion.hdr_to_x0(batch["gt"], batch["exposures"])
    cond = m.encode(batch["frames"].astype(jnp.float32) / 255, batch["exposures"])
    loss = lambda k: diffusion.diffusion_loss(e.task.schedule, lambda x, t: m(x, t, cond), x0, k,
                                              e.config.diffusion.prediction)
    return jnp.mean(jax.lax.map(loss, jax.random.split(jax.random.key(123), 8)))

  before = float(eval_loss(state))
  for i in range(30):
    state, metrics = e.train_step(state, batch, jax.random.key(i))
  after = float(eval_loss(state))
  assert np.isfinite(float(metrics["loss"]))
  assert after < 0.85 * before, (before, after)


def test_unconditional_mode():
  c = tiny_config()
  c.model.conditional = False
  e = engine.Engine(c)
  bundle = e.bundle(e.init_state(jax.random.key(0)))
  assert bundle.model.encoder is None
  randomized(bundle.ema, 1, scale=0.05)
  state = nnx.state(bundle)
  frames = np.random.default_rng(0).integers(0, 256, (1, 3, 20, 28, 3), dtype=np.uint8)
  a = e.predict(state, frames, np.float32([[-2, 0, 2]]))
  b = e.predict(state, np.zeros_like(frames), np.float32([[-3, -1, 1]]))
  assert a.shape == (1, 20, 28, 3) and np.all(np.isfinite(a)) and a.std() > 0
  # The frames' content is ignored; exposures only scale (both have max radiance 4).
  np.testing.assert_array_equal(a, b)
  assert a.max() <= 4 ** (1 / 2.24) + 1e-5


def test_vam_drdb_encoder():
  from hdr_jax.models import vam

  stem = dict(drdb_blocks=1, drdb_channels=8, drdb_growth=4, drdb_layers=1)
  m = nnx.eval_shape(lambda: UNet(**TINY_MODEL, cond_encoder="vam_drdb", cond_vam_drdb=stem, rngs=nnx.Rngs(0)))
  ref = nnx.eval_shape(lambda: vam.vam_drdb(**stem, rngs=nnx.Rngs(0)))
  shapes = lambda s: jax.tree.map(lambda x: x.shape, s.to_pure_dict())
  # The encoder's feature extractor is HDRVAM's: a pretrained VAM+DRDB ``fe`` state can be loaded into it.
  assert shapes(nnx.state(m.encoder.fe, nnx.Param)) == shapes(nnx.state(ref.fe, nnx.Param))
  graphdef, state = nnx.split(m)

  def forward(state, frames):
    net = nnx.merge(graphdef, state)
    return net(jnp.zeros((1, 15, 18, 3)), jnp.array([3]), net.encode(frames, jnp.array([[-2.0, 0.0, 2.0]])))

  out = jax.eval_shape(forward, state, jax.ShapeDtypeStruct((1, 3, 15, 18, 3), jnp.float32))  # odd size
  assert out.shape == (1, 15, 18, 3)


# --------------------------------------------------------------------------------------------------
# Residual mode: the DDPM refines a deterministic estimate


TINY_ESTIMATOR = dict(name="ahdrnet", output_head="merge", channels=8, growth=4, n_blocks=1, n_dense=2)


def residual_config(estimate="network", **sampler):
  c = tiny_config(**sampler)
  c.diffusion.update(estimate=estimate, prediction="x0", residual_scale=2.0)
  c.estimator.update(TINY_ESTIMATOR)
  c.estimator_optimizer.update(schedule="constant", warmup_steps=0)
  return c


@pytest.fixture(scope="module")
def residual_engine():
  e = engine.Engine(residual_config())
  return e, e.init_state(jax.random.key(0))


def _frames(seed=0, h=20, w=28):
  from hdr_jax import synthesize

  s = synthesize.synthesize_scene(seed, h, w)
  return s["frames"][None], np.float32(s["exposures"])[None], s["gt"]


def test_untrained_residual_ddpm_returns_its_estimate_which_starts_as_the_classical_merge(residual_engine):
  """x0-prediction through the U-Net's zero-initialised output: every sampler's residual is exactly 0,
  so the prediction is the estimate, and the untrained merge-head estimator is the classical merge."""
  e, state = residual_engine
  frames, ev, _ = _frames()
  merge = np.asarray(hdr_math.gamma_encode(hdr_math.merge_exposures(frames / 255.0, ev)))
  est = e.predict_estimate(state, frames, ev)
  np.testing.assert_allclose(est, merge, atol=1e-5)
  # Through the diffusion variable (mu-law, clipped at the short frame's maximum) and back.
  np.testing.assert_allclose(e.predict(state, frames, ev), est, atol=2e-4)
  m = engine.Engine(residual_config("merge"))
  np.testing.assert_allclose(m.predict_estimate(m.init_state(jax.random.key(0)), frames, ev), merge, atol=1e-5)


def test_residual_mode_trains_both_networks_and_conditions_on_the_estimate(residual_engine):
  """A train step updates the estimator with its own loss and the U-Net on the residual; the U-Net's
  input has 3 more conditioning channels (the estimate) than the plain mode's."""
  e, state = residual_engine
  bundle = e.bundle(state)
  plain = nnx.eval_shape(lambda: engine.Engine(tiny_config()).task.create(jax.random.key(0)))
  assert bundle.model.conv_in.kernel.shape[2] == plain.model.conv_in.kernel.shape[2] + 3
  frames, ev, gt = _frames(1, 32, 32)
  batch = e.global_batch({"frames": np.repeat(frames, 4, 0), "exposures": np.repeat(ev, 4, 0),
                          "gt": np.repeat(gt[None], 4, 0).astype(np.float32)})
  before = jax.tree.map(np.asarray, nnx.state(bundle, nnx.Param).to_pure_dict())
  new_state, metrics = e.train_step(jax.tree.map(jnp.copy, state), batch, jax.random.key(3))
  after = nnx.state(e.bundle(new_state), nnx.Param).to_pure_dict()
  assert {"loss", "estimator_loss", "estimator_grad_norm"} <= set(metrics)
  assert np.isfinite(float(metrics["loss"])) and float(metrics["estimator_grad_norm"]) > 0
  for part in ("model", "estimator"):
    changed = jax.tree.leaves(jax.tree.map(lambda a, b: not np.array_equal(a, np.asarray(b)), before[part], after[part]))
    assert any(changed), part


def test_residual_mode_settings_are_checked_by_name():
  with pytest.raises(ValueError, match="config.diffusion.estimate"):
    DiffusionTask(residual_config("average"))
  c = residual_config()
  c.model.conditional = False
  with pytest.raises(ValueError, match="needs a conditional model"):
    DiffusionTask(c)
  with pytest.raises(ValueError, match="config.diffusion.residual_scale"):
    DiffusionTask(_scaled(0.0))


def _scaled(scale):
  c = residual_config()
  c.diffusion.residual_scale = scale
  return c


def test_configs():
  full = get_config("full")
  m = nnx.eval_shape(lambda: UNet(**{k: v for k, v in full.model.items() if k != "name"}, rngs=nnx.Rngs(0)))
  n = sum(x.size for x in jax.tree.leaves(nnx.state(m, nnx.Param)))
  assert 30e6 < n < 40e6, n
  assert full.sampler.name == "ddpm" and full.model.cond_encoder == "vam_drdb"
  uncond = get_config("unconditional")
  assert not uncond.model.conditional and uncond.diffusion.estimate == "none"
  DiffusionTask(uncond)
  with pytest.raises(ValueError):
    get_config("huge")


@pytest.mark.parametrize("field,value", [("eta", -0.1), ("eta", 1.5), ("steps", 0), ("name", "dpm")])
def test_bad_sampler_settings_are_refused_by_name(field, value):
  with pytest.raises(ValueError, match=f"config.sampler.{field}"):
    DiffusionTask(tiny_config(**{field: value}))


# --------------------------------------------------------------------------------------------------
# The real entry point


def test_train_command_end_to_end(tmp_path):
  """The main job's config (the residual DDPM on its jointly trained estimate) at tiny size: its summary
  prints the sample's PSNR, the estimate's beside it and the medium-frame baseline."""
  args = [sys.executable, "-m", "hdr_jax.train", "--config=configs/diffusion.py:tiny", f"--workdir={tmp_path / 'run'}",
          "--config.num_train_steps=2"]
  env = {"HDR_JAX_CACHE": str(tmp_path / "cache"), **cli_env(), "PYTHONPATH": str(ROOT),
         "JAX_PLATFORMS": "cpu"}
  proc = subprocess.run(args, cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
  assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-5000:]
  summary = json.loads((tmp_path / "run" / "summary.json").read_text())
  assert summary["step"] == 2 and summary["checkpoints"] == [2]
  assert np.isfinite(summary["eval"]["psnr_mu"]) and np.isfinite(summary["eval"]["estimate_psnr_mu"])
  ev = summary["eval"]
  assert f"validation PSNR-mu {ev['psnr_mu']:.2f} dB" in proc.stdout
  assert f"the estimate it refines: PSNR-mu {ev['estimate_psnr_mu']:.2f} dB" in proc.stdout
  assert f"medium-frame baseline: PSNR-mu {ev['baseline_psnr_mu']:.2f} dB" in proc.stdout
  assert any((tmp_path / "run" / "images").rglob("*.png"))


@pytest.mark.parametrize("stats", ["group", "channel"])
def test_unet_group_norm_matches_numpy_and_nnx(stats):
  """The U-Net's GroupNorm (statistics folded into a per-channel scale and shift; 'group' or 'channel'
  reduction order) against a float64 NumPy transcription and flax's nnx.GroupNorm, with SiLU fused."""
  from flax import nnx

  from hdr_jax.models.unet import GroupNorm

  x = 3.0 * jax.random.normal(jax.random.key(0), (2, 6, 10, 64)) + 1.5
  gn = GroupNorm(64, 8, stats=stats)
  gn.scale.value = jax.random.normal(jax.random.key(1), (64,))
  gn.bias.value = jax.random.normal(jax.random.key(2), (64,))
  xs = np.asarray(x, np.float64).reshape(2, 60, 8, 8)
  ref = (xs - xs.mean(axis=(1, 3), keepdims=True)) / np.sqrt(xs.var(axis=(1, 3), keepdims=True) + 1e-6)
  ref = ref.reshape(2, 6, 10, 64) * np.asarray(gn.scale.value) + np.asarray(gn.bias.value)
  np.testing.assert_allclose(gn(x), ref, atol=2e-5, rtol=1e-5)
  np.testing.assert_allclose(gn(x, silu=True), ref / (1 + np.exp(-ref)), atol=2e-5, rtol=1e-5)
  flax_gn = nnx.GroupNorm(64, num_groups=8, epsilon=1e-6, rngs=nnx.Rngs(0))
  flax_gn.scale.value, flax_gn.bias.value = gn.scale.value, gn.bias.value
  np.testing.assert_allclose(gn(x), flax_gn(x), atol=2e-5, rtol=1e-5)
  bf = GroupNorm(64, 8, stats=stats, dtype=jnp.bfloat16)
  nnx.update(bf, nnx.state(gn))
  assert bf(x.astype(jnp.bfloat16)).dtype == jnp.bfloat16
  with pytest.raises(ValueError, match="gn_stats"):
    GroupNorm(64, 8, stats="rows")


def test_unet_conv_and_dense_are_flax_layers_with_float32_bias_gradients():
  """The U-Net's Conv and Dense have nnx.Conv's and nnx.Linear's parameters, initial values and
  outputs (checkpoints and seeds unchanged); only their bias gradient differs, summed in float32."""
  from flax import nnx

  from hdr_jax.models.unet import Conv, Dense

  x = jax.random.normal(jax.random.key(0), (2, 9, 12, 5))
  for strides in ((1, 1), (2, 2)):
    ours, flax_conv = Conv(5, 7, (3, 3), strides=strides, rngs=nnx.Rngs(3)), nnx.Conv(5, 7, (3, 3), strides=strides,
                                                                                        rngs=nnx.Rngs(3))
    ours.bias[...] = flax_conv.bias[...] = jax.random.normal(jax.random.key(1), (7,))
    for a, b in zip(jax.tree.leaves(nnx.state(ours)), jax.tree.leaves(nnx.state(flax_conv)), strict=True):
      np.testing.assert_array_equal(a, b)
    np.testing.assert_allclose(ours(x), flax_conv(x), rtol=1e-6, atol=1e-6)
  ours, flax_dense = Dense(5, 7, rngs=nnx.Rngs(3)), nnx.Linear(5, 7, rngs=nnx.Rngs(3))
  assert jax.tree.structure(nnx.state(ours)) == jax.tree.structure(nnx.state(flax_dense))
  np.testing.assert_array_equal(ours.kernel[...], flax_dense.kernel[...])
  np.testing.assert_allclose(ours(x), flax_dense(x), rtol=1e-6, atol=1e-6)


def test_unet_bfloat16_gradients_match_float32():
  """Every gradient of a bfloat16 U-Net within 3 % of the float32 one (measured: at most 0.9 %). Its
  bias gradients, each a sum over every pixel, were 30-70 % off when flax's layers summed them in
  bfloat16, as was the step embedding's (added per image to every pixel)."""
  from flax import nnx

  from hdr_jax.models.unet import UNet

  x = jax.random.normal(jax.random.key(1), (4, 32, 32, 3))
  t = jnp.array([10, 200, 500, 900])
  # Abstract models given random parameters (every layer, the zero-initialised ones included,
  # passes gradients on): no initialisation to run, which costs ~20 s on CPU.
  models = [nnx.eval_shape(lambda d=dtype: UNet(ch=32, ch_mult=(1, 2), num_res_blocks=1, groups=8, conditional=False,
                                                dtype=d, rngs=nnx.Rngs(0))) for dtype in (jnp.float32, jnp.bfloat16)]
  rng = np.random.default_rng(5)

  def draw(path, p):
    name = jax.tree_util.keystr(path)
    if p.ndim > 1:  # kernels, LeCun scale
      return rng.standard_normal(p.shape, np.float32) / np.sqrt(np.prod(p.shape[:-1]))
    return rng.standard_normal(p.shape, np.float32) * 0.1 + (1.0 if "norm" in name and "scale" in name else 0.0)

  params = jax.tree_util.tree_map_with_path(draw, nnx.state(models[0], nnx.Param))
  for model in models:
    nnx.update(model, params)

  def loss(model):
    return jnp.mean(jnp.square(model(x, t)))

  grad = nnx.jit(nnx.grad(loss))  # (compiled: op by op it takes ~50 s on CPU)
  ref, got = grad(models[0]), grad(models[1])
  pairs = list(zip(jax.tree_util.tree_leaves_with_path(ref), jax.tree.leaves(got), strict=True))
  assert len(pairs) > 100
  worst = 0.0
  for (path, r), g in pairs:
    assert g.dtype == jnp.float32
    err = float(jnp.linalg.norm(g - r) / jnp.linalg.norm(r))
    assert err < 0.03, (jax.tree_util.keystr(path), err)
    worst = max(worst, err)
  print("worst relative gradient error", worst)
