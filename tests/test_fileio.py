"""File I/O: round trips, atomic writes, and one clear DataError per bad input."""

import os

import numpy as np
import pytest

from hdr_jax import fileio

H, W = 24, 32


def _rng(seed=0):
  return np.random.default_rng(seed)


def _frames(rng, shape=(H, W)):
  return rng.integers(0, 256, (3, *shape, 3), dtype=np.uint8)


def png16_tolerance(align, peak):
  """Half a quantisation step, plus the float32 rounding of the official (float32) encode/decode."""
  return 0.5 / align + 2 * float(np.spacing(np.float32(peak)))


# --------------------------------------------------------------------------------------------------
# Round trips
# --------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("peak", [0.8, 1.6, 37.0])
def test_hdr_png16_round_trip(tmp_path, peak):
  rng = _rng(1)
  hdr = (rng.uniform(0, 1, (H, W, 3)) * peak).astype(np.float32)
  hdr[3, 4, 1] = peak  # the maximum maps to 65535
  png, npy = tmp_path / "0000.png", tmp_path / "0000_alignratio.npy"
  fileio.write_hdr_png16(png, npy, hdr)
  align = float(np.load(npy))
  assert align == pytest.approx(65535 / peak, rel=1e-6)
  assert fileio.png_info(png) == fileio.PngInfo(W, H, 16, 3)
  back = fileio.read_hdr_png16(png, npy)
  assert back.dtype == np.float32 and back.shape == hdr.shape
  assert np.abs(back - hdr).max() <= png16_tolerance(align, peak)
  assert back.max() == pytest.approx(peak, rel=1e-6)
  # RGB order on disk is BGR, as cv2 writes it: channel 2 of the file is R.
  import cv2

  raw = cv2.imread(str(png), cv2.IMREAD_UNCHANGED)
  np.testing.assert_array_equal(raw[..., ::-1], np.round(hdr * np.float32(align)).astype(np.uint16))


def test_ldr_png_round_trip(tmp_path):
  rng = _rng(2)
  u8 = rng.integers(0, 256, (H, W, 3), dtype=np.uint8)
  fileio.write_ldr_png(tmp_path / "a.png", u8)
  np.testing.assert_array_equal(fileio.read_ldr_png_uint8(tmp_path / "a.png"), u8)
  back = fileio.read_ldr_png(tmp_path / "a.png")
  assert back.dtype == np.float32
  np.testing.assert_array_equal(back, u8.astype(np.float32) / np.float32(255))
  f = rng.uniform(-0.1, 1.1, (H, W, 3)).astype(np.float32)  # floats are rounded to 8 bits and clipped
  fileio.write_ldr_png(tmp_path / "b.png", f)
  assert np.abs(fileio.read_ldr_png(tmp_path / "b.png") - np.clip(f, 0, 1)).max() <= 0.5 / 255 + 1e-7


def test_scene_round_trip(tmp_path):
  rng = _rng(3)
  frames, gt = _frames(rng), rng.uniform(0, 1.5, (H, W, 3)).astype(np.float32)
  fileio.write_scene(tmp_path, "0042", frames, [-3, -1, 1], gt)
  (scene,) = fileio.validate_folder(tmp_path, require_gt=True)
  assert scene.scene_id == "0042" and scene.has_gt
  d = fileio.read_scene(scene)
  assert d["id"] == "0042" and d["frames"].shape == (3, H, W, 3) and d["frames"].dtype == np.float32
  np.testing.assert_array_equal(d["frames"], frames / np.float32(255))
  np.testing.assert_array_equal(d["exposures"], [-3, -1, 1])
  align = float(np.load(tmp_path / "0042_alignratio.npy"))
  assert np.abs(d["gt"] - gt).max() <= png16_tolerance(align, gt.max())
  assert "gt" not in fileio.read_scene(scene, with_gt=False)


