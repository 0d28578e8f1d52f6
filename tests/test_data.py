"""Tests of the grain input pipeline (hdr_jax.data) and the TFDS builder (hdr_jax.tfds_ntire)."""

import subprocess
import sys
import textwrap

import numpy as np
import pytest

from hdr_jax import data, fileio

H, W, N_SCENES, P = 48, 64, 6, 16


def _scene(i: int, h: int = H, w: int = W):
  """Frames and gt that encode pixel coordinates: frame red = y, green = x, blue = 10 * scene + frame;
  gt = ((y + 1) / 64, (x + 1) / 64, (i + 1) / 8). Exposures identify the scene: short = -(i + 2)."""
  y, x = np.mgrid[:h, :w]
  frames = np.stack([np.stack([y, x, np.full_like(y, 10 * i + f)], -1) for f in range(3)]).astype(np.uint8)
  gt = np.stack([(y + 1) / 64, (x + 1) / 64, np.full(y.shape, (i + 1) / 8)], -1).astype(np.float32)
  return frames, [-(i + 2.0), 0.0, 2.0], gt


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
  root = tmp_path_factory.mktemp("ntire")
  for i in range(N_SCENES):
    fileio.write_scene(root / "train", f"{i:04d}", *_scene(i))
  for i in range(2):
    frames, exposures, _ = _scene(i, 40, 56)
    fileio.write_scene(root / "val", f"{i + 100:04d}", frames, exposures)  # no targets
  return root


@pytest.fixture(scope="module")
def source(folder):
  return data.NtireSource(folder / "train")


def _scene_of(exposures) -> int:
  return int(round(-exposures[0])) - 2


def _batches(it, n):
  return [next(it) for _ in range(n)]


def _same(a, b) -> bool:
  return all(len(x) == len(y) and all(np.array_equal(x[k], y[k]) for k in ("frames", "exposures", "gt"))
             for x, y in zip(a, b)) and len(a) == len(b)


def test_embedded_training_variety_has_its_own_folder(tmp_path):
  """``data.embedded.static_fraction``/``motion_range``/``noise_range`` synthesise the training scenes
  into their own cache folder (marked with the options); the validation scenes stay the default ones."""
  import json

  from hdr_jax import config_base, synthesize

  def folders(**variety):
    c = config_base.get_base_config()
    c.data.cache_dir = str(tmp_path)
    c.data.embedded.update(train_scenes=2, val_scenes=1, height=32, width=32, val_height=32, val_width=32, **variety)
    return data.resolve_data(c)

  plain_train, plain_val = folders()
  train, val = folders(static_fraction=0.5, noise_range=(0.25, 4.0))
  assert val == plain_val and train != plain_train and train.name.startswith(plain_train.name + "_v")
  options = json.loads((train / synthesize.MARKER).read_text())["options"]
  assert options == {"noise_range": [0.25, 4.0], "static_fraction": 0.5}
  assert "options" in json.loads((plain_train / synthesize.MARKER).read_text())
  assert json.loads((plain_train / synthesize.MARKER).read_text())["options"] == {}
  assert folders(static_fraction=0.5, noise_range=(0.25, 4.0))[0] == train  # found again, not remade


def test_source_elements(source, folder):
  assert len(source) == N_SCENES
  e = source[2]
  assert e["frames"].dtype == np.uint8 and e["frames"].shape == (3, H, W, 3)
  assert e["exposures"].dtype == np.float32 and e["exposures"].tolist() == [-4, 0, 2]
  assert e["gt"].dtype == np.float32 and e["gt"].shape == (H, W, 3)
  assert e["id"] == "0002" and e["index"] == 2
  frames, _, gt = _scene(2)
  np.testing.assert_array_equal(e["frames"], frames)
  np.testing.assert_allclose(e["gt"], gt, atol=1e-4)
  assert "gt" not in data.NtireSource(folder / "val", require_gt=False)[0]


