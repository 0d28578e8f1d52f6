"""Models shipped inside the package: ``predict --pretrained=NAME`` and ``hdr_jax.pretrained``."""

import subprocess
import sys
from pathlib import Path

import pytest

from hdr_jax import pretrained
from hdr_jax import fileio
from conftest import cli_env

ROOT = Path(__file__).resolve().parents[1]


def test_a_bad_pretrained_name_is_one_error_listing_the_available_models(tmp_path, tiny_scene_dir):
  with pytest.raises(fileio.DataError, match="no such shipped model; available: "):
    pretrained.path("no-such-model")
  env = {**cli_env(), "PYTHONPATH": str(ROOT), "JAX_PLATFORMS": "cpu", "HDR_JAX_CACHE": str(tmp_path)}
  proc = subprocess.run([sys.executable, "-m", "hdr_jax.predict", "--pretrained=no-such-model",
                         f"--input={tiny_scene_dir}", f"--output={tmp_path / 'out'}"], cwd=ROOT, env=env,
                        capture_output=True, text=True, timeout=300)
  assert proc.returncode == 1
  lines = proc.stderr.strip().splitlines()
  assert lines[-1] == ("error: --pretrained=no-such-model: no such shipped model; available: "
                       + (", ".join(pretrained.available()) or "none")), proc.stderr[-2000:]
  assert "Traceback" not in proc.stderr and not (tmp_path / "out").exists()


def test_workdir_and_pretrained_are_exclusive(tmp_path, tiny_scene_dir):
  from hdr_jax import predict

  with pytest.raises(ValueError, match="exactly one of --workdir"):
    predict.run(tmp_path, tiny_scene_dir, tmp_path / "out", pretrained="x")
  with pytest.raises(ValueError, match="exactly one of --workdir"):
    predict.run(None, tiny_scene_dir, tmp_path / "out")


def test_every_shipped_model_reproduces_its_recorded_score_through_predict(tmp_path, shared_hdr_files):
  """Each shipped model's card records its PSNR-mu on a small held-out slice (a scene synthesised
  from a photograph it never trained on): ``predict --pretrained`` reproduces it."""
  from hdr_jax import hdr_math, synthesize

  names = pretrained.available()
  assert names, "no model is shipped in hdr_jax/pretrained"
  env = {**cli_env(), "PYTHONPATH": str(ROOT), "JAX_PLATFORMS": "cpu", "HDR_JAX_CACHE": str(tmp_path)}
  for name in names:
    s = pretrained.card(name)["slice"]
    photo = next(f for f in shared_hdr_files if f.name == s["hdr"])
    assert s["hdr"] not in pretrained.card(name)["trained_on"]["radiance_maps"]
    scenes = tmp_path / name / "in"
    synthesize.synthesize_folder(scenes, 1, s["height"], s["width"], hdr_files=[photo], seed=s["seed"],
                                 verbose=False, **s["options"])
    out = tmp_path / name / "out"
    proc = subprocess.run([sys.executable, "-m", "hdr_jax.predict", f"--pretrained={name}", f"--input={scenes}",
                           f"--output={out}"], cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    gt = fileio.read_scene(fileio.validate_folder(scenes, require_gt=True)[0])["gt"]
    pred = fileio.read_hdr_png16(out / "0000.png", out / "0000_alignratio.npy")
    assert hdr_math.np_psnr_mu(gt, pred) == pytest.approx(s["psnr_mu"], abs=0.01), name
