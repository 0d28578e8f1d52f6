"""The tiled training format (hdr_jax.tiles): the same pixels and batches as the PNG folder, crops that
decode only their tiles, and clear errors for unfinished or damaged data."""

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from hdr_jax import data, fileio, tiles
from conftest import cli_env

ROOT = Path(__file__).resolve().parents[1]
H, W, TILE = 70, 90, 32  # edge tiles are partial in both directions


@pytest.fixture(scope="module")
def folders(tmp_path_factory):
  root = tmp_path_factory.mktemp("tiles")
  rng = np.random.default_rng(7)
  for i in range(5):
    frames = rng.integers(0, 256, (3, H, W, 3), dtype=np.uint8)
    gt = (rng.uniform(0.0, 3.0, (H, W, 3)) ** 2).astype(np.float32)
    fileio.write_scene(root / "png", f"{i:04d}", frames, [-(i + 2.0), 0.0, 2.0], gt)
  for i in range(2):  # a folder without targets (a test split)
    fileio.write_scene(root / "png_test", f"{i + 10:04d}", rng.integers(0, 256, (3, H, W, 3), dtype=np.uint8),
                   [-2.0, 0.0, 2.0])
  run = subprocess.run([sys.executable, "-m", "hdr_jax.tiles", f"--input={root / 'png'}",
                        f"--output={root / 'tiles'}", f"--tile={TILE}", "--workers=2"],
                       cwd=ROOT, capture_output=True, text=True, timeout=300)
  assert run.returncode == 0, run.stderr
  assert "prepared 5 scenes as 32x32 tiles" in run.stdout
  tiles.prepare(root / "png_test", root / "tiles_test", tile=TILE, workers=1, verbose=False)
  return root


def test_elements_are_the_png_folders_exactly(folders):
  png, tiled = data.NtireSource(folders / "png"), data.open_prepared(folders / "tiles")
  assert isinstance(tiled, tiles.TiledSource) and len(tiled) == len(png) == 5
  assert tiled.frame_sizes == png.frame_sizes
  for i in range(len(png)):
    a, b = png[i], tiled[i]
    assert sorted(a) == sorted(b) and a["id"] == b["id"] and a["index"] == b["index"] == i
    assert b["frames"].shape == a["frames"].shape and b["gt"].shape == a["gt"].shape
    np.testing.assert_array_equal(np.asarray(b["frames"]), a["frames"])
    full_gt = np.asarray(b["gt"])
    assert full_gt.dtype == a["gt"].dtype == np.float32
    np.testing.assert_array_equal(full_gt, a["gt"])  # same png16 values / the same float32 alignratio
    np.testing.assert_array_equal(b["exposures"], a["exposures"])
  test = data.open_prepared(folders / "tiles_test")
  assert "gt" not in test[0] and test[1]["id"] == "0011"
  np.testing.assert_array_equal(np.asarray(test[1]["frames"]),
                                data.NtireSource(folders / "png_test", require_gt=False)[1]["frames"])


