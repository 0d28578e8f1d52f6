"""The scoring program end to end, against an independent transcription of the official one."""

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest

from hdr_jax import fileio, score

REPO = Path(__file__).resolve().parents[1]
IDS = ("0000", "0001", "0002")


# The official NTIRE HDR scoring program (CodaLab evaluate.py + data_io.py + metrics.py), transcribed.
def official_imread_uint16_png(image_path, alignratio_path):
  align_ratio = np.load(alignratio_path).astype(np.float32)
  return cv2.cvtColor(cv2.imread(str(image_path), cv2.IMREAD_UNCHANGED), cv2.COLOR_BGR2RGB) / align_ratio


def official_psnr(im0, im1):
  return -10 * np.log10(np.mean(np.power(im0 - im1, 2)))


def official_mu_tonemap(hdr_image, mu=5000):
  return np.log(1 + mu * hdr_image) / np.log(1 + mu)


def official_psnr_tanh_norm_mu_tonemap(ref, res, percentile=99, gamma=2.24):
  ref_lin, res_lin = ref**gamma, res**gamma
  norm_perc = np.percentile(ref_lin, percentile)
  return official_psnr(official_mu_tonemap(np.tanh(ref_lin / norm_perc)),
                       official_mu_tonemap(np.tanh(res_lin / norm_perc)))


def official_scores(ref_dir, res_dir):
  """Per-image (PSNR-L, PSNR-mu) of the official program, pairing the sorted .png / .npy lists."""
  ref_pngs = sorted(p for p in os.listdir(ref_dir) if p.lower().endswith(".png"))
  ref_npys = sorted(p for p in os.listdir(ref_dir) if p.lower().endswith(".npy"))
  res_pngs = sorted(p for p in os.listdir(res_dir) if p.lower().endswith("png"))
  res_npys = sorted(p for p in os.listdir(res_dir) if p.lower().endswith("npy"))
  assert len(ref_pngs) == len(res_pngs) == len(ref_npys) == len(res_npys)
  out = []
  for a, b, c, d in zip(ref_pngs, ref_npys, res_pngs, res_npys):
    ref = official_imread_uint16_png(os.path.join(ref_dir, a), os.path.join(ref_dir, b))
    res = official_imread_uint16_png(os.path.join(res_dir, c), os.path.join(res_dir, d))
    out.append((official_psnr(ref / np.max(ref), res / np.max(ref)), official_psnr_tanh_norm_mu_tonemap(ref, res)))
  return out


def run_cli(*args):
  return subprocess.run([sys.executable, "-m", "hdr_jax.score", *map(str, args)], capture_output=True, text=True,
                        cwd=REPO, timeout=120)


@pytest.fixture
def folders(tiny_scene_dir, tmp_path):
  """(reference scene folder, results folder with perturbed targets, official 'ref' layout copy)."""
  rng = np.random.default_rng(7)
  res_dir, ref_official = tmp_path / "res", tmp_path / "ref"
  for k, sid in enumerate(IDS):
    gt = fileio.read_scene(fileio.discover_scenes(tiny_scene_dir)[k])["gt"]
    noisy = gt * (1 + (0.02 + 0.03 * k) * rng.standard_normal(gt.shape)) + 0.01 * rng.random(gt.shape)
    fileio.write_result(res_dir, sid, np.maximum(noisy, 0).astype(np.float32), fmt="ntire")
    ref_official.mkdir(exist_ok=True)
    for name in (f"{sid}_gt.png", f"{sid}_alignratio.npy"):
      shutil.copy(tiny_scene_dir / name, ref_official / name)
  return tiny_scene_dir, res_dir, ref_official


