"""One's own bracketed photos (hdr_jax.brackets), prediction in tiles (hdr_jax.tiling) and the notebook API
(hdr_jax.api): EXIF exposures, alignment, tiled == whole frame, the predict CLI on bracket folders."""

import subprocess
import sys
import types
from pathlib import Path

import cv2
import numpy as np
import pytest
from PIL import Image
from PIL.TiffImagePlugin import IFDRational

from hdr_jax import api, brackets, fileio, predict, tiling
from conftest import cli_env

ROOT = Path(__file__).resolve().parents[1]
H, W = 100, 124  # every predicted frame has this size: one whole-frame compilation for the module


def scene(height: int, width: int, seed: int = 0) -> np.ndarray:
  """Linear radiance relative to the medium exposure: rectangles up to 3x the medium frame's white."""
  rng = np.random.default_rng(seed)
  lum = np.full((height, width), 0.15, np.float32)
  for _ in range(40):
    y, x = int(rng.integers(0, height)), int(rng.integers(0, width))
    h, w = int(rng.integers(6, max(7, height // 3))), int(rng.integers(6, max(7, width // 3)))
    lum[y:y + h, x:x + w] = rng.uniform(0.01, 3.0)
  lum = cv2.GaussianBlur(lum, (0, 0), 1.0)
  return np.stack([lum, 0.8 * lum + 0.02, lum**1.2], -1).astype(np.float32)


def ldr(linear: np.ndarray, stops: float, bits: int = 8) -> np.ndarray:
  top = 2**bits - 1
  return np.round(np.clip(linear * 2.0**stops, 0, 1) ** (1 / 2.24) * top).astype(np.uint8 if bits == 8 else np.uint16)


def write_jpeg(path: Path, rgb: np.ndarray, time_s=None, iso=None, f_number=None) -> None:
  exif = Image.Exif()
  ifd = exif.get_ifd(0x8769)
  if time_s is not None:
    ifd[0x829A] = IFDRational(*time_s)
  if f_number is not None:
    ifd[0x829D] = IFDRational(int(round(f_number * 10)), 10)
  if iso is not None:
    ifd[0x8827] = iso
  path.parent.mkdir(parents=True, exist_ok=True)
  Image.fromarray(rgb).save(path, exif=exif, quality=95)


def write_exif_bracket(folder: Path, seed: int = 0) -> np.ndarray:
  """Three JPEGs named out of exposure order: b (1/240 s, short), c (1/60 s, medium), a (1/30 s at ISO
  200, i.e. 1/15 s at ISO 100: long). Returns the scene."""
  lin = scene(H, W, seed)
  write_jpeg(folder / "a.jpg", ldr(lin, 2), (1, 30), 200, 4.0)
  write_jpeg(folder / "b.jpg", ldr(lin, -2), (1, 240), 100, 4.0)
  write_jpeg(folder / "c.jpg", ldr(lin, 0), (1, 60), 100, 4.0)
  return lin


@pytest.fixture(scope="module")
def model():
  return api.load(pretrained="ahdrnet-merge-cpu")


@pytest.fixture(scope="module")
def tiny():
  """A small randomly initialised AHDRNet (receptive radius 4 + 2 * 2 * 2 + 3 = 15) with the exposure head,
  whose output depends on every pixel within that radius (the merge head starts as the per-pixel merge)."""
  import jax

  from hdr_jax import config_base, engine as engine_lib

  config = config_base.load_config_file(ROOT / "configs" / "ahdrnet.py")
  config.model.update(channels=8, growth=4, n_dense=2, n_blocks=2, output_head="exposure")
  eng = engine_lib.Engine(config)
  return api.HDRModel(config, eng, eng.init_state(jax.random.key(0)), 0, "tiny")


@pytest.fixture(scope="module")
def photos(tmp_path_factory):
  """A folder of two EXIF brackets (``p1``, ``p2``), predicted once by the CLI into ``out``."""
  root = tmp_path_factory.mktemp("photos")
  write_exif_bracket(root / "in" / "p1", seed=1)
  write_exif_bracket(root / "in" / "p2", seed=2)
  proc = subprocess.run([sys.executable, "-m", "hdr_jax.predict", "--pretrained=ahdrnet-merge-cpu",
                         f"--input={root / 'in'}", f"--output={root / 'out'}"], cwd=ROOT, env=cli_env(),
                        capture_output=True, text=True, timeout=300)
  assert proc.returncode == 0, proc.stderr[-3000:]
  assert "2 bracket(s) predicted" in proc.stdout and "at -2, +0, +2 stops, align mtb" in proc.stdout, proc.stdout
  return root


# --------------------------------------------------------------------------------------------------
# Exposures and reading
# --------------------------------------------------------------------------------------------------


def test_exif_exposures_are_sorted_and_relative_to_the_middle_frame(tmp_path):
  write_exif_bracket(tmp_path / "b")
  files = brackets.image_files(tmp_path / "b")
  absolute = brackets.exif_exposures(files)  # a, b, c: log2(t * S / N^2)
  np.testing.assert_allclose(absolute, np.log2([1 / 30 * 200 / 16, 1 / 240 * 100 / 16, 1 / 60 * 100 / 16]), rtol=1e-6)
  b = brackets.read_bracket(tmp_path / "b", align="none")
  assert [f.name for f in b.files] == ["b.jpg", "c.jpg", "a.jpg"] and b.name == "b"
  np.testing.assert_allclose(b.exposures, [-2, 0, 2], atol=1e-6)
  assert b.frames.dtype == np.uint8 and b.frames.shape == (3, H, W, 3)
  np.testing.assert_array_equal(b.frames[2], brackets.read_frame(tmp_path / "b" / "a.jpg"))
  # --exposures lists file-name order (a, b, c); the frames are sorted by it all the same.
  b2 = brackets.read_bracket(tmp_path / "b", exposures="1,-1.5,0", align="none")
  assert [f.name for f in b2.files] == ["b.jpg", "c.jpg", "a.jpg"]
  np.testing.assert_allclose(b2.exposures, [-1.5, 0, 1])


def test_missing_exif_and_bad_exposure_strings_are_clear_errors(tmp_path):
  lin = scene(H, W)
  for name, stops in (("1.png", -2), ("2.png", 0), ("3.png", 2)):
    fileio.write_ldr_png(tmp_path / "p" / name, ldr(lin, stops))
  with pytest.raises(fileio.DataError, match=r"1\.png: no EXIF exposure time: give .* --exposures="):
    brackets.read_bracket(tmp_path / "p")
  assert brackets.read_bracket(tmp_path / "p", exposures=[-2, 0, 2], align="none").exposures.tolist() == [-2, 0, 2]
  for bad in ("1,2", "a,b,c", "1,2,nan", "", "1;2;3", "0,0,1,2"):
    with pytest.raises(ValueError, match=r"--exposures=.*expected three numbers in stops"):
      brackets.parse_exposures(bad)
  with pytest.raises(fileio.DataError, match="same exposure"):
    brackets.read_bracket(tmp_path / "p", exposures="0,0,2")
  write_jpeg(tmp_path / "q" / "1.jpg", ldr(lin, -2), (1, 240), 100)
  write_jpeg(tmp_path / "q" / "2.jpg", ldr(lin, 0), (1, 60))  # no ISO while the others have one
  write_jpeg(tmp_path / "q" / "3.jpg", ldr(lin, 2), (1, 15), 100)
  with pytest.raises(fileio.DataError, match=r"2\.jpg: EXIF has no ISO while the other frames"):
    brackets.exif_exposures(brackets.image_files(tmp_path / "q"))


def test_sixteen_bit_frames_keep_sixteen_bits(tmp_path):
  lin = scene(40, 56)
  (tmp_path / "t").mkdir()
  for name, stops in (("x.tif", 2), ("y.tif", -2), ("z.tif", 0)):
    assert cv2.imwrite(str(tmp_path / "t" / name), cv2.cvtColor(ldr(lin, stops, bits=16), cv2.COLOR_RGB2BGR))
  b = brackets.read_bracket(tmp_path / "t", exposures="2,-2,0", align="none")
  assert b.frames.dtype == np.uint16 and [f.name for f in b.files] == ["y.tif", "z.tif", "x.tif"]
  np.testing.assert_array_equal(b.frames[0], ldr(lin, -2, bits=16))


# --------------------------------------------------------------------------------------------------
# Alignment
# --------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("method", ["mtb", "ecc"])
def test_alignment_recovers_a_known_shift(method):
  """Short frame moved by (dy, dx) = (3, -2), long by (-2, 4): both are found and undone."""
  rng = np.random.default_rng(3)
  big = np.full((168, 200), 0.2, np.float32)
  for _ in range(40):
    y, x = rng.integers(0, 168, 2)
    h, w = rng.integers(8, 50, 2)
    big[y:y + h, x:x + w] = rng.uniform(0.02, 1.0)
  big = cv2.GaussianBlur(big, (0, 0), 1.0)
  big = np.stack([big, big**1.5, 0.5 * big + 0.2], -1)
  crop = lambda lin, dy, dx: np.roll(lin, (dy, dx), (0, 1))[20:148, 20:180]
  frames = np.stack([ldr(crop(big, 3, -2), -1), ldr(crop(big, 0, 0), 0), ldr(crop(big, -2, 4), 1)])
  aligned, motion = brackets.align_frames(frames, [-1, 0, 1], method)
  if method == "mtb":  # the shift that moves each frame onto the medium one
    assert motion[0] == (2, -3) and motion[2] == (-4, 2) and motion[1] is None
  else:  # the warp from medium to moving coordinates: a translation by the motion
    np.testing.assert_allclose(motion[0], [[1, 0, -2], [0, 1, 3], [0, 0, 1]], atol=0.1)
    np.testing.assert_allclose(motion[2], [[1, 0, 4], [0, 1, -2], [0, 0, 1]], atol=0.1)
  inner = (slice(None), slice(8, -8), slice(8, -8))
  still = np.stack([ldr(crop(big, 0, 0), -1), frames[1], ldr(crop(big, 0, 0), 1)])
  err = np.abs(aligned[inner].astype(int) - still[inner].astype(int))
  assert err[1].max() == 0 and err.mean() < (0.01 if method == "mtb" else 1.5), err.mean()
  np.testing.assert_array_equal(brackets.align_frames(frames, [-1, 0, 1], "none")[0], frames)
  if method == "mtb":  # a still frame with large flat areas stays put (OpenCV's AlignMTB drifts to (-63, -63))
    flat = np.full((256, 320, 3), 100, np.uint8)
    flat[50:100, 60:200] = 200
    assert brackets.mtb_shift(flat, flat) == (0, 0) and brackets.mtb_shift(frames[1], frames[1]) == (0, 0)


# --------------------------------------------------------------------------------------------------
# Tiles
# --------------------------------------------------------------------------------------------------


def test_windows_cover_the_frame_once_with_the_halo_inside():
  for size, tile, halo in ((100, 32, 8), (1000, 512, 32), (95, 30, 12), (40, 32, 8), (577, 512, 32)):
    starts = tiling.window_starts(size, tile, halo)
    span = min(size, tile + 2 * halo)
    covered = np.zeros(size, int)
    for start, k0, k1 in starts:
      covered[k0:k1] += 1
      assert 0 <= start and start + span <= size
      assert start == 0 or k0 - start >= halo
      assert start + span == size or start + span - k1 >= halo
    assert np.all(covered == 1), (size, tile, halo)


def test_tiled_prediction_equals_the_whole_frame(tiny):
  assert tiny.receptive_radius == 15
  lin = scene(72, 88, seed=5)
  frames = np.stack([ldr(lin, -2), ldr(lin, 0), ldr(lin, 2)])
  whole = tiny.predict(frames, [-2, 0, 2], tile=0)
  assert tiny.tiles_for(72, 88, 24) == 3 * 4  # windows of 24 + 2 * 16 pixels, moved inwards at the borders
  tiled = tiny.predict(frames, [-2, 0, 2], tile=24)
  assert tiled.shape == (72, 88, 3) and tiled.dtype == np.float32 and whole.max() > 1
  np.testing.assert_allclose(tiled, whole, rtol=1e-5, atol=1e-6)
  gamma = tiny.predict(list(frames[::-1]), [4, 2, 0], tile=0, gamma_domain=True)  # any order and offset, a list
  np.testing.assert_allclose(gamma ** 2.24, whole, rtol=1e-5, atol=1e-6)


def test_a_model_that_is_not_translation_local_runs_whole_and_refuses_tiles():
  calls = []
  engine = types.SimpleNamespace(receptive_radius=lambda state: None,
                                 predict=lambda state, f, e, key: calls.append(f.shape) or f[:, 1].astype(np.float32) / 255)
  config = types.SimpleNamespace(model=types.SimpleNamespace(name="unet"), task="diffusion")
  m = api.HDRModel(config, engine, None, 1, "runs/x")
  frames = np.full((3, 700, 600, 3), 128, np.uint8)
  out = m.predict(frames, [-2, 0, 2])
  assert calls == [(1, 3, 700, 600, 3)] and out.shape == (700, 600, 3)
  with pytest.raises(ValueError, match=r"tile=256: model 'unet' \(task diffusion\) is not translation-local"):
    m.predict(frames, [-2, 0, 2], tile=256)
  with pytest.raises(ValueError, match=r"frames: expected \(3, H, W, 3\)"):
    m.predict(frames[:2], [-2, 0, 2])
  with pytest.raises(ValueError, match="float frames must be finite values in"):
    m.predict(frames.astype(np.float32), [-2, 0, 2])


def test_preview_tone_map_and_gamma_decode():
  from hdr_jax import hdr_math

  lin = scene(40, 56) * 4
  out = hdr_math.np_reinhard_tonemap(lin)
  assert out.dtype == np.float32 and out.shape == lin.shape and 0 <= out.min() and out.max() <= 1
  lum = lin @ np.float32([0.2126, 0.7152, 0.0722])
  order = np.argsort(lum.ravel())
  shown = (out ** 2.2 @ np.float32([0.2126, 0.7152, 0.0722])).ravel()[order]
  assert np.all(np.diff(shown[lum.ravel()[order] < np.percentile(lum, 99)]) >= -1e-3)  # monotone below the white point
  assert np.isclose(out.max(), 1.0)  # the white point reaches white
  np.testing.assert_allclose(hdr_math.np_gamma_decode(out), np.asarray(hdr_math.gamma_decode(out)), rtol=1e-6)


# --------------------------------------------------------------------------------------------------
# The predict CLI and the API
# --------------------------------------------------------------------------------------------------


def test_cli_on_a_folder_of_brackets_writes_exr_and_preview_equal_to_the_api(photos, model):
  assert model.receptive_radius == 31 and model.tiles_for(4000, 6000) == 8 * 12  # 4 + 2 * (4 layers x 3 blocks) + 3
  for name, seed in (("p1", 1), ("p2", 2)):
    exr = fileio.read_hdr_image(photos / "out" / f"{name}.exr")
    bracket = brackets.read_bracket(photos / "in" / name)  # the CLI's defaults: EXIF, mtb
    np.testing.assert_allclose(model.predict(bracket.frames, bracket.exposures), exr, rtol=1e-6, atol=1e-7)
    truth = scene(H, W, seed)
    assert np.median(np.abs(exr - truth) / (truth + 0.01)) < 0.05  # the radiance, relative to the medium frame
    preview = fileio.read_ldr_png_uint8(photos / "out" / f"{name}_preview.png")
    assert preview.shape == (H, W, 3) and 60 < preview.mean() < 200
  assert sorted(p.name for p in (photos / "out").iterdir()) == ["p1.exr", "p1_preview.png", "p2.exr", "p2_preview.png"]


def test_one_bracket_folder_as_radiance_hdr(photos, model, tmp_path):
  written = brackets.predict_folder(model, photos / "in" / "p1", tmp_path, "hdr", verbose=False)
  assert [p.name for p in written] == ["p1.hdr", "p1_preview.png"]
  exr = fileio.read_hdr_image(photos / "out" / "p1.exr")
  # RGBE: an 8-bit mantissa per channel under the pixel's shared exponent, so the error scales with its brightest channel
  err = np.abs(fileio.read_hdr_image(tmp_path / "p1.hdr") - exr)
  assert np.all(err <= exr.max(axis=-1, keepdims=True) / 64 + 1e-6), err.max()


def test_bad_bracket_inputs_are_one_line_errors(tmp_path):
  lin = scene(H, W)
  out = tmp_path / "out"
  run = lambda folder, **kw: predict.run(None, folder, out, pretrained="ahdrnet-merge-cpu", **kw)
  write_jpeg(tmp_path / "two" / "1.jpg", ldr(lin, -2), (1, 240), 100)
  write_jpeg(tmp_path / "two" / "2.jpg", ldr(lin, 0), (1, 60), 100)
  with pytest.raises(fileio.DataError, match=r"two: a bracket is three frames, found 2 image file\(s\) \(1\.jpg, 2\.jpg\)"):
    run(tmp_path / "two")
  write_jpeg(tmp_path / "size" / "1.jpg", ldr(lin, -2), (1, 240), 100)
  write_jpeg(tmp_path / "size" / "2.jpg", ldr(lin, 0)[:-2], (1, 60), 100)
  write_jpeg(tmp_path / "size" / "3.jpg", ldr(lin, 2), (1, 15), 100)
  with pytest.raises(fileio.DataError, match=r"2\.jpg: frame is 124x98, 1\.jpg is 124x100: the three frames must"):
    run(tmp_path / "size")
  write_exif_bracket(tmp_path / "broken")
  (tmp_path / "broken" / "c.jpg").write_bytes(b"not a JPEG at all")
  with pytest.raises(fileio.DataError, match=r"c\.jpg: cannot be read as an image"):
    run(tmp_path / "broken")
  write_exif_bracket(tmp_path / "ok")
  with pytest.raises(ValueError, match=r"--exposures='-2,0': expected three numbers"):
    run(tmp_path / "ok", exposures="-2,0")
  with pytest.raises(ValueError, match="--format=ntire: bracket folders are written as exr or hdr"):
    run(tmp_path / "ok", fmt="ntire")
  fileio.write_scene(tmp_path / "ntire", "0000", [ldr(lin, s)[:16, :16] for s in (-2, 0, 2)], [-2, 0, 2])
  with pytest.raises(ValueError, match="--align is for bracket folders"):
    run(tmp_path / "ntire", align="ecc")
  assert predict.input_kind(tmp_path / "ntire") == "ntire" and predict.input_kind(tmp_path / "ok") == "brackets"
  assert predict.input_kind(tmp_path) == "brackets"  # a folder of folders
  with pytest.raises(fileio.DataError, match=r"ntire: holds NTIRE scene files .*: give this folder itself as the input"):
    run(tmp_path)
  assert not out.exists()


def test_cli_error_is_one_line_and_writes_nothing(tmp_path):
  lin = scene(H, W)
  for name, stops in (("1.png", -2), ("2.png", 0), ("3.png", 2)):
    fileio.write_ldr_png(tmp_path / "p" / name, ldr(lin, stops))
  proc = subprocess.run([sys.executable, "-m", "hdr_jax.predict", "--pretrained=ahdrnet-merge-cpu",
                         f"--input={tmp_path / 'p'}", f"--output={tmp_path / 'out'}"], cwd=ROOT, env=cli_env(),
                        capture_output=True, text=True, timeout=300)
  assert proc.returncode == 1 and "Traceback" not in proc.stderr
  assert proc.stderr.strip().splitlines() == [
      f"error: {tmp_path / 'p' / '1.png'}: no EXIF exposure time: give the bracket's exposures in stops with "
      "--exposures=S1,S2,S3 (file-name order, e.g. -2,0,2)"], proc.stderr
  assert not (tmp_path / "out").exists()


def test_importing_the_package_stays_cheap():
  import hdr_jax

  assert hdr_jax.load is api.load and hdr_jax.HDRModel is api.HDRModel and hdr_jax.read_bracket is brackets.read_bracket
  code = ("import sys, hdr_jax; assert 'jax' not in sys.modules; assert callable(hdr_jax.read_bracket); "
          "assert 'jax' not in sys.modules; print(hdr_jax.__all__)")
  proc = subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=cli_env(), capture_output=True, text=True,
                        timeout=120)
  assert proc.returncode == 0 and proc.stdout.strip() == "['Bracket', 'HDRModel', 'load', 'read_bracket']", \
      proc.stderr[-2000:]
