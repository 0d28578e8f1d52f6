"""Published weights -> hdr_jax workdir -> predict, against the official PyTorch AHDRNet."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from hdr_jax import fileio
from conftest import cli_env

ROOT = Path(__file__).resolve().parents[1]


def _run(args, tmp_path, check=True):
  env = {**cli_env(), "PYTHONPATH": f"{ROOT}:{ROOT / 'tests'}", "JAX_PLATFORMS": "cpu",
         "HDR_JAX_CACHE": str(tmp_path / "cache")}
  proc = subprocess.run([sys.executable, *args], cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
  if check and proc.returncode != 0:
    raise AssertionError(f"{args}: {proc.returncode}\n{proc.stdout[-2000:]}\n{proc.stderr[-4000:]}")
  return proc


def test_ahdrnet_pytorch_weights_reproduce_the_official_output(tmp_path):
  torch = pytest.importorskip("torch")
  import torch_ahdr_reference as ref

  torch.backends.cudnn.allow_tf32 = False
  torch.manual_seed(0)
  net = ref.kaiming_init_(ref.AHDR(), nonlinearity="linear").float().eval()
  weights = tmp_path / "AHDRNet.pt"
  torch.save({"state_dict": {f"module.{k}": v for k, v in net.state_dict().items()}}, weights)

  # Two scenes of an odd size (the model pads inside and crops back).
  rng = np.random.default_rng(0)
  scenes = tmp_path / "scenes"
  for i, ev in enumerate(([-2, 0, 2], [-3, 0, 3])):
    base = rng.uniform(0.05, 1, (1, 21, 30, 3))
    frames = np.clip(base * np.float32([0.3, 1.0, 2.5])[:, None, None, None] + rng.normal(0, 0.02, (3, 21, 30, 3)), 0, 1)
    fileio.write_scene(scenes, f"{i:04d}", frames, np.float32(ev))

  wd = tmp_path / "official"
  _run(["-m", "hdr_jax.convert", "--from=ahdrnet-pytorch", f"--weights={weights}", f"--workdir={wd}"], tmp_path)
  out = tmp_path / "out"
  _run(["-m", "hdr_jax.predict", f"--workdir={wd}", f"--input={scenes}", f"--output={out}", "--format=exr"], tmp_path)

  for s in fileio.discover_scenes(scenes):
    d = fileio.read_scene(s)
    ev = d["exposures"] - d["exposures"][1]
    # The official input mapping for these weights: [LDR, LDR ** 2.2 / 2 ** ev] per frame (NCHW).
    xs = [np.concatenate([f, f**2.2 / 2.0**e], -1).transpose(2, 0, 1)[None] for f, e in zip(d["frames"], ev)]
    with torch.no_grad():
      expected = net(*[torch.from_numpy(np.ascontiguousarray(x, np.float32)) for x in xs])[0].permute(1, 2, 0).numpy()
    got = fileio.read_exr(out / f"{s.scene_id}.exr")  # linear radiance = the network's sigmoid output
    assert got.shape == expected.shape
    np.testing.assert_allclose(got, expected, rtol=1e-4, atol=1e-5)


def test_convert_errors(tmp_path):
  proc = _run(["-m", "hdr_jax.convert", "--from=ahdrnet-pytorch", f"--weights={tmp_path / 'missing.pt'}",
               f"--workdir={tmp_path / 'wd'}"], tmp_path, check=False)
  assert proc.returncode != 0 and "missing.pt" in proc.stderr and "missing" in proc.stderr
  torch = pytest.importorskip("torch")
  torch.save({"conv1.weight": torch.zeros(64, 6, 3, 3)}, tmp_path / "partial.pt")
  proc = _run(["-m", "hdr_jax.convert", "--from=ahdrnet-pytorch", f"--weights={tmp_path / 'partial.pt'}",
               f"--workdir={tmp_path / 'wd2'}"], tmp_path, check=False)
  assert proc.returncode != 0 and "missing" in proc.stderr.lower()
  assert not (tmp_path / "wd2" / "checkpoints").exists()


def test_hdrvam_keras_weights_through_the_cli(tmp_path):
  """An official-layout Keras .h5 (h5py only) -> convert -> load: the same network, logit head."""
  from hdr_jax import engine
  from test_vam import export_keras_h5, make, random_scene

  source = make(seed=3)
  weights = tmp_path / "HDR-VAM.h5"
  export_keras_h5(source, weights)
  wd = tmp_path / "vam"
  _run(["-m", "hdr_jax.convert", "--from=hdrvam-keras", f"--weights={weights}", f"--workdir={wd}"], tmp_path)
  config, eng, state, step = engine.load_from_workdir(wd)
  assert step == 0 and config.model.name == "vam" and config.model.output_head == "logit"
  frames, exposures = random_scene(1, 32, 48, seed=2)  # already 8-bit values
  source.output_head = "logit"
  want = np.power(np.asarray(source(frames, exposures, train=False)), 1 / 2.24)
  got = eng.predict(state, np.round(frames * 255).astype(np.uint8), exposures)
  np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-5)