def test_cli_matches_official_transcription(folders, tmp_path):
  scene_dir, res_dir, ref_official = folders
  want = official_scores(ref_official, res_dir)
  out_json, off_dir = tmp_path / "out" / "scores.json", tmp_path / "official"
  proc = run_cli(f"--ref={scene_dir}", f"--res={res_dir}", f"--json={out_json}", f"--official-output={off_dir}")
  assert proc.returncode == 0, proc.stderr
  for sid in IDS:
    assert sid in proc.stdout
  assert "mean" in proc.stdout
  got = json.loads(out_json.read_text())
  assert got["count"] == 3 and [s["id"] for s in got["scenes"]] == list(IDS)
  assert [(s["ref"], s["res"]) for s in got["scenes"]] == [(f"{i}_gt.png", f"{i}.png") for i in IDS]
  for s, (psnr_l, psnr_mu) in zip(got["scenes"], want):
    assert s["psnr_l"] == pytest.approx(float(psnr_l), abs=1e-6)
    assert s["psnr_mu"] == pytest.approx(float(psnr_mu), abs=1e-6)
  mean_l, mean_mu = np.mean([w[0] for w in want]), np.mean([w[1] for w in want])
  assert got["mean"]["psnr_l"] == pytest.approx(float(mean_l), abs=1e-5)
  assert got["mean"]["psnr_mu"] == pytest.approx(float(mean_mu), abs=1e-5)
  # The perturbation levels differ per scene, so a mis-pairing or a swapped metric would show.
  assert got["scenes"][0]["psnr_mu"] > got["scenes"][1]["psnr_mu"] > got["scenes"][2]["psnr_mu"]
  lines = (off_dir / "scores.txt").read_text().splitlines()
  assert [ln.split(":")[0] for ln in lines] == ["PSNR", "MuPSNR", "ExtraRuntime", "ExtraPlatform", "ExtraData"]
  assert float(lines[0].split(":")[1]) == pytest.approx(float(mean_l), abs=2e-6)
  assert float(lines[1].split(":")[1]) == pytest.approx(float(mean_mu), abs=2e-6)
  assert lines[2:] == ["ExtraRuntime:-1.000000", "ExtraPlatform:-1", "ExtraData:-1"]
  assert not [p for p in out_json.parent.iterdir() if p.name != "scores.json"]  # atomic: no temp files


def test_official_ref_layout_and_api(folders, tmp_path):
  scene_dir, res_dir, ref_official = folders
  a = score.score_folders(scene_dir, res_dir)
  b = score.score_folders(ref_official, res_dir)
  assert [(s["id"], s["psnr_mu"], s["psnr_l"]) for s in a["scenes"]] == \
         [(s["id"], s["psnr_mu"], s["psnr_l"]) for s in b["scenes"]]
  proc = run_cli(f"--ref={ref_official}", f"--res={res_dir}")
  assert proc.returncode == 0, proc.stderr
  assert f"{b['mean']['psnr_mu']:.4f}" in proc.stdout


def test_names_without_ids_use_sorted_pairing(folders, tmp_path):
  _, res_dir, ref_official = folders
  renamed = tmp_path / "ref_named"
  renamed.mkdir()
  for k, sid in enumerate(IDS):  # any names: the sorted lists pair image k with ratio k
    shutil.copy(ref_official / f"{sid}_gt.png", renamed / f"img_{'abc'[k]}.png")
    shutil.copy(ref_official / f"{sid}_alignratio.npy", renamed / f"ratio_{'abc'[k]}.npy")
  want = official_scores(renamed, res_dir)
  got = score.score_folders(renamed, res_dir)
  assert [s["psnr_mu"] for s in got["scenes"]] == pytest.approx([float(w[1]) for w in want], abs=1e-6)


def test_readme_is_parsed_like_the_official_program(folders, tmp_path):
  scene_dir, res_dir, _ = folders
  (res_dir / "readme.txt").write_text("runtime per image [s] : 1.5\nCPU[1] / GPU[0] : 0\nExtra Data [1] / "
                                      "No Extra Data [0] : 1\nOther description : JAX\n")
  proc = run_cli(f"--ref={scene_dir}", f"--res={res_dir}", f"--official-output={tmp_path / 'o'}")
  assert proc.returncode == 0, proc.stderr
  assert (tmp_path / "o" / "scores.txt").read_text().splitlines()[2:] == \
         ["ExtraRuntime:1.500000", "ExtraPlatform:0", "ExtraData:1"]


