"""The conditional GAN task (docs/reference.md, Conditional GAN): k discriminator updates per generator
update, the source's loss equations, spectral normalisation, data parallelism (1 vs 8 devices), exact checkpoint
resume, learning on the embedded dataset, the discriminator-wins warning, unconditional mode, and
the real entry points on a GAN checkpoint."""

from __future__ import annotations

import importlib.util
import json
import pickle
import subprocess
import sys
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from hdr_jax import checkpoint, data, evaluation
from hdr_jax import engine as engine_lib
from hdr_jax import fileio
from hdr_jax.models.discriminator import PatchDiscriminator, StridedConv
from hdr_jax.tasks import gan
from conftest import cli_env

ROOT = Path(__file__).resolve().parents[1]


def gan_config(arg=""):
  spec = importlib.util.spec_from_file_location("gan_config", ROOT / "configs" / "gan.py")
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module.get_config(arg)


def tiny_config(cache_dir=None):
  """A tiny AHDRNet generator and discriminator, k=2, spectral norm on, 32x32 patches, batch 8."""
  c = gan_config("ahdrnet")
  c.model.channels, c.model.growth, c.model.n_blocks, c.model.n_dense = 8, 4, 1, 1
  c.disc.features, c.disc.n_layers, c.disc.spectral_norm = 8, 2, True
  c.gan.d_steps = 2
  c.batch_size = 8
  c.data.patch_size = 32
  c.data.cache_dir = str(cache_dir) if cache_dir else None
  e = c.data.embedded
  e.train_scenes, e.val_scenes, e.height, e.width, e.val_height, e.val_width = 4, 2, 48, 64, 40, 56
  for opt in (c.optimizer, c.disc_optimizer):
    opt.learning_rate, opt.schedule = 1e-3, "constant"
  return c


def random_batch(seed, b=8, p=32):
  rng = np.random.default_rng(seed)
  return {"frames": rng.integers(0, 256, (b, 3, p, p, 3), dtype=np.uint8),
          "exposures": np.tile(np.float32([[-2, 0, 2]]), (b, 1)),
          "gt": rng.uniform(0, 1.5, (b, p, p, 3)).astype(np.float32)}


def run_steps(engine, state, n, first=0, b=8):
  """``n`` train steps on fixed random batches; returns ``(state, list of metric dicts)``."""
  out = []
  for i in range(first, first + n):
    state, m = engine.train_step(state, engine.global_batch(random_batch(i, b)), jax.random.key(i))
    out.append({k: float(v) for k, v in m.items()})
  return state, out


def flat(state, *path):
  node = state
  for p in path:
    node = node[p]
  return np.concatenate([np.asarray(x).ravel() for x in jax.tree.leaves(nnx.to_pure_dict(node))])


def counts(opt_state) -> list[int]:
  """Every optax ``count`` in an optimiser state."""
  leaves = jax.tree_util.tree_flatten_with_path(nnx.to_pure_dict(opt_state))[0]
  return [int(v) for path, v in leaves if "count" in jax.tree_util.keystr(path)]


@pytest.fixture(scope="module")
def engine():
  return engine_lib.Engine(tiny_config())


def init(engine):
  # Non-partitionable threefry compiles the initialisation program several times faster on CPU.
  with jax.threefry_partitionable(False):
    return engine.init_state(jax.random.key(0))


@pytest.fixture(scope="module")
def initial(engine):
  """The initial bundle state on the host (``init_state`` compiles a program: do it once)."""
  return jax.device_get(init(engine))


def on_device(engine, host_state):
  """A fresh device copy (train steps donate their input state)."""
  return jax.device_put(host_state, engine.replicated)


# --------------------------------------------------------------------------------------------------


