"""Denoising diffusion (DDPM, Ho et al. 2020; DDIM, Song et al. 2021) as pure functions: noise
schedules, the training target, the ancestral and DDIM samplers as single compiled loops, overlapping
tiles for full-resolution frames, and the HDR <-> diffusion-space mapping.

Indexing: a schedule has ``T`` steps indexed ``t = 0 .. T-1`` (the paper's ``t = 1 .. T``);
``alphas_cumprod[t] = prod_{s <= t} (1 - betas[s])`` and ``alphas_cumprod_prev[0] = 1``.

The diffused variable (docs/reference.md, Conditional DDPM, conditional HDR diffusion). With ``hdr_linear = gt ** 2.24``
(radiance relative to the medium frame) and ``m = hdr_math.max_radiance(exposures) = 2 ** -ev_rel_short``
(the largest radiance the short frame records)::

    x0 = 2 * mu_tonemap(clip(hdr_linear / m, 0, 1)) - 1          # in [-1, 1]
    hdr_linear = mu_tonemap_inverse((clip(x0, -1, 1) + 1) / 2) * m
    hdr_gamma = hdr_linear ** (1 / 2.24)

so x0 is bounded, perceptually spaced (the mu-law the metrics use) and the sampler's x0 clipping to
[-1, 1] is the valid range. Radiance above what the short frame records is clipped in training.

Samplers: ``ddpm`` (ancestral, all T steps, variance ``beta_tilde``) and ``ddim`` (any subsequence of
steps, ``eta`` from 0 = deterministic to 1 = ancestral). Each is one ``lax.scan``; for a given key the
initial noise is ``normal(split(key)[0])`` and the noise of loop iteration ``i`` is
``normal(fold_in(split(key)[1], i))``, so a Python loop over the same steps reproduces it exactly.
Both predict ``x0`` from the model output (``eps`` or ``v``), clip it to [-1, 1] (``clip_x0``) and
re-derive ``eps`` from the clipped ``x0``; with that, DDIM with ``eta = 1`` over all T steps is the
ancestral sampler, update for update.

Tiling: frames larger than the tile are covered by overlapping tiles whose model outputs are blended
at every step with separable windows (zero over the outer quarter of the overlap, where zero padding
disturbs the model, then a raised-cosine ramp), normalised so the weights of all tiles sum to one at
every pixel (no seams; a single tile covering the frame is exactly the untiled
model). Memory bound: the model runs on ``tile_batch`` tiles at a time (``lax.map`` with
``batch_size``), so peak activations are those of one ``(tile_batch * B, tile, tile)`` forward pass;
besides them the loop keeps the full-frame state, the stacked tile outputs ``(n_tiles, B, tile,
tile, C)`` and the per-tile conditioning features.
"""

from __future__ import annotations

import math
from typing import Callable, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from hdr_jax import hdr_math

SAMPLERS = ("ddpm", "ddim")
PREDICTIONS = ("eps", "v", "x0")
SCHEDULES = ("linear", "cosine")

# --------------------------------------------------------------------------------------------------
# Noise schedule
# --------------------------------------------------------------------------------------------------


class Schedule(NamedTuple):
  """Per-step constants (float32 arrays of shape ``(T,)``), computed in float64."""
  betas: jax.Array
  alphas_cumprod: jax.Array
  alphas_cumprod_prev: jax.Array
  log_alphas_cumprod: jax.Array  # for 1 - abar_t / abar_s without cancellation
  posterior_variance: jax.Array  # beta_tilde_t = beta_t (1 - abar_{t-1}) / (1 - abar_t)
  posterior_log_variance: jax.Array  # log(beta_tilde), with t = 0 clipped to t = 1 (it is 0)
  posterior_mean_coef1: jax.Array  # multiplies x0 in mu_tilde(x_t, x0)
  posterior_mean_coef2: jax.Array  # multiplies x_t

  @property
  def timesteps(self) -> int:
    return self.betas.shape[0]