def _assert_fails(proc, *words):
  assert proc.returncode != 0
  err = proc.stderr.strip()
  assert len(err.splitlines()) == 1 and err.startswith("error:"), err
  for w in words:
    assert w in err, err


def test_missing_result(folders):
  scene_dir, res_dir, _ = folders
  (res_dir / "0001.png").unlink()
  (res_dir / "0001_alignratio.npy").unlink()
  _assert_fails(run_cli(f"--ref={scene_dir}", f"--res={res_dir}"), "0001.png", "missing")


def test_size_mismatch(folders):
  scene_dir, res_dir, _ = folders
  fileio.write_result(res_dir, "0002", np.ones((20, 32, 3), np.float32))
  _assert_fails(run_cli(f"--ref={scene_dir}", f"--res={res_dir}"), "0002.png", "differs", "20x32")


def test_empty_and_nonexistent_folders(folders, tmp_path):
  scene_dir, _, _ = folders
  (tmp_path / "empty").mkdir()
  _assert_fails(run_cli(f"--ref={scene_dir}", f"--res={tmp_path / 'empty'}"), "empty")
  _assert_fails(run_cli(f"--ref={tmp_path / 'nope'}", f"--res={tmp_path / 'empty'}"), "nope", "does not exist")


@pytest.mark.parametrize("case", ["extra", "unpaired_png", "unpaired_npy", "bad_ratio", "not_png", "8bit",
                                  "unpadded_ids", "count_mismatch"])
def test_bad_results_name_the_file(folders, case):
  scene_dir, res_dir, ref_official = folders
  ref = scene_dir
  if case == "extra":
    fileio.write_result(res_dir, "0007", np.ones((24, 32, 3), np.float32))
    name, word = "0007.png", "extra"
  elif case == "unpaired_png":
    (res_dir / "0001_alignratio.npy").unlink()
    name, word = "0001.png", "unpaired"
  elif case == "unpaired_npy":
    (res_dir / "0001.png").unlink()
    name, word = "0001_alignratio.npy", "unpaired"
  elif case == "bad_ratio":
    np.save(res_dir / "0002_alignratio.npy", np.float64("nan"))
    name, word = "0002_alignratio.npy", "finite"
  elif case == "not_png":
    (res_dir / "0000.png").write_bytes(b"GIF89a" + bytes(100))
    name, word = "0000.png", "not a PNG"
  elif case == "8bit":
    fileio.write_ldr_png(res_dir / "0000.png", np.zeros((24, 32, 3), np.uint8))
    name, word = "0000.png", "16-bit"
  elif case == "unpadded_ids":  # '1.png' < '10.png' but '10_alignratio.npy' < '1_alignratio.npy'
    for f in list(res_dir.iterdir()):
      f.unlink()
    ref = ref_official
    for f in list(ref.iterdir()):
      f.unlink()
    for sid in ("1", "10"):
      fileio.write_result(res_dir, sid, np.ones((24, 32, 3), np.float32))
      fileio.write_hdr_png16(ref / f"{sid}_gt.png", ref / f"{sid}_alignratio.npy", np.ones((24, 32, 3), np.float32))
    name, word = "res/1.png", "official"
  else:
    (res_dir / "0002.png").rename(res_dir / "x.png")  # names without ids: counts must match
    (res_dir / "0002_alignratio.npy").rename(res_dir / "x.npy")
    (res_dir / "y.png").write_bytes((res_dir / "x.png").read_bytes())
    name, word = "res", "pairs the sorted lists"
  with pytest.raises(fileio.DataError) as e:
    score.score_folders(ref, res_dir)
  assert name in str(e.value) and word in str(e.value)


def test_nan_score_is_an_error(tmp_path):
  ref, res = tmp_path / "ref", tmp_path / "res"
  img = np.zeros((24, 32, 3), np.float32)
  img[0, 0] = 1.0  # max > 0 but the 99th percentile is 0: tanh(0 / 0) is NaN
  fileio.write_hdr_png16(ref / "0000_gt.png", ref / "0000_alignratio.npy", img)
  fileio.write_result(res, "0000", img + 0.5)
  with pytest.raises(fileio.DataError, match="NaN"):
    score.score_folders(ref, res)
