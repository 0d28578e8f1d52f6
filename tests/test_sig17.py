"""The SIG17 (Kalantari 2017) layout and protocol: the reader and its errors, the metrics against an
independent transcription of the papers' Python evaluation, the official AHDRNet through convert +
predict, score --protocol=sig17, and a tiny training run on a SIG17 folder."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from hdr_jax import hdr_math, sig17, synthesize
from hdr_jax import fileio
from hdr_jax.fileio import cv2

ROOT = Path(__file__).resolve().parents[1]
H, W = 24, 32


@pytest.fixture(scope="module")
def sig17_root(tmp_path_factory):
  """A SIG17 root of 3 synthesised scenes (24x32) in ``Test/0000`` .. ``Test/0002``."""
  root = tmp_path_factory.mktemp("sig17") / "Test"
  synthesize.synthesize_folder(root, 3, H, W, seed=5, layout="sig17", verbose=False)
  return root


# --------------------------------------------------------------------------------------------------
# Independent transcription of the papers' evaluation (HDR-Transformer / SCTNet test scripts)
# --------------------------------------------------------------------------------------------------


def ref_range_compressor(x):
  return np.log(1 + 5000 * x) / np.log(1 + 5000)


def ref_psnr(a, b):
  return 10 * np.log10(1.0 / np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2))


def ref_ssim(img1, img2):
  c1, c2 = (0.01 * 255) ** 2, (0.03 * 255) ** 2
  img1, img2 = img1.astype(np.float64), img2.astype(np.float64)
  kernel = cv2.getGaussianKernel(11, 1.5)
  window = np.outer(kernel, kernel.transpose())
  mu1 = cv2.filter2D(img1, -1, window)[5:-5, 5:-5]
  mu2 = cv2.filter2D(img2, -1, window)[5:-5, 5:-5]
  s1 = cv2.filter2D(img1**2, -1, window)[5:-5, 5:-5] - mu1**2
  s2 = cv2.filter2D(img2**2, -1, window)[5:-5, 5:-5] - mu2**2
  s12 = cv2.filter2D(img1 * img2, -1, window)[5:-5, 5:-5] - mu1 * mu2
  ssim_map = ((2 * mu1 * mu2 + c1) * (2 * s12 + c2)) / ((mu1**2 + mu2**2 + c1) * (s1 + s2 + c2))
  return ssim_map.mean()


def ref_metrics(label, pred):
  label, pred = np.clip(label, 0, 1), np.clip(pred, 0, 1)
  lm, pm = ref_range_compressor(label), ref_range_compressor(pred)
  ssim = lambda a, b: np.mean([ref_ssim(np.clip(a * 255, 0, 255)[..., i], np.clip(b * 255, 0, 255)[..., i])
                               for i in range(3)])
  return {"psnr_mu": ref_psnr(lm, pm), "psnr_l": ref_psnr(label, pred), "ssim_mu": ssim(lm, pm),
          "ssim_l": ssim(label, pred)}


def read_hdr_cv2(path):
  return cv2.cvtColor(cv2.imread(str(path), cv2.IMREAD_UNCHANGED), cv2.COLOR_BGR2RGB)


def test_metrics_match_the_papers_python_evaluation():
  rng = np.random.default_rng(0)
  y, x = np.mgrid[0:40, 0:52] / 40.0
  label = (0.5 * np.sin(3 * x + y)[..., None] + 0.5) * rng.uniform(0.2, 1.0, 3) ** 3 + 0.01
  label[5:12, 20:30] = 1.3  # above 1: clipped
  pred = label * rng.uniform(0.8, 1.2, label.shape) + rng.normal(0, 0.02, label.shape)
  pred[0:3] = -0.2  # negative: clipped
  got = hdr_math.np_sig17_metrics(label.astype(np.float32), pred.astype(np.float32))
  want = ref_metrics(label.astype(np.float32), pred.astype(np.float32))
  for k in want:
    # rtol 1e-7: the reference tone-maps its float32 inputs in float32, hdr_math in float64.
    np.testing.assert_allclose(got[k], want[k], rtol=1e-7, err_msg=k)
  assert 0 < want["ssim_l"] < 1 and want["psnr_mu"] != want["psnr_l"]


def test_label_mapping_in_and_out():
  rng = np.random.default_rng(1)
  label = rng.uniform(0, 1, (2, 8, 8, 3)).astype(np.float32)
  stops = np.float32([[0, 2, 4], [0, 3, 6]])
  internal = hdr_math.sig17_to_internal(label, stops)
  # Medium-relative linear radiance is the label times 2 ** (stops_medium - stops_short), gamma 2.24 inside.
  np.testing.assert_allclose(internal[1] ** 2.24, label[1] * 8, rtol=1e-5)
  np.testing.assert_allclose(hdr_math.internal_to_sig17(internal, stops), label, rtol=1e-5, atol=1e-7)


# --------------------------------------------------------------------------------------------------
# Reader
# --------------------------------------------------------------------------------------------------


def test_reader_on_a_synthesised_folder(sig17_root, tmp_path):
  assert sig17.detect_layout(sig17_root) == "sig17"
  scenes = sig17.validate_scenes(sig17_root, require_gt=True)
  assert [s.scene_id for s in scenes] == ["0000", "0001", "0002"]
  s = scenes[1]
  assert [p.name for p in s.frames] == ["input_1.tif", "input_2.tif", "input_3.tif"]
  raw = cv2.imread(str(s.frames[2]), cv2.IMREAD_UNCHANGED)
  assert raw.dtype == np.uint16
  d = sig17.read_scene(s)
  np.testing.assert_array_equal(d["frames"][2], raw[..., ::-1].astype(np.float32) / 65535)
  stops = np.float32(s.exposures.read_text().split())
  assert stops[0] == 0 and d["exposures"].tolist() == stops.tolist()
  np.testing.assert_array_equal(d["linear_gt"], read_hdr_cv2(s.label))
  assert d["linear_gt"].max() <= 1 and d["protocol"] == "sig17"
  np.testing.assert_allclose(d["gt"] ** 2.24, d["linear_gt"] * 2 ** (stops[1] - stops[0]), rtol=1e-5, atol=1e-7)
  # The synthesiser's frames follow the protocol: medium frame ** 2.2 = label * 2 ** stop (well exposed, no noise).
  clean = tmp_path / "clean"
  synthesize.synthesize_folder(clean, 1, H, W, seed=2, layout="sig17", noise=0.0, verbose=False)
  c = sig17.read_scene(sig17.discover_scenes(clean)[0])
  ok = (c["frames"][1] > 0.1) & (c["frames"][1] < 0.9)
  want = c["linear_gt"] * 2 ** c["exposures"][1]
  rgbe_step = 2.0**-7 * want.max(-1, keepdims=True) * np.ones_like(want)  # RGBE: 8-bit mantissas, shared exponent
  assert (np.abs(c["frames"][1] ** 2.2 - want)[ok] <= rgbe_step[ok] + 1e-5).all()
  # Scene folders at any depth; the id is the relative path; one line per scene, no label needed.
  nested = tmp_path / "root"
  shutil.copytree(s.folder, nested / "PAPER" / "Sunset")
  shutil.copytree(s.folder, nested / "EXTRA" / "001")
  (nested / "EXTRA" / "001" / "HDRImg.hdr").unlink()
  assert [x.scene_id for x in sig17.validate_scenes(nested)] == ["EXTRA/001", "PAPER/Sunset"]
  assert [x.scene_id for x in sig17.validate_scenes(nested / "PAPER" / "Sunset")] == ["Sunset"]


def _write_tif(path, img):
  assert cv2.imwrite(str(path), img)


BREAKS = {
    # name: (edit of a copied scene folder, file named in the message, words in the message)
    "two frames": (lambda d: (d / "input_3.tif").unlink(), ".", "expected 3 .tif"),
    "four frames": (lambda d: shutil.copy(d / "input_3.tif", d / "input_4.tif"), ".", "found 4"),
    "no exposure.txt": (lambda d: (d / "exposure.txt").unlink(), "exposure.txt", "missing"),
    "no label": (lambda d: (d / "HDRImg.hdr").unlink(), "HDRImg.hdr", "missing"),
    "8-bit frame": (lambda d: _write_tif(d / "input_2.tif", np.zeros((H, W, 3), np.uint8)), "input_2.tif", "16-bit"),
    "grey frame": (lambda d: _write_tif(d / "input_1.tif", np.zeros((H, W), np.uint16)), "input_1.tif", "found 1"),
    "RGBA frame": (lambda d: _write_tif(d / "input_1.tif", np.zeros((H, W, 4), np.uint16)), "input_1.tif", "found 4"),
    "corrupt frame": (lambda d: (d / "input_2.tif").write_bytes(b"II*\0garbage"), "input_2.tif", "not a readable TIFF"),
    "frame size": (lambda d: _write_tif(d / "input_3.tif", np.zeros((H - 2, W, 3), np.uint16)), "input_3.tif",
                   "differs"),
    "two exposures": (lambda d: (d / "exposure.txt").write_text("0\n2\n"), "exposure.txt", "3 numbers"),
    "words": (lambda d: (d / "exposure.txt").write_text("short medium long"), "exposure.txt", "3 numbers"),
    "not increasing": (lambda d: (d / "exposure.txt").write_text("0 4 2"), "exposure.txt", "increasing"),
    "not finite": (lambda d: (d / "exposure.txt").write_text("0 nan 4"), "exposure.txt", "finite"),
    "corrupt label": (lambda d: (d / "HDRImg.hdr").write_bytes(b"#?RADIANCE\nnothing"), "HDRImg.hdr", "Radiance"),
    "label size": (lambda d: fileio.write_radiance_hdr(d / "HDRImg.hdr", np.ones((H, W + 2, 3), np.float32)),
                   "HDRImg.hdr", "differs"),
}


@pytest.mark.parametrize("name", list(BREAKS))
def test_reader_errors_name_the_file(sig17_root, tmp_path, name):
  edit, culprit, words = BREAKS[name]
  scene = tmp_path / "Training" / "007"
  shutil.copytree(sig17_root / "0001", scene)
  edit(scene)
  with pytest.raises(fileio.DataError) as e:
    sig17.validate_scenes(tmp_path / "Training", require_gt=True)
  msg = str(e.value)
  assert "\n" not in msg and words in msg
  assert Path(e.value.path) == (scene / culprit if culprit != "." else scene)


def test_no_scenes_and_mixed_protocols(sig17_root, tmp_path, tiny_scene_dir):
  (tmp_path / "empty" / "sub").mkdir(parents=True)
  with pytest.raises(fileio.DataError, match="no scenes found"):
    sig17.validate_scenes(tmp_path / "empty")
  with pytest.raises(fileio.DataError, match="no SIG17 scenes found"):
    sig17.validate_scenes(tmp_path / "empty", "sig17")
  assert sig17.detect_layout(tiny_scene_dir) == "ntire"
  from hdr_jax import config_base

  c = config_base.get_base_config()
  with pytest.raises(ValueError, match="different layouts"):
    sig17.apply_protocol(c, sig17_root, tiny_scene_dir)
  c.data.protocol = "sig17"
  with pytest.raises(fileio.DataError, match="is a ntire folder"):
    sig17.apply_protocol(c, tiny_scene_dir)
  c = config_base.get_base_config()
  c.model.name = "vam"
  assert sig17.apply_protocol(c, sig17_root) == "sig17"
  assert c.model.gamma == 2.2 and "exposure_reference" not in c.model  # HDR-VAM takes no exposure reference
  c = config_base.get_base_config()
  assert sig17.apply_protocol(c, tiny_scene_dir) == "ntire" and "gamma" not in c.model
  c.data.protocol = "kalantari"
  with pytest.raises(ValueError, match="config.data.protocol='kalantari': choose one of auto, ntire, sig17"):
    sig17.apply_protocol(c, sig17_root)
  c.data.update(protocol="sig17", prepared=str(tmp_path))
  with pytest.raises(ValueError, match="config.data.prepared holds NTIRE data"):
    sig17.apply_protocol(c, sig17_root)


# --------------------------------------------------------------------------------------------------
# The official AHDRNet with SIG17's convention, and score --protocol=sig17
# --------------------------------------------------------------------------------------------------


def test_official_ahdrnet_on_sig17_equals_convert_and_predict(sig17_root, tmp_path):
  torch = pytest.importorskip("torch")
  import torch_ahdr_reference as ref

  from hdr_jax import convert, predict

  torch.manual_seed(0)
  # The official network at a small width (same code, fewer channels) keeps the test fast.
  net = ref.kaiming_init_(ref.AHDR(n_feat=8, growth=4, n_dense=1), nonlinearity="linear").float().eval()
  weights = tmp_path / "AHDRNet.pt"
  torch.save({"state_dict": {f"module.{k}": v for k, v in net.state_dict().items()}}, weights)
  wd = convert.convert("ahdrnet-pytorch", weights, tmp_path / "wd", protocol="sig17",
                       overrides={"model.channels": 8, "model.growth": 4, "model.n_dense": 1})
  config = json.loads((wd / "config.json").read_text())
  assert config["data"]["protocol"] == "sig17" and config["model"]["exposure_reference"] == "short"
  out = tmp_path / "out"
  predict.run(str(wd), str(sig17_root), str(out), fmt="exr")
  for s in sig17.discover_scenes(sig17_root):
    # The official reading and mapping: frames / 65535 (the project's 16-bit scale), stops from the
    # short frame, inputs [LDR, LDR ** 2.2 / 2 ** stop] per frame (NCHW).
    frames = [read_hdr_cv2(p).astype(np.float32) / 65535 for p in s.frames]
    stops = np.float32(s.exposures.read_text().split())
    xs = [np.concatenate([f, f**2.2 / 2.0 ** (e - stops[0])], -1).transpose(2, 0, 1)[None]
          for f, e in zip(frames, stops)]
    with torch.no_grad():
      want = net(*[torch.from_numpy(np.ascontiguousarray(x, np.float32)) for x in xs])[0].permute(1, 2, 0).numpy()
    got = fileio.read_exr(out / f"{s.scene_id}.exr")  # the linear SIG17 prediction = the official sigmoid output
    assert got.shape == want.shape
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)


def _score(capsys, *args):
  from hdr_jax import score

  rc = score.main(["--protocol=sig17", *map(str, args)])
  cap = capsys.readouterr()
  return rc, cap.out, cap.err


def test_score_sig17_and_its_errors(sig17_root, tmp_path, capsys):
  res = tmp_path / "res"
  rng = np.random.default_rng(3)
  for s in sig17.discover_scenes(sig17_root):
    pred = read_hdr_cv2(s.label) * rng.uniform(0.7, 1.3, (H, W, 3)).astype(np.float32)
    fileio.write_radiance_hdr(res / f"{s.scene_id}.hdr", pred)
  rc, out, err = _score(capsys, f"--ref={sig17_root}", f"--res={res}", f"--json={tmp_path / 's.json'}")
  assert rc == 0, err
  result = json.loads((tmp_path / "s.json").read_text())
  assert [r["id"] for r in result["scenes"]] == ["0000", "0001", "0002"] and "SSIM-mu" in out
  for r in result["scenes"]:
    want = ref_metrics(read_hdr_cv2(sig17_root / r["id"] / "HDRImg.hdr"), read_hdr_cv2(res / f"{r['id']}.hdr"))
    for k in want:
      np.testing.assert_allclose(r[k], want[k], rtol=1e-7)

  (res / "0002.hdr").rename(res / "0002.exr.bak")
  rc, _, err = _score(capsys, f"--ref={sig17_root}", f"--res={res}")
  assert rc == 1 and "0002.hdr: file is missing" in err and err.count("\n") == 1
  (res / "0002.exr.bak").rename(res / "0002.hdr")
  fileio.write_radiance_hdr(res / "0009.hdr", np.ones((H, W, 3), np.float32))
  rc, _, err = _score(capsys, f"--ref={sig17_root}", f"--res={res}")
  assert rc == 1 and "0009.hdr: extra result" in err
  (res / "0009.hdr").unlink()
  fileio.write_exr(res / "0001.exr", np.ones((H, W, 3), np.float32))
  rc, _, err = _score(capsys, f"--ref={sig17_root}", f"--res={res}")
  assert rc == 1 and "two results for scene 0001" in err
  (res / "0001.exr").unlink()
  fileio.write_radiance_hdr(res / "0000.hdr", np.ones((H - 4, W, 3), np.float32))
  rc, _, err = _score(capsys, f"--ref={sig17_root}", f"--res={res}")
  assert rc == 1 and "0000.hdr: size 20x32 differs" in err
  rc, _, err = _score(capsys, f"--ref={tmp_path / 'nowhere'}", f"--res={res}")
  assert rc == 1 and "nowhere: folder does not exist" in err


# --------------------------------------------------------------------------------------------------
# Training, evaluate and predict on a SIG17 folder
# --------------------------------------------------------------------------------------------------


def test_tiny_training_evaluate_predict_on_sig17(sig17_root, tmp_path, capsys):
  from hdr_jax import config_base, evaluate, predict, train

  c = config_base.load_config_file(ROOT / "configs" / "ahdrnet.py")
  c.model.update(channels=8, growth=4, n_blocks=1, n_dense=1)
  c.update(batch_size=2, num_train_steps=1, log_every=1, eval_every=1, checkpoint_every=1, progress=False)
  c.optimizer.schedule = "constant"
  c.data.update(patch_size=16, root=str(sig17_root), cache_dir=str(tmp_path / "cache"))
  c.eval.preview_scenes = 0
  summary = train.train_and_evaluate(c, tmp_path / "wd")
  saved = json.loads((tmp_path / "wd" / "config.json").read_text())
  assert saved["data"]["protocol"] == "sig17"
  assert saved["model"]["gamma"] == 2.2 and saved["model"]["exposure_reference"] == "short"

  # evaluate on the folder gives training's scores; predict writes <scene id>.hdr (linear, on the
  # labels' scale), and score reads them back to the same scores within the RGBE files' precision.
  result = evaluate.run(str(tmp_path / "wd"), str(sig17_root), json_path=str(tmp_path / "eval.json"))
  for k in ("psnr_mu", "psnr_l", "ssim_mu", "ssim_l", "baseline_psnr_mu"):
    np.testing.assert_allclose(result["mean"][k], summary["eval"][k], rtol=1e-9)
  written = predict.run(str(tmp_path / "wd"), str(sig17_root), str(tmp_path / "hdr"))
  assert sorted(p.name for p in written) == ["0000.hdr", "0001.hdr", "0002.hdr"]
  capsys.readouterr()
  rc, _, err = _score(capsys, f"--ref={sig17_root}", f"--res={tmp_path / 'hdr'}", f"--json={tmp_path / 's.json'}")
  assert rc == 0, err
  scored = {r["id"]: r for r in json.loads((tmp_path / "s.json").read_text())["scenes"]}
  for row in result["scenes"]:
    for k, tol in (("psnr_mu", 0.05), ("psnr_l", 0.05), ("ssim_mu", 2e-3), ("ssim_l", 2e-3)):
      assert abs(scored[row["id"]][k] - row[k]) < tol, (row["id"], k, scored[row["id"]][k], row[k])
  with pytest.raises(ValueError, match="SIG17 folder"):
    predict.run(str(tmp_path / "wd"), str(sig17_root), str(tmp_path / "x"), fmt="ntire")


def test_synthesize_cli_layout_sig17(tmp_path):
  assert synthesize.main([f"--out={tmp_path / 's'}", "--scenes=1", "--height=16", "--width=16",
                          "--layout=sig17"]) == 0
  (scene,) = sig17.validate_scenes(tmp_path / "s", require_gt=True)
  assert scene.scene_id == "0000" and sig17.read_scene_stored(scene)["frames"].dtype == np.uint16