def betas_for(kind: str, timesteps: int, beta_start: float = 1e-4, beta_end: float = 0.02) -> np.ndarray:
  """``'linear'``: ``linspace(beta_start, beta_end, T)`` (Ho et al.); ``'cosine'``: Nichol & Dhariwal
  (``abar(t) = cos^2(((t/T + s) / (1 + s)) pi/2)``, ``s = 0.008``, betas capped at 0.999)."""
  if timesteps < 1:
    raise ValueError(f"config.diffusion.timesteps must be >= 1, got {timesteps}")
  if kind == "linear":
    return np.linspace(beta_start, beta_end, timesteps, dtype=np.float64)
  if kind == "cosine":
    s = 0.008
    f = np.cos((np.arange(timesteps + 1, dtype=np.float64) / timesteps + s) / (1 + s) * math.pi / 2) ** 2
    return np.minimum(1.0 - f[1:] / f[:-1], 0.999)
  raise ValueError(f"config.diffusion.schedule: unknown schedule {kind!r}; choose one of {SCHEDULES}")


def make_schedule(kind: str = "linear", timesteps: int = 1000, beta_start: float = 1e-4,
                  beta_end: float = 0.02) -> Schedule:
  betas = betas_for(kind, timesteps, beta_start, beta_end)
  abar = np.cumprod(1.0 - betas)
  abar_prev = np.concatenate([[1.0], abar[:-1]])
  var = betas * (1.0 - abar_prev) / (1.0 - abar)
  log_var = np.log(np.concatenate([var[1:2], var[1:]]) if timesteps > 1 else np.maximum(var, 1e-20))
  coef1 = betas * np.sqrt(abar_prev) / (1.0 - abar)
  coef2 = (1.0 - abar_prev) * np.sqrt(1.0 - betas) / (1.0 - abar)
  f32 = lambda a: jnp.asarray(a, jnp.float32)
  return Schedule(f32(betas), f32(abar), f32(abar_prev), f32(np.cumsum(np.log1p(-betas))), f32(var), f32(log_var),
                  f32(coef1), f32(coef2))


def schedule_from_config(cfg) -> Schedule:
  """From ``config.diffusion`` (``schedule``, ``timesteps``, ``beta_start``, ``beta_end``)."""
  return make_schedule(cfg.schedule, cfg.timesteps, cfg.beta_start, cfg.beta_end)


def _bcast(a, x):
  """Per-example (or scalar) coefficients broadcast over an image batch."""
  a = jnp.asarray(a, jnp.float32)
  return a.reshape(a.shape + (1,) * (x.ndim - a.ndim))


# --------------------------------------------------------------------------------------------------
# Training
# --------------------------------------------------------------------------------------------------


def q_sample(sched: Schedule, x0, t, noise):
  """``x_t = sqrt(abar_t) x0 + sqrt(1 - abar_t) noise``; ``t`` ``(B,)`` ints."""
  abar = _bcast(sched.alphas_cumprod[t], x0)
  return jnp.sqrt(abar) * x0 + jnp.sqrt(1.0 - abar) * noise


def model_target(sched: Schedule, x0, t, noise, prediction: str = "eps"):
  """What the network regresses: ``eps`` (the noise), ``v = sqrt(abar) eps - sqrt(1 - abar) x0`` or
  ``x0`` itself (with a zero-initialised output layer an untrained network then predicts ``x0 = 0``,
  and every sampler returns exactly 0: what the residual mode of the DDPM task starts from)."""
  if prediction == "eps":
    return noise
  if prediction == "x0":
    return x0
  if prediction == "v":
    abar = _bcast(sched.alphas_cumprod[t], x0)
    return jnp.sqrt(abar) * noise - jnp.sqrt(1.0 - abar) * x0
  raise ValueError(f"config.diffusion.prediction: unknown {prediction!r}; choose one of {PREDICTIONS}")


def diffusion_loss(sched: Schedule, apply: Callable, x0, key, prediction: str = "eps"):
  """The simple DDPM objective: ``mean((apply(x_t, t) - target) ** 2)`` with ``t ~ U{0..T-1}`` and
  ``noise ~ N(0, I)`` drawn from ``key``; ``apply(x_t, t (B,)) -> model output``."""
  kt, kn = jax.random.split(key)
  t = jax.random.randint(kt, (x0.shape[0],), 0, sched.timesteps)
  noise = jax.random.normal(kn, x0.shape, jnp.float32)
  out = apply(q_sample(sched, x0, t, noise), t).astype(jnp.float32)
  return jnp.mean(jnp.square(out - model_target(sched, x0, t, noise, prediction)))


# --------------------------------------------------------------------------------------------------
# Sampling
# --------------------------------------------------------------------------------------------------