def test_write_result_ntire_layout(tmp_path):
  hdr = _rng(4).uniform(0, 2, (H, W, 3)).astype(np.float32)
  paths = fileio.write_result(tmp_path, "0007", hdr)
  assert [p.name for p in paths] == ["0007.png", "0007_alignratio.npy"]
  assert np.abs(fileio.read_hdr_png16(*paths) - hdr).max() <= png16_tolerance(float(np.load(paths[1])), hdr.max())


def test_exr_round_trip(tmp_path):
  rng = _rng(5)
  img = np.exp(rng.uniform(-10, 10, (H, W, 3))).astype(np.float32)
  fileio.write_exr(tmp_path / "a.exr", img)
  back = fileio.read_exr(tmp_path / "a.exr")
  assert back.dtype == np.float32
  np.testing.assert_array_equal(back, img)  # float32: exact
  img = np.exp(rng.uniform(-8, 8, (H, W, 3))).astype(np.float32)
  fileio.write_exr(tmp_path / "h.exr", img, half=True)
  back = fileio.read_exr(tmp_path / "h.exr")
  np.testing.assert_array_equal(back, img.astype(np.float16).astype(np.float32))
  np.testing.assert_allclose(back, img, rtol=2.0**-11)  # half precision
  np.testing.assert_array_equal(fileio.read_hdr_image(tmp_path / "a.exr"), fileio.read_exr(tmp_path / "a.exr"))


def test_radiance_hdr_round_trip(tmp_path):
  rng = _rng(6)
  img = np.exp(rng.uniform(-9, 9, (H, W, 3))).astype(np.float32)
  img[0, 0] = 0.0
  fileio.write_hdr_image(tmp_path / "a.hdr", img)
  back = fileio.read_hdr_image(tmp_path / "a.hdr")
  assert back.dtype == np.float32 and back.shape == img.shape
  # RGBE: 8-bit mantissas sharing the exponent of the pixel's largest channel (cv2 truncates, so
  # the error is below one step, 2^-7 of the largest channel at worst).
  err = np.abs(back - img) / np.maximum(img.max(axis=-1, keepdims=True), 1e-30)
  assert err.max() < 2.0**-7
  assert np.all(back[0, 0] == 0)
  ratio = lambda x: x[1:, ..., 0] / x[1:].max(-1)  # R relative to the largest channel: RGB order kept
  np.testing.assert_allclose(ratio(back), ratio(img), atol=2.0**-7)


def test_hdr_image_types(tmp_path):
  with pytest.raises(ValueError, match="unsupported"):
    fileio.write_hdr_image(tmp_path / "a.tif", np.ones((2, 2, 3), np.float32))
  (tmp_path / "a.tif").write_bytes(b"x")
  with pytest.raises(fileio.DataError, match="unsupported"):
    fileio.read_hdr_image(tmp_path / "a.tif")


# --------------------------------------------------------------------------------------------------
# Atomic writing
# --------------------------------------------------------------------------------------------------


def test_atomic_write_leaves_no_temp_files(tmp_path):
  hdr = np.ones((H, W, 3), np.float32)
  fileio.write_result(tmp_path, "0000", hdr)
  fileio.write_exr(tmp_path / "a.exr", hdr)
  fileio.write_radiance_hdr(tmp_path / "a.hdr", hdr)
  fileio.write_ldr_png(tmp_path / "a.png", hdr)
  fileio.atomic_write_bytes(tmp_path / "sub" / "x.bin", b"abc")  # creates the folder
  assert sorted(p.name for p in tmp_path.iterdir()) == sorted(
      ["0000.png", "0000_alignratio.npy", "a.exr", "a.hdr", "a.png", "sub"])
  assert [p.name for p in (tmp_path / "sub").iterdir()] == ["x.bin"]


def test_atomic_write_uses_default_file_mode(tmp_path):
  umask = os.umask(0)
  os.umask(umask)
  fileio.atomic_write_bytes(tmp_path / "x.bin", b"abc")
  assert (tmp_path / "x.bin").stat().st_mode & 0o777 == 0o666 & ~umask


