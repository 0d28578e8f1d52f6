"""Synthetic NTIRE-format HDR scenes: three noisy, misaligned 8-bit exposures and a gamma-domain target.

A scene starts as linear radiance on a canvas larger than the frame (so that warps never bring in
borders): either procedural (sky gradient, textured surfaces and shapes, deep shadows, bright light
sources) or a random crop of a real radiance map (.exr/.hdr), rescaled and flipped. The LDR frames are
made as in the NTIRE challenge: the scene is normalised so that the medium frame is well exposed, the
short and long frames see it through a small global camera motion (rotation, scale, translation)
and independently moving textured objects (real ghosting), each frame is scaled by ``2 ** ev_rel``,
gets Poisson-Gaussian noise, is clipped to [0, 1], gamma-encoded (2.24) and quantised to 8 bits.
The target is the noise-free radiance at the medium frame's geometry, relative to the medium
exposure, in the gamma domain: ``gt = radiance ** (1 / 2.24)`` (equal to the medium frame on its
well-exposed pixels, above 1 where it saturates; radiance is capped at ``RADIANCE_CAP`` = 1000).

Dynamic range (:func:`dynamic_range`) is measured as the ratio of the 99.9th to the 0.1th
percentile of linear luminance. Procedural scenes are built for >= 1e4 (a deep shadow at 2e-4..2e-3
of the base illumination over >= 12% of the frame, lights at 60-1000x it over 0.3-1.5%): the lowest
value seen over 400 seeds for each of 32x32, 32x48, 64x64 and 128x96 frames was 1.6e4 (tiny 16x16
frames, where a light's glow fills the frame, can fall below).

Every scene draws from its own ``numpy`` Generator seeded with ``(seed, scene index)``, so a scene is
the same byte for byte whatever the number of scenes generated with it.

CLI: ``python -m hdr_jax.synthesize --out=DIR --scenes=N --height=H --width=W [--hdr=FILE ...] [--seed=S]
[--layout=ntire|sig17]``. ``--layout=sig17`` writes the same scenes in the Kalantari 2017 layout
(:mod:`hdr_jax.sig17`): 16-bit TIFF frames with gamma 2.2, stops from the short frame, a linear label.
"""

from __future__ import annotations

import argparse
import functools
import json
import math
import os
import shutil
import socket
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Sequence

import numpy as np

from hdr_jax import fileio
from hdr_jax.constants import GAMMA, SIG17_GAMMA
from hdr_jax.fileio import cv2  # OpenEXR support enabled before cv2 is imported

GENERATOR_VERSION = 1
MIN_SIZE = 16
MAX_SCENES = 10_000  # four-digit scene ids
EV_SETS = ((-2.0, 0.0, 2.0), (-3.0, 0.0, 3.0), (-3.0, -1.0, 1.0))
RADIANCE_CAP = 1000.0  # linear radiance relative to the medium exposure (gamma-domain gt <= 21.8)
MARKER = ".complete.json"
_LUMA = np.array([0.2126, 0.7152, 0.0722], np.float32)


def dynamic_range(radiance, low: float = 0.1, high: float = 99.9) -> float:
  """``percentile(Y, high) / percentile(Y, low)`` of the luminance ``Y`` of a linear ``(H, W, 3)``
  radiance map (inf when the low percentile is 0)."""
  y = np.asarray(radiance, np.float32) @ _LUMA
  lo, hi = np.percentile(y, [low, high])
  return float(hi / lo) if lo > 0 else math.inf


# --------------------------------------------------------------------------------------------------
# Procedural content
# --------------------------------------------------------------------------------------------------


def _smooth_noise(rng, h, w, cell, octaves=3):
  """Multi-octave value noise in [0, 1]: random grids with cells of ``cell``, ``cell / 2``, ... pixels,
  upsampled (bicubic) and summed at a reduced resolution, then upsampled once to ``(h, w)``."""
  k = max(1, int(cell / 2 ** (octaves - 1) / 2))  # the finest octave keeps >= 2 samples per cell
  hs, ws = math.ceil(h / k), math.ceil(w / k)
  out = np.zeros((hs, ws), np.float32)
  amp = 1.0
  for _ in range(octaves):
    c = cell / k
    grid = rng.random((max(2, math.ceil(hs / c) + 1), max(2, math.ceil(ws / c) + 1)), dtype=np.float32)
    out += np.float32(amp) * cv2.resize(grid, (ws, hs), interpolation=cv2.INTER_CUBIC)
    amp, cell = amp * 0.5, max(cell / 2, 1.5)
  if k > 1:
    out = cv2.resize(out, (w, h), interpolation=cv2.INTER_CUBIC)
  out -= out.min()
  return out / max(float(out.max()), 1e-6)