def test_slices_decode_only_the_tiles_under_them(folders, monkeypatch):
  a, b = data.NtireSource(folders / "png")[3], data.open_prepared(folders / "tiles")[3]
  decoded = []
  real = tiles._TiledImages._decode
  monkeypatch.setattr(tiles._TiledImages, "_decode", lambda self, blob, ty, tx, image: decoded.append(
      (ty, tx, image)) or real(self, blob, ty, tx, image))
  rng = np.random.default_rng(0)
  for _ in range(40):
    y0, x0 = int(rng.integers(0, H)), int(rng.integers(0, W))
    y1, x1 = int(rng.integers(y0, H + 5)), int(rng.integers(x0, W + 5))
    decoded.clear()
    np.testing.assert_array_equal(b["frames"][:, y0:y1, x0:x1], a["frames"][:, y0:y1, x0:x1])
    rows = range(y0 // TILE, (min(y1, H) - 1) // TILE + 1) if min(y1, H) > y0 else []
    cols = range(x0 // TILE, (min(x1, W) - 1) // TILE + 1) if min(x1, W) > x0 else []
    assert sorted(decoded) == sorted((ty, tx, k) for ty in rows for tx in cols for k in range(3))
    np.testing.assert_array_equal(b["gt"][y0:y1, x0:x1], a["gt"][y0:y1, x0:x1])
  np.testing.assert_array_equal(b["frames"][1, 5:40, 60:], a["frames"][1, 5:40, 60:])
  np.testing.assert_array_equal(b["frames"][:, 3:9, 4:8, :], a["frames"][:, 3:9, 4:8, :])
  np.testing.assert_array_equal(b["gt"][::2, 3], a["gt"][::2, 3])  # not a box: decodes the whole image
  assert b["frames"][:, 10:10, 5:9].shape == (3, 0, 4, 3)


@pytest.mark.parametrize("crops_per_scene,workers", [(1, 0), (2, 0), (1, 1)])
def test_training_batches_are_the_png_folders(folders, crops_per_scene, workers):
  kw = dict(patch_size=32, global_batch_size=4, seed=3, crops_per_scene=crops_per_scene)
  it_png = data.make_train_iterator(data.NtireSource(folders / "png"), **kw)
  it_tiles = data.make_train_iterator(data.open_prepared(folders / "tiles"), num_workers=workers, **kw)
  try:
    for _ in range(4):
      a, b = next(it_png), next(it_tiles)
      for k in ("frames", "exposures", "gt"):
        assert a[k].dtype == b[k].dtype
        np.testing.assert_array_equal(a[k], b[k])
  finally:
    for it in (it_png, it_tiles):
      getattr(it, "close", lambda: None)()


def test_train_entry_point_reads_tiles(folders, tmp_path):
  env = {"HDR_JAX_CACHE": str(tmp_path / "cache"), **cli_env(), "PYTHONPATH": str(ROOT),
         "JAX_PLATFORMS": "cpu"}
  args = [sys.executable, "-m", "hdr_jax.train", "--config=configs/ahdrnet.py", f"--workdir={tmp_path / 'w'}",
          "--config.model.channels=8", "--config.model.growth=4", "--config.model.n_blocks=1",
          "--config.model.n_dense=1", "--config.batch_size=2", "--config.data.patch_size=32",
          f"--config.data.prepared={folders / 'tiles'}", f"--config.data.val_root={folders / 'png'}",
          "--config.num_train_steps=2", "--config.eval_every=2", "--config.checkpoint_every=2",
          "--config.progress=False"]
  proc = subprocess.run(args, cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
  assert proc.returncode == 0, proc.stderr[-3000:]
  assert f"data: {folders / 'tiles'}" in proc.stdout
  summary = json.loads((tmp_path / "w" / "summary.json").read_text())
  assert summary["step"] == 2 and summary["checkpoints"] == [2] and np.isfinite(summary["eval"]["psnr_mu"])
  # Validation ran on data.val_root (the evaluate entry point, which reads the same config, agrees on the
  # medium-frame baseline), and nothing was synthesised: data.root is unset and not needed.
  ev = subprocess.run([sys.executable, "-m", "hdr_jax.evaluate", f"--workdir={tmp_path / 'w'}"], cwd=ROOT, env=env,
                      capture_output=True, text=True, timeout=600)
  assert ev.returncode == 0, ev.stderr[-3000:]
  result = json.loads((tmp_path / "w" / "eval_2.json").read_text())
  assert result["data"] == str(folders / "png") and len(result["scenes"]) == 5
  assert result["mean"]["baseline_psnr_mu"] == pytest.approx(summary["eval"]["baseline_psnr_mu"], abs=1e-4)
  assert not (tmp_path / "cache").exists() or not list((tmp_path / "cache").glob("embedded_*"))


def test_damaged_or_unfinished_data_is_named(folders, tmp_path):
  with pytest.raises(fileio.DataError, match=r"tiles\.json: is missing"):
    tiles.TiledSource(tmp_path)
  with pytest.raises(fileio.DataError, match="no prepared dataset here: neither tiles.json"):
    data.open_prepared(tmp_path)
  # An interrupted preparation (no tiles.json) is not a dataset; a finished one is not overwritten.
  out = tmp_path / "out"
  run = subprocess.run([sys.executable, "-m", "hdr_jax.tiles", f"--input={folders / 'png'}",
                        f"--output={folders / 'tiles'}"], cwd=ROOT, capture_output=True, text=True, timeout=120)
  assert run.returncode == 2 and "tiles.json: already exists" in run.stderr
  broken = tmp_path / "broken"
  for p in (folders / "png").iterdir():
    (broken / p.name).parent.mkdir(exist_ok=True)
    (broken / p.name).write_bytes(p.read_bytes())
  (broken / "0002_long.png").write_bytes((folders / "png" / "0002_long.png").read_bytes()[:200])
  with pytest.raises(fileio.DataError, match="0002_long.png"):
    tiles.prepare(broken, out, tile=TILE, workers=1, verbose=False)
  assert not (out / tiles.INDEX).exists()
  # Damaged files: truncated, and one flipped byte inside a tile.
  copy = tmp_path / "copy"
  copy.mkdir()
  for p in (folders / "tiles").iterdir():
    (copy / p.name).write_bytes(p.read_bytes())
  blob = bytearray((copy / "0001.tiles").read_bytes())
  (copy / "0001.tiles").write_bytes(bytes(blob[:-10]))
  with pytest.raises(fileio.DataError, match=r"0001\.tiles: truncated or corrupt"):
    tiles.TiledSource(copy)  # found before any training step
  (copy / "0001.tiles").write_bytes((folders / "tiles" / "0001.tiles").read_bytes())
  header, offsets, start = tiles._read_header(folders / "tiles" / "0003.tiles")
  at = start + int(offsets[5]) + 40  # inside the blob of tile (0, 1), image 1 (the medium frame)
  blob = bytearray((copy / "0003.tiles").read_bytes())
  blob[at:at + 8] = b"\x00" * 8
  (copy / "0003.tiles").write_bytes(bytes(blob))
  src = tiles.TiledSource(copy)
  with pytest.raises(fileio.DataError, match=r"0003\.tiles: corrupt tile \(row 0, column 1, image 1\)"):
    np.asarray(src[3]["frames"])
  # A scene file that does not belong to its place in tiles.json.
  (copy / "0002.tiles").write_bytes((folders / "tiles" / "0000.tiles").read_bytes())
  with pytest.raises(fileio.DataError, match=r"0002\.tiles: header \(scene 0000.*does not match tiles\.json \(scene 0002"):
    tiles.TiledSource(copy)
  (copy / "0002.tiles").write_bytes((folders / "tiles" / "0002.tiles").read_bytes())
  (copy / "0004.tiles").unlink()
  with pytest.raises(fileio.DataError, match=r"0004\.tiles: file is missing"):
    tiles.TiledSource(copy)
