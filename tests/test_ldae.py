"""l-DAE pretraining (hdr_jax/tasks/ldae.py), copying its feature extractor into a regression model
(hdr_jax/pretrain.py, config.init.feature_extractor) and the quality benchmark's CI preset."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import jax
import ml_collections
import numpy as np
import orbax.checkpoint as ocp
import pytest
from flax import nnx
from flax.nnx import traversals

from hdr_jax import config_base, data, engine, synthesize
from hdr_jax.tasks import ldae

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))

import quality  # noqa: E402  (benchmarks/quality.py)
from conftest import cli_env

SMALL_STEM = dict(drdb_blocks=1, drdb_channels=8, drdb_growth=4, drdb_layers=2)  # quality.py --widths=small


def _frames(n=2, size=32, seed=0):
  return np.stack([synthesize.synthesize_scene(seed + i, size, size)["frames"] for i in range(n)])


def _patches(x, p):
  """NumPy ``(..., H, W, 3)`` -> ``(..., H/p, W/p, p*p*3)`` float64."""
  return np.asarray(ldae.to_patches(np.asarray(x, np.float64), p))


def _unpatch(t, p):
  *lead, hp, wp, _ = t.shape
  return np.moveaxis(t.reshape(*lead, hp, wp, p, p, 3), -3, -4).reshape(*lead, hp * p, wp * p, 3)


def _off_latent(diff, components, p):
  """The part of an image difference outside the latent subspace, per patch."""
  t, v = _patches(diff, p), np.asarray(components, np.float64)
  return t - (t @ v.T) @ v


P, DIM = 4, 12
X = _frames(2, seed=5).astype(np.float32) / 255.0  # (2, 3, 32, 32, 3): scenes the basis was not fitted on


@pytest.fixture(scope="module")
def basis():
  return ldae.fit_frames_pca(_frames(), P, DIM, max_patches=4096, seed=0)


def _noise(components, mean, sigma, residual, key=0, x=X):
  # Always (2,)-shaped sigmas and the same frames: one compilation per mode (threefry compiles slowly on CPU).
  return np.asarray(ldae.latent_noise(x, components, mean, np.asarray(sigma, np.float32), jax.random.key(key), P,
                                      residual))


def test_pca_basis_orthonormal_and_round_trip(basis):
  components, mean, explained = basis
  assert components.shape == (DIM, P * P * 3) and mean.shape == (P * P * 3,)
  np.testing.assert_allclose(components @ components.T, np.eye(DIM), atol=1e-5)
  assert np.all(np.diff(explained) <= 1e-7) and 0.5 < explained.sum() <= 1.0
  again = ldae.fit_frames_pca(_frames(), P, DIM, max_patches=4096, seed=0)
  np.testing.assert_array_equal(components, again[0])  # deterministic for the data and seed

  # Noise-free, keeping the residual: the input itself.
  np.testing.assert_allclose(_noise(components, mean, [0, 0], "keep"), X, atol=1e-5)
  # Noise-free, dropping it: the projection V^T V (x - m) + m, computed here by hand.
  v, m = components.astype(np.float64), mean.astype(np.float64)
  by_hand = _unpatch(((_patches(X, P) - m) @ v.T) @ v + m, P)
  dropped = _noise(components, mean, [0, 0], "drop")
  np.testing.assert_allclose(dropped, by_hand, atol=1e-5)
  np.testing.assert_allclose(ldae.project(X, components, mean, P), by_hand, atol=1e-5)
  assert np.abs(dropped - X).max() > 1e-3  # the latent does not hold everything
  np.testing.assert_allclose(ldae.project(dropped, components, mean, P), dropped, atol=1e-5)  # idempotent
  # A full-rank basis holds everything.
  full, full_mean, _ = ldae.fit_frames_pca(_frames(), P, P * P * 3, max_patches=4096, seed=0)
  np.testing.assert_allclose(ldae.project(X, full, full_mean, P), X, atol=1e-4)


def test_noise_lies_in_the_latent_subspace(basis):
  components, mean, _ = basis
  keep = _noise(components, mean, [0.0, 0.3], "keep", key=1)
  np.testing.assert_array_equal(keep[0], X[0])  # sigma 0 for the first image
  assert np.abs(_off_latent(keep - X, components, P)).max() < 1e-5
  # Latent coordinates of the noise: N(0, sigma^2), independent of the image.
  z = _patches(keep[1] - X[1], P) @ components.T.astype(np.float64)
  assert abs(z.std() - 0.3) < 0.02 and abs(z.mean()) < 0.01
  drop = _noise(components, mean, [0.0, 0.3], "drop", key=1)
  projected = np.asarray(ldae.project(X, components, mean, P))
  assert np.abs(_off_latent(drop - projected, components, P)).max() < 1e-5
  np.testing.assert_allclose(drop - keep, projected - X, atol=1e-5)  # the same noise in both modes
  # Any frame size (padded to whole patches and cropped back).
  odd = _noise(components, mean, [0.1, 0.1], "keep", x=X[..., :30, :27, :])
  assert odd.shape == (2, 3, 30, 27, 3)
  assert np.abs(_off_latent((odd - X[..., :30, :27, :])[..., :28, :24, :], components, P)).max() < 1e-5


SHIPPED, AS_CONFIGURED = "ahdrnet-merge-cpu", "config:ahdrnet:tiny@num_train_steps=2"


@pytest.fixture(scope="module")
def quality_run(tmp_path_factory, shared_hdr_files):
  """``benchmarks/quality.py --tiny`` with VAM+DRDB after l-DAE pretraining: the l-DAE run
  (configs/ldae.py) and the fine-tuning from its feature extractor (config.init.feature_extractor) go
  through the real trainer; the tests below read its workdirs."""
  tmp = tmp_path_factory.mktemp("quality")
  out = tmp / "q"
  env = {"HDR_JAX_CACHE": str(tmp / "cache"), **cli_env(), "PYTHONPATH": str(ROOT),
         "JAX_PLATFORMS": "cpu"}
  from hdr_jax import pretrained

  trained = set(pretrained.card(SHIPPED)["trained_on"]["radiance_maps"])
  hdr = [f for f in shared_hdr_files if f.name not in trained][:2]  # held out from the shipped model too
  proc = subprocess.run([sys.executable, "benchmarks/quality.py", "--tiny",
                         f"--models=vam_drdb_ldae,pretrained:{SHIPPED},{AS_CONFIGURED}",
                         "--seeds=0", "--steps=16", "--levels=static,hard", f"--out={out}", "--hdr",
                         *map(str, hdr)], cwd=ROOT, env=env,
                        capture_output=True, text=True, timeout=900)
  assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-5000:]
  return out, proc.stdout


def _checkpoint(workdir):
  """The raw arrays of a workdir's latest checkpoint (read with Orbax, no model)."""
  step = max(int(p.name) for p in (workdir / "checkpoints").iterdir() if p.name.isdigit())
  return ocp.StandardCheckpointer().restore(workdir / "checkpoints" / str(step) / "state")