def predict_x0_eps(sched: Schedule, x_t, t, out, prediction: str = "eps", clip_x0: bool = True):
  """``(x0_hat, eps_hat)`` from the model output at step ``t``; with ``clip_x0`` the x0 estimate is
  clipped to [-1, 1] and ``eps`` re-derived from it, so ``x_t = sqrt(abar) x0 + sqrt(1-abar) eps``."""
  abar = _bcast(sched.alphas_cumprod[t], x_t)
  sa, s1a = jnp.sqrt(abar), jnp.sqrt(1.0 - abar)
  out = out.astype(jnp.float32)
  if prediction == "eps":
    x0 = (x_t - s1a * out) / sa
    eps = out
  elif prediction == "v":
    x0 = sa * x_t - s1a * out
    eps = s1a * x_t + sa * out
  elif prediction == "x0":
    x0 = out
    eps = (x_t - sa * x0) / s1a
  else:
    raise ValueError(f"config.diffusion.prediction: unknown {prediction!r}; choose one of {PREDICTIONS}")
  if clip_x0:
    x0 = jnp.clip(x0, -1.0, 1.0)
    eps = (x_t - sa * x0) / s1a
  return x0, eps


def ddpm_step(sched: Schedule, x_t, t, out, noise, prediction: str = "eps", clip_x0: bool = True):
  """Ancestral step ``x_{t-1} = mu_tilde(x_t, x0_hat) + sqrt(beta_tilde_t) z`` (no noise at t = 0)."""
  x0, _ = predict_x0_eps(sched, x_t, t, out, prediction, clip_x0)
  mean = _bcast(sched.posterior_mean_coef1[t], x_t) * x0 + _bcast(sched.posterior_mean_coef2[t], x_t) * x_t
  std = jnp.where(t > 0, jnp.exp(0.5 * sched.posterior_log_variance[t]), 0.0)
  return mean + _bcast(std, x_t) * noise


def ddim_sigma(sched: Schedule, t, t_prev, eta: float):
  """``sigma = eta sqrt((1 - abar_prev) / (1 - abar_t)) sqrt(1 - abar_t / abar_prev)``; ``t_prev < 0``
  means the final step to x0 (``abar_prev = 1``)."""
  prev = jnp.maximum(t_prev, 0)
  abar_prev = jnp.where(t_prev >= 0, sched.alphas_cumprod[prev], 1.0)
  log_abar = sched.log_alphas_cumprod[t]
  log_abar_prev = jnp.where(t_prev >= 0, sched.log_alphas_cumprod[prev], 0.0)
  # (1 - abar_prev) / (1 - abar) * (1 - abar / abar_prev), each factor free of cancellation
  var = jnp.expm1(log_abar_prev) / jnp.expm1(log_abar) * -jnp.expm1(log_abar - log_abar_prev)
  return eta * jnp.sqrt(jnp.maximum(var, 0.0)), abar_prev


def ddim_step(sched: Schedule, x_t, t, t_prev, out, noise, eta: float = 0.0, prediction: str = "eps",
              clip_x0: bool = True):
  """``x_prev = sqrt(abar_prev) x0_hat + sqrt(1 - abar_prev - sigma^2) eps_hat + sigma z``."""
  x0, eps = predict_x0_eps(sched, x_t, t, out, prediction, clip_x0)
  sigma, abar_prev = ddim_sigma(sched, t, t_prev, eta)
  dir_coef = jnp.sqrt(jnp.maximum(1.0 - abar_prev - sigma ** 2, 0.0))
  return (_bcast(jnp.sqrt(abar_prev), x0) * x0 + _bcast(dir_coef, x0) * eps + _bcast(sigma, x0) * noise)


def ddim_timesteps(timesteps: int, steps: int) -> np.ndarray:
  """The DDIM subsequence, descending: ``steps`` evenly spaced ints from ``T-1`` down to 0 (all T
  steps when ``steps == T``)."""
  if not 1 <= steps <= timesteps:
    raise ValueError(f"config.sampler.steps must be in [1, {timesteps}] (diffusion.timesteps), got {steps}")
  ts = np.unique(np.round(np.linspace(0, timesteps - 1, steps)).astype(np.int32))
  return ts[::-1].copy()


def sampling_plan(sampler: str, timesteps: int, steps: int | None = None):
  """``(t, t_prev)`` int32 arrays, one entry per loop iteration (``t_prev = -1`` at the end)."""
  if sampler == "ddpm":
    ts = np.arange(timesteps - 1, -1, -1, dtype=np.int32)
  elif sampler == "ddim":
    ts = ddim_timesteps(timesteps, timesteps if steps is None else steps)
  else:
    raise ValueError(f"config.sampler.name: unknown sampler {sampler!r}; choose one of {SAMPLERS}")
  return ts, np.append(ts[1:], -1).astype(np.int32)


