"""Tests of the synthetic NTIRE scene generator (hdr_jax.synthesize): format, determinism, physics of
the frames and target, motion, real radiance maps, CLI errors and the atomic cached dataset."""

import subprocess
import sys
from pathlib import Path

import jax.numpy as jnp
import numpy as np
import pytest

from hdr_jax import hdr_math, fileio, synthesize


def _bytes(folder):
  return {p.name: p.read_bytes() for p in sorted(Path(folder).iterdir())}


def _well_exposed_agreement(scene):
  """(mean |gt - medium|, correlation) on pixels whose medium frame is in [0.1, 0.9]."""
  medium = scene["frames"][1].astype(np.float32) / 255
  well = ((medium > 0.1) & (medium < 0.9)).all(-1)
  assert well.mean() > 0.1
  gt, m = scene["gt"][well], medium[well]
  return float(np.abs(gt - m).mean()), float(np.corrcoef(gt.ravel(), m.ravel())[0, 1])


def test_folder_is_valid_and_deterministic(tmp_path):
  ids = synthesize.synthesize_folder(tmp_path / "a", 3, 40, 56, seed=5, verbose=False)
  assert ids == ["0000", "0001", "0002"]
  scenes = fileio.validate_folder(tmp_path / "a", require_gt=True, decode=True)
  assert [s.scene_id for s in scenes] == ids
  for s in scenes:
    d = fileio.read_scene(s)
    assert d["frames"].shape == (3, 40, 56, 3) and d["gt"].shape == (40, 56, 3)
    assert tuple(d["exposures"]) in synthesize.EV_SETS
  synthesize.synthesize_folder(tmp_path / "b", 3, 40, 56, seed=5, verbose=False)
  synthesize.synthesize_folder(tmp_path / "c", 3, 40, 56, seed=6, verbose=False)
  a, b, c = _bytes(tmp_path / "a"), _bytes(tmp_path / "b"), _bytes(tmp_path / "c")
  assert a == b
  assert all(a[f"{i}_medium.png"] != c[f"{i}_medium.png"] for i in ids)


def test_scene_does_not_depend_on_count(tmp_path):
  synthesize.synthesize_folder(tmp_path / "many", 3, 32, 32, seed=2, verbose=False)
  synthesize.synthesize_folder(tmp_path / "one", 1, 32, 32, seed=2, start_index=2, verbose=False)
  many, one = _bytes(tmp_path / "many"), _bytes(tmp_path / "one")
  assert sorted(one) == sorted(k for k in many if k.startswith("0002_"))
  assert all(one[k] == many[k] for k in one)
  direct = synthesize.synthesize_scene(synthesize.scene_rng(2, 2), 32, 32)
  written = fileio.read_scene(fileio.discover_scenes(tmp_path / "one")[0])
  np.testing.assert_array_equal(direct["frames"].astype(np.float32) / 255, written["frames"])
  np.testing.assert_allclose(written["gt"], direct["gt"], atol=direct["gt"].max() / 65535)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_target_matches_medium_frame_and_exceeds_one_where_it_saturates(seed):
  s = synthesize.synthesize_scene(seed, 64, 64)
  assert s["frames"].dtype == np.uint8 and s["frames"].shape == (3, 64, 64, 3)
  assert s["gt"].dtype == np.float32 and s["exposures"].dtype == np.float32
  e = s["exposures"]
  assert e[0] < e[1] < e[2]
  mad, corr = _well_exposed_agreement(s)
  assert mad < 0.02 and corr > 0.98
  saturated = (s["frames"][1] == 255).any(-1)
  assert saturated.any() and (s["gt"][saturated].max(-1) > 1).any()
  # Where the target is clearly above 1, the medium frame is clipped.
  assert (s["frames"][1][s["gt"].min(-1) > 1.1] >= 250).all()
  # Noise-free frames agree with the target even more closely.
  clean = synthesize.synthesize_scene(seed, 64, 64, noise=0.0)
  assert _well_exposed_agreement(clean)[0] < 0.004


@pytest.mark.parametrize("seed", range(4))
def test_procedural_dynamic_range(seed):
  gt = synthesize.synthesize_scene(synthesize.scene_rng(seed, 0), 64, 96)["gt"]
  assert synthesize.dynamic_range(gt**synthesize.GAMMA) >= 1e4


def test_dynamic_range_measure():
  img = np.ones((10, 100, 3), np.float32)
  assert synthesize.dynamic_range(img) == pytest.approx(1.0)
  img[:, :50] = 1e-3
  img[:, 50:] = 1e2
  assert synthesize.dynamic_range(img) == pytest.approx(1e5, rel=1e-4)
  assert synthesize.GAMMA == hdr_math.GAMMA