def test_ldae_training_lowers_the_loss_and_checkpoints_the_pca(quality_run):
  from hdr_jax import checkpoint

  workdir = quality_run[0] / "runs" / "ldae_s0"
  config = checkpoint.load_config(workdir)
  assert config.task == "ldae" and config.num_train_steps == 8 and config.model.name == "vam_drdb"
  rows = [json.loads(line) for line in (workdir / "metrics.jsonl").read_text().splitlines()]
  loss = [r["train/loss"] for r in rows if "train/loss" in r]
  assert len(loss) == 8 and np.all(np.isfinite(loss))
  assert np.mean(loss[-2:]) < 0.5 * np.mean(loss[:2]), loss
  summary = json.loads((workdir / "summary.json").read_text())
  assert np.isfinite(summary["eval"]["psnr_mu"])  # the denoised medium frame against the target
  saved = _checkpoint(workdir)
  components = np.asarray(saved["pca_components"])
  np.testing.assert_allclose(components @ components.T, np.eye(config.ldae.latent_dim), atol=1e-5)
  # The basis is fitted deterministically from the seed's training patches (a fresh task refits it).
  task = ldae.LdaeTask(config)
  task.prepare(data.resolve_data(config)[0])  # the trainer's hook, on the run's resolved training data
  bundle = nnx.eval_shape(lambda: task.create(jax.random.key(config.seed)))
  np.testing.assert_array_equal(components, task.pca[0])
  # Only the feature extractor and the head are trained (the whole HDR-VAM is kept for its structure).
  assert {"fe", "recon", "refine"} <= set(saved["model"]) and "head" in saved
  trained = nnx.state(bundle, ldae.TRAINABLE).to_pure_dict()
  assert set(trained) == {"model", "head"} and set(trained["model"]) == {"fe"}