def test_k_discriminator_updates_per_generator_update(engine, initial):
  state = on_device(engine, initial)
  g0, d0 = flat(state, "model"), flat(state, "disc")
  u0 = np.asarray(state["disc"]["convs"][0]["u"][...])
  state, metrics = run_steps(engine, state, 3)
  # Two D updates and one G update per iteration, each with its own optimiser.
  assert int(state["disc_opt"]["step"][...]) == 6 and int(state["opt"]["step"][...]) == 3
  assert set(counts(state["disc_opt"]["opt_state"])) == {6}
  assert set(counts(state["opt"]["opt_state"])) == {3}
  assert not np.allclose(flat(state, "model"), g0) and not np.allclose(flat(state, "disc"), d0)
  # The power-iteration vectors are updated by the D steps but are not parameters.
  assert not np.allclose(np.asarray(state["disc"]["convs"][0]["u"][...]), u0)
  assert "u" not in nnx.state(engine.bundle(state).disc, nnx.Param)["convs"][0]
  c = engine.config.gan
  for m in metrics:
    assert set(m) >= {"loss", "d_loss", "g_loss", "g_adv", "recon", "d_real_acc", "d_fake_acc"}
    assert m["loss"] == m["g_loss"] == pytest.approx(c.adv_weight * m["g_adv"] + c.recon_weight * m["recon"],
                                                     rel=1e-5)
    assert 0.0 <= m["d_real_acc"] <= 1.0 and 0.0 <= m["d_fake_acc"] <= 1.0


def test_losses_are_the_source_equations():
  rng = np.random.default_rng(0)
  real, fake = rng.normal(0, 2, (4, 5, 5, 1)).astype(np.float32), rng.normal(0, 2, (4, 5, 5, 1)).astype(np.float32)
  d_x, d_g = 1 / (1 + np.exp(-real.astype(np.float64))), 1 / (1 + np.exp(-fake.astype(np.float64)))
  # L_D = H(1, D(x)) + H(0, D(G)) = -E log D(x) - E log(1 - D(G))
  np.testing.assert_allclose(gan.discriminator_loss(real, fake), -np.log(d_x).mean() - np.log(1 - d_g).mean(),
                             rtol=1e-5)
  # Non-saturating L_G = H(1, D(G)) = -E log D(G); minimax L_G = -H(0, D(G)) = E log(1 - D(G)).
  np.testing.assert_allclose(gan.generator_adv_loss(fake, "nonsaturating"), -np.log(d_g).mean(), rtol=1e-5)
  np.testing.assert_allclose(gan.generator_adv_loss(fake, "minimax"), np.log(1 - d_g).mean(), rtol=1e-5)
  # The minimax generator gradient vanishes where D confidently rejects the fake; the other does not.
  confident = jnp.full((1, 1, 1, 1), -10.0)
  assert abs(jax.grad(lambda l: gan.generator_adv_loss(l, "minimax"))(confident)).item() < 1e-4
  assert abs(jax.grad(lambda l: gan.generator_adv_loss(l, "nonsaturating"))(confident)).item() > 0.99
  with pytest.raises(ValueError, match="gan.loss"):
    gan.generator_adv_loss(fake, "hinge")
  # The discriminator's input: mu-law of the radiance over the short frame's maximum, in [0, 1].
  lin = jnp.asarray(rng.uniform(0, 5, (2, 4, 4, 3)), jnp.float32)
  exposures = jnp.float32([[-2, 0, 2], [-3, -1, 1]])
  x = gan.disc_input(lin, exposures)
  assert float(x.min()) >= 0 and float(x.max()) <= 1
  np.testing.assert_allclose(x[1], np.log1p(5000 * np.clip(lin[1] / 4.0, 0, 1)) / np.log1p(5000), rtol=1e-5)


def test_spectral_norm_gives_unit_largest_singular_value():
  conv = StridedConv(5, 7, 4, 2, 1, spectral_norm=True, rngs=nnx.Rngs(0))
  conv.kernel[...] = 3.0 * conv.kernel[...] + 0.5
  u0 = np.asarray(conv.u[...])
  conv.normalized_kernel(update=False)
  np.testing.assert_array_equal(np.asarray(conv.u[...]), u0)  # evaluation leaves u alone
  for _ in range(30):  # one power iteration per training forward pass
    w = conv.normalized_kernel(update=True)
  s = np.linalg.svd(np.asarray(w).reshape(-1, 7), compute_uv=False)
  assert s[0] == pytest.approx(1.0, abs=1e-3)
  raw = np.linalg.svd(np.asarray(conv.kernel[...]).reshape(-1, 7), compute_uv=False)
  assert raw[0] > 2.0  # the normalisation did something
  # Without spectral norm the kernel is used as is; u exists only with it.
  plain = StridedConv(5, 7, 4, 2, 1, rngs=nnx.Rngs(0))
  assert plain.u is None
  np.testing.assert_array_equal(plain.normalized_kernel(update=True), plain.kernel[...])