def _pattern(rng, h, w, scale):
  """A texture in [0, 1]: noise, stripes, checkers or a noisy ramp, with a fine grain."""
  kind = rng.integers(4)
  if kind == 0:
    t = _smooth_noise(rng, h, w, max(2.0, rng.uniform(0.05, 0.3) * scale), octaves=4)
  else:
    phi = rng.uniform(0, np.pi)
    y = np.arange(h, dtype=np.float32)[:, None]
    x = np.arange(w, dtype=np.float32)[None, :]
    u = x * math.cos(phi) + y * math.sin(phi)
    period = max(3.0, rng.uniform(0.03, 0.15) * scale)
    sharp = rng.uniform(1.0, 8.0)
    if kind == 1:
      t = 0.5 + 0.5 * np.tanh(sharp * np.sin(u * np.float32(2 * np.pi / period) + np.float32(rng.uniform(0, 7))))
    elif kind == 2:
      v = y * math.cos(phi) - x * math.sin(phi)
      k = np.float32(np.pi / period)
      t = 0.5 + 0.5 * np.tanh(sharp * np.sin(u * k) * np.sin(v * k))
    else:
      t = np.clip(u / max(h, w) + 0.6 * _smooth_noise(rng, h, w, max(2.0, 0.2 * scale)) - 0.2, 0, 1)
  grain = cv2.resize(rng.random((math.ceil(h / 2), math.ceil(w / 2)), dtype=np.float32), (w, h),
                     interpolation=cv2.INTER_LINEAR)
  return (t * (0.8 + 0.2 * grain)).astype(np.float32)


def _colour(rng, lo=0.05, hi=0.9):
  value, sat, tint = rng.uniform(lo, hi), rng.uniform(0.0, 0.8), rng.random(3)
  return (value * (1 - sat + sat * tint / max(tint.max(), 1e-3))).astype(np.float32)


def _albedo(rng, h, w, scale):
  """Two random colours mixed by a random pattern: ``(h, w, 3)``."""
  a, b = _colour(rng), _colour(rng)
  return _pattern(rng, h, w, scale)[..., None] * (a - b) + b


def _shape_mask(rng, h, w, cx, cy, rx, ry):
  """Anti-aliased alpha ``(h, w)`` of an ellipse, rotated rectangle or star polygon centred at
  ``(cx, cy)`` with half-extents ``(rx, ry)`` (drawn clipped to the array)."""
  m = np.zeros((h, w), np.uint8)
  kind, angle = rng.integers(3), rng.uniform(0, 180)
  if kind == 0:
    cv2.ellipse(m, ((cx, cy), (2 * rx, 2 * ry), angle), 255, -1, cv2.LINE_AA)
  else:
    if kind == 1:
      pts = cv2.boxPoints(((cx, cy), (2 * rx, 2 * ry), angle))
    else:
      n = rng.integers(5, 10)
      a = np.sort(rng.uniform(0, 2 * np.pi, n))
      r = rng.uniform(0.5, 1.0, n)
      pts = np.stack([cx + rx * r * np.cos(a), cy + ry * r * np.sin(a)], -1)
    cv2.fillPoly(m, [np.round(pts * 16).astype(np.int32)], 255, cv2.LINE_AA, shift=4)
  return m.astype(np.float32) / 255.0


def _roi(cx, cy, rx, ry, h, w):
  """Integer box ``(y0, y1, x0, x1)`` around a shape, clipped to ``(h, w)``."""
  r = max(rx, ry) + 2
  return (max(0, int(cy - r)), min(h, int(cy + r) + 2), max(0, int(cx - r)), min(w, int(cx + r) + 2))


