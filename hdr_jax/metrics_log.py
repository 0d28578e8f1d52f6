"""Run logging: a JSON-lines log, TensorBoard event files (tensorboardX, no TensorFlow) and images.

Only process 0 writes; other processes get a writer that does nothing. In a ``gs://`` workdir (object
stores cannot append) ``metrics.jsonl`` is uploaded whole at most every ``upload_every`` seconds and
at every ``flush``; tensorboardX writes ``gs://`` itself (it needs ``google-cloud-storage``).
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import jax
import numpy as np

from hdr_jax import hdr_math
from hdr_jax import fileio


class MetricWriter:

  def __init__(self, workdir, enabled: bool | None = None, upload_every: float = 60.0):
    self.enabled = jax.process_index() == 0 if enabled is None else enabled
    self.workdir = fileio.workdir_path(workdir)
    self.remote = fileio.is_remote(workdir)
    self.upload_every = upload_every
    self._tb = None
    self._jsonl = None
    self._lines, self._uploaded = [], time.monotonic()
    if self.enabled:
      self.workdir.mkdir(parents=True, exist_ok=True)
      log = self.workdir / "metrics.jsonl"
      if self.remote:
        self._lines = [log.read_text()] if log.exists() else []  # a resumed run appends to it
      else:
        self._jsonl = open(log, "a", buffering=1)
      from tensorboardX import SummaryWriter

      self._tb = SummaryWriter(str(self.workdir / "tensorboard"), flush_secs=10)

  def write_scalars(self, step: int, scalars: dict, prefix: str = "") -> None:
    if not self.enabled:
      return
    clean = {f"{prefix}{k}": float(v) for k, v in scalars.items()}
    line = json.dumps({"step": int(step), "time": time.time(), **clean}) + "\n"
    if self.remote:
      self._lines.append(line)
      if time.monotonic() - self._uploaded > self.upload_every:
        self._upload()
    else:
      self._jsonl.write(line)
    for k, v in clean.items():
      self._tb.add_scalar(k, v, int(step))

  def _upload(self) -> None:
    (self.workdir / "metrics.jsonl").write_text("".join(self._lines))
    self._uploaded = time.monotonic()

  def write_image(self, step: int, name: str, image_hwc: np.ndarray) -> Path | None:
    """Writes an 8-bit RGB image ([0, 1] float) to ``WORKDIR/images/<name>_<step>.png`` and TensorBoard."""
    if not self.enabled:
      return None
    from tensorboardX.proto.summary_pb2 import Summary

    img = np.round(np.clip(np.asarray(image_hwc, np.float32), 0.0, 1.0) * 255).astype(np.uint8)
    png = fileio.encode_png(img)
    path = self.workdir / "images" / f"{name}_{int(step):07d}.png"
    fileio.atomic_write_bytes(path, png)
    # The PNG goes into the event file as is (tensorboardX's add_image would need Pillow).
    summary = Summary(value=[Summary.Value(tag=name, image=Summary.Image(
        height=img.shape[0], width=img.shape[1], colorspace=3, encoded_image_string=png))])
    self._tb._get_file_writer().add_summary(summary, int(step))
    return path

  def flush(self) -> None:
    if self.enabled:
      self._tb.flush()
      if self.remote:
        self._upload()

  def close(self) -> None:
    if self.enabled:
      self._tb.close()
      if self.remote:
        self._upload()
      else:
        self._jsonl.close()


def window_means(rows: list[dict]) -> dict:
  """Per-key means of a window of per-step metrics (``{name: float}`` each), with ``clu.metrics.Average``
  (in float32, the precision the steps computed them in)."""
  import jax.numpy as jnp
  from clu import metrics

  return {k: float(metrics.Average.from_model_output(jnp.asarray([r[k] for r in rows], jnp.float32)).compute())
          for k in rows[0]}


def tonemap_for_display(hdr_gamma, ref_gamma=None):
  """Tone-maps a gamma-domain HDR image for viewing: the PSNR-mu tone map, normalised by the 99th
  percentile of the reference (or of the image itself), then gamma-encoded for display."""
  ref = hdr_gamma if ref_gamma is None else ref_gamma
  rl = np.power(np.maximum(ref, 0), hdr_math.GAMMA)
  n = np.percentile(rl, 99) + 1e-8
  t = hdr_math.np_tanh_norm_mu_tonemap(np.power(np.maximum(hdr_gamma, 0), hdr_math.GAMMA), n)
  return np.clip(t, 0, 1)


def preview_grid(frames, pred, gt=None):
  """One row: the three LDR frames, the tone-mapped prediction and (if given) the tone-mapped target."""
  tiles = [np.asarray(f, np.float32) for f in frames]
  tiles.append(tonemap_for_display(pred, gt))
  if gt is not None:
    tiles.append(tonemap_for_display(gt, gt))
  return np.concatenate(tiles, axis=1)