def sampler_keys(key):
  """``(init_key, loop_key)``: noise of iteration ``i`` is ``normal(fold_in(loop_key, i))``."""
  k_init, k_loop = jax.random.split(key)
  return k_init, k_loop


def sampler_update(sched: Schedule, sampler: str, x, t, t_prev, out, noise, *, eta: float = 0.0,
                   prediction: str = "eps", clip_x0: bool = True):
  """One update of the named sampler (shared by the compiled loop and step-by-step callers)."""
  if sampler == "ddpm":
    return ddpm_step(sched, x, t, out, noise, prediction, clip_x0)
  return ddim_step(sched, x, t, t_prev, out, noise, eta, prediction, clip_x0)


def sample(denoise: Callable, sched: Schedule, shape, key, *, sampler: str = "ddim", steps: int | None = None,
           eta: float = 0.0, prediction: str = "eps", clip_x0: bool = True, unroll: int = 1):
  """Draws ``x0`` of ``shape`` by running the whole reverse process in one ``lax.scan``.

  ``denoise(x_t, t)`` -> model output, ``t`` an int32 scalar array (traced). ``sampler='ddpm'``
  uses all T steps (``steps`` ignored); ``'ddim'`` uses ``steps`` (default T) with ``eta``.
  Deterministic for ``key``; traceable (call it under ``jax.jit``).
  """
  ts, ts_prev = sampling_plan(sampler, sched.timesteps, steps)
  k_init, k_loop = sampler_keys(key)
  x = jax.random.normal(k_init, shape, jnp.float32)

  def body(x, inp):
    i, t, t_prev = inp
    noise = jax.random.normal(jax.random.fold_in(k_loop, i), shape, jnp.float32)
    out = denoise(x, t)
    return sampler_update(sched, sampler, x, t, t_prev, out, noise, eta=eta, prediction=prediction,
                          clip_x0=clip_x0), None

  idx = jnp.arange(len(ts), dtype=jnp.int32)
  x, _ = jax.lax.scan(body, x, (idx, jnp.asarray(ts), jnp.asarray(ts_prev)), unroll=unroll)
  return x


# --------------------------------------------------------------------------------------------------
# Tiles
# --------------------------------------------------------------------------------------------------


class TilePlan(NamedTuple):
  """Static tiling of an ``H x W`` frame: tile offsets ``(n, 2)``, the tile size, and per-tile blend
  weights ``(n, th, tw)`` that sum to one over the tiles covering each pixel."""
  offsets: np.ndarray
  size: tuple[int, int]
  weights: np.ndarray

  @property
  def num_tiles(self) -> int:
    return len(self.offsets)


def _axis_offsets(length: int, tile: int, overlap: int) -> np.ndarray:
  if length <= tile:
    return np.zeros(1, np.int64)
  n = math.ceil((length - tile) / (tile - overlap)) + 1
  return np.round(np.linspace(0, length - tile, n)).astype(np.int64)


def _axis_window(offset: int, tile: int, length: int, overlap: int) -> np.ndarray:
  """1-D blend window of a tile: on each side that borders another tile, weight 0 over a margin of
  ``overlap // 4`` pixels (where zero padding disturbs the model most), then a raised-cosine ramp up
  to 1 over the next ``overlap - 2 * margin``. Where neighbours overlap by exactly ``overlap``, a
  window and its neighbour's mirrored one sum to one (``sin^2 + cos^2``); every pixel keeps a positive
  weight from some tile."""
  w = np.ones(tile, np.float64)
  margin = overlap // 4
  n = overlap - 2 * margin
  if n > 0:
    ramp = np.concatenate([np.zeros(margin), np.sin(0.5 * np.pi * (np.arange(n) + 0.5) / n) ** 2, np.ones(margin)])
    if offset > 0:
      w[:overlap] *= ramp
    if offset + tile < length:
      w[tile - overlap:] *= ramp[::-1]
  return w


