"""Grain input pipeline: NTIRE scene sources, training patches, whole-frame evaluation examples.

Sources are random access (``len``, ``source[i]``) and hold one scene per index, in scene-id order::

  {'frames': uint8 (3, H, W, 3), 'exposures': float32 (3,), 'gt': float32 (H, W, 3), 'id': str, 'index': int}

``gt`` is absent for scenes without targets (test folders). :class:`NtireSource` decodes the PNGs of an
NTIRE folder; :class:`PreparedSource` reads the ArrayRecord files of :mod:`hdr_jax.tfds_ntire`, which hold
decoded arrays (views into the record: a training crop copies only its window, but the whole record is
still read; ``crops_per_scene`` spreads that cost over several patches); :class:`hdr_jax.tiles.TiledSource`
reads the tiles of :mod:`hdr_jax.tiles`, whose ``frames`` and ``gt`` are lazy arrays that decode only the
tiles under a crop. :func:`open_prepared` picks the prepared kind from the folder.

Training (:func:`make_train_dataset`): one seeded global stream (per-epoch shuffle, repeat, random
patch with flips and rotations) is cut into consecutive global batches; process ``p`` of ``n`` takes
scenes ``p, p + n, ...`` of each global batch, so processes never share a scene within an epoch and
the union of their batches does not depend on the process count, nor on the number of workers.
Batches are numpy dicts: ``frames`` uint8 (B, 3, P, P, 3), ``exposures`` float32 (B, 3), ``gt``
float32 (B, P, P, 3).

Checkpointing the iterator with Orbax (grain's handler writes one JSON state per process; restore into
an iterator made with the same source and arguments, ``num_workers`` included)::

  import grain, orbax.checkpoint as ocp
  mngr.save(step, args=ocp.args.Composite(state=ocp.args.StandardSave(state),
                                          data=grain.checkpoint.CheckpointSave(it)))
  it = make_train_iterator(...)
  mngr.restore(step, args=ocp.args.Composite(state=ocp.args.StandardRestore(abstract),
                                             data=grain.checkpoint.CheckpointRestore(it)))
"""

from __future__ import annotations

import functools
import hashlib
import json
import os
import re
import sys
from pathlib import Path
from typing import Iterator

import grain
import numpy as np

from hdr_jax import fileio

_DATASET_NAME = "ntire_hdr"
_VERSION_RE = re.compile(r"^\d+\.\d+\.\d+$")


# --------------------------------------------------------------------------------------------------
# Sources
# --------------------------------------------------------------------------------------------------


class NtireSource:
  """Random access over the scenes of an NTIRE folder (validated up front; PNGs decoded per access)."""

  def __init__(self, folder, *, require_gt: bool = True, decode: bool | None = None):
    """``decode`` as in :func:`hdr_jax.fileio.validate_folder` (None: decode everything in small folders)."""
    self.folder = Path(folder)
    self.scenes = fileio.validate_folder(folder, require_gt=require_gt, decode=decode)
    self.frame_sizes = [(i.height, i.width) for i in (fileio.png_info(s.frames[0]) for s in self.scenes)]

  def __len__(self) -> int:
    return len(self.scenes)

  def __getitem__(self, index: int) -> dict:
    raw = fileio.read_scene_stored(self.scenes[index])
    out = {"frames": raw["frames"], "exposures": raw["exposures"], "id": raw["id"], "index": int(index)}
    if "gt_png16" in raw:
      out["gt"] = fileio.png16_to_hdr(raw["gt_png16"], raw["alignratio"])
    return out

  def describe(self, index: int) -> str:
    return str(self.scenes[index].frames[0])

  def __repr__(self) -> str:
    return f"NtireSource({str(self.folder)!r}, {len(self)} scenes)"