def _procedural_canvas(rng, hc, wc, margin, height, width):
  """Linear radiance ``(hc, wc, 3)``; content is placed in the frame area ``[margin, margin + height)``."""
  scale = min(height, width)
  rad = _albedo(rng, hc, wc, scale)
  for _ in range(rng.integers(4, 10)):  # textured shapes (edges)
    cx, cy = margin + rng.uniform(0, width), margin + rng.uniform(0, height)
    rx, ry = rng.uniform(0.05, 0.25, 2) * scale + 1
    y0, y1, x0, x1 = _roi(cx, cy, rx, ry, hc, wc)
    a = _shape_mask(rng, y1 - y0, x1 - x0, cx - x0, cy - y0, rx, ry)[..., None]
    tex = _albedo(rng, y1 - y0, x1 - x0, scale)
    rad[y0:y1, x0:x1] += a * (tex - rad[y0:y1, x0:x1])

  # Illumination: smooth variation and a directional gradient.
  y = np.arange(hc, dtype=np.float32)[:, None] - (margin + height / 2)
  x = np.arange(wc, dtype=np.float32)[None, :] - (margin + width / 2)
  phi = rng.uniform(0, 2 * np.pi)
  illum = 0.5 + _smooth_noise(rng, hc, wc, max(4.0, scale / 1.5), octaves=2)
  illum *= np.maximum(0.3, 1 + rng.uniform(0, 0.8) * (x * math.cos(phi) + y * math.sin(phi)) / scale)
  rad *= illum[..., None]

  if rng.random() < 0.7:  # sky above a tilted horizon: bright gradient with clouds
    height_above = height * rng.uniform(0.1, 0.45) - height / 2 + rng.uniform(-0.15, 0.15) * x - y
    sky = 1 / (1 + np.exp(np.clip(-height_above, -50, 50)))
    level = rng.uniform(2.0, 8.0) * (1 + np.clip(height_above / scale, 0, 1))
    clouds = _smooth_noise(rng, hc, wc, max(4.0, scale / 3), octaves=4)
    blue = np.array([0.55, 0.75, 1.0], np.float32)
    rad += sky[..., None] * (level[..., None] * (blue + clouds[..., None] ** 2 * (1 - blue)) - rad)

  # A deep shadow (an unlit foreground region) over 12-50% of the frame.
  phi = rng.uniform(0, 2 * np.pi)
  u = x * math.cos(phi) + y * math.sin(phi)
  edge = (abs(width * math.cos(phi)) + abs(height * math.sin(phi))) / 2 * rng.uniform(0.0, 0.5)
  soft = max(0.5, rng.uniform(0.002, 0.03) * scale)
  shadow = 1 / (1 + np.exp(np.clip(-(u - edge) / soft, -50, 50)))
  rad *= (1 + shadow * (math.exp(rng.uniform(math.log(2e-4), math.log(2e-3))) - 1))[..., None]

  # Light sources: 2-5 discs/blobs with a glow, 60-1000x the base illumination, 0.3-1.5% of the frame.
  n = rng.integers(2, 6)
  radius = math.sqrt(rng.uniform(0.003, 0.015) * height * width / (n * np.pi))
  for _ in range(n):
    cx, cy = margin + rng.uniform(0, width), margin + rng.uniform(0, height)
    rx, ry = max(1.5, radius) * rng.uniform(0.7, 1.3, 2)
    level = math.exp(rng.uniform(math.log(60.0), math.log(1000.0)))
    colour = np.array([1.0, rng.uniform(0.7, 1.0), rng.uniform(0.4, 0.95)], np.float32)
    sigma = max(rx, ry)
    y0, y1, x0, x1 = _roi(cx, cy, 4 * sigma, 4 * sigma, hc, wc)
    disc = _shape_mask(rng, y1 - y0, x1 - x0, cx - x0, cy - y0, rx, ry)
    d2 = (np.arange(y0, y1, dtype=np.float32)[:, None] - cy) ** 2 + (np.arange(x0, x1, dtype=np.float32) - cx) ** 2
    glow = 0.005 * np.maximum(np.exp(-d2 / (2 * sigma**2)) - math.exp(-8), 0)  # 0 at the ROI's edge
    rad[y0:y1, x0:x1] += (level * np.maximum(disc, glow))[..., None] * colour
  return rad


# --------------------------------------------------------------------------------------------------
# Real radiance maps
# --------------------------------------------------------------------------------------------------


# In a list of radiance maps, this name stands for a procedural scene (mixing the two kinds of scene).
PROCEDURAL = "procedural"


def _load_source(path) -> np.ndarray | None:
  if str(path) == PROCEDURAL:
    return None
  img = fileio.read_hdr_image(path)
  if img.shape[0] < 2 or img.shape[1] < 2 or not img.max() > 0:
    raise fileio.DataError(path, "radiance map is empty or entirely black")
  return img


def _crop_resize(rng, img, h, w):
  """A random crop of ``img`` with the aspect of ``(h, w)`` (50-100% of the largest), rescaled to it."""
  ih, iw = img.shape[:2]
  zoom = rng.uniform(0.5, 1.0)
  ch = max(1, min(ih, round(min(ih, iw * h / w) * zoom)))
  cw = max(1, min(iw, round(ch * w / h)))
  y0, x0 = rng.integers(0, ih - ch + 1), rng.integers(0, iw - cw + 1)
  interp = cv2.INTER_AREA if ch * cw > h * w else cv2.INTER_LINEAR
  return cv2.resize(img[y0:y0 + ch, x0:x0 + cw], (w, h), interpolation=interp)


