"""TensorFlow Datasets builder ``ntire_hdr``: NTIRE HDR scene folders -> ArrayRecord, without TensorFlow.

The official folder is the builder's MANUAL dir. Every subfolder of it that holds NTIRE scenes becomes a
split named after the subfolder (``manual_dir/train``, ``manual_dir/val``, ...); a manual dir that holds
scenes itself becomes the single split ``train``. Examples are written in scene-id order (shuffling is
disabled) as decoded arrays, so a reader crops without decoding images:

  frames     uint8   (3, H, W, 3)  short, medium, long (RGB)
  exposures  float32 (3,)          stops
  gt         float32 (H, W, 3)     gamma-domain HDR (a (1, 1, 3) zero placeholder when has_gt is False)
  has_gt     bool    ()            False in folders without targets (test sets)
  id         str     ()            scene id ``NNNN``

Every feature is a ``tfds.features.Tensor`` and the file format is ``array_record``, so building and
reading need neither TensorFlow nor ``tf.data``. Read with ``hdr_jax.data.PreparedSource``. A record
holds 21 bytes per pixel (~42 MB for a 1060x1900 scene) before ArrayRecord's zstd compression.

Prepare from the command line::

  python -m hdr_jax.tfds_ntire --manual_dir=NTIRE_DIR --data_dir=OUT
"""

from __future__ import annotations

import argparse
import contextlib
import importlib.util
import os
import re
import types
from pathlib import Path

import numpy as np
import tensorflow_datasets as tfds

from hdr_jax import fileio

_SPLIT_RE = re.compile(r"^[A-Za-z][A-Za-z0-9_]*$")
_KEY_SPACE = 2**128  # tfds sorts integer keys (shuffling disabled) in 128-bit buckets


def features() -> tfds.features.FeaturesDict:
  """The example features (all Tensor features, so no TensorFlow is needed)."""
  t = tfds.features.Tensor
  return tfds.features.FeaturesDict({
      "frames": t(shape=(3, None, None, 3), dtype=np.uint8, encoding=tfds.features.Encoding.BYTES),
      "exposures": t(shape=(3,), dtype=np.float32),
      "gt": t(shape=(None, None, 3), dtype=np.float32, encoding=tfds.features.Encoding.BYTES),
      "has_gt": t(shape=(), dtype=np.bool_),
      "id": t(shape=(), dtype=np.str_),
  })


def split_folders(manual_dir) -> dict[str, Path]:
  """``{split: folder}``: the subfolders of ``manual_dir`` that hold scenes, else ``{'train': manual_dir}``."""
  manual_dir = Path(manual_dir)
  if not manual_dir.is_dir():
    raise fileio.DataError(manual_dir, "manual dir does not exist")
  subs = {p.name: p for p in sorted(manual_dir.iterdir())
          if p.is_dir() and not p.name.startswith(".") and any(p.glob("[0-9][0-9][0-9][0-9]_short.png"))}
  if any(manual_dir.glob("[0-9][0-9][0-9][0-9]_short.png")):
    if subs:
      raise fileio.DataError(manual_dir, f"holds scenes and split subfolders {sorted(subs)}; use one layout")
    return {"train": manual_dir}
  if not subs:
    raise fileio.DataError(manual_dir, "no NTIRE scenes in the manual dir or in its subfolders")
  for name, path in subs.items():
    if not _SPLIT_RE.match(name):
      raise fileio.DataError(path, "split folder names must start with a letter and contain only letters, digits and _")
  return subs


class _LocalGFile:
  """The three ``tf.io.gfile`` calls tfds's shuffler makes, on local files."""

  GFile = staticmethod(open)
  exists = staticmethod(os.path.exists)
  remove = staticmethod(os.remove)