@pytest.mark.parametrize("fail_at", ["fsync", "replace"])
def test_atomic_write_failure_keeps_destination(tmp_path, monkeypatch, fail_at):
  dest = tmp_path / "x.bin"
  dest.write_bytes(b"old")

  def boom(*a, **k):
    raise OSError("forced failure")

  monkeypatch.setattr(fileio.os, fail_at, boom)
  with pytest.raises(OSError, match="forced"):
    fileio.atomic_write_bytes(dest, b"new content")
  monkeypatch.undo()
  assert dest.read_bytes() == b"old"
  assert [p.name for p in tmp_path.iterdir()] == ["x.bin"]


def test_exr_write_failure_keeps_destination(tmp_path, monkeypatch):
  dest = tmp_path / "a.exr"
  fileio.write_exr(dest, np.ones((4, 4, 3), np.float32))
  before = dest.read_bytes()

  def boom(*a, **k):
    raise OSError("forced failure")

  monkeypatch.setattr(fileio.os, "replace", boom)
  with pytest.raises(OSError, match="forced"):
    fileio.write_exr(dest, np.zeros((4, 4, 3), np.float32))
  monkeypatch.undo()
  assert dest.read_bytes() == before and [p.name for p in tmp_path.iterdir()] == ["a.exr"]


@pytest.mark.parametrize("bad", ["nan", "negative", "zero", "shape"])
def test_hdr_png16_refuses_bad_images_before_writing(tmp_path, bad):
  png, npy = tmp_path / "0000.png", tmp_path / "0000_alignratio.npy"
  img = {"nan": np.full((4, 4, 3), np.nan), "negative": -np.ones((4, 4, 3)), "zero": np.zeros((4, 4, 3)),
         "shape": np.ones((4, 4))}[bad]
  with pytest.raises(ValueError, match="0000.png"):
    fileio.write_hdr_png16(png, npy, img)
  assert list(tmp_path.iterdir()) == []


# --------------------------------------------------------------------------------------------------
# Bad inputs: one DataError naming the file and the problem
# --------------------------------------------------------------------------------------------------


def _one_scene(folder, rng=None, shape=(H, W)):
  rng = rng or _rng(7)
  fileio.write_scene(folder, "0000", _frames(rng, shape), [-2, 0, 2], rng.uniform(0, 1.5, (*shape, 3)).astype(np.float32))
  return folder


def _expect(folder, name, *words, require_gt=False):
  """validate_folder (which decodes small folders) raises one DataError naming `name` and `words`."""
  with pytest.raises(fileio.DataError) as e:
    fileio.validate_folder(folder, require_gt=require_gt)
  msg = str(e.value)
  assert name in msg and e.value.path.endswith(name), msg
  for w in words:
    assert w in msg, msg
  return msg


@pytest.mark.parametrize("missing", ["0000_short.png", "0000_long.png", "0000_exposures.npy", "0000_gt.png",
                                     "0000_alignratio.npy"])
def test_missing_file(tmp_path, missing):
  (_one_scene(tmp_path) / missing).unlink()
  _expect(tmp_path, missing, "missing")


def test_missing_targets_when_required(tmp_path):
  _one_scene(tmp_path)
  for n in ("0000_gt.png", "0000_alignratio.npy"):
    (tmp_path / n).unlink()
  assert fileio.validate_folder(tmp_path)[0].gt is None  # a test-input folder without targets is fine
  _expect(tmp_path, "0000_gt.png", "missing", require_gt=True)


def test_frames_of_different_sizes(tmp_path):
  _one_scene(tmp_path)
  fileio.write_ldr_png(tmp_path / "0000_medium.png", np.zeros((H, W + 2, 3), np.uint8))
  _expect(tmp_path, "0000_medium.png", "size", "differs")
  with pytest.raises(fileio.DataError, match="0000_medium.png.*differs"):
    fileio.read_scene(fileio.discover_scenes(tmp_path)[0])


