"""The HDR math of hdr_jax: one set of pure functions used by training, evaluation and scoring.

Conventions (docs/reference.md, Data and Metrics):
  * LDR frames are float in [0, 1], gamma-encoded with ``GAMMA = 2.24``.
  * The NTIRE target ``hdr`` is in the *gamma domain*; linear radiance is ``hdr ** GAMMA``.
  * Exposures are in stops; ``ev_rel = exposures - exposures[..., 1]`` (medium frame is 0).
  * Images are channels-last: ``(..., H, W, C)``.
  * SIG17 (Kalantari 2017) data keeps its own convention at the edges only: linear labels on the
    short frame's scale map in with :func:`sig17_to_internal` and out with :func:`internal_to_sig17`,
    and :func:`np_sig17_metrics` scores them (the section "The SIG17 protocol" below).

Two paths:
  * ``jnp`` functions (everything without an ``np_`` prefix) are pure and jit-able; a leading batch
    axis is allowed everywhere; metrics reduce over the last three axes (H, W, C).
  * ``np_psnr_mu`` / ``np_psnr_l`` reproduce the official NTIRE scoring program's NumPy arithmetic
    (dtypes included), and are what ``hdr_jax.score`` uses.
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np

from hdr_jax.constants import GAMMA, MU, PERCENTILE, SIG17_GAMMA  # noqa: F401 (re-exported)

# --------------------------------------------------------------------------------------------------
# Gamma and exposure alignment
# --------------------------------------------------------------------------------------------------


def _xp(x):
  """The array module of ``x``: jax.numpy for jax arrays, NumPy otherwise."""
  return jnp if isinstance(x, jax.Array) else np


def unit_frames(frames):
  """LDR frames as float32 in [0, 1]: 8-bit codes / 255 (NTIRE PNG, JPEG), 16-bit codes / 65535 (SIG17
  TIFF, 16-bit PNG), floats as they are. The dtype decides at trace time (numpy or jax arrays)."""
  xp = _xp(frames)
  if frames.dtype == np.uint8:
    return frames.astype(xp.float32) / xp.float32(255.0)
  if frames.dtype == np.uint16:
    return frames.astype(xp.float32) / xp.float32(65535.0)
  return frames.astype(xp.float32)


def gamma_decode(x, gamma: float = GAMMA):
  """Gamma-domain -> linear: ``x ** gamma`` (negative values clamped to 0)."""
  return jnp.power(jnp.maximum(x, 0.0), gamma)


def gamma_encode(x, gamma: float = GAMMA):
  """Linear -> gamma domain: ``x ** (1 / gamma)`` (negative values clamped to 0)."""
  return jnp.power(jnp.maximum(x, 0.0), 1.0 / gamma)


def relative_exposures(exposures):
  """``exposures - exposures[..., 1]``: the medium frame gets 0 (shape ``(..., 3)``)."""
  exposures = jnp.asarray(exposures, jnp.float32)
  return exposures - exposures[..., 1:2]


def _ev_broadcast(ev, ndim_img: int):
  """Reshape per-frame EVs ``(...,)`` so they broadcast over ``(..., H, W, C)``."""
  ev = jnp.asarray(ev, jnp.float32)
  return ev.reshape(ev.shape + (1,) * ndim_img)


def ldr_to_linear(ldr, ev_rel, gamma: float = GAMMA):
  """Linear scene estimate from an LDR frame: ``ldr ** gamma / 2 ** ev_rel``.

  ``ldr``: ``(..., H, W, C)``; ``ev_rel``: broadcastable to the leading axes ``(...)``.
  """
  return gamma_decode(ldr, gamma) / jnp.exp2(_ev_broadcast(ev_rel, 3))


def align_exposure(ldr, ev_rel, gamma: float = GAMMA):
  """An LDR frame brought to the medium exposure, in the gamma domain (docs/reference.md, Data):
  ``((ldr ** gamma) * 2 ** (-ev_rel)) ** (1 / gamma)``."""
  return gamma_encode(ldr_to_linear(ldr, ev_rel, gamma), gamma)


EXPOSURE_REFERENCES = ("medium", "short")


def ldr_to_hdr_inputs(frames, exposures, gamma: float = GAMMA, domain: str = "linear", reference: str = "medium"):
  """The 6-channel per-frame model input ``[LDR, H]`` (docs/reference.md, AHDRNet).

  Args:
    frames: ``(..., 3, H, W, 3)`` LDR frames (short, medium, long) in [0, 1].
    exposures: ``(..., 3)`` exposures in stops (absolute or relative; only differences matter).
    domain: ``"linear"`` gives ``H = ldr ** gamma / 2 ** ev_rel`` (AHDRNet);
      ``"gamma"`` gives the exposure-aligned frame in the gamma domain (HDR-VAM).
    reference: the frame ``ev_rel`` is relative to: ``"medium"`` (NTIRE's convention; ``H`` reaches
      ``max_radiance``, 8 or 16 for a short frame 3 or 4 stops down) or ``"short"`` (Kalantari's and
      the official AHDRNet's: stops above the shortest exposure, so ``H`` is in [0, 1]).
  Returns:
    ``(..., 3, H, W, 6)``.
  """
  if reference not in EXPOSURE_REFERENCES:
    raise ValueError(f"reference must be one of {EXPOSURE_REFERENCES}, got {reference!r}")
  ev_rel = relative_exposures(exposures)
  if reference == "short":
    ev_rel = ev_rel - ev_rel[..., :1]
  if domain == "linear":
    h = ldr_to_linear(frames, ev_rel, gamma)
  elif domain == "gamma":
    h = align_exposure(frames, ev_rel, gamma)
  else:
    raise ValueError(f"domain must be 'linear' or 'gamma', got {domain!r}")
  return jnp.concatenate([frames, h.astype(frames.dtype)], axis=-1)


def max_radiance(exposures):
  """Largest linear radiance (relative to the medium frame) the short frame can record:
  ``2 ** -ev_rel_short``. Used to scale a model's sigmoid output; shape ``(...)``."""
  return jnp.exp2(-relative_exposures(exposures)[..., 0])


# --------------------------------------------------------------------------------------------------
# The classical exposure merge, and the merge-prior head built on it
# --------------------------------------------------------------------------------------------------

MERGE_FLOOR = 1e-6  # weight that keeps a pixel clipped in every frame defined (short if bright, else long)


def merge_weights(frames):
  """Triangle weights ``1 - |2 ldr - 1|`` per frame, pixel and channel, ``(..., 3, H, W, C)``, plus
  :data:`MERGE_FLOOR` for the short frame where the medium frame is bright (>= 0.5) and for the long
  frame where it is dark, so that a pixel clipped in every frame still has a weight."""
  w = 1.0 - jnp.abs(2.0 * frames - 1.0)
  bright = (frames[..., 1:2, :, :, :] >= 0.5).astype(w.dtype)
  floor = jnp.concatenate([bright, jnp.zeros_like(bright), 1.0 - bright], axis=-4) * MERGE_FLOOR
  return w + floor


def merge_exposures(frames, exposures, gamma: float = GAMMA, log_gain=None):
  """The classical multi-exposure merge (no motion compensation) -> linear HDR ``(..., H, W, C)``
  relative to the medium exposure: each frame's linear estimate ``ldr ** gamma / 2 ** ev_rel``
  averaged with :func:`merge_weights`.

  ``log_gain`` (broadcastable to ``(..., 3, H, W, C)``, e.g. one value per frame and pixel ``(..., 3,
  H, W, 1)``) multiplies each frame's weights by ``exp(log_gain)``: with zeros it is the classical
  merge itself. The weights are normalised as a softmax over the frames of ``log(w) + log_gain``.
  """
  frames = jnp.asarray(frames, jnp.float32)
  linear = ldr_to_linear(frames, relative_exposures(exposures), gamma)
  logits = jnp.log(jnp.maximum(merge_weights(frames), 1e-30))
  if log_gain is not None:
    logits = logits + log_gain
  return jnp.sum(jax.nn.softmax(logits, axis=-4) * linear, axis=-4)


def merge_head(frames, exposures, z, residual_bound: float, gamma: float = GAMMA):
  """The merge-prior output head -> linear HDR ``(B, H, W, 3)``.

  ``z (B, H, W, 6)`` are a network's raw outputs: channels 0-2 the log gains of the short, medium
  and long frames' merge weights (:func:`merge_exposures`), channels 3-5 a residual for what no
  frame holds, added in the mu-law domain of radiance over ``max_radiance`` (the loss's and the
  metric's perceptual scale, so a dark pixel moves by as little as a bright one looks) and bounded to
  ``residual_bound`` there by a tanh: ``m * mu^-1(mu(merged / m) + residual_bound * tanh(z))``. With
  ``z = 0`` (a zero initialised last layer) this is the classical merge.
  """
  z = z.astype(jnp.float32)
  log_gain = jnp.moveaxis(z[..., :3], -1, 1)[..., None]  # (B, 3, H, W, 1)
  merged = merge_exposures(frames, exposures, gamma, log_gain)
  m = max_radiance(exposures)[:, None, None, None]
  t = mu_tonemap(merged / m) + residual_bound * jnp.tanh(z[..., 3:])
  return mu_tonemap_inverse(jnp.maximum(t, 0.0)) * m


# --------------------------------------------------------------------------------------------------
# Tone mapping
# --------------------------------------------------------------------------------------------------


def mu_tonemap(h, mu: float = MU):
  """``log(1 + mu * h) / log(1 + mu)``."""
  return jnp.log1p(mu * h) / math.log1p(mu)


def mu_tonemap_inverse(t, mu: float = MU):
  """Inverse of :func:`mu_tonemap`."""
  return jnp.expm1(t * math.log1p(mu)) / mu


def tanh_norm_mu_tonemap(h, norm, mu: float = MU):
  """``mu_tonemap(tanh(h / norm))``; ``norm`` broadcasts against the leading axes of ``h``."""
  norm = jnp.asarray(norm, h.dtype)
  norm = norm.reshape(norm.shape + (1,) * (h.ndim - norm.ndim)) if norm.ndim else norm
  return mu_tonemap(jnp.tanh(h / norm), mu)


def percentile_norm(linear_ref, q: float = PERCENTILE):
  """``numpy.percentile(ref, 99)`` over all pixels and channels of each image (linear interp.)."""
  flat = linear_ref.reshape(linear_ref.shape[:-3] + (-1,))
  return jnp.percentile(flat, q, axis=-1, method="linear")


def np_gamma_decode(x, gamma: float = GAMMA) -> np.ndarray:
  """:func:`gamma_decode` in NumPy float32 (gamma-domain HDR -> linear radiance, negatives to 0), for
  whole images on the host (e.g. a 24 MP prediction) without a device round trip."""
  x = np.maximum(np.asarray(x, np.float32), np.float32(0.0))
  return np.power(x, np.float32(gamma), out=x)


def np_reinhard_tonemap(linear, key: float = 0.18, white_percentile: float = 99.9,
                        display_gamma: float = 2.2) -> np.ndarray:
  """A display image in [0, 1] (float32, gamma-encoded with ``display_gamma``) from linear HDR
  ``(H, W, 3)``: Reinhard et al.'s global operator (2002, eq. 4) on luminance (Rec. 709 weights),
  ``L_m = key * L / L_avg`` (``L_avg`` the log-average luminance), ``L_d = L_m (1 + L_m / L_w^2) /
  (1 + L_m)`` with the white point ``L_w`` at the ``white_percentile`` of ``L_m`` (a few hot pixels do
  not grey the picture), colours scaled by ``L_d / L``. A preview, not a grading: no local contrast."""
  linear = np.maximum(np.asarray(linear, np.float32), np.float32(0.0))
  lum = linear @ np.asarray([0.2126, 0.7152, 0.0722], np.float32)
  eps = np.float32(1e-6)
  l_avg = np.float32(np.exp(np.mean(np.log(lum + eps, dtype=np.float64))))
  scaled = lum * np.float32(key / max(l_avg, 1e-12))
  white = np.float32(max(np.percentile(scaled, white_percentile), 1e-6))
  display = scaled * (1 + scaled / (white * white)) / (1 + scaled)
  ratio = display / (lum + eps)
  out = np.clip(linear * ratio[..., None], 0.0, 1.0)
  return np.power(out, np.float32(1.0 / display_gamma), out=out)


# --------------------------------------------------------------------------------------------------
# Metrics (jnp; per image, leading axes kept)
# --------------------------------------------------------------------------------------------------


def mse(a, b):
  return jnp.mean(jnp.square(a - b), axis=(-3, -2, -1))


def psnr(a, b):
  """``-10 log10(mean((a - b) ** 2))`` per image."""
  return -10.0 * jnp.log10(mse(a, b))


def psnr_mu(ref, res, gamma: float = GAMMA):
  """PSNR-mu of the NTIRE challenge on gamma-domain HDR images (docs/reference.md, Metrics)."""
  rl = gamma_decode(ref, gamma)
  sl = gamma_decode(res, gamma)
  n = percentile_norm(rl)
  return psnr(tanh_norm_mu_tonemap(rl, n), tanh_norm_mu_tonemap(sl, n))


def psnr_l(ref, res):
  """PSNR-L of the NTIRE challenge: PSNR after dividing both by ``max(ref)`` (gamma domain)."""
  m = jnp.max(ref, axis=(-3, -2, -1), keepdims=True)
  return psnr(ref / m, res / m)


def _gaussian_kernel(size: int = 11, sigma: float = 1.5, dtype=np.float32):
  """The normalised 1-D Gaussian window (``cv2.getGaussianKernel``), computed in float64."""
  x = np.arange(size, dtype=np.float64) - (size - 1) / 2
  k = np.exp(-(x**2) / (2 * sigma**2))
  return (k / k.sum()).astype(dtype)


def _gaussian_filter_valid(x, kernel):
  """Separable 'valid' Gaussian filter of ``(N, H, W, C)`` per channel."""
  k = jnp.asarray(kernel, x.dtype)
  c = x.shape[-1]
  kh = jnp.tile(k.reshape(-1, 1, 1, 1), (1, 1, 1, c))
  kw = jnp.tile(k.reshape(1, -1, 1, 1), (1, 1, 1, c))
  dn = ("NHWC", "HWIO", "NHWC")
  y = jax.lax.conv_general_dilated(x, kh, (1, 1), "VALID", dimension_numbers=dn, feature_group_count=c)
  return jax.lax.conv_general_dilated(y, kw, (1, 1), "VALID", dimension_numbers=dn, feature_group_count=c)


def ssim(a, b, max_val: float = 1.0, filter_size: int = 11, sigma: float = 1.5,
         k1: float = 0.01, k2: float = 0.03):
  """SSIM (Wang et al. 2004: 11x11 Gaussian window, sigma 1.5, valid region), mean over channels.

  Matches ``skimage.metrics.structural_similarity(..., gaussian_weights=True, sigma=1.5,
  use_sample_covariance=False, data_range=max_val, channel_axis=-1)`` up to its border handling
  (this computes the valid region only, as the reference MATLAB code does).
  """
  lead = a.shape[:-3]
  a = a.reshape((-1,) + a.shape[-3:]).astype(jnp.float32)
  b = b.reshape((-1,) + b.shape[-3:]).astype(jnp.float32)
  kern = _gaussian_kernel(filter_size, sigma)
  f = lambda z: _gaussian_filter_valid(z, kern)
  mu_a, mu_b = f(a), f(b)
  saa = f(a * a) - mu_a**2
  sbb = f(b * b) - mu_b**2
  sab = f(a * b) - mu_a * mu_b
  c1, c2 = (k1 * max_val) ** 2, (k2 * max_val) ** 2
  s = ((2 * mu_a * mu_b + c1) * (2 * sab + c2)) / ((mu_a**2 + mu_b**2 + c1) * (saa + sbb + c2))
  return jnp.mean(s, axis=(-3, -2, -1)).reshape(lead)


def ssim_mu(ref, res, gamma: float = GAMMA):
  """SSIM on the tanh-normalised mu-law tone-mapped images (the PSNR-mu domain)."""
  rl = gamma_decode(ref, gamma)
  sl = gamma_decode(res, gamma)
  n = percentile_norm(rl)
  return ssim(tanh_norm_mu_tonemap(rl, n), tanh_norm_mu_tonemap(sl, n))


def ssim_l(ref, res):
  """SSIM on the gamma-domain images divided by ``max(ref)`` (the PSNR-L domain)."""
  m = jnp.max(ref, axis=(-3, -2, -1), keepdims=True)
  return ssim(ref / m, res / m)


# --------------------------------------------------------------------------------------------------
# Training loss
# --------------------------------------------------------------------------------------------------


def mu_law_l1(pred_linear, target_linear, mu: float = MU):
  """The papers' loss: ``mean |mu_tonemap(pred) - mu_tonemap(target)|`` on linear HDR."""
  return jnp.mean(jnp.abs(mu_tonemap(pred_linear, mu) - mu_tonemap(target_linear, mu)))


# --------------------------------------------------------------------------------------------------
# The official NumPy path (scoring)
# --------------------------------------------------------------------------------------------------


def np_mu_tonemap(h, mu=MU):
  return np.log(1 + mu * h) / np.log(1 + mu)


def np_tanh_norm_mu_tonemap(h, norm, mu=MU):
  return np_mu_tonemap(np.tanh(h / norm), mu)


def np_psnr(a, b):
  return -10 * np.log10(np.mean(np.power(a - b, 2)))


def np_psnr_mu(ref, res, percentile=PERCENTILE, gamma=GAMMA):
  """PSNR-mu with the official program's NumPy operations, in the same order and dtypes.

  ``ref``/``res``: decoded gamma-domain images as the official reader returns them (float32).
  """
  rl = ref**gamma
  sl = res**gamma
  n = np.percentile(rl, percentile)
  return float(np_psnr(np_tanh_norm_mu_tonemap(rl, n), np_tanh_norm_mu_tonemap(sl, n)))


def np_psnr_l(ref, res):
  """PSNR-L with the official program's NumPy operations."""
  norm = np.max(ref)
  return float(np_psnr(ref / norm, res / norm))


# --------------------------------------------------------------------------------------------------
# The SIG17 (Kalantari 2017) protocol: linear labels in [0, 1], stops counted from the short frame
# --------------------------------------------------------------------------------------------------
#
# SIG17 scenes hold linear HDR labels on the scale of the shortest exposure (its saturation is 1), and
# the papers map the LDR frames with gamma 2.2 and exposure times ``2 ** stops`` counted from the
# shortest frame. Inside hdr_jax every model, task and loss keeps one convention (NTIRE's): gamma-domain
# HDR (``GAMMA`` = 2.24) relative to the medium exposure. A SIG17 label maps into it with
# :func:`sig17_to_internal` and a prediction maps back out with :func:`internal_to_sig17`; the two are
# exact inverses up to float32 rounding, so the SIG17 metrics see the model's linear output. The
# protocol's gamma is ``SIG17_GAMMA`` (2.2, from hdr_jax.constants).


def sig17_scale(exposures):
  """``2 ** (stops_medium - stops_short)``: the medium-relative radiance of a SIG17 label value 1
  (shape ``(...)`` for exposures ``(..., 3)``; NumPy or jax like its input)."""
  xp = _xp(exposures)
  e = xp.asarray(exposures, xp.float32)
  return xp.exp2(e[..., 1] - e[..., 0])


def _image_scale(exposures):
  """:func:`sig17_scale` shaped to multiply ``(..., H, W, C)`` images."""
  s = sig17_scale(exposures)
  return s.reshape(s.shape + (1, 1, 1)) if s.ndim else s


def sig17_to_internal(linear, exposures):
  """A SIG17 linear label ``(..., H, W, C)`` (relative to the shortest exposure) -> the internal
  gamma-domain target relative to the medium exposure: ``(linear * sig17_scale) ** (1 / GAMMA)``.
  NumPy in, NumPy out (the data pipeline's readers run it on the host); jax in, jax out."""
  xp = _xp(linear)
  x = xp.maximum(xp.asarray(linear, xp.float32), 0) * _image_scale(exposures)
  return xp.power(x, xp.float32(1.0 / GAMMA)).astype(xp.float32)


def internal_to_sig17(hdr, exposures):
  """An internal gamma-domain prediction (medium-relative) -> SIG17 linear HDR relative to the shortest
  exposure: ``hdr ** GAMMA / sig17_scale`` (the inverse of :func:`sig17_to_internal`)."""
  xp = _xp(hdr)
  return (xp.power(xp.maximum(xp.asarray(hdr, xp.float32), 0), xp.float32(GAMMA))
          / _image_scale(exposures)).astype(xp.float32)


def np_ssim_255(a, b, size: int = 11, sigma: float = 1.5) -> float:
  """SSIM of two ``(H, W, C)`` images in [0, 255] as the widely used Python evaluation of SIG17 computes
  it: float64, Gaussian window ``size x size`` with ``sigma`` (outer product of the normalised 1-D
  Gaussian, ``cv2.getGaussianKernel``), C1 = (0.01 * 255)^2, C2 = (0.03 * 255)^2, statistics per
  channel on the valid region (``size // 2`` pixels cropped on every side), mean over the map and the
  channels. Float64 because variances of values up to 255 lose ~1e-4 of SSIM in float32."""
  from hdr_jax.fileio import cv2  # (io sets OpenCV's environment before importing it)

  a = np.asarray(a, np.float64)
  b = np.asarray(b, np.float64)
  k = _gaussian_kernel(size, sigma, np.float64)
  r = size // 2
  if a.shape[0] <= 2 * r or a.shape[1] <= 2 * r:
    raise ValueError(f"image {a.shape[0]}x{a.shape[1]} is smaller than the {size}x{size} SSIM window")

  def filt(z):  # separable correlation (the kernel is symmetric), per channel; the border is cropped away
    out = cv2.sepFilter2D(z, cv2.CV_64F, k, k, borderType=cv2.BORDER_REFLECT_101)
    return out[r:-r, r:-r].reshape(out.shape[0] - 2 * r, out.shape[1] - 2 * r, -1)

  c1, c2 = (0.01 * 255) ** 2, (0.03 * 255) ** 2
  mu_a, mu_b = filt(a), filt(b)
  saa = filt(a * a) - mu_a**2
  sbb = filt(b * b) - mu_b**2
  sab = filt(a * b) - mu_a * mu_b
  s = ((2 * mu_a * mu_b + c1) * (2 * sab + c2)) / ((mu_a**2 + mu_b**2 + c1) * (saa + sbb + c2))
  return float(np.mean(s.reshape(-1, s.shape[-1]).mean(axis=0)))


def np_sig17_metrics(label, pred, mu: float = MU, ssim: bool = True) -> dict:
  """PSNR-mu, PSNR-L, SSIM-mu and SSIM-L of one SIG17 prediction, as the papers compute them.

  ``label`` and ``pred``: linear HDR ``(H, W, 3)`` relative to the shortest exposure. Both are clipped
  to [0, 1]; PSNR-L is ``-10 log10(mse)`` (data range 1) on them, PSNR-mu the same on
  ``log(1 + mu x) / log(1 + mu)`` (no percentile normalisation); SSIM-L / SSIM-mu are
  :func:`np_ssim_255` of the same images times 255 (left out with ``ssim=False``). Float64 throughout."""
  lab = np.clip(np.asarray(label, np.float64), 0.0, 1.0)
  res = np.clip(np.asarray(pred, np.float64), 0.0, 1.0)
  lab_mu, res_mu = np_mu_tonemap(lab, mu), np_mu_tonemap(res, mu)
  with np.errstate(divide="ignore"):
    out = {"psnr_mu": float(np_psnr(lab_mu, res_mu)), "psnr_l": float(np_psnr(lab, res))}
  if ssim:
    out.update(ssim_mu=np_ssim_255(lab_mu * 255.0, res_mu * 255.0), ssim_l=np_ssim_255(lab * 255.0, res * 255.0))
  return out