def _hdr_canvas(rng, img, hc, wc):
  out = _crop_resize(rng, img, hc, wc)
  if rng.random() < 0.5:
    out = out[:, ::-1]
  if rng.random() < 0.5:
    out = out[::-1]
  return np.ascontiguousarray(out)


# --------------------------------------------------------------------------------------------------
# Motion
# --------------------------------------------------------------------------------------------------

_MAX_ANGLE = math.radians(1.0)
_MAX_ZOOM = 0.01
_MAX_SHIFT = 0.015  # of max(height, width)


def _margin(height, width, camera_motion):
  """Canvas border that keeps every camera warp of the frame inside the canvas."""
  c = abs(camera_motion)
  r = math.hypot(height, width) / 2
  shift = _MAX_SHIFT * max(height, width) * c
  rotation = (1 + _MAX_ZOOM * c) * 2 * math.sin(_MAX_ANGLE * c / 2)  # |zoom * R p - p| <= r * (rotation + zoom)
  return math.ceil(math.sqrt(2) * shift + r * (rotation + _MAX_ZOOM * c)) + 3  # + 3: interpolation support


def _camera_matrix(rng, height, width, margin, camera_motion):
  """Affine map frame -> canvas coordinates: rotation and zoom about the frame centre plus a shift."""
  angle = rng.uniform(-1, 1) * _MAX_ANGLE * camera_motion
  zoom = 1 + rng.uniform(-1, 1) * _MAX_ZOOM * camera_motion
  shift = rng.uniform(-1, 1, 2) * _MAX_SHIFT * max(height, width) * camera_motion
  a = zoom * np.array([[math.cos(angle), -math.sin(angle)], [math.sin(angle), math.cos(angle)]])
  c = np.array([(width - 1) / 2, (height - 1) / 2])
  t = c - a @ c + shift + margin
  return np.concatenate([a, t[:, None]], 1).astype(np.float64)


def _make_object(rng, canvas, height, width, procedural):
  """A moving object sprite ``(h, w, 4)``: premultiplied radiance and alpha."""
  scale = min(height, width)
  rx, ry = np.maximum(2.0, rng.uniform(0.06, 0.15, 2) * scale)
  h, w = math.ceil(2 * ry) + 4, math.ceil(2 * rx) + 4
  alpha = _shape_mask(rng, h, w, (w - 1) / 2, (h - 1) / 2, rx, ry)
  if procedural:
    tex = _albedo(rng, h, w, scale) * np.float32(rng.uniform(0.3, 1.5))
  else:  # a patch of the same radiance map, brightened or darkened
    y0, x0 = rng.integers(0, canvas.shape[0] - h + 1), rng.integers(0, canvas.shape[1] - w + 1)
    tex = canvas[y0:y0 + h, x0:x0 + w][:, ::-1] * np.float32(math.exp(rng.uniform(-0.7, 0.7)))
  return np.dstack([tex * alpha[..., None], alpha]).astype(np.float32)


def _object_poses(rng, height, width, object_motion):
  """``(3, 3)`` poses ``(cx, cy, angle_deg)`` for short, medium, long: a roughly linear trajectory."""
  scale = min(height, width)
  cx, cy, angle = rng.uniform(0, width), rng.uniform(0, height), rng.uniform(-180, 180)
  step = max(2.0, rng.uniform(0.03, 0.08) * scale) * object_motion
  d = rng.uniform(0, 2 * np.pi)
  v = step * np.array([math.cos(d), math.sin(d)])
  spin = rng.uniform(-8, 8) * object_motion
  before = -v * rng.uniform(0.6, 1.4) + rng.normal(0, 0.2 * step, 2)
  after = v * rng.uniform(0.6, 1.4) + rng.normal(0, 0.2 * step, 2)
  return np.array([[cx + before[0], cy + before[1], angle - spin], [cx, cy, angle],
                   [cx + after[0], cy + after[1], angle + spin]])


def _paste(img, mask, sprite, pose):
  """Composites a premultiplied sprite onto ``img`` (in place) at ``pose = (cx, cy, angle_deg)``."""
  sh, sw = sprite.shape[:2]
  m = cv2.getRotationMatrix2D(((sw - 1) / 2, (sh - 1) / 2), pose[2], 1.0)
  m[:, 2] += (pose[0] - (sw - 1) / 2, pose[1] - (sh - 1) / 2)
  corners = np.array([[0, 0, 1], [sw, 0, 1], [0, sh, 1], [sw, sh, 1]], np.float64) @ m.T
  x0, y0 = np.maximum(0, np.floor(corners.min(0)).astype(int) - 1)
  x1 = min(img.shape[1], int(np.ceil(corners[:, 0].max())) + 2)
  y1 = min(img.shape[0], int(np.ceil(corners[:, 1].max())) + 2)
  if x1 <= x0 or y1 <= y0:
    return
  m[:, 2] -= (x0, y0)
  warped = cv2.warpAffine(sprite, m, (x1 - x0, y1 - y0), flags=cv2.INTER_LINEAR,
                          borderMode=cv2.BORDER_CONSTANT, borderValue=0)
  a = warped[..., 3:]
  img[y0:y1, x0:x1] = img[y0:y1, x0:x1] * (1 - a) + warped[..., :3]
  mask[y0:y1, x0:x1] = np.maximum(mask[y0:y1, x0:x1], a[..., 0])


