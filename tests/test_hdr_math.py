"""hdr_math against direct transcriptions of docs/reference.md, Data and Metrics (the official NumPy code's style)."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy import ndimage

from hdr_jax import hdr_math, fileio

JNP_DB_TOL = 1e-4  # float32 jnp path vs the official NumPy path, in dB (measured: <= 2e-5 up to 73 dB)


# docs/reference.md, Metrics, transcribed as the official metrics.py writes it.
def ref_mu_tonemap(h, mu=5000):
  return np.log(1 + mu * h) / np.log(1 + mu)


def ref_tanh_norm_mu_tonemap(h, norm, mu=5000):
  return ref_mu_tonemap(np.tanh(h / norm), mu)


def ref_psnr(a, b):
  return -10 * np.log10(np.mean(np.power(a - b, 2)))


def ref_psnr_mu(ref, res, percentile=99, gamma=2.24):
  rl = ref**gamma
  sl = res**gamma
  n = np.percentile(rl, percentile)
  return ref_psnr(ref_tanh_norm_mu_tonemap(rl, n), ref_tanh_norm_mu_tonemap(sl, n))


def ref_psnr_l(ref, res):
  return ref_psnr(ref / np.max(ref), res / np.max(ref))


def random_pair(rng, shape=(32, 40, 3), noise=0.05, peak=1.8):
  ref = (rng.uniform(0, 1, shape) ** 2 * peak).astype(np.float32)
  res = np.maximum(ref * (1 + noise * rng.standard_normal(shape)), 0).astype(np.float32)
  return ref, res


@pytest.fixture(scope="module")
def real_pairs(shared_hdr_files, size=96):
  """Gamma-domain crops of the shared EXR photographs (downscaled 4x by striding, scaled so that the
  median is 1 like a medium exposure) with noisy results."""
  files = shared_hdr_files
  rng = np.random.default_rng(3)
  pairs = []
  for f in files:
    lin = np.maximum(fileio.read_exr(f)[::4, ::4], 0)[:size, :size]
    lin = lin / np.percentile(lin, 50)  # medium exposure: mid-grey around 1
    ref = (lin ** (1 / 2.24)).astype(np.float32)
    assert ref.max() > 0
    res = np.maximum(ref * (1 + 0.03 * rng.standard_normal(ref.shape)) + 0.002, 0).astype(np.float32)
    pairs.append((f.stem, ref, res))
  return pairs


# --------------------------------------------------------------------------------------------------
# The official NumPy path
# --------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_np_metrics_equal_spec_random(seed):
  rng = np.random.default_rng(seed)
  ref, res = random_pair(rng, noise=[0.005, 0.05, 0.3][seed])
  assert hdr_math.np_psnr_mu(ref, res) == pytest.approx(float(ref_psnr_mu(ref, res)), abs=1e-6)
  assert hdr_math.np_psnr_l(ref, res) == pytest.approx(float(ref_psnr_l(ref, res)), abs=1e-6)


def test_np_metrics_equal_spec_real_images(real_pairs):
  for name, ref, res in real_pairs:
    assert hdr_math.np_psnr_mu(ref, res) == pytest.approx(float(ref_psnr_mu(ref, res)), abs=1e-6), name
    assert hdr_math.np_psnr_l(ref, res) == pytest.approx(float(ref_psnr_l(ref, res)), abs=1e-6), name


def test_np_metrics_discriminate():
  """Sanity: the metrics fall as the noise grows (guards against comparing an image with itself)."""
  rng = np.random.default_rng(5)
  ref, _ = random_pair(rng)
  res = [np.maximum(ref * (1 + s * rng.standard_normal(ref.shape)), 0).astype(np.float32) for s in (0.01, 0.1)]
  assert hdr_math.np_psnr_mu(ref, res[0]) > hdr_math.np_psnr_mu(ref, res[1]) + 10
  assert hdr_math.np_psnr_l(ref, res[0]) > hdr_math.np_psnr_l(ref, res[1]) + 10


# --------------------------------------------------------------------------------------------------
# The jnp path: float32, batched, jit
# --------------------------------------------------------------------------------------------------


def test_jnp_metrics_match_numpy_random_batched_and_jit():
  rng = np.random.default_rng(11)
  pairs = [random_pair(rng, noise=s) for s in (0.01, 0.05, 0.2)]
  refs, ress = np.stack([p[0] for p in pairs]), np.stack([p[1] for p in pairs])
  want_mu = np.array([hdr_math.np_psnr_mu(a, b) for a, b in pairs])
  want_l = np.array([hdr_math.np_psnr_l(a, b) for a, b in pairs])
  for fn_mu, fn_l in ((hdr_math.psnr_mu, hdr_math.psnr_l), (jax.jit(hdr_math.psnr_mu), jax.jit(hdr_math.psnr_l))):
    got_mu, got_l = np.asarray(fn_mu(refs, ress)), np.asarray(fn_l(refs, ress))
    assert got_mu.shape == got_l.shape == (3,)
    np.testing.assert_allclose(got_mu, want_mu, atol=JNP_DB_TOL)
    np.testing.assert_allclose(got_l, want_l, atol=JNP_DB_TOL)
    for k, (a, b) in enumerate(pairs):  # unbatched gives the same per-image number
      assert float(fn_mu(a, b)) == pytest.approx(got_mu[k], abs=1e-4)
      assert float(fn_l(a, b)) == pytest.approx(got_l[k], abs=1e-4)


def test_jnp_metrics_match_numpy_real_images(real_pairs):
  pairs = real_pairs
  refs, ress = np.stack([p[1] for p in pairs]), np.stack([p[2] for p in pairs])
  got_mu = np.asarray(jax.jit(hdr_math.psnr_mu)(refs, ress))
  got_l = np.asarray(jax.jit(hdr_math.psnr_l)(refs, ress))
  for k, (name, ref, res) in enumerate(pairs):
    assert got_mu[k] == pytest.approx(hdr_math.np_psnr_mu(ref, res), abs=JNP_DB_TOL), name
    assert got_l[k] == pytest.approx(hdr_math.np_psnr_l(ref, res), abs=JNP_DB_TOL), name


def test_percentile_norm_is_numpy_linear_percentile():
  rng = np.random.default_rng(2)
  x = (rng.uniform(0, 1, (2, 17, 23, 3)) ** 4 * 9).astype(np.float32)  # 1173 values: interpolates
  got = np.asarray(hdr_math.percentile_norm(x))
  want = [np.percentile(x[i], 99) for i in range(2)]
  assert got.shape == (2,)
  np.testing.assert_allclose(got, want, rtol=1e-6)
  assert float(hdr_math.percentile_norm(x[0])) == pytest.approx(float(want[0]), rel=1e-6)


# --------------------------------------------------------------------------------------------------
# Tone mapping, gamma, exposures
# --------------------------------------------------------------------------------------------------


def test_mu_tonemap_formula_and_inverse():
  h = np.concatenate([np.geomspace(1e-6, 20, 200), [0.0, 1.0]]).astype(np.float32)
  t = np.asarray(hdr_math.mu_tonemap(h))
  np.testing.assert_allclose(t, ref_mu_tonemap(h.astype(np.float64)), rtol=1e-5, atol=1e-7)
  assert t[-2] == 0 and t[-1] == pytest.approx(1.0, abs=1e-6)
  np.testing.assert_allclose(np.asarray(hdr_math.mu_tonemap_inverse(t)), h, rtol=2e-5, atol=1e-9)
  n = np.float32(0.7)
  np.testing.assert_allclose(np.asarray(hdr_math.tanh_norm_mu_tonemap(h, n)),
                             ref_tanh_norm_mu_tonemap(h.astype(np.float64), 0.7), rtol=1e-5, atol=1e-7)


def test_gamma_round_trip():
  x = np.random.default_rng(0).uniform(0, 3, (5, 7, 3)).astype(np.float32)
  np.testing.assert_allclose(np.asarray(hdr_math.gamma_decode(x)), x**2.24, rtol=1e-5)
  np.testing.assert_allclose(np.asarray(hdr_math.gamma_encode(x)), x ** (1 / 2.24), rtol=1e-5)
  np.testing.assert_allclose(np.asarray(hdr_math.gamma_encode(hdr_math.gamma_decode(x))), x, rtol=1e-5, atol=1e-6)
  np.testing.assert_allclose(np.asarray(hdr_math.gamma_decode(hdr_math.gamma_encode(x))), x, rtol=1e-5, atol=1e-6)
  assert float(hdr_math.gamma_decode(jnp.float32(-0.5))) == 0.0  # clamped, not NaN


def test_relative_exposures_and_max_radiance():
  e = np.array([[-3.0, -1.0, 1.0], [0.0, 2.0, 4.0], [-2.0, 0.0, 2.0]], np.float32)
  np.testing.assert_array_equal(np.asarray(hdr_math.relative_exposures(e)), [[-2, 0, 2], [-2, 0, 2], [-2, 0, 2]])
  np.testing.assert_array_equal(np.asarray(hdr_math.relative_exposures(e[0])), [-2, 0, 2])
  np.testing.assert_allclose(np.asarray(hdr_math.max_radiance(np.array([[-3.0, 0, 3], [-2, 0, 2]]))), [8.0, 4.0])


def spec_align(ldr, ev_rel):
  return ((ldr**2.24) * 2 ** (-ev_rel)) ** (1 / 2.24)


def test_align_exposure_is_spec_formula():
  ldr = np.random.default_rng(1).uniform(0, 1, (6, 5, 3)).astype(np.float32)
  for ev in (-3.0, -1.5, 0.0, 2.0):
    np.testing.assert_allclose(np.asarray(hdr_math.align_exposure(ldr, ev)), spec_align(ldr, ev), rtol=1e-5, atol=1e-7)
  np.testing.assert_allclose(np.asarray(hdr_math.ldr_to_linear(ldr, 2.0)), ldr**2.24 / 4, rtol=1e-5, atol=1e-8)


@pytest.mark.parametrize("domain", ["linear", "gamma"])
def test_ldr_to_hdr_inputs(domain):
  rng = np.random.default_rng(4)
  frames = rng.uniform(0, 1, (2, 3, 4, 5, 3)).astype(np.float32)
  exposures = np.array([[-2.0, 0.0, 2.0], [1.0, 4.0, 7.0]], np.float32)
  out = np.asarray(hdr_math.ldr_to_hdr_inputs(frames, exposures, domain=domain))
  assert out.shape == (2, 3, 4, 5, 6) and out.dtype == np.float32
  np.testing.assert_array_equal(out[..., :3], frames)
  for b in range(2):
    for i in range(3):
      ev = float(exposures[b, i] - exposures[b, 1])
      want = frames[b, i] ** 2.24 / 2**ev if domain == "linear" else spec_align(frames[b, i], ev)
      np.testing.assert_allclose(out[b, i, ..., 3:], want, rtol=1e-5, atol=1e-7)
  np.testing.assert_allclose(out[:, 1, ..., 3:], frames[:, 1] ** (2.24 if domain == "linear" else 1.0),
                             rtol=1e-5, atol=1e-7)  # the medium frame is the reference exposure
  single = np.asarray(hdr_math.ldr_to_hdr_inputs(frames[1], exposures[1], domain=domain))
  np.testing.assert_allclose(single, out[1], rtol=1e-6)
  with pytest.raises(ValueError, match="domain"):
    hdr_math.ldr_to_hdr_inputs(frames, exposures, domain="log")


# --------------------------------------------------------------------------------------------------
# SSIM and the loss
# --------------------------------------------------------------------------------------------------


def ref_ssim(a, b, data_range=1.0):
  """skimage-style SSIM (gaussian weights, sigma 1.5 truncated to 11 taps, population covariance),
  on the valid region, mean over channels."""
  a, b = a.astype(np.float64), b.astype(np.float64)
  f = lambda z: ndimage.gaussian_filter(z, sigma=(1.5, 1.5, 0), truncate=3.5)[5:-5, 5:-5]
  mu_a, mu_b = f(a), f(b)
  vaa, vbb, vab = f(a * a) - mu_a**2, f(b * b) - mu_b**2, f(a * b) - mu_a * mu_b
  c1, c2 = (0.01 * data_range) ** 2, (0.03 * data_range) ** 2
  s = (2 * mu_a * mu_b + c1) * (2 * vab + c2) / ((mu_a**2 + mu_b**2 + c1) * (vaa + vbb + c2))
  return s.mean()


def test_ssim_matches_reference():
  rng = np.random.default_rng(8)
  x = ndimage.gaussian_filter(rng.uniform(0, 1, (2, 30, 26, 3)), sigma=(0, 2, 2, 0)).astype(np.float32)
  x[1] *= 0.05  # a dark image, where the constants c1 and c2 matter
  y = np.clip(x + [[[[0.05]]], [[[0.005]]]] * rng.standard_normal(x.shape), 0, 1).astype(np.float32)
  got = np.asarray(hdr_math.ssim(x, y))
  assert got.shape == (2,)
  for i in range(2):
    assert got[i] == pytest.approx(ref_ssim(x[i], y[i]), abs=1e-5)
    assert float(hdr_math.ssim(x[i], y[i])) == pytest.approx(got[i], abs=1e-6)
  assert 0.2 < got.min() < got.max() < 0.999  # a real, non-trivial comparison
  assert float(hdr_math.ssim(x[0], x[0])) == pytest.approx(1.0, abs=1e-6)
  assert float(jax.jit(hdr_math.ssim)(y[1], y[1])) == pytest.approx(1.0, abs=1e-6)


def test_mu_law_l1_is_formula():
  rng = np.random.default_rng(9)
  p, t = (rng.uniform(0, 4, (2, 8, 8, 3)) ** 2).astype(np.float32), (rng.uniform(0, 4, (2, 8, 8, 3)) ** 2).astype(
      np.float32)
  want = np.mean(np.abs(ref_mu_tonemap(p.astype(np.float64)) - ref_mu_tonemap(t.astype(np.float64))))
  assert float(hdr_math.mu_law_l1(p, t)) == pytest.approx(want, rel=1e-5)
  assert float(jax.jit(hdr_math.mu_law_l1)(p, p)) == pytest.approx(0.0, abs=1e-6)


# --------------------------------------------------------------------------------------------------
# The classical merge and the merge-prior head
# --------------------------------------------------------------------------------------------------


def ref_merge(frames, exposures, gamma=2.24):
  """The classical merge written out in float64: triangle weights per pixel and channel, 1e-6 for the
  short frame where the medium is bright and for the long one where it is dark."""
  frames = np.asarray(frames, np.float64)
  ev = np.asarray(exposures, np.float64) - exposures[1]
  linear = frames**gamma / 2.0 ** ev[:, None, None, None]
  w = 1.0 - np.abs(2.0 * frames - 1.0)
  bright = frames[1] >= 0.5
  w[0] += 1e-6 * bright
  w[2] += 1e-6 * ~bright
  return (w * linear).sum(0) / w.sum(0)


def _bracket(rng, h=20, w=24):
  frames = np.round(rng.uniform(0, 1, (3, h, w, 3)) * 255) / 255
  frames[0, :3], frames[2, 5:9] = 0.0, 1.0  # clipped in one frame
  frames[:, -2:] = 1.0  # clipped in every frame: the floor weight decides
  return frames.astype(np.float32), np.array([-2.0, 0.0, 2.5], np.float32)


def test_merge_exposures_is_the_classical_merge():
  rng = np.random.default_rng(5)
  frames, ev = _bracket(rng)
  got = np.asarray(hdr_math.merge_exposures(frames, ev))
  np.testing.assert_allclose(got, ref_merge(frames, ev), rtol=1e-5, atol=1e-7)
  # Clipped everywhere and bright: the short frame's estimate.
  np.testing.assert_allclose(got[-2:], 2.0**2, rtol=1e-5)
  # A batch axis, and gains that pick one frame.
  batch = np.asarray(hdr_math.merge_exposures(np.stack([frames, frames]), np.stack([ev, ev])))
  np.testing.assert_allclose(batch[1], got, rtol=1e-6)
  gain = np.zeros((3, *frames.shape[1:3], 1), np.float32)
  gain[1] = 60.0  # the medium frame's weight x e^60: the merge is the medium frame wherever its weight is not 0
  medium_only = np.asarray(hdr_math.merge_exposures(frames, ev, log_gain=gain))
  well_exposed = (frames[1] > 0) & (frames[1] < 1)
  np.testing.assert_allclose(medium_only[well_exposed], frames[1][well_exposed] ** 2.24, rtol=1e-5)


def test_merge_head_at_zero_is_the_merge_and_its_residual_is_bounded():
  rng = np.random.default_rng(6)
  frames, ev = _bracket(rng)
  frames, ev = frames[None], ev[None]
  z = np.zeros((1, *frames.shape[2:4], 6), np.float32)
  merged = np.asarray(hdr_math.merge_exposures(frames, ev))
  np.testing.assert_allclose(np.asarray(hdr_math.merge_head(frames, ev, z, 0.25)), merged, atol=1e-5)
  # A saturated residual moves every pixel by the bound in the mu-law domain of radiance over the
  # short frame's maximum (2 ** 2 here), written out in NumPy: up, and down but never below 0.
  m, mu = 4.0, 5000.0
  t = np.log1p(mu * merged / m) / np.log1p(mu)
  for sign in (1.0, -1.0):
    z[..., 3:] = 50.0 * sign
    want = np.expm1(np.maximum(t + 0.25 * sign, 0.0) * np.log1p(mu)) / mu * m
    got = np.asarray(hdr_math.merge_head(frames, ev, z, 0.25))
    np.testing.assert_allclose(got, want, rtol=2e-5, atol=1e-7)
  assert (got[t < 0.25] == 0.0).all() and (got[t > 0.26] > 0.0).all()
