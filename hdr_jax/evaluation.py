"""Whole-frame evaluation of an engine's predictions: the four metrics of a scene (NTIRE, or SIG17's own
on SIG17 scenes), the mean over a folder with the medium-frame baseline beside it, and the stream of
``(scene, prediction)`` pairs that ``evaluate`` and ``predict`` consume.

The functions take the engine as an argument (anything with ``predict``, ``predict_estimate``,
``num_shards`` and ``task``, as :class:`hdr_jax.engine.Engine`) and do not import it: evaluation sits
below the engine.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from hdr_jax import hdr_math, sig17


def _same_size_groups(scenes, group: int):
  """Consecutive scenes of equal frame size, at most ``group`` at a time."""
  batch, size = [], None
  for s in scenes:
    h, w = sig17.frame_size(s)
    if batch and ((h, w) != size or len(batch) == group):
      yield batch
      batch = []
    batch.append(s)
    size = (h, w)
  if batch:
    yield batch


def iter_predictions(engine, state, scenes, key=None, batch_size: int | None = None):
  """Yields ``(scene_dict, hdr_prediction)`` for each scene, NTIRE or SIG17 (read with ``sig17.read_any``)."""
  group = batch_size or engine.num_shards
  for chunk in _same_size_groups(scenes, group):
    data = [sig17.read_any(s) for s in chunk]
    frames = np.stack([d["frames"] for d in data])  # float32 [0, 1], at the precision the files hold
    exposures = np.stack([d["exposures"] for d in data])
    preds = engine.predict(state, frames, exposures, key)
    for d, p in zip(data, preds):
      if not np.all(np.isfinite(p)):
        raise FloatingPointError(f"scene {d['id']}: the model produced NaN/inf values")
      yield d, p


@jax.jit
def _ssim_pair(ref, res):
  return hdr_math.ssim_mu(ref, res), hdr_math.ssim_l(ref, res)


def scene_metrics(gt: np.ndarray, pred: np.ndarray) -> dict:
  """PSNR-mu/PSNR-L exactly as the official scoring program (NumPy path), SSIM-mu/SSIM-L."""
  ssim_mu, ssim_l = _ssim_pair(jnp.asarray(gt), jnp.asarray(pred))
  return {"psnr_mu": hdr_math.np_psnr_mu(gt, pred), "psnr_l": hdr_math.np_psnr_l(gt, pred),
          "ssim_mu": float(ssim_mu), "ssim_l": float(ssim_l)}


def evaluate_scenes(engine, state, scenes, *, key=None, writer=None, step: int = 0,
                    preview: int = 0, baseline: bool = True) -> tuple[dict, list[dict]]:
  """Whole-frame evaluation. Returns ``(means, per_scene)``; means include the medium-frame
  baseline (``baseline_psnr_mu`` ...) so every number has its reference beside it. SIG17 scenes
  (``d['protocol'] == 'sig17'``) are scored with the SIG17 metrics on their linear labels
  (:func:`hdr_jax.sig17.scene_metrics`)."""
  from hdr_jax import metrics_log

  rows = []
  for i, (d, pred) in enumerate(iter_predictions(engine, state, scenes, key)):
    if d.get("protocol") == "sig17":
      full = lambda p: sig17.scene_metrics(d, p)  # noqa: E731
      psnrs = lambda p: sig17.scene_metrics(d, p, ssim=False)  # noqa: E731
      medium = hdr_math.sig17_to_internal(sig17.baseline_linear(d), d["exposures"])
    else:
      full = lambda p: scene_metrics(d["gt"], p)  # noqa: E731
      psnrs = lambda p: {"psnr_mu": hdr_math.np_psnr_mu(d["gt"], p),  # noqa: E731
                         "psnr_l": hdr_math.np_psnr_l(d["gt"], p)}
      medium = d["frames"][1]
    row = {"id": d["id"], **full(pred)}
    if engine.has_estimate:  # the deterministic estimate the prediction refines, scored beside it
      est = psnrs(engine.predict_estimate(state, d["frames"][None], d["exposures"][None])[0])
      row["estimate_psnr_mu"], row["estimate_psnr_l"] = est["psnr_mu"], est["psnr_l"]
    if baseline:
      base = psnrs(medium)
      row["baseline_psnr_mu"], row["baseline_psnr_l"] = base["psnr_mu"], base["psnr_l"]
    rows.append(row)
    if writer is not None and i < preview:
      writer.write_image(step, f"preview_{d['id']}", metrics_log.preview_grid(d["frames"], pred, d["gt"]))
  keys = [k for k in rows[0] if k != "id"] if rows else []
  means = {k: float(np.mean([r[k] for r in rows])) for k in keys}
  return means, rows