# --------------------------------------------------------------------------------------------------
# Scenes
# --------------------------------------------------------------------------------------------------


@functools.cache
def _normal_quantiles() -> np.ndarray:
  """The standard normal distribution's quantiles at ``(k + 0.5) / 65536``: indexing them with random
  uint16 values samples N(0, 1) (tails cut at 4.3 sigma) faster than ``standard_normal``."""
  inv = statistics.NormalDist().inv_cdf
  return np.array([inv((k + 0.5) / 65536) for k in range(65536)], np.float32)


def _to_ldr(linear, rng, full_well, read_noise, gamma: float = GAMMA, bits: int = 8):
  """Poisson-Gaussian noise (variance ``x / full_well + read_noise ** 2``, Gaussian approximation) in
  linear, clip to [0, 1], ``gamma`` (2.24), ``bits`` (8 -> uint8, 16 -> uint16)."""
  noise = _normal_quantiles()[rng.integers(0, 65536, linear.shape, dtype=np.uint16)]
  x = np.sqrt(linear * np.float32(1 / full_well) + np.float32(read_noise**2))
  x *= noise
  x += linear
  np.clip(x, 0, 1, out=x)
  np.power(x, np.float32(1 / gamma), out=x)
  x *= 2**bits - 1
  return np.rint(x, out=x).astype(np.uint8 if bits == 8 else np.uint16)


def synthesize_scene(rng_or_seed, height: int, width: int, hdr_source=None, *,
                     ev_sets: Sequence[Sequence[float]] = EV_SETS, camera_motion: float = 1.0,
                     object_motion: float = 1.0, noise: float = 1.0, n_objects: tuple[int, int] = (1, 4),
                     gamma: float = GAMMA, bits: int = 8) -> dict:
  """One scene.

  Args:
    rng_or_seed: a ``numpy.random.Generator`` or a seed.
    hdr_source: None (procedural), or a linear radiance map ``(h, w, 3)`` or a path to an .exr/.hdr.
    ev_sets: absolute exposure triples (short < medium < long) to choose from.
    camera_motion, object_motion, noise: scales of the global camera motion of the short and long
      frames, of the moving objects' displacements and of the sensor noise (0 disables each).
    n_objects: inclusive range of the number of moving objects.
    gamma, bits: the frames' gamma encoding and bit depth (NTIRE: 2.24 and 8; SIG17: 2.2 and 16).
  Returns:
    ``{'frames': (3, H, W, 3) uint8 [short, medium, long], 'exposures': (3,) float32,
    'gt': (H, W, 3) float32 gamma-domain target, 'linear': (H, W, 3) float32 the same target's linear
    radiance relative to the medium exposure, 'object_mask': (H, W) bool (pixels covered by a moving
    object in any frame)}``. Frames are uint16 with ``bits=16``.
  """
  _check_size(height, width)
  rng = rng_or_seed if isinstance(rng_or_seed, np.random.Generator) else np.random.default_rng(rng_or_seed)
  if isinstance(hdr_source, (str, os.PathLike)):
    hdr_source = _load_source(hdr_source)
  exposures = np.asarray(ev_sets[rng.integers(len(ev_sets))], np.float32)
  if not exposures[0] < exposures[1] < exposures[2]:
    raise ValueError(f"exposures must be increasing (short < medium < long), got {exposures.tolist()}")
  ev_rel = exposures - exposures[1]

  margin = _margin(height, width, camera_motion)
  hc, wc = height + 2 * margin, width + 2 * margin
  procedural = hdr_source is None
  if procedural:
    canvas = _procedural_canvas(rng, hc, wc, margin, height, width)
  else:
    canvas = _hdr_canvas(rng, np.asarray(hdr_source, np.float32), hc, wc)

  views = []
  for k in range(3):
    if k == 1:
      views.append(canvas[margin:margin + height, margin:margin + width].copy())
    else:
      m = _camera_matrix(rng, height, width, margin, camera_motion)
      views.append(cv2.warpAffine(canvas, m, (width, height), flags=cv2.INTER_LINEAR | cv2.WARP_INVERSE_MAP,
                                  borderMode=cv2.BORDER_REFLECT))  # bilinear: no overshoot at HDR edges
  mask = np.zeros((height, width), np.float32)
  for _ in range(rng.integers(n_objects[0], n_objects[1] + 1)):
    sprite = _make_object(rng, canvas, height, width, procedural)
    for view, pose in zip(views, _object_poses(rng, height, width, object_motion)):
      _paste(view, mask, sprite, pose)

  # Exposure normalisation: the medium frame's median luminance goes to a gamma-domain grey of 0.25-0.55.
  y = views[1] @ _LUMA
  ref = float(np.median(y)) or float(y.mean()) or 1.0
  gain = np.float32(rng.uniform(0.25, 0.55) ** GAMMA / ref)
  views = [np.minimum(v * gain, np.float32(RADIANCE_CAP)) for v in views]

  full_well = math.exp(rng.uniform(math.log(2000), math.log(20000))) / max(noise**2, 1e-12)  # at saturation
  read_noise = math.exp(rng.uniform(math.log(2e-4), math.log(2e-3))) * noise
  frames = np.stack([_to_ldr(v * np.float32(2.0 ** ev_rel[k]), rng, full_well, read_noise, gamma, bits)
                     for k, v in enumerate(views)])
  gt = np.power(views[1], np.float32(1 / GAMMA))
  return {"frames": frames, "exposures": exposures, "gt": gt, "linear": views[1], "object_mask": mask > 0.01}