def test_gt_of_different_size(tmp_path):
  _one_scene(tmp_path)
  fileio.write_hdr_png16(tmp_path / "0000_gt.png", tmp_path / "0000_alignratio.npy", np.ones((H - 1, W, 3)))
  _expect(tmp_path, "0000_gt.png", "size", "differs")


def test_16bit_ldr_frame(tmp_path):
  _one_scene(tmp_path)
  fileio.write_hdr_png16(tmp_path / "0000_long.png", tmp_path / "x.npy", np.ones((H, W, 3)))
  _expect(tmp_path, "0000_long.png", "8-bit", "16-bit")
  with pytest.raises(fileio.DataError, match="0000_long.png.*8-bit"):
    fileio.read_ldr_png(tmp_path / "0000_long.png")


def test_8bit_gt(tmp_path):
  _one_scene(tmp_path)
  fileio.write_ldr_png(tmp_path / "0000_gt.png", np.zeros((H, W, 3), np.uint8))
  _expect(tmp_path, "0000_gt.png", "16-bit", "8-bit")
  with pytest.raises(fileio.DataError, match="0000_gt.png.*16-bit"):
    fileio.read_hdr_png16(tmp_path / "0000_gt.png", tmp_path / "0000_alignratio.npy")


@pytest.mark.parametrize("channels", [1, 2, 4])
def test_wrong_channel_count(tmp_path, channels):
  import cv2

  _one_scene(tmp_path)
  img = np.zeros((H, W, channels), np.uint8).squeeze()
  if channels == 2:  # gray + alpha: cv2 cannot write it, so patch the IHDR colour type of a gray PNG
    ok, buf = cv2.imencode(".png", np.zeros((H, W), np.uint8))
    (tmp_path / "0000_short.png").write_bytes(_set_color_type(buf.tobytes(), 4))
  else:
    cv2.imwrite(str(tmp_path / "0000_short.png"), img)
  _expect(tmp_path, "0000_short.png", "3 colour channels", f"found {channels}")
  with pytest.raises(fileio.DataError, match=f"0000_short.png.*3 colour channels.*found {channels}"):
    fileio.read_ldr_png(tmp_path / "0000_short.png")


def _set_color_type(png: bytes, ctype: int) -> bytes:
  import struct
  import zlib

  b = bytearray(png)
  b[25] = ctype
  b[29:33] = struct.pack(">I", zlib.crc32(bytes(b[12:29])) & 0xFFFFFFFF)
  return bytes(b)