@contextlib.contextmanager
def _tf_free_shuffler():
  """tfds spills splits over 1 GB to temporary bucket files through ``tf.io.gfile``, which fails without
  TensorFlow; this points its shuffler at local file calls while preparing (no-op when TF is installed)."""
  from tensorflow_datasets.core import shuffle

  if importlib.util.find_spec("tensorflow") is not None:
    yield
    return
  saved = shuffle.tf
  shuffle.tf = types.SimpleNamespace(
      io=types.SimpleNamespace(gfile=_LocalGFile),
      errors=types.SimpleNamespace(ResourceExhaustedError=type("ResourceExhaustedError", (OSError,), {})))
  try:
    yield
  finally:
    shuffle.tf = saved


class NtireHdr(tfds.core.GeneratorBasedBuilder, skip_registration=__name__ == "__main__"):
  """NTIRE 2021/2022 multi-frame HDR scenes (three LDR frames, exposures, HDR target)."""

  VERSION = tfds.core.Version("1.0.0")
  RELEASE_NOTES = {"1.0.0": "Decoded uint8 frames, float32 exposures and gamma-domain float32 targets."}
  MANUAL_DOWNLOAD_INSTRUCTIONS = """
  Put the NTIRE HDR folders (NNNN_short/medium/long.png, NNNN_exposures.npy, NNNN_gt.png,
  NNNN_alignratio.npy) in the manual dir: one subfolder per split (e.g. train/, val/), or the scenes of
  a single split directly in the manual dir (it becomes split 'train').
  """

  def __init__(self, *, file_format: str = "array_record", **kwargs):
    super().__init__(file_format=file_format, **kwargs)

  def _info(self) -> tfds.core.DatasetInfo:
    return self.dataset_info_from_configs(
        description="NTIRE multi-frame HDR scenes as decoded arrays.",
        features=features(),
        homepage="https://codalab.lisn.upsaclay.fr/competitions/1514",
        disable_shuffling=True,
    )

  def _split_generators(self, dl_manager):
    folders = split_folders(dl_manager.manual_dir)
    scenes = {name: fileio.validate_folder(folder, decode=False) for name, folder in folders.items()}
    return {name: self._generate_examples(s) for name, s in scenes.items()}

  def _generate_examples(self, scenes):
    # Integer keys keep the scene order (shuffling is disabled); spreading them over the 128-bit key
    # space spreads large splits over tfds's temporary buckets instead of piling them into one.
    step = _KEY_SPACE // len(scenes)
    for i, scene in enumerate(scenes):
      raw = fileio.read_scene_stored(scene)
      if scene.has_gt:
        gt = fileio.png16_to_hdr(raw["gt_png16"], raw["alignratio"])
      else:  # tfds cannot decode an empty bytes tensor, hence a placeholder and a flag
        gt = np.zeros((1, 1, 3), np.float32)
      yield i * step, {"frames": raw["frames"], "exposures": raw["exposures"], "gt": gt,
                       "has_gt": scene.has_gt, "id": scene.scene_id}


def prepare(manual_dir, data_dir) -> Path:
  """Builds ``ntire_hdr`` from ``manual_dir`` into ``data_dir``; returns the versioned dataset folder."""
  builder = NtireHdr(data_dir=os.fspath(data_dir))
  with _tf_free_shuffler():
    builder.download_and_prepare(download_config=tfds.download.DownloadConfig(manual_dir=os.fspath(manual_dir)))
  return Path(builder.data_dir)


def main(argv=None) -> None:
  parser = argparse.ArgumentParser(description="Prepare NTIRE HDR scene folders as the ArrayRecord dataset ntire_hdr.")
  parser.add_argument("--manual_dir", required=True, help="NTIRE folder (scenes, or one subfolder per split)")
  parser.add_argument("--data_dir", required=True, help="TFDS data dir to write (ntire_hdr/<version>/ inside)")
  args = parser.parse_args(argv)
  out = prepare(args.manual_dir, args.data_dir)
  info = tfds.builder_from_directory(os.fspath(out)).info
  for name, split in sorted(info.splits.items()):
    print(f"{name}: {split.num_examples} scenes")
  print(f"prepared {out}")


if __name__ == "__main__":  # run the package's builder: tfds locates builders by their module
  from hdr_jax import tfds_ntire

  tfds_ntire.main()