# --------------------------------------------------------------------------------------------------
# Folders
# --------------------------------------------------------------------------------------------------


def _check_size(height, width):
  if height < MIN_SIZE or width < MIN_SIZE:
    raise ValueError(f"frame size {height}x{width} is too small (height and width must be >= {MIN_SIZE})")


def _check_params(scenes, height, width, seed, start_index):
  if scenes < 1:
    raise ValueError(f"scenes must be >= 1, got {scenes}")
  _check_size(height, width)
  if seed < 0:
    raise ValueError(f"seed must be >= 0, got {seed}")
  if start_index < 0 or start_index + scenes > MAX_SCENES:
    raise ValueError(f"scene ids {start_index}..{start_index + scenes - 1} do not fit in four digits (0000-9999)")


def scene_rng(seed: int, index: int) -> np.random.Generator:
  """The Generator of scene ``index`` for ``seed``."""
  return np.random.default_rng([seed, index])


def scene_variety(seed: int, index: int, static_fraction: float = 0.0, motion_range=(), noise_range=()) -> dict:
  """The per-scene motion and noise scales of scene ``index`` (``synthesize_scene`` keywords; empty when
  every option is off): with probability ``static_fraction`` no camera or object motion, else a motion
  scale drawn uniformly from ``motion_range`` (``(lo, hi)``, both motions); a noise scale drawn
  log-uniformly from ``noise_range``. Drawn from their own Generator, so the scene's content is the
  same one ``scene_rng`` gives without them."""
  if not (static_fraction or motion_range or noise_range):
    return {}
  if not 0 <= static_fraction <= 1:
    raise ValueError(f"static_fraction must be in [0, 1], got {static_fraction}")
  for name, r in (("motion_range", motion_range), ("noise_range", noise_range)):
    if r and not (len(r) == 2 and 0 <= r[0] <= r[1] <= 10 and (name == "motion_range" or r[0] > 0)):
      raise ValueError(f"{name} must be (low, high) with {'0 <' if name == 'noise_range' else '0 <='} low <= "
                       f"high <= 10, got {tuple(r)}")
  rng = np.random.default_rng([seed, index, 1])  # scene_rng is [seed, index]: an independent stream
  static, u, v = rng.random(3)
  out = {}
  if static < static_fraction:
    out.update(camera_motion=0.0, object_motion=0.0)
  elif motion_range:
    m = float(motion_range[0] + u * (motion_range[1] - motion_range[0]))
    out.update(camera_motion=m, object_motion=m)
  if noise_range:
    lo, hi = math.log(noise_range[0]), math.log(noise_range[1])
    out["noise"] = float(math.exp(lo + v * (hi - lo)))
  return out