def _regression_engine(name, cache, monkeypatch, **model):
  c = config_base.get_base_config()
  c.data.cache_dir = str(cache)
  c.model = ml_collections.ConfigDict(dict(name=name, **model))
  return engine.Engine(c)


def test_init_feature_extractor_copies_exactly_the_fe_state(quality_run, monkeypatch, tmp_path):
  workdir = quality_run[0] / "runs" / "ldae_s0"
  e = _regression_engine("vam_drdb", tmp_path, monkeypatch, **SMALL_STEM)
  abstract = nnx.state(nnx.eval_shape(lambda: e.task.create(jax.random.key(0))))
  state = jax.tree.map(lambda s: np.zeros(s.shape, s.dtype), abstract)  # a state whose every value is known
  state = e.load_feature_extractor(state, str(workdir))
  after = traversals.flatten_mapping(jax.device_get(state.to_pure_dict()))
  saved = traversals.flatten_mapping(_checkpoint(workdir)["model"]["fe"])
  fe = {k: v for k, v in after.items() if k[:2] == ("model", "fe")}
  assert len(fe) == len(saved) > 50
  for k, v in fe.items():
    np.testing.assert_array_equal(v, saved[tuple(str(x) for x in k[2:])], err_msg=str(k))
  assert len(after) > len(fe) and all(not np.any(v) for k, v in after.items() if k[:2] != ("model", "fe"))


@pytest.mark.parametrize("name, model", [("vam", {}), ("vam_drdb", dict(SMALL_STEM, drdb_channels=16)),
                                         ("ahdrnet", dict(channels=8, growth=4, n_blocks=1, n_dense=1))])
def test_init_feature_extractor_mismatch_is_a_clear_error(quality_run, monkeypatch, tmp_path, name, model):
  workdir = quality_run[0] / "runs" / "ldae_s0"
  e = _regression_engine(name, tmp_path, monkeypatch, **model)
  abstract = nnx.state(nnx.eval_shape(lambda: e.task.create(jax.random.key(0))))  # shapes only, nothing compiled
  with pytest.raises(ValueError) as err:
    e.load_feature_extractor(abstract, str(workdir))
  msg = str(err.value)
  assert str(workdir) in msg and "vam_drdb" in msg
  if name == "vam":
    assert "not in this model: stem/conv_in/kernel" in msg
  elif name == "vam_drdb":
    assert "stem/conv_in/kernel: checkpoint (3, 3, 12, 8), this model (3, 3, 12, 16)" in msg
  else:
    assert "has no feature extractor at model.fe" in msg