def find_prepared(data_dir, split: str = "train") -> tuple[Path, list[Path]]:
  """The versioned ``ntire_hdr`` folder under ``data_dir`` (a TFDS data dir, its ``ntire_hdr`` folder or
  a version folder; the highest version wins) and the ArrayRecord shard files of ``split``, in order."""
  root = Path(data_dir)
  candidates = [root, root / _DATASET_NAME]
  version_dir = None
  for c in candidates:
    if (c / "dataset_info.json").is_file():
      version_dir = c
      break
    versions = [p for p in c.glob("*.*.*") if _VERSION_RE.match(p.name) and (p / "dataset_info.json").is_file()]
    versions.sort(key=lambda p: tuple(int(x) for x in p.name.split(".")))
    if versions:
      version_dir = versions[-1]
      break
  if version_dir is None:
    raise fileio.DataError(root, f"no prepared dataset here: neither tiles.json (`python -m hdr_jax.tiles --input=... "
                       f"--output=...`) nor a {_DATASET_NAME} dataset_info.json "
                       "(`python -m hdr_jax.tfds_ntire --manual_dir=... --data_dir=...`)")
  pattern = re.compile(rf"^{_DATASET_NAME}-(\w+)\.array_record-(\d{{5}})-of-(\d{{5}})$")
  shards: dict[str, list[Path]] = {}
  for p in version_dir.iterdir():
    if m := pattern.match(p.name):
      shards.setdefault(m.group(1), []).append(p)
  if split not in shards:
    raise fileio.DataError(version_dir, f"no ArrayRecord files for split {split!r} (splits here: {sorted(shards)})")
  files = sorted(shards[split])
  total = int(pattern.match(files[0].name).group(3))
  if len(files) != total:
    raise fileio.DataError(version_dir, f"split {split!r} is incomplete: {len(files)} of {total} shard files")
  return version_dir, files


def open_prepared(path, split: str = "train"):
  """The source of ``config.data.prepared``: a tiles folder (:mod:`hdr_jax.tiles`; ``tiles.json`` in
  ``path`` or in ``path/split``) or a TFDS ArrayRecord data dir (:class:`PreparedSource`)."""
  from hdr_jax import tiles

  root = Path(path)
  for folder in (root, root / split):
    if (folder / tiles.INDEX).is_file():
      return tiles.TiledSource(folder)
  return PreparedSource(root, split)


def train_source(config, train_dir=None):
  """The training source of a config: ``data.prepared`` when set, else the folder ``train_dir`` in its
  layout (NTIRE or SIG17, ``config.data.protocol``; :func:`hdr_jax.sig17.train_source`)."""
  if config.data.prepared:
    return open_prepared(config.data.prepared, "train")
  from hdr_jax import sig17

  return sig17.train_source(train_dir, sig17.config_protocol(config))


class PreparedSource:
  """Random access over a split prepared by :mod:`hdr_jax.tfds_ntire` (ArrayRecord).

  ``backend='tfds'`` reads through ``tfds`` (its ``as_data_source``), ``'array_record'`` parses the
  records directly (no tfds or TensorFlow needed: base install), ``'auto'`` takes tfds when it is
  installed. Arrays are read-only views of the record (no copy until a crop is taken)."""

  def __init__(self, data_dir, split: str = "train", *, backend: str = "auto"):
    self.version_dir, self.files = find_prepared(data_dir, split)
    self.split = split
    if backend == "auto":
      import importlib.util

      backend = "tfds" if importlib.util.find_spec("tensorflow_datasets") else "array_record"
    if backend == "tfds":
      import tensorflow_datasets as tfds

      self._source = tfds.builder_from_directory(os.fspath(self.version_dir)).as_data_source(split=split)
    elif backend == "array_record":
      self._source = grain.sources.ArrayRecordDataSource([os.fspath(f) for f in self.files])
    else:
      raise ValueError(f"unknown backend {backend!r} (auto, tfds or array_record)")
    self.backend = backend

  def __len__(self) -> int:
    return len(self._source)

  def __getitem__(self, index: int) -> dict:
    raw = self._source[index]
    if self.backend == "array_record":
      try:
        raw = parse_example(raw)
      except (ValueError, IndexError, KeyError, TypeError) as e:
        raise fileio.DataError(self.describe(index), f"corrupt record ({e})") from None
    out = {"frames": raw["frames"], "exposures": np.asarray(raw["exposures"], np.float32),
           "id": raw["id"].decode() if isinstance(raw["id"], bytes) else str(raw["id"]), "index": int(index)}
    if raw["has_gt"]:
      out["gt"] = raw["gt"]
    return out

  def describe(self, index: int) -> str:
    return f"{self.version_dir}[{self.split}][{index}]"

  def __repr__(self) -> str:
    return (f"PreparedSource({str(self.version_dir)!r}, split={self.split!r}, backend={self.backend!r}, "
            f"{len(self)} scenes)")