def synthesize_folder(out, scenes: int, height: int, width: int, hdr_files: Sequence = (), seed: int = 0,
                      start_index: int = 0, verbose: bool = True, layout: str = "ntire", static_fraction: float = 0.0,
                      motion_range=(), noise_range=(), **scene_kwargs) -> list[str]:
  """Writes scenes ``start_index .. start_index + scenes - 1`` into the folder ``out``: an NTIRE folder,
  or with ``layout='sig17'`` a SIG17 root of scene folders ``out/NNNN/`` (16-bit TIFF frames with gamma
  2.2, ``exposure.txt``, linear ``HDRImg.hdr``: :func:`hdr_jax.sig17.write_synthesized`). Scene
  ``i`` uses ``hdr_files[i % len(hdr_files)]`` (procedural without files, and where the entry is
  :data:`PROCEDURAL`, which mixes the two kinds: ``('procedural', 'a.exr')`` makes every other scene
  procedural). Every file is read (and
  checked) before anything is written. ``scene_kwargs`` go to :func:`synthesize_scene`;
  ``static_fraction``, ``motion_range`` and ``noise_range`` vary them per scene (:func:`scene_variety`).
  Returns the ids."""
  from tqdm import tqdm

  _check_params(scenes, height, width, seed, start_index)
  variety = dict(static_fraction=static_fraction, motion_range=tuple(motion_range), noise_range=tuple(noise_range))
  scene_variety(seed, start_index, **variety)  # checks the options before anything is written
  if layout not in ("ntire", "sig17"):
    raise ValueError(f"layout must be 'ntire' or 'sig17', got {layout!r}")
  if layout == "sig17":
    from hdr_jax import sig17

    scene_kwargs = {"gamma": SIG17_GAMMA, "bits": 16, **scene_kwargs}
  start = time.perf_counter()
  sources = [_load_source(p) for p in hdr_files]
  out = Path(out)
  out.mkdir(parents=True, exist_ok=True)
  ids = []
  for i in tqdm(range(start_index, start_index + scenes), desc="synthesize", unit="scene",
                disable=not verbose or scenes == 1, file=sys.stderr):
    src = sources[i % len(sources)] if sources else None
    s = synthesize_scene(scene_rng(seed, i), height, width, src, **{**scene_kwargs, **scene_variety(seed, i, **variety)})
    sid = f"{i:04d}"
    if layout == "sig17":
      sig17.write_synthesized(out / sid, s)
    else:
      fileio.write_scene(out, sid, s["frames"], s["exposures"], s["gt"])
    ids.append(sid)
  if verbose:
    real = sum(s is not None for s in sources)
    kind = (f"from {real} radiance maps" + (" and procedural" if real < len(sources) else "")) if real else "procedural"
    kind += ", SIG17 layout" if layout == "sig17" else ""
    print(f"synthesized {scenes} scenes ({kind}) of {height}x{width} into {out} in "
          f"{time.perf_counter() - start:.2f} s")
  return ids


def _params(scenes, height, width, hdr_files, seed, scene_kwargs) -> dict:
  """The marker's content, as it reads back from JSON (tuples become lists)."""
  return json.loads(json.dumps({
      "generator_version": GENERATOR_VERSION, "scenes": int(scenes), "height": int(height), "width": int(width),
      "hdr_files": [str(p) if str(p) == PROCEDURAL else str(Path(p).resolve()) for p in hdr_files],
      "seed": int(seed),
      "options": dict(sorted(scene_kwargs.items()))}))


def _check_marker(root: Path, params: dict) -> bool:
  """True when ``root`` is a complete dataset made with ``params``; raises when it holds anything else."""
  marker = root / MARKER
  if not marker.is_file():
    if any(root.iterdir()):
      raise fileio.DataError(root, f"folder exists but is not a complete synthesized dataset (no {MARKER}); "
                         "delete it or choose another folder")
    return False
  try:
    have = json.loads(marker.read_text())
  except (OSError, ValueError) as e:
    raise fileio.DataError(marker, f"unreadable completion marker ({e}); delete the folder to regenerate it") from None
  if have != params:
    diff = ", ".join(f"{k}={have.get(k)!r} (requested {params[k]!r})" for k in params if have.get(k) != params[k])
    raise fileio.DataError(root, f"holds a synthesized dataset made with other parameters: {diff}; "
                       "delete the folder or choose another one")
  return True


def _remove_stale_partials(root: Path) -> None:
  """Removes temporary folders left by killed runs of this host (their process no longer exists)."""
  prefix = f".{root.name}.partial-{socket.gethostname()}-"
  for p in root.parent.glob(prefix + "*"):
    try:
      os.kill(int(p.name[len(prefix):].split("-")[0]), 0)
    except ProcessLookupError:
      shutil.rmtree(p, ignore_errors=True)
    except (ValueError, PermissionError):
      pass


