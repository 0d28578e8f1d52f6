"""Prediction of large frames in overlapping tiles, equal to the whole-frame prediction.

A translation-local model (every layer a convolution with zero padding, per-pixel heads: AHDRNet)
computes an output pixel from the inputs within its receptive radius ``r`` only. The frame is cut
into windows of ``tile + 2 * halo`` pixels (``halo >= r``); each window is predicted on its own and
only its central ``tile`` x ``tile`` block is kept. A kept pixel then sees exactly the inputs it sees
in the whole frame, including the convolutions' zero padding where a window touches the frame's
border (the windows are never padded: near the border they are moved inwards so that every window
has the same shape and the network compiles once). The result equals the whole-frame prediction up
to float32 rounding (the per-pixel arithmetic is the same; tests/test_brackets.py checks 1e-5).

Sizes: ``tile`` and ``halo`` are rounded up to the model's size multiple (2 for AHDRNet, whose
dilation-2 trunk runs in the polyphase layout on even sizes); a frame smaller than a window in one
direction is taken whole in that direction. Memory: the network runs on one window at a time, so it
needs the activations of a window, not of the frame (benchmarks/RESULTS.md has the 24 MP numbers).
"""

from __future__ import annotations

from typing import Callable

import numpy as np

# Windows are even-sized: AHDRNet's dilation-2 trunk runs in the (faster) polyphase layout on even
# sizes only; other translation-local models take any size.
SIZE_MULTIPLE = 2
DEFAULT_TILE = 512  # output pixels per window side: ~1.3x the work of the whole frame with AHDRNet's halo of 32


def round_up(x: int, multiple: int) -> int:
  return -(-int(x) // multiple) * multiple


def window_starts(size: int, tile: int, halo: int) -> list[tuple[int, int, int]]:
  """``(window_start, keep_start, keep_stop)`` along one axis of ``size`` pixels: windows of
  ``min(size, tile + 2 * halo)`` pixels, whose kept parts ``[keep_start, keep_stop)`` (frame
  coordinates) cover ``[0, size)`` without overlap, each at least ``halo`` pixels from a window edge
  that is not the frame's edge."""
  span = min(size, tile + 2 * halo)
  if span == size:
    return [(0, 0, size)]
  out, keep = [], 0
  while keep < size:
    stop = min(size, keep + tile)
    start = min(max(0, keep - halo), size - span)  # moved inwards at the far border
    out.append((start, keep, stop))
    keep = stop
  return out


def plan(height: int, width: int, tile: int, halo: int, multiple: int = 1) -> list[tuple[tuple[int, int, int], ...]]:
  """The windows of a ``height`` x ``width`` frame: ``((y0, ky0, ky1), (x0, kx0, kx1))`` per window,
  with ``tile`` and ``halo`` rounded up to ``multiple``."""
  if tile <= 0 or halo < 0:
    raise ValueError(f"tile must be positive and halo non-negative, got tile={tile}, halo={halo}")
  tile, halo = round_up(tile, multiple), round_up(halo, multiple)
  return [(ys, xs) for ys in window_starts(height, tile, halo) for xs in window_starts(width, tile, halo)]


def predict_tiled(predict: Callable[[np.ndarray, np.ndarray], np.ndarray], frames: np.ndarray, exposures,
                  tile: int, halo: int, multiple: int = 1) -> np.ndarray:
  """``predict(windows (1, 3, h, w, 3), exposures (1, 3)) -> (1, h, w, 3)`` applied window by window to
  ``frames (3, H, W, 3)`` (any dtype ``predict`` takes) -> ``(H, W, 3)`` float32, assembled from the
  windows' kept blocks. With ``halo`` at least the model's receptive radius this is the whole-frame
  prediction (module docstring)."""
  frames = np.asarray(frames)
  _, h, w, _ = frames.shape
  windows = plan(h, w, tile, halo, multiple)
  exposures = np.asarray(exposures, np.float32)[None]
  if len(windows) == 1:
    return np.asarray(predict(frames[None], exposures)[0], np.float32)
  span_y = min(h, round_up(tile, multiple) + 2 * round_up(halo, multiple))
  span_x = min(w, round_up(tile, multiple) + 2 * round_up(halo, multiple))
  out = np.empty((h, w, 3), np.float32)
  for (y0, ky0, ky1), (x0, kx0, kx1) in windows:
    window = np.ascontiguousarray(frames[:, y0:y0 + span_y, x0:x0 + span_x])
    pred = np.asarray(predict(window[None], exposures)[0])
    out[ky0:ky1, kx0:kx1] = pred[ky0 - y0:ky1 - y0, kx0 - x0:kx1 - x0]
  return out