_DP_SCRIPT = r"""
import pickle, sys
import jax
jax.config.update("jax_num_cpu_devices", 8)
import numpy as np
from flax import nnx
sys.path.insert(0, "tests")
import test_gan as t
from hdr_jax import engine as engine_lib
e = engine_lib.Engine(t.tiny_config())
assert jax.device_count() == 8
# Starts from the 1-device run's initial state (building it again would compile the initialiser).
e.graphdef, state = nnx.split(nnx.eval_shape(lambda: e.task.create(jax.random.key(0))))
with open(sys.argv[1], "rb") as f:
  nnx.replace_by_pure_dict(state, pickle.load(f))
s, m = t.run_steps(e, jax.device_put(state, e.replicated), 3)
np.savez(sys.argv[2], loss=[x["loss"] for x in m], d_loss=[x["d_loss"] for x in m], g=t.flat(s, "model"),
         d=t.flat(s, "disc"))
"""


def test_one_and_eight_devices_agree(engine, initial, tmp_path):
  with open(tmp_path / "init.pkl", "wb") as f:
    pickle.dump(nnx.to_pure_dict(initial), f)
  s, m1 = run_steps(engine, on_device(engine, initial), 3)
  env = {**cli_env(), "PYTHONPATH": str(ROOT), "JAX_PLATFORMS": "cpu",
         "HDR_JAX_CACHE": str(tmp_path)}
  proc = subprocess.run([sys.executable, "-c", _DP_SCRIPT, str(tmp_path / "init.pkl"), str(tmp_path / "dp8.npz")],
                        cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
  assert proc.returncode == 0, proc.stderr[-5000:]
  r8 = np.load(tmp_path / "dp8.npz")
  # Same global batch, same math; only the reduction order over the sharded batch differs.
  np.testing.assert_allclose([x["loss"] for x in m1], r8["loss"], rtol=1e-5, atol=1e-6)
  np.testing.assert_allclose([x["d_loss"] for x in m1], r8["d_loss"], rtol=1e-5, atol=1e-6)
  np.testing.assert_allclose(flat(s, "model"), r8["g"], rtol=1e-4, atol=1e-5)
  np.testing.assert_allclose(flat(s, "disc"), r8["d"], rtol=1e-4, atol=1e-5)  # parameters and u vectors


def test_checkpoint_resume_is_exact(engine, initial, tmp_path):
  state, _ = run_steps(engine, on_device(engine, initial), 1)
  ckpts = checkpoint.Checkpoints(tmp_path)
  ckpts.save(1, state, meta={})
  state, full = run_steps(engine, state, 2, first=1)
  resumed, _ = ckpts.restore(1, on_device(engine, initial))
  ckpts.close()
  resumed, split = run_steps(engine, resumed, 2, first=1)
  assert split == full
  for part in ("model", "disc", "opt", "disc_opt"):
    np.testing.assert_array_equal(flat(resumed, part), flat(state, part))


def test_training_improves_psnr_mu(engine, initial, tmp_path):
  """60 steps on the embedded dataset (the recon term dominates the generator loss, as configured)."""
  from hdr_jax import train

  config = tiny_config(tmp_path / "cache")
  train_dir, val_dir = data.resolve_data(config)
  scenes = fileio.validate_folder(val_dir, require_gt=True)
  it = train.make_train_iterator(config, train_dir)
  state = on_device(engine, initial)
  before, _ = evaluation.evaluate_scenes(engine, state, scenes, key=jax.random.key(0))
  for step in range(60):
    state, m = engine.train_step(state, engine.global_batch(next(it)), jax.random.key(step))
  assert np.isfinite(float(m["loss"]))
  after, _ = evaluation.evaluate_scenes(engine, state, scenes, key=jax.random.key(0))
  assert after["psnr_mu"] > before["psnr_mu"] + 3.0, (before, after)


def test_discriminator_wins_warning_fires_once(capsys):
  c = tiny_config()
  c.gan.warn_window = 3
  task = gan.GanTask(c)
  win, even = {"d_real_acc": 0.995, "d_fake_acc": 1.0, "loss": 0.1}, {"d_real_acc": 0.995, "d_fake_acc": 0.7}
  for step, m in enumerate([win, win, even, win, win], start=1):  # interrupted: no warning yet
    task.on_metrics(step * 10, m)
  assert "discriminator wins" not in capsys.readouterr().out
  with pytest.warns(gan.DiscriminatorWinsWarning, match="discriminator wins"):
    task.on_metrics(60, win)
  assert "step 60" in capsys.readouterr().out
  import warnings

  with warnings.catch_warnings():
    warnings.simplefilter("error")
    for step in range(7, 12):
      task.on_metrics(step * 10, win)  # once only
  assert capsys.readouterr().out == ""


def test_unconditional_mode_generates_from_noise():
  c = tiny_config()
  c.model.conditional = False
  c.noise_gen.noise_channels, c.noise_gen.features, c.noise_gen.n_layers = 4, 8, 3
  c.batch_size = 2
  e = engine_lib.Engine(c)
  state = init(e)
  assert not e.bundle(state).disc.conditional
  state, (m,) = run_steps(e, state, 1, b=2)
  assert np.isfinite(m["loss"]) and m["g_loss"] == pytest.approx(c.gan.adv_weight * m["g_adv"], rel=1e-5)
  assert int(state["disc_opt"]["step"][...]) == 2 and int(state["opt"]["step"][...]) == 1
  b = random_batch(0, 2, 24)
  other = np.roll(b["frames"], 7)
  p1 = e.predict(state, b["frames"], b["exposures"], jax.random.key(3))
  p2 = e.predict(state, other, b["exposures"], jax.random.key(3))
  p3 = e.predict(state, b["frames"], b["exposures"], jax.random.key(4))
  assert p1.shape == (2, 24, 24, 3) and np.all(np.isfinite(p1))
  np.testing.assert_array_equal(p1, p2)  # frame content is ignored
  assert not np.allclose(p1, p3)  # the noise is not


def test_config_errors():
  c = tiny_config()
  c.gan.loss = "wasserstein"
  with pytest.raises(ValueError, match="gan.loss"):
    gan.GanTask(c)
  c = tiny_config()
  c.model.name = "unet"
  with pytest.raises(ValueError, match="regression network"):
    gan.GanTask(c)
  with pytest.raises(ValueError, match="disc.norm"):
    PatchDiscriminator(norm="batch", rngs=nnx.Rngs(0))


@pytest.mark.slow
def test_entry_points_on_a_gan_checkpoint(tmp_path, monkeypatch):
  """The trainer CLI on configs/gan.py:tiny (an AHDRNet generator), then predict and score on its checkpoint."""
  from hdr_jax import predict, score

  env = {"HDR_JAX_CACHE": str(tmp_path / "cache"), **cli_env(), "PYTHONPATH": str(ROOT),
         "JAX_PLATFORMS": "cpu"}
  wd = tmp_path / "run"
  extra = ["--config.data.embedded.train_scenes=2", "--config.num_train_steps=2", "--config.eval_every=2",
           "--config.checkpoint_every=2"]
  proc = subprocess.run([sys.executable, "-m", "hdr_jax.train", "--config=configs/gan.py:tiny", f"--workdir={wd}",
                         *extra], cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
  assert proc.returncode == 0, f"{proc.stdout[-3000:]}\n{proc.stderr[-5000:]}"
  assert "training finished" in proc.stdout
  logged = set().union(*(json.loads(l) for l in (wd / "metrics.jsonl").read_text().splitlines()))
  assert {"train/d_loss", "train/d_real_acc", "train/d_fake_acc", "train/g_adv", "train/recon"} <= logged
  summary = json.loads((wd / "summary.json").read_text())
  monkeypatch.setenv("HDR_JAX_CACHE", str(tmp_path / "cache"))
  val = data.resolve_data(checkpoint.load_config(wd))[1]
  with jax.threefry_partitionable(False):  # a faster-compiling initialiser, overwritten by the restore
    predict.run(wd, val, tmp_path / "pred")
  scored = score.score_folders(val, tmp_path / "pred")
  # The trainer's evaluation and the official scoring of the written results agree (up to the
  # 16-bit encoding of the results).
  assert scored["count"] == 2
  assert scored["mean"]["psnr_mu"] == pytest.approx(summary["eval"]["psnr_mu"], abs=0.05)