def ensure_dataset(root, scenes: int, height: int, width: int, hdr_files: Sequence = (), seed: int = 0,
                   verbose: bool = True, layout: str = "ntire", **scene_kwargs) -> Path:
  """Makes ``root`` a complete synthesized NTIRE folder (ids 0000..scenes-1), generating it only if it
  is not one already. Generation goes to a temporary sibling folder that is renamed into place at the
  end, with a ``.complete.json`` marker of the parameters; an existing folder made with other
  parameters (or not made by this function) raises :class:`hdr_jax.fileio.DataError`."""
  root = Path(root)
  _check_params(scenes, height, width, seed, 0)
  params = _params(scenes, height, width, hdr_files, seed, scene_kwargs)
  if layout != "ntire":  # NTIRE markers stay as they were
    params["layout"] = layout
  if root.is_dir() and _check_marker(root, params):
    return root
  root.parent.mkdir(parents=True, exist_ok=True)
  _remove_stale_partials(root)
  tmp = Path(tempfile.mkdtemp(prefix=f".{root.name}.partial-{socket.gethostname()}-{os.getpid()}-",
                              dir=root.parent))
  try:
    synthesize_folder(tmp, scenes, height, width, hdr_files, seed, verbose=verbose, layout=layout, **scene_kwargs)
    fileio.atomic_write_bytes(tmp / MARKER, json.dumps(params, indent=1).encode())
    if root.is_dir() and not any(root.iterdir()):
      root.rmdir()
    try:
      os.rename(tmp, root)
    except OSError:  # another process finished first
      if not (root.is_dir() and _check_marker(root, params)):
        raise
  finally:
    if tmp.exists():
      shutil.rmtree(tmp, ignore_errors=True)
  return root


# --------------------------------------------------------------------------------------------------
# CLI
# --------------------------------------------------------------------------------------------------


def main(argv=None) -> int:
  p = argparse.ArgumentParser(prog="python -m hdr_jax.synthesize", description=__doc__.split("\n\n")[0])
  p.add_argument("--out", required=True, type=Path, help="output NTIRE folder (created if missing)")
  p.add_argument("--scenes", type=int, default=16, help="number of scenes (default 16)")
  p.add_argument("--height", type=int, default=256, help=f"frame height (>= {MIN_SIZE}, default 256)")
  p.add_argument("--width", type=int, default=256, help=f"frame width (>= {MIN_SIZE}, default 256)")
  p.add_argument("--hdr", nargs="+", action="extend", default=[], metavar="FILE",
                 help="real radiance maps (.exr/.hdr) to build scenes from, cycled over; procedural without")
  p.add_argument("--seed", type=int, default=0, help="random seed (>= 0, default 0)")
  p.add_argument("--start-index", type=int, default=0, help="id of the first scene (default 0)")
  p.add_argument("--camera-motion", type=float, default=1.0, help="scale of the camera motion (0: none)")
  p.add_argument("--object-motion", type=float, default=1.0, help="scale of the object motion (0: none)")
  p.add_argument("--noise", type=float, default=1.0, help="scale of the sensor noise (0: none)")
  p.add_argument("--static-fraction", type=float, default=0.0,
                 help="share of the scenes with no camera or object motion (default 0)")
  p.add_argument("--motion-range", type=float, nargs=2, default=(), metavar=("LOW", "HIGH"),
                 help="a per-scene motion scale drawn uniformly from [LOW, HIGH] (replaces the two motion scales)")
  p.add_argument("--noise-range", type=float, nargs=2, default=(), metavar=("LOW", "HIGH"),
                 help="a per-scene noise scale drawn log-uniformly from [LOW, HIGH] (replaces --noise)")
  p.add_argument("--layout", choices=("ntire", "sig17"), default="ntire",
                 help="ntire (default: flat NNNN_*.png folder) or sig17 (Kalantari 2017: scene folders of 16-bit "
                 ".tif frames, exposure.txt and a linear HDRImg.hdr)")
  args = p.parse_args(argv)
  for name in ("camera_motion", "object_motion", "noise"):
    if not 0 <= getattr(args, name) <= 10:
      p.error(f"--{name.replace('_', '-')} must be in [0, 10], got {getattr(args, name)}")
  try:
    _check_params(args.scenes, args.height, args.width, args.seed, args.start_index)
    scene_variety(args.seed, args.start_index, args.static_fraction, args.motion_range, args.noise_range)
  except ValueError as e:
    p.error(str(e))
  try:
    synthesize_folder(args.out, args.scenes, args.height, args.width, args.hdr, args.seed, args.start_index,
                      camera_motion=args.camera_motion, object_motion=args.object_motion, noise=args.noise,
                      layout=args.layout, static_fraction=args.static_fraction, motion_range=args.motion_range,
                      noise_range=args.noise_range)
  except fileio.DataError as e:
    print(f"error: {e}", file=sys.stderr)
    return 1
  return 0


if __name__ == "__main__":
  sys.exit(main())