def test_truncated_png(tmp_path):
  _one_scene(tmp_path)
  p = tmp_path / "0000_medium.png"
  p.write_bytes(p.read_bytes()[: p.stat().st_size // 2])
  _expect(tmp_path, "0000_medium.png", "truncated")


def test_corrupt_png_data(tmp_path):
  _one_scene(tmp_path)
  p = tmp_path / "0000_gt.png"
  b = bytearray(p.read_bytes())
  for i in range(60, len(b) - 12):  # scramble the image data, keep header and IEND
    b[i] = (b[i] * 7 + 13) % 256
  p.write_bytes(bytes(b))
  _expect(tmp_path, "0000_gt.png", "corrupt")


def test_garbage_after_png_header(tmp_path):
  _one_scene(tmp_path)
  p = tmp_path / "0000_short.png"
  p.write_bytes(p.read_bytes()[:33] + _rng(8).integers(0, 256, 500, dtype=np.uint8).tobytes())
  _expect(tmp_path, "0000_short.png", "corrupt")


def test_not_a_png(tmp_path):
  _one_scene(tmp_path)
  (tmp_path / "0000_short.png").write_bytes(b"\xff\xd8\xff\xe0 a jpeg " + bytes(100))
  _expect(tmp_path, "0000_short.png", "not a PNG")
  (tmp_path / "0000_short.png").write_bytes(b"")
  _expect(tmp_path, "0000_short.png", "not a PNG")


@pytest.mark.parametrize("value,word", [
    (np.array([-2.0, 0.0]), "3 numbers"),
    (np.array([-2.0, 0.0, 2.0, 4.0]), "3 numbers"),
    (np.array([-2.0, np.nan, 2.0]), "finite"),
    (np.array([-2.0, np.inf, 2.0]), "finite"),
    (np.array([2.0, 0.0, -2.0]), "increasing"),
    (np.array([0.0, 0.0, 2.0]), "increasing"),
    (np.array(["a", "b", "c"]), "3 numbers"),
])
def test_bad_exposures(tmp_path, value, word):
  _one_scene(tmp_path)
  np.save(tmp_path / "0000_exposures.npy", value)
  _expect(tmp_path, "0000_exposures.npy", word)


def test_exposures_not_npy(tmp_path):
  _one_scene(tmp_path)
  (tmp_path / "0000_exposures.npy").write_text("-2 0 2")
  _expect(tmp_path, "0000_exposures.npy", "not a readable .npy")


@pytest.mark.parametrize("value,word", [
    (np.array(0.0), "positive"),
    (np.array(-3.0), "positive"),
    (np.array(np.nan), "finite"),
    (np.array(np.inf), "finite"),
    (np.array([1.0, 2.0]), "one number"),
    (np.array("65535"), "one number"),
    (np.array(True), "one number"),
])
def test_bad_alignratio(tmp_path, value, word):
  _one_scene(tmp_path)
  np.save(tmp_path / "0000_alignratio.npy", value)
  _expect(tmp_path, "0000_alignratio.npy", word)
  with pytest.raises(fileio.DataError, match=f"0000_alignratio.npy.*{word}"):
    fileio.read_hdr_png16(tmp_path / "0000_gt.png", tmp_path / "0000_alignratio.npy")


def test_alignratio_not_npy(tmp_path):
  _one_scene(tmp_path)
  (tmp_path / "0000_alignratio.npy").write_bytes(b"65535.0")
  _expect(tmp_path, "0000_alignratio.npy", "not a readable .npy")


def test_empty_and_nonexistent_folders(tmp_path):
  (tmp_path / "empty").mkdir()
  (tmp_path / "empty" / "notes.txt").write_text("no scenes here")
  _expect(tmp_path / "empty", "empty", "no NTIRE scenes")
  _expect(tmp_path / "nope", "nope", "does not exist")


def test_bad_hdr_images(tmp_path):
  (tmp_path / "a.exr").write_bytes(b"not an exr")
  with pytest.raises(fileio.DataError, match="a.exr.*OpenEXR"):
    fileio.read_hdr_image(tmp_path / "a.exr")
  (tmp_path / "a.hdr").write_bytes(b"#?RADIANCE\ngarbage")
  with pytest.raises(fileio.DataError, match="a.hdr.*Radiance"):
    fileio.read_hdr_image(tmp_path / "a.hdr")
  fileio.write_exr(tmp_path / "n.exr", np.full((4, 4, 3), np.nan, np.float32))
  with pytest.raises(fileio.DataError, match="n.exr.*NaN"):
    fileio.read_hdr_image(tmp_path / "n.exr")
  with pytest.raises(fileio.DataError, match="m.exr.*missing"):
    fileio.read_hdr_image(tmp_path / "m.exr")


def test_tiny_scene_dir_fixture(tiny_scene_dir):
  scenes = fileio.validate_folder(tiny_scene_dir, require_gt=True)
  assert [s.scene_id for s in scenes] == ["0000", "0001", "0002"]
  d = fileio.read_scene(scenes[2])
  assert d["frames"].shape == (3, 24, 32, 3) and d["gt"].shape == (24, 32, 3) and 0 < d["gt"].max() <= 1.6