def test_quality_benchmark_tiny(quality_run):
  out, stdout = quality_run
  report = json.loads((out / "quality.json").read_text())
  assert [r["method"] for r in report["runs"]] == ["vam_drdb + l-DAE", f"pretrained:{SHIPPED}", AS_CONFIGURED]
  # Equal compute: 8 l-DAE steps + 8 fine-tuning steps from the copied feature extractor.
  assert json.loads((out / "runs" / "vam_drdb_ldae_s0" / "summary.json").read_text())["step"] == 8
  assert "copied into model.fe" in stdout and str(out / "runs" / "ldae_s0") in stdout
  for method in ("medium frame", "classical merge", "vam_drdb + l-DAE", f"pretrained:{SHIPPED}", AS_CONFIGURED):
    assert [lv for lv in report["table"][method] if lv in quality.LEVELS] == ["static", "hard"]
    for level in ("static", "hard"):
      assert all(np.isfinite(report["table"][method][level][k][0]) for k in ("psnr_mu", "psnr_l", "ssim_mu"))
  assert report["setup"]["levels"]["static"] == {"camera_motion": 0.0, "object_motion": 0.0, "noise": 0.25}
  md = (out / "quality.md").read_text()
  assert "| classical merge |" in md and "| vam_drdb + l-DAE |" in md
  from hdr_jax import fileio

  fig = fileio.read_ldr_png(out / "quality_crops.png")  # 2 levels x (3 inputs, merge, 3 models, target)
  assert fig.shape[0] > 2 * 128 and fig.shape[1] == 8 * 128 and fig.std() > 0.01  # 32-pixel crops shown x4
  assert "| method | params | lr | static PSNR-mu | static PSNR-L | static SSIM-mu | hard PSNR-mu |" in md


def test_quality_scores_a_shipped_model_and_a_config_as_written(quality_run):
  """``pretrained:NAME`` is scored without training (its scores written beside the runs, never into the
  package) and, being the real trained model, beats the medium frame on held-out maps at both levels;
  ``config:NAME:VARIANT@KEY=VALUE`` trains that config as written but for the seed and its own setting."""
  from hdr_jax import config_base, pretrained

  out, _ = quality_run
  report = json.loads((out / "quality.json").read_text())
  shipped = report["table"][f"pretrained:{SHIPPED}"]
  for level in ("static", "hard"):
    assert shipped[level]["psnr_mu"][0] > report["table"]["medium frame"][level]["psnr_mu"][0] + 1.0
  assert "train_seconds" not in shipped and f"| pretrained:{SHIPPED} |" in (out / "quality.md").read_text()
  assert sorted(p.name for p in (out / "runs" / f"pretrained_{SHIPPED}").iterdir()) == ["eval_hard.json", "eval_static.json"]
  assert not list(pretrained.path(SHIPPED).glob("eval_*.json"))
  workdir = out / "runs" / "config_ahdrnet_tiny_num_train_steps_2_s0"
  assert json.loads((workdir / "summary.json").read_text())["step"] == 2
  tiny = config_base.load_config_file(ROOT / "configs" / "ahdrnet.py", "tiny")
  tiny.num_train_steps = 2
  tiny.data.protocol = "ntire"  # what the trainer detected and saved in place of 'auto'
  assert json.loads((workdir / "config.json").read_text()) == json.loads(tiny.to_json_best_effort())  # nothing else


def test_quality_figure_labels_wrap_to_the_column_instead_of_being_cut():
  """The wrapping's properties, whatever the font metrics of the installed OpenCV: every line fits its
  column (a line wider than the column is a single character), nothing is dropped or reordered, a label
  that fits stays one line, and the wrapping is greedy (no line could have taken the next line's first
  word or piece)."""
  from hdr_jax.fileio import cv2

  def width_of(text):
    return cv2.getTextSize(text, cv2.FONT_HERSHEY_SIMPLEX, quality.LABEL_SCALE, 1)[0][0]

  for name, width in (("ddpm (DDIM-50, eta 1)", 90), ("vam_drdb + l-DAE", 40), ("classical merge", 200),
                      ("averyveryverylongwordwithoutspaces", 50), ("a b", 1)):
    lines = quality.wrap_label(name, width)
    assert "".join(lines).replace(" ", "") == name.replace(" ", "")  # nothing dropped, order kept
    assert all(width_of(line) <= width or len(line) == 1 for line in lines), (name, lines)
    if width_of(name) <= width:
      assert lines == [name]
    else:
      assert len(lines) > 1, (name, lines)
    for line, following in zip(lines, lines[1:]):  # greedy: the next piece did not fit on this line
      head = following.split()[0]
      joined = f"{line} {head}" if name.find(f"{line} {head}") >= 0 else f"{line}{head[0]}"
      assert width_of(joined) > width, (name, lines)
  assert quality.wrap_label("", 50) == [""]