def tile_plan(height: int, width: int, tile_size: int, overlap: int) -> TilePlan:
  """Overlapping tiles of at most ``tile_size`` covering the frame (one tile if it fits). Adjacent
  tiles overlap by at least ``overlap`` pixels; blend weights are normalised by their sum."""
  if tile_size <= 0 or not 0 <= overlap < tile_size:
    raise ValueError(f"config.sampler: need tile_size > 0 and 0 <= tile_overlap < tile_size, got "
                     f"tile_size={tile_size}, tile_overlap={overlap}")
  th, tw = min(tile_size, height), min(tile_size, width)
  oy, ox = _axis_offsets(height, th, overlap), _axis_offsets(width, tw, overlap)
  offsets = np.array([(y, x) for y in oy for x in ox], np.int32)
  windows = np.stack([np.outer(_axis_window(y, th, height, overlap), _axis_window(x, tw, width, overlap))
                      for y, x in offsets])
  total = np.zeros((height, width))
  for (y, x), w in zip(offsets, windows):
    total[y:y + th, x:x + tw] += w
  weights = np.stack([w / total[y:y + th, x:x + tw] for (y, x), w in zip(offsets, windows)])
  return TilePlan(offsets, (th, tw), weights.astype(np.float32))


def extract_tiles(x, plan: TilePlan):
  """``(..., H, W, C) -> (n_tiles, ..., th, tw, C)``."""
  th, tw = plan.size
  return jnp.stack([x[..., y:y + th, xx:xx + tw, :] for y, xx in plan.offsets])


def blend_tiles(tiles, plan: TilePlan, height: int, width: int):
  """Weighted sum of ``(n, B, th, tw, C)`` tile outputs into ``(B, H, W, C)``."""
  th, tw = plan.size
  offsets = jnp.asarray(plan.offsets)
  tiles = tiles.astype(jnp.float32) * jnp.asarray(plan.weights)[:, None, :, :, None]
  out = jnp.zeros((tiles.shape[1], height, width, tiles.shape[-1]), jnp.float32)

  def add(i, acc):
    start = (0, offsets[i, 0], offsets[i, 1], 0)
    cur = jax.lax.dynamic_slice(acc, start, (acc.shape[0], th, tw, acc.shape[-1]))
    return jax.lax.dynamic_update_slice(acc, cur + tiles[i], start)

  return jax.lax.fori_loop(0, plan.num_tiles, add, out)


def tiled(fn: Callable, plan: TilePlan, height: int, width: int, tile_batch: int = 1) -> Callable:
  """``fn(x_tile, t, cond_tile) -> out_tile`` lifted to whole frames: ``g(x, t, cond_tiles)`` with
  ``cond_tiles`` ``(n_tiles, B, th, tw, Cc)`` (or None) runs ``fn`` on ``tile_batch`` tiles at a
  time and blends the outputs. A single tile covering the frame is ``fn`` itself (exactly)."""
  th, tw = plan.size
  offsets = jnp.asarray(plan.offsets)

  def g(x, t, cond_tiles):
    if plan.num_tiles == 1 and (th, tw) == (height, width):
      return fn(x, t, None if cond_tiles is None else cond_tiles[0]).astype(jnp.float32)

    def one(args):
      off, c = args
      xt = jax.lax.dynamic_slice(x, (0, off[0], off[1], 0), (x.shape[0], th, tw, x.shape[-1]))
      return fn(xt, t, c)

    outs = jax.lax.map(one, (offsets, cond_tiles), batch_size=min(tile_batch, plan.num_tiles))
    return blend_tiles(outs, plan, height, width)

  return g


# --------------------------------------------------------------------------------------------------
# HDR <-> diffusion space
# --------------------------------------------------------------------------------------------------


def hdr_to_x0(gt_gamma, exposures):
  """Gamma-domain HDR ``(B, H, W, 3)`` -> diffusion variable in [-1, 1] (module docstring)."""
  return linear_to_x0(hdr_math.gamma_decode(gt_gamma.astype(jnp.float32)), exposures)


def linear_to_x0(linear, exposures):
  """Linear HDR ``(B, H, W, 3)`` (relative to the medium exposure) -> diffusion variable in [-1, 1]."""
  m = _bcast(hdr_math.max_radiance(exposures), linear)
  return 2.0 * hdr_math.mu_tonemap(jnp.clip(linear.astype(jnp.float32) / m, 0.0, 1.0)) - 1.0


def x0_to_hdr(x0, exposures):
  """Diffusion variable -> gamma-domain HDR (B, H, W, 3)."""
  m = _bcast(hdr_math.max_radiance(exposures), x0)
  lin = hdr_math.mu_tonemap_inverse((jnp.clip(x0.astype(jnp.float32), -1.0, 1.0) + 1.0) / 2.0) * m
  return hdr_math.gamma_encode(lin)