def test_batch_format_and_determinism(source):
  kw = dict(patch_size=P, global_batch_size=4)
  a = _batches(data.make_train_iterator(source, seed=1, **kw), 4)
  assert sorted(a[0]) == ["exposures", "frames", "gt"]
  assert a[0]["frames"].dtype == np.uint8 and a[0]["frames"].shape == (4, 3, P, P, 3)
  assert a[0]["exposures"].dtype == np.float32 and a[0]["exposures"].shape == (4, 3)
  assert a[0]["gt"].dtype == np.float32 and a[0]["gt"].shape == (4, P, P, 3)
  assert _same(a, _batches(data.make_train_iterator(source, seed=1, **kw), 4))
  assert not _same(a, _batches(data.make_train_iterator(source, seed=2, **kw), 4))


def _transforms(window):
  """The 8 flips/rotations of a (P, P) array."""
  out = []
  for k in range(4):
    r = np.rot90(window, k)
    out += [r, r[:, ::-1]]
  return out


def test_crops_are_one_window_in_all_frames_and_gt(source):
  it = data.make_train_iterator(source, patch_size=P, global_batch_size=6, seed=3)
  seen = set()
  for batch in _batches(it, 8):
    for frames, exposures, gt in zip(batch["frames"], batch["exposures"], batch["gt"]):
      i = _scene_of(exposures)
      ys = np.round(gt[..., 0] * 64 - 1).astype(int)
      xs = np.round(gt[..., 1] * 64 - 1).astype(int)
      np.testing.assert_allclose(gt[..., 2], (i + 1) / 8, atol=1e-4)
      for f in range(3):  # same window, same transform, frame order kept, right scene
        np.testing.assert_array_equal(frames[f, ..., 0], ys)
        np.testing.assert_array_equal(frames[f, ..., 1], xs)
        assert np.all(frames[f, ..., 2] == 10 * i + f)
      top, left = ys.min(), xs.min()
      assert ys.max() == top + P - 1 and xs.max() == left + P - 1
      grid_y, grid_x = np.mgrid[top:top + P, left:left + P]
      matches = [t for t, (ty, tx) in enumerate(zip(_transforms(grid_y), _transforms(grid_x)))
                 if np.array_equal(ty, ys) and np.array_equal(tx, xs)]
      assert len(matches) == 1
      seen.add(matches[0])
  assert seen == set(range(8))  # every flip/rotation occurs


def test_epochs_cover_every_scene_and_reshuffle(source):
  it = data.make_train_iterator(source, patch_size=P, global_batch_size=2, seed=0, num_epochs=2, augment=False)
  order = [_scene_of(e) for b in it for e in b["exposures"]]
  assert len(order) == 2 * N_SCENES
  assert sorted(order[:N_SCENES]) == sorted(order[N_SCENES:]) == list(range(N_SCENES))
  assert order[:N_SCENES] != order[N_SCENES:]