def _ghost_fraction(scene):
  """Largest fraction, over the short and long frames, of pixels well exposed in both that frame and
  the medium one where the exposure-aligned frame differs from the medium by more than 0.15."""
  f = scene["frames"].astype(np.float32) / 255
  ev = scene["exposures"] - scene["exposures"][1]
  out = []
  for k in (0, 2):
    aligned = np.asarray(hdr_math.align_exposure(jnp.asarray(f[k]), float(ev[k])))
    valid = ((f[1] > 0.15) & (f[1] < 0.85) & (f[k] > 0.1) & (f[k] < 0.9)).all(-1)
    out.append(float((np.abs(aligned - f[1]).max(-1)[valid] > 0.15).mean()))
  return max(out)


@pytest.mark.parametrize("seed", [2, 3, 4])
def test_motion_creates_ghosts(seed):
  moving = synthesize.synthesize_scene(seed, 64, 64)
  still = synthesize.synthesize_scene(seed, 64, 64, camera_motion=0.0, object_motion=0.0)
  assert moving["object_mask"].any()
  assert _ghost_fraction(still) < 0.002  # only noise
  assert _ghost_fraction(moving) > 0.005


def test_scene_variety(tmp_path):
  """Per-scene motion and noise scales (the training scenes' variety): a share of static scenes, the
  others' motion and every noise scale inside the given ranges; each written scene is the one
  synthesize_scene gives with its drawn scales, and without the options the scenes are unchanged."""
  opts = dict(static_fraction=0.5, motion_range=(0.5, 3.0), noise_range=(0.25, 4.0))
  draws = [synthesize.scene_variety(7, i, **opts) for i in range(40)]
  static = [i for i, d in enumerate(draws) if d["camera_motion"] == 0]
  assert 8 <= len(static) <= 32 and all(draws[i]["object_motion"] == 0 for i in static)
  assert all(0.5 <= d["camera_motion"] == d["object_motion"] <= 3 for i, d in enumerate(draws) if i not in static)
  assert all(0.25 <= d["noise"] <= 4 for d in draws) and len({d["noise"] for d in draws}) == 40
  assert synthesize.scene_variety(7, 3) == {}
  synthesize.synthesize_folder(tmp_path / "v", 4, 32, 32, seed=7, verbose=False, **opts)
  synthesize.synthesize_folder(tmp_path / "plain", 1, 32, 32, seed=7, verbose=False, static_fraction=0.0)
  written = [fileio.read_scene(s) for s in fileio.discover_scenes(tmp_path / "v")]
  for i, w in enumerate(written):
    want = synthesize.synthesize_scene(synthesize.scene_rng(7, i), 32, 32, **draws[i])
    np.testing.assert_array_equal(want["frames"].astype(np.float32) / 255, w["frames"])
  plain = synthesize.synthesize_scene(synthesize.scene_rng(7, 0), 32, 32)
  np.testing.assert_array_equal(plain["frames"].astype(np.float32) / 255,
                                fileio.read_scene(fileio.discover_scenes(tmp_path / "plain")[0])["frames"])
  assert _ghost_fraction(synthesize.synthesize_scene(synthesize.scene_rng(7, static[0]), 64, 64,
                                                     **draws[static[0]])) < 0.01
  for bad, field in ((dict(static_fraction=1.5), "static_fraction"), (dict(noise_range=(0, 4)), "noise_range"),
                     (dict(motion_range=(3, 1)), "motion_range")):
    with pytest.raises(ValueError, match=field):
      synthesize.synthesize_folder(tmp_path / "bad", 1, 32, 32, verbose=False, **bad)
  assert not (tmp_path / "bad").exists()
  r = _cli(f"--out={tmp_path / 'x'}", "--static-fraction=2")
  assert r.returncode != 0 and "static_fraction" in r.stderr and not (tmp_path / "x").exists()
  r = _cli(f"--out={tmp_path / 'cli'}", "--scenes=2", "--height=32", "--width=32", "--seed=7",
           "--static-fraction=0.5", "--motion-range", "0.5", "3", "--noise-range", "0.25", "4")
  assert r.returncode == 0, r.stderr
  assert _bytes(tmp_path / "cli") == {k: v for k, v in _bytes(tmp_path / "v").items() if k[:4] in ("0000", "0001")}