def test_quality_train_hdr_is_used_for_training_and_kept_apart_from_the_held_out_maps(tmp_path, capsys,
                                                                                      shared_hdr_files):
  a, b = shared_hdr_files[:2]
  args = quality.parse_args(["--tiny", "--hdr", str(a), "--train_hdr", str(b), f"--out={tmp_path / 'q'}"])
  assert quality.base_config("ahdrnet", args, 0, 4).data.embedded.hdr_files == (str(b.absolute()),)
  assert quality._train_data({"train_hdr": [str(b)]}) == f"data synthesised from 1 radiance maps ({b.name})"
  assert quality._train_data({"train_hdr": []}) == "procedural data"
  for argv in (["--hdr", str(a), str(b), "--train_hdr", str(b.parent / ".." / b.parent.name / b.name)],
               ["--hdr", str(a), "--train_hdr", str(tmp_path / "missing.exr")]):
    with pytest.raises(SystemExit):
      quality.parse_args(["--tiny", *argv])
    err = capsys.readouterr().err
    assert ("shares" in err and "must not be trained on" in err) or "missing.exr: no such radiance map" in err
  from hdr_jax import pretrained

  trained = [b.parent / f for f in pretrained.card(SHIPPED)["trained_on"]["radiance_maps"] if f != "procedural"]
  for models, why in ((f"pretrained:{SHIPPED}", f"was trained on ['{trained[0].name}']"),
                      ("pretrained:nope", f"no such shipped model; available: {SHIPPED}"),
                      ("config:nope", "no configs/nope.py")):
    with pytest.raises(SystemExit):
      quality.parse_args(["--tiny", "--hdr", str(trained[0]), f"--models={models}"])
    assert why in capsys.readouterr().err
  for levels in ("static,foggy", "static,static", ""):
    with pytest.raises(SystemExit):
      quality.parse_args(["--tiny", "--hdr", str(a), f"--levels={levels}"])
    assert "--levels" in capsys.readouterr().err
  assert list(quality.parse_args(["--tiny", "--hdr", str(a), "--levels=motion,noise"]).levels) == ["motion", "noise"]
  entry = "config:diffusion@data.embedded.motion_range=(0.5,3.0)@data.embedded.noise_range=[1,2]"
  assert quality.parse_args(["--tiny", "--hdr", str(a), f"--models=ahdrnet,{entry},vam"]).models == ["ahdrnet", entry, "vam"]
  assert quality.as_configured(entry, None, 3).data.embedded.motion_range == (0.5, 3.0)


def test_quality_reports_an_estimate_beside_the_sample_it_refines(tmp_path, shared_hdr_files):
  """A model that refines a deterministic estimate (the main job) gets an ``..., its estimate`` row with
  the estimate's PSNRs (no SSIM is measured for it), averaged over seeds like any row."""
  args = quality.parse_args(["--tiny", "--hdr", str(shared_hdr_files[0]), "--models=config:diffusion",
                             f"--out={tmp_path}"])
  full = {k: 0.5 for k in quality.METRICS}
  runs = []
  for seed, (sample, estimate) in enumerate(((30.0, 28.0), (32.0, 27.0))):
    row = {"method": "config:diffusion", "model": "config:diffusion", "seed": seed, "workdir": "w", "overrides": {},
           "params": 1234, "train_seconds": 10.0, "learning_rate": 1e-3,
           "levels": {lv: {**full, "psnr_mu": sample} for lv in ("static", "hard")}}
    runs += [row, {**row, "method": "config:diffusion, its estimate", "estimate": True,
                   "levels": {lv: {"psnr_mu": estimate, "psnr_l": 20.0} for lv in ("static", "hard")}}]
  base = {lv: {name: full for name in ("medium", "merge")} for lv in ("static", "hard")}
  report = quality.write_report(args, runs, base, [])
  assert report["table"]["config:diffusion, its estimate"]["hard"]["psnr_mu"] == [27.5, 0.5, 2]
  assert "ssim_mu" not in report["table"]["config:diffusion, its estimate"]["hard"]
  md = (tmp_path / "quality.md").read_text()
  assert "| config:diffusion | 1,234 | 0.001 | 31.00 ± 1.00 | 0.50 ± 0.00 | 0.5000 ± 0.0000 |" in md
  assert "| config:diffusion, its estimate | 1,234 | 0.001 | 27.50 ± 0.50 | 20.00 ± 0.00 | - |" in md
  assert "`config:...` trained as their config file is written" in md