@pytest.mark.parametrize("shards", [2, 3])
def test_process_shards_are_disjoint_and_form_the_global_batch(source, shards):
  kw = dict(patch_size=P, global_batch_size=6, seed=5, num_epochs=1)
  (whole,) = list(data.make_train_iterator(source, **kw))
  parts = [list(data.make_train_iterator(source, shard_index=s, shard_count=shards, **kw)) for s in range(shards)]
  assert all(len(p) == 1 and len(p[0]["gt"]) == 6 // shards for p in parts)
  scenes = [_scene_of(e) for p in parts for e in p[0]["exposures"]]
  assert sorted(scenes) == list(range(N_SCENES))  # disjoint and covering
  for k in ("frames", "exposures", "gt"):  # process s holds elements s, s + n, ... of the global batch
    merged = np.empty_like(whole[k])
    for s, p in enumerate(parts):
      merged[s::shards] = p[0][k]
    np.testing.assert_array_equal(merged, whole[k])


def test_several_crops_per_scene_read(source):
  kw = dict(patch_size=P, global_batch_size=6, seed=4, crops_per_scene=3, num_epochs=1)
  batches = list(data.make_train_iterator(source, **kw))
  assert len(batches) == 3 and batches[0]["frames"].shape == (6, 3, P, P, 3) and batches[0]["gt"].shape == (6, P, P, 3)
  scenes = [_scene_of(e) for b in batches for e in b["exposures"]]
  assert scenes[::3] == scenes[1::3] == scenes[2::3] and sorted(scenes[::3]) == list(range(N_SCENES))
  first = batches[0]["gt"]
  assert not np.array_equal(first[0], first[1]) and not np.array_equal(first[1], first[2])  # own windows
  assert _same(batches, list(data.make_train_iterator(source, **kw)))


def test_bad_arguments_and_inputs(source, folder, tmp_path):
  with pytest.raises(ValueError, match="multiple of the process count 2"):
    data.make_train_dataset(source, patch_size=P, global_batch_size=5, seed=0, shard_count=2)
  with pytest.raises(fileio.DataError, match=r"0000_short\.png.*smaller than the 64x64 training patch"):
    data.make_train_dataset(source, patch_size=64, global_batch_size=2, seed=0)
  with pytest.raises(fileio.DataError, match="needs both"):
    data.NtireSource(folder / "val")  # training sources need targets
  # A source that only finds out when reading (e.g. prepared data) names the scene.
  it = data.make_train_iterator(list(source)[:2], patch_size=64, global_batch_size=2, seed=0)
  with pytest.raises(fileio.DataError, match="scene 000[01].*48x64, smaller than the 64x64"):
    next(it)
  (tmp_path / "0000_short.png").write_bytes(b"not a png")
  with pytest.raises(fileio.DataError):
    data.NtireSource(tmp_path)


def test_iterator_state_resumes_exactly_through_orbax(source, tmp_path):
  import grain
  import orbax.checkpoint as ocp

  kw = dict(patch_size=P, global_batch_size=4, seed=7)
  it = data.make_train_iterator(source, **kw)
  _batches(it, 3)
  state = it.get_state()
  with ocp.CheckpointManager(tmp_path / "ckpt") as mngr:
    mngr.save(3, args=ocp.args.Composite(data=grain.checkpoint.CheckpointSave(it)))
  expected = _batches(it, 4)
  resumed = data.make_train_iterator(source, **kw)
  resumed.set_state(state)
  assert _same(expected, _batches(resumed, 4))
  restored = data.make_train_iterator(source, **kw)
  with ocp.CheckpointManager(tmp_path / "ckpt") as mngr:
    mngr.restore(3, args=ocp.args.Composite(data=grain.checkpoint.CheckpointRestore(restored)))
  assert _same(expected, _batches(restored, 4))


def test_worker_processes_give_the_same_batches_and_resume(source):
  kw = dict(patch_size=P, global_batch_size=4, seed=11)
  expected = _batches(data.make_train_iterator(source, **kw), 6)
  it = data.make_train_iterator(source, num_workers=2, prefetch=2, **kw)
  try:
    assert _same(expected[:3], _batches(it, 3))
    state = it.get_state()
    assert _same(expected[3:], _batches(it, 3))
    it.set_state(state)
    assert _same(expected[3:], _batches(it, 3))
  finally:
    it.close()


def test_eval_examples_padding_round_trip(folder, source):
  examples = list(data.eval_examples(folder / "train", pad_multiple=32))
  assert [e["id"] for e in examples] == [f"{i:04d}" for i in range(N_SCENES)]
  e = examples[1]
  assert e["hw"] == (H, W) and e["frames"].shape == (1, 3, 64, 64, 3) and e["frames"].dtype == np.uint8
  assert e["exposures"].shape == (1, 3) and e["gt"].shape == (1, H, W, 3)
  frames = source[1]["frames"]
  np.testing.assert_array_equal(e["frames"][0, :, H:], frames[:, H - 2:H - 2 - (64 - H):-1])  # reflect
  for f in range(3):
    np.testing.assert_array_equal(data.crop_back(e["frames"][:, f], e["hw"]), frames[None, f])
  same = next(data.eval_examples(source))
  assert same["frames"].shape == (1, 3, H, W, 3) and same["id"] == "0000"
  val = list(data.eval_examples(folder / "val", pad_multiple=16))
  assert [v["id"] for v in val] == ["0100", "0101"] and "gt" not in val[0]
  assert val[0]["frames"].shape == (1, 3, 48, 64, 3) and val[0]["hw"] == (40, 56)


# --------------------------------------------------------------------------------------------------
# Prepared (ArrayRecord) data
# --------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def prepared(folder, tmp_path_factory):
  pytest.importorskip("tensorflow_datasets")
  out = tmp_path_factory.mktemp("tfds")
  run = subprocess.run([sys.executable, "-m", "hdr_jax.tfds_ntire", f"--manual_dir={folder}", f"--data_dir={out}"],
                       capture_output=True, text=True, timeout=300)
  assert run.returncode == 0, run.stderr
  assert "train: 6 scenes" in run.stdout and "val: 2 scenes" in run.stdout
  return out


def _assert_same_elements(a, b):
  assert len(a) == len(b)
  for i in range(len(a)):
    x, y = a[i], b[i]
    assert sorted(x) == sorted(y) and x["id"] == y["id"] and x["index"] == y["index"] == i
    for k in ("frames", "exposures", "gt"):
      if k in x:
        assert x[k].dtype == y[k].dtype
        np.testing.assert_array_equal(x[k], y[k])


@pytest.mark.parametrize("backend", ["tfds", "array_record"])
def test_prepared_source_matches_png_source(prepared, folder, source, backend):
  train = data.PreparedSource(prepared, "train", backend=backend)
  _assert_same_elements(train, source)
  _assert_same_elements(data.PreparedSource(prepared, "val", backend=backend),
                        data.NtireSource(folder / "val", require_gt=False))
  kw = dict(patch_size=P, global_batch_size=4, seed=2)
  assert _same(_batches(data.make_train_iterator(train, **kw), 3), _batches(data.make_train_iterator(source, **kw), 3))
  with pytest.raises(fileio.DataError, match="split 'test'"):
    data.PreparedSource(prepared, "test", backend=backend)


def test_reader_without_tfds_and_no_heavy_imports(prepared):
  code = textwrap.dedent(f"""
      import sys
      sys.modules['tensorflow_datasets'] = None  # as in a base install
      import numpy as np
      from hdr_jax import data
      src = data.PreparedSource({str(prepared)!r}, 'train')
      assert src.backend == 'array_record', src.backend
      e = src[3]
      assert e['id'] == '0003' and e['frames'].shape == (3, {H}, {W}, 3) and e['frames'][0, 5, 7, 0] == 5
      bad = [m for m in sys.modules if m.split('.')[0] in ('tensorflow', 'tensorflow_datasets') and sys.modules[m]]
      assert not bad, bad
      print('ok')
  """)
  out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
  assert out.returncode == 0 and "ok" in out.stdout, out.stderr


def test_large_splits_spill_to_disk_without_tensorflow(folder, tmp_path, monkeypatch):
  pytest.importorskip("tensorflow_datasets")
  from tensorflow_datasets.core import shuffle

  from hdr_jax import tfds_ntire

  monkeypatch.setattr(shuffle, "MAX_MEM_BUFFER_SIZE", 1)  # every split goes through temporary buckets
  version_dir = tfds_ntire.prepare(folder / "train", tmp_path)
  src = data.PreparedSource(version_dir, "train", backend="array_record")
  assert [src[i]["id"] for i in range(len(src))] == [f"{i:04d}" for i in range(N_SCENES)]
  assert "tensorflow" not in sys.modules


def test_builder_rejects_bad_folders(tmp_path):
  pytest.importorskip("tensorflow_datasets")
  from hdr_jax import tfds_ntire

  with pytest.raises(fileio.DataError, match="no NTIRE scenes"):
    tfds_ntire.split_folders(tmp_path)
  frames, exposures, gt = _scene(0)
  fileio.write_scene(tmp_path / "train", "0000", frames, exposures, gt)
  (tmp_path / "train" / "0000_alignratio.npy").unlink()
  with pytest.raises(fileio.DataError, match="0000_alignratio.npy"):
    tfds_ntire.prepare(tmp_path, tmp_path / "out")