# tf.train.Example, read without protobuf classes: Example{1: Features{1: map<string, Feature>}},
# Feature{1: BytesList{1: bytes*}, 2: FloatList{1: float*}, 3: Int64List{1: int64*}}.


def _varint(buf, pos: int) -> tuple[int, int]:
  result = shift = 0
  while True:
    b = buf[pos]
    pos += 1
    result |= (b & 0x7F) << shift
    if b < 0x80:
      return result, pos
    shift += 7


def _fields(buf, start: int, end: int):
  """Yields ``(field number, wire type, value)``; value is ``(start, end)`` for length-delimited and
  fixed-width fields and the integer for varints."""
  pos = start
  while pos < end:
    key, pos = _varint(buf, pos)
    field, wire = key >> 3, key & 7
    if wire == 0:
      value, pos = _varint(buf, pos)
      yield field, wire, value
      continue
    if wire == 2:
      n, pos = _varint(buf, pos)
    elif wire in (1, 5):
      n = 8 if wire == 1 else 4
    else:
      raise ValueError(f"unsupported protobuf wire type {wire}")
    if pos + n > end:
      raise ValueError("truncated protobuf field")
    yield field, wire, (pos, pos + n)
    pos += n


def _feature_value(record: bytes, view, start: int, end: int):
  """One Feature: a list of ``(start, end)`` byte ranges (BytesList), a float32 array or a list of ints."""
  for kind, _, (s, e) in _fields(view, start, end):
    if kind == 1:
      return [v for f, w, v in _fields(view, s, e) if f == 1 and w == 2]
    if kind == 2:
      parts = [np.frombuffer(record, "<f4", (b - a) // 4, a) for f, _, (a, b) in _fields(view, s, e) if f == 1]
      return np.concatenate(parts) if len(parts) != 1 else parts[0]
    if kind == 3:
      out = []
      for f, w, v in _fields(view, s, e):
        if f != 1:
          continue
        if w == 0:
          out.append(v)
        else:
          pos, stop = v
          while pos < stop:
            x, pos = _varint(view, pos)
            out.append(x)
      return [x - (1 << 64) if x >= 1 << 63 else x for x in out]
  return []


def parse_example(record: bytes) -> dict:
  """Decodes one ``ntire_hdr`` record (a serialized ``tf.train.Example``) without tfds or TensorFlow;
  the image arrays are read-only views into ``record``."""
  view = memoryview(record)
  feats = {}
  for f, w, (s, e) in _fields(view, 0, len(view)):
    if f != 1 or w != 2:
      continue
    for ef, ew, (es, ee) in _fields(view, s, e):
      if ef != 1 or ew != 2:
        continue
      key = value = None
      for kf, _, (ks, ke) in _fields(view, es, ee):
        if kf == 1:
          key = bytes(view[ks:ke]).decode()
        elif kf == 2:
          value = (ks, ke)
      if key is not None and value is not None:
        feats[key] = _feature_value(record, view, *value)

  def tensor(name, dtype):
    shape = tuple(feats[f"{name}/shape"])
    ((start, stop),) = feats[f"{name}/value"]
    itemsize = np.dtype(dtype).itemsize
    if stop - start != itemsize * int(np.prod(shape)):
      raise ValueError(f"{name}: {stop - start} bytes do not match shape {shape}")
    return np.frombuffer(record, dtype, (stop - start) // itemsize, start).reshape(shape)

  ((id_start, id_stop),) = feats["id"]
  return {"frames": tensor("frames", np.uint8), "gt": tensor("gt", np.float32),
          "exposures": np.asarray(feats["exposures"], np.float32), "has_gt": bool(feats["has_gt"][0]),
          "id": bytes(view[id_start:id_stop])}


# --------------------------------------------------------------------------------------------------
# Where the data is: configured folders, or the embedded dataset synthesised into the cache
# --------------------------------------------------------------------------------------------------


def resolve_data(config) -> tuple[Path | None, Path]:
  """``(train_dir, val_dir)``: the configured NTIRE folders (``data.root``; ``data.val_root``, which
  defaults to the training folder), the embedded dataset synthesised once into the cache for whichever
  is not configured, or ``train_dir`` None when ``data.prepared`` supplies the training data and
  ``data.root`` is unset (only the validation folder is needed then).

  Every process resolves the same folders; process 0 synthesises first and the others wait for it (a
  host with its own disk then makes its own, identical copy)."""
  d = config.data
  train = Path(d.root) if d.root else None
  val = Path(d.val_root) if d.val_root else train
  need_train, need_val = train is None and not d.prepared, val is None
  if not (need_train or need_val):
    return train, val
  import jax  # imported here: the rest of the input pipeline needs no JAX
  from jax.experimental import multihost_utils

  from hdr_jax import synthesize

  e = d.embedded
  cache = Path(d.cache_dir) if d.cache_dir else fileio.default_cache_dir()
  hdr_files = tuple(str(Path(p)) for p in e.hdr_files)
  tag = "proc"
  if any(p != synthesize.PROCEDURAL for p in hdr_files):  # the maps' names in short: other maps, other folder
    tag = "real" + hashlib.sha1("\n".join(hdr_files).encode()).hexdigest()[:8]
  # Per-scene motion and noise scales of the training scenes (synthesize.scene_variety), when set.
  variety = {k: v for k, v in (("static_fraction", float(e.get("static_fraction", 0.0))),
                               ("motion_range", tuple(e.get("motion_range", ()))),
                               ("noise_range", tuple(e.get("noise_range", ())))) if v}
  if need_train:
    train = cache / f"embedded_{tag}_train_n{e.train_scenes}_{e.height}x{e.width}_s{e.seed}"
    if variety:
      train = train.with_name(train.name + "_v" + hashlib.sha1(json.dumps(variety).encode()).hexdigest()[:8])
  if need_val:
    val = cache / f"embedded_{tag}_val_n{e.val_scenes}_{e.val_height}x{e.val_width}_s{e.seed}"

  def ensure():
    if need_train:
      synthesize.ensure_dataset(train, e.train_scenes, e.height, e.width, hdr_files=hdr_files, seed=e.seed,
                                **variety)
    if need_val:
      synthesize.ensure_dataset(val, e.val_scenes, e.val_height, e.val_width, hdr_files=hdr_files,
                                seed=e.seed + 7919)

  if jax.process_index() == 0:
    ensure()
  if jax.process_count() > 1:
    multihost_utils.sync_global_devices("hdr_jax:embedded_dataset")
    if jax.process_index() != 0:  # a host with its own disk makes its own (identical) copy
      ensure()
  return train, val


# --------------------------------------------------------------------------------------------------
# Training
# --------------------------------------------------------------------------------------------------


def random_patch(element: dict, rng: np.random.Generator, *, patch_size: int, augment: bool = True) -> dict:
  """One training triplet: the same random ``patch_size`` window of the three frames and ``gt``, then
  (``augment``) one of the 8 flips/rotations (rotation by 0/90/180/270 degrees, then an optional
  horizontal flip; a vertical flip is the horizontal flip of the 180-degree rotation), applied to all."""
  frames, p = element["frames"], patch_size
  if "gt" not in element:
    raise fileio.DataError(f"scene {element['id']}", "has no ground truth; training needs NNNN_gt.png")
  h, w = frames.shape[1:3]
  if h < p or w < p:
    raise fileio.DataError(f"scene {element['id']}", f"frames are {h}x{w}, smaller than the {p}x{p} training patch")
  top, left = int(rng.integers(0, h - p + 1)), int(rng.integers(0, w - p + 1))
  frames = frames[:, top:top + p, left:left + p]
  gt = element["gt"][top:top + p, left:left + p]
  if augment:
    k, flip = int(rng.integers(4)), bool(rng.integers(2))
    frames, gt = np.rot90(frames, k, axes=(1, 2)), np.rot90(gt, k, axes=(0, 1))
    if flip:
      frames, gt = frames[:, :, ::-1], gt[:, ::-1]
  return {"frames": np.ascontiguousarray(frames), "exposures": np.asarray(element["exposures"], np.float32),
          "gt": np.ascontiguousarray(gt, dtype=np.float32)}


class _ShuffleRepeat(grain.MapDataset):
  """``parent`` repeated ``num_epochs`` times (None: forever), every epoch in its own permutation seeded
  by ``(seed, epoch)``. (grain's ``shuffle`` is slow per element on datasets of a few scenes.)"""

  def __init__(self, parent: grain.MapDataset, *, seed: int, num_epochs: int | None):
    super().__init__(parent)
    self._size, self._seed, self._num_epochs = len(parent), seed, num_epochs
    self._perm = (-1, None)  # (epoch, permutation) of the latest epoch read

  def __len__(self) -> int:
    return sys.maxsize if self._num_epochs is None else self._size * self._num_epochs

  def __getitem__(self, index):
    if isinstance(index, slice):
      return self.slice(index)
    epoch, i = divmod(index, self._size)
    cached, perm = self._perm
    if cached != epoch:
      perm = np.random.default_rng([self._seed, epoch]).permutation(self._size)
      self._perm = (epoch, perm)
    return self._parent[int(perm[i])]

  def __str__(self) -> str:
    return f"_ShuffleRepeat(seed={self._seed}, num_epochs={self._num_epochs})"


def _check_frame_sizes(source, patch_size: int) -> None:
  """Fails before training when a source knows its frame sizes (NtireSource) and one is too small."""
  for i, (h, w) in enumerate(getattr(source, "frame_sizes", ())):
    if h < patch_size or w < patch_size:
      raise fileio.DataError(source.describe(i), f"frames are {h}x{w}, smaller than the "
                         f"{patch_size}x{patch_size} training patch")


def _random_patches(element: dict, rng: np.random.Generator, *, count: int, **kwargs) -> dict:
  """``count`` independent :func:`random_patch` draws from one decoded scene, stacked on a new axis 0."""
  patches = [random_patch(element, rng, **kwargs) for _ in range(count)]
  return {k: np.stack([p[k] for p in patches]) for k in patches[0]}


def _merge_scene_axis(batch: dict) -> dict:
  return {k: v.reshape((-1,) + v.shape[2:]) for k, v in batch.items()}


def make_train_dataset(source, *, patch_size: int = 256, global_batch_size: int, seed: int,
                       shard_index: int = 0, shard_count: int = 1, num_epochs: int | None = None,
                       crops_per_scene: int = 1, augment: bool = True, num_threads: int = 4,
                       prefetch: int = 4) -> grain.IterDataset:
  """Batches of random training patches for process ``shard_index`` of ``shard_count``.

  Each process gets ``global_batch_size // shard_count`` triplets per batch (disjoint across processes).
  ``num_epochs=None`` repeats forever (reshuffled every epoch); otherwise the stream ends after the
  last full global batch. ``crops_per_scene > 1`` takes that many patches (consecutive in the batch)
  from every scene read, dividing the reading/decoding cost per patch; an epoch then holds
  ``len(source) * crops_per_scene`` patches. ``num_threads``/``prefetch``: reader threads and buffered
  batches per process."""
  if shard_count < 1 or not 0 <= shard_index < shard_count:
    raise ValueError(f"shard_index {shard_index} must be in [0, shard_count={shard_count})")
  if crops_per_scene < 1 or global_batch_size < 1 or global_batch_size % (shard_count * crops_per_scene):
    raise ValueError(f"global_batch_size {global_batch_size} must be a positive multiple of the process count "
                     f"{shard_count} times crops_per_scene {crops_per_scene}")
  if num_epochs is not None and num_epochs < 1:
    raise ValueError(f"num_epochs must be positive or None (forever), got {num_epochs}")
  if not 0 <= seed < 2**32:
    raise ValueError(f"seed must be in [0, 2**32), got {seed}")
  if len(source) == 0:
    raise ValueError(f"{source!r} holds no scenes")
  _check_frame_sizes(source, patch_size)
  ds = _ShuffleRepeat(grain.MapDataset.source(source), seed=seed, num_epochs=num_epochs)
  if crops_per_scene == 1:
    crop = functools.partial(random_patch, patch_size=patch_size, augment=augment)
  else:
    crop = functools.partial(_random_patches, count=crops_per_scene, patch_size=patch_size, augment=augment)
  ds = ds.random_map(crop, seed=seed)
  scenes_per_batch = global_batch_size // crops_per_scene
  if num_epochs is not None:
    ds = ds[: len(ds) // scenes_per_batch * scenes_per_batch]
  ds = ds[shard_index::shard_count].batch(scenes_per_batch // shard_count, drop_remainder=True)
  if crops_per_scene > 1:
    ds = ds.map(_merge_scene_axis)
  return ds.to_iter_dataset(grain.ReadOptions(num_threads=num_threads, prefetch_buffer_size=prefetch))


def _absl_flags_parsed() -> None:
  """grain 0.2.18's ``mp_prefetch`` reads an absl flag and fails in programs that never parsed flags
  (google/grain#1355, fixed upstream by #1362): mark them parsed (defaults) unless the program did."""
  from absl import flags

  if not flags.FLAGS.is_parsed():
    flags.FLAGS.mark_as_parsed()


def make_train_iterator(source, *, num_workers: int = 0, prefetch: int = 4, **kwargs) -> grain.DatasetIterator:
  """An iterator over :func:`make_train_dataset` (``kwargs``), read in ``num_workers`` processes
  (0: in this process). It has ``get_state()``/``set_state()``; the batches do not depend on
  ``num_workers``, but a state must be restored into an iterator with the same ``num_workers``."""
  ds = make_train_dataset(source, prefetch=prefetch, **kwargs)
  if num_workers:
    _absl_flags_parsed()
    ds = ds.mp_prefetch(grain.MultiprocessingOptions(num_workers=num_workers, per_worker_buffer_size=prefetch))
  return iter(ds)


# --------------------------------------------------------------------------------------------------
# Evaluation
# --------------------------------------------------------------------------------------------------


def eval_examples(source_or_folder, pad_multiple: int = 1) -> Iterator[dict]:
  """Whole scenes one at a time, in the source's scene-id order: ``{'id', 'frames' uint8 (1, 3, H', W', 3),
  'exposures' (1, 3), 'gt' (1, H, W, 3) when present, 'hw': (H, W)}``. Frames are reflect-padded at the
  bottom/right to multiples of ``pad_multiple`` (``gt`` is not); undo with :func:`crop_back`."""
  if isinstance(source_or_folder, (str, os.PathLike)):
    source = NtireSource(source_or_folder, require_gt=False, decode=False)
  else:
    source = source_or_folder
  for i in range(len(source)):
    e = source[i]
    h, w = e["frames"].shape[1:3]
    ph, pw = -h % pad_multiple, -w % pad_multiple
    frames = np.pad(e["frames"], ((0, 0), (0, ph), (0, pw), (0, 0)), mode="reflect") if ph or pw else e["frames"]
    out = {"id": e["id"], "frames": np.ascontiguousarray(frames)[None],
           "exposures": np.asarray(e["exposures"], np.float32)[None], "hw": (h, w)}
    if "gt" in e:
      out["gt"] = np.ascontiguousarray(e["gt"])[None]
    yield out


def crop_back(pred, hw):
  """Crops a prediction ``(..., H', W', C)`` on padded frames back to the original ``hw = (H, W)``."""
  h, w = hw
  return pred[..., :h, :w, :]