def test_real_radiance_map(tmp_path, shared_hdr_files):
  carrots = next(f for f in shared_hdr_files if f.name == "Carrots.exr")
  synthesize.synthesize_folder(tmp_path, 2, 48, 64, hdr_files=[carrots], seed=1, verbose=False)
  scenes = [fileio.read_scene(s) for s in fileio.validate_folder(tmp_path, require_gt=True, decode=True)]
  assert not np.array_equal(scenes[0]["frames"], scenes[1]["frames"])  # different crops
  s = synthesize.synthesize_scene(synthesize.scene_rng(1, 0), 48, 64, hdr_source=carrots)
  np.testing.assert_array_equal(s["frames"].astype(np.float32) / 255, scenes[0]["frames"])
  mad, corr = _well_exposed_agreement(s)
  assert mad < 0.02 and corr > 0.98


def _cli(*args):
  return subprocess.run([sys.executable, "-m", "hdr_jax.synthesize", *map(str, args)],
                        capture_output=True, text=True, timeout=120)


def test_cli(tmp_path):
  missing = tmp_path / "no_such_map.exr"
  r = _cli(f"--out={tmp_path / 'x'}", "--scenes=2", "--height=32", "--width=32", f"--hdr={missing}")
  assert r.returncode != 0 and str(missing) in r.stderr
  assert not (tmp_path / "x").exists()
  r = _cli(f"--out={tmp_path / 'x'}", "--scenes=0")
  assert r.returncode != 0 and "scenes" in r.stderr
  r = _cli(f"--out={tmp_path / 'x'}", "--height=8")
  assert r.returncode != 0 and "too small" in r.stderr
  r = _cli(f"--out={tmp_path / 'ok'}", "--scenes=2", "--height=32", "--width=40", "--seed=3")
  assert r.returncode == 0, r.stderr
  assert "2 scenes" in r.stdout and "32x40" in r.stdout
  assert len(fileio.validate_folder(tmp_path / "ok", require_gt=True, decode=True)) == 2


def test_ensure_dataset_idempotent_atomic_and_checked(tmp_path, monkeypatch):
  root = tmp_path / "ds"
  # A crash mid-way leaves neither the folder nor a temporary sibling behind.
  real_write = fileio.write_scene
  calls = []

  def failing_write(*args, **kwargs):
    calls.append(1)
    if len(calls) == 2:
      raise RuntimeError("disk full")
    real_write(*args, **kwargs)

  monkeypatch.setattr(fileio, "write_scene", failing_write)
  with pytest.raises(RuntimeError, match="disk full"):
    synthesize.ensure_dataset(root, 3, 32, 32, seed=1, verbose=False)
  assert list(tmp_path.iterdir()) == []
  monkeypatch.setattr(fileio, "write_scene", real_write)

  assert synthesize.ensure_dataset(root, 3, 32, 32, seed=1, verbose=False) == root
  assert [p.name for p in tmp_path.iterdir()] == ["ds"]
  assert (root / synthesize.MARKER).is_file()
  assert len(fileio.validate_folder(root, require_gt=True, decode=True)) == 3
  synthesize.synthesize_folder(tmp_path / "ref", 3, 32, 32, seed=1, verbose=False)
  assert {k: v for k, v in _bytes(root).items() if k != synthesize.MARKER} == _bytes(tmp_path / "ref")

  opt = tmp_path / "opt"  # scene options are part of the parameters (and survive the JSON marker)
  synthesize.ensure_dataset(opt, 1, 32, 32, verbose=False, ev_sets=((-2.0, 0.0, 2.0),))
  with pytest.raises(fileio.DataError, match="options"):
    synthesize.ensure_dataset(opt, 1, 32, 32, verbose=False)

  before = _bytes(root)
  monkeypatch.setattr(synthesize, "synthesize_folder", lambda *a, **k: pytest.fail("regenerated"))
  assert synthesize.ensure_dataset(root, 3, 32, 32, seed=1, verbose=False) == root
  assert synthesize.ensure_dataset(opt, 1, 32, 32, verbose=False, ev_sets=[[-2, 0, 2]]) == opt
  assert _bytes(root) == before
  with pytest.raises(fileio.DataError, match="scenes=3"):
    synthesize.ensure_dataset(root, 4, 32, 32, seed=1)
  with pytest.raises(fileio.DataError, match="seed"):
    synthesize.ensure_dataset(root, 3, 32, 32, seed=2)
  (tmp_path / "other").mkdir()
  (tmp_path / "other" / "notes.txt").write_text("mine")
  with pytest.raises(fileio.DataError, match="not a complete synthesized dataset"):
    synthesize.ensure_dataset(tmp_path / "other", 3, 32, 32)


def test_default_cache_dir(monkeypatch, tmp_path):
  monkeypatch.setenv("HDR_JAX_CACHE", str(tmp_path))
  assert fileio.default_cache_dir() == tmp_path
  monkeypatch.delenv("HDR_JAX_CACHE")
  assert fileio.default_cache_dir() == Path.home() / ".cache" / "hdr_jax"