def test_quality_refuses_to_reuse_a_run_started_with_other_settings(quality_run):
  workdir = quality_run[0] / "runs" / "vam_drdb_ldae_s0"
  config = ml_collections.ConfigDict(json.loads((workdir / "config.json").read_text()))
  quality.check_same_config(config, workdir)  # the same settings: reused
  assert config.data.protocol == "ntire"
  config.data.protocol = "auto"  # as a fresh config has it (the trainer saved what it detected)
  quality.check_same_config(config, workdir)
  config.data.patch_size = 64
  with pytest.raises(SystemExit, match=r"data.patch_size: 32 -> 64.*use another --out"):
    quality.check_same_config(config, workdir)


def _zero_state(e):
  abstract = nnx.state(nnx.eval_shape(lambda: e.task.create(jax.random.key(0))))
  return jax.tree.map(lambda s: np.zeros(s.shape, s.dtype), abstract)  # every value known


def _assert_only_copied(state, saved_fe, prefixes):
  after = traversals.flatten_mapping(jax.device_get(state.to_pure_dict()))
  for prefix in prefixes:
    fe = {k[len(prefix):]: v for k, v in after.items() if k[:len(prefix)] == prefix}
    assert len(fe) == len(saved_fe) > 50, prefix
    for k, v in fe.items():
      np.testing.assert_array_equal(v, saved_fe[tuple(str(x) for x in k)], err_msg=str(prefix + k))
  rest = [v for k, v in after.items() if not any(k[:len(p)] == p for p in prefixes)]
  assert rest and all(not np.any(v) for v in rest)


def test_gan_and_diffusion_start_from_the_ldae_feature_extractor(quality_run, tmp_path):
  """config.init.feature_extractor for the GAN (generator's model.fe) and the conditional DDPM (the
  VAM+DRDB encoder in the network and its EMA copy); a DDPM with the 'conv' encoder is refused."""
  workdir = quality_run[0] / "runs" / "ldae_s0"
  saved = traversals.flatten_mapping(_checkpoint(workdir)["model"]["fe"])

  c = config_base.load_config_file(ROOT / "configs" / "gan.py", "vam_drdb")
  c.data.cache_dir = str(tmp_path)
  c.model = ml_collections.ConfigDict(dict(name="vam_drdb", **SMALL_STEM))
  e = engine.Engine(c)
  _assert_only_copied(e.load_feature_extractor(_zero_state(e), str(workdir)), saved, [("model", "fe")])

  c = config_base.load_config_file(ROOT / "configs" / "diffusion.py")
  c.data.cache_dir = str(tmp_path)
  c.model.cond_encoder = "vam_drdb"
  c.model.cond_vam_drdb = ml_collections.ConfigDict(dict(c.model.cond_vam_drdb, **SMALL_STEM))
  e = engine.Engine(c)
  state = e.load_feature_extractor(_zero_state(e), str(workdir))
  _assert_only_copied(state, saved, [("model", "encoder", "fe"), ("ema", "encoder", "fe")])

  c.model.cond_encoder = "conv"
  e = engine.Engine(c)
  with pytest.raises(ValueError, match="cond_encoder='vam_drdb'") as err:
    e.load_feature_extractor(None, str(workdir))
  assert str(workdir) in str(err.value)
