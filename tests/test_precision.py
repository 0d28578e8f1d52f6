"""Mixed precision (``config.dtype='bfloat16'``) through ``engine.Engine``, for every model family.

* Every task (AHDRNet, HDR-VAM, VAM+DRDB, GAN, diffusion), abstractly (traced, not compiled): the
  bf16 bundle is created in float32, a train step returns every float variable (parameters,
  optimiser moments, BatchNorm statistics, EMA weights, ...) in float32 with the structure it was
  given, and the network's own output is float32.
* Numerically, on tiny models: the bf16 training losses and gradient norms agree with float32 and
  ``Engine.predict`` with the same parameters agrees with float32 computation.

Tolerances (bfloat16 has an 8-bit mantissa, relative rounding 2**-9), 3-6x the differences measured
here: training loss within 1 % relative (measured 2e-4), gradient norm within 5 % (1.2e-2);
predictions within 5 % of the float32 prediction's spread (RMS difference / standard deviation;
measured 7e-3 AHDRNet, 1.5e-2 VAM+DRDB: the freshly initialised networks predict nearly constant
images, so an absolute tolerance would test nothing). On an H200 GPU the same comparisons measured
loss 5e-5, gradient norm 6e-3, predictions 6e-3 and 1.5e-2.
"""

from __future__ import annotations

import importlib
import importlib.util
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from hdr_jax import config_base
from hdr_jax import engine as engine_lib
from hdr_jax import hdr_math

ROOT = Path(__file__).resolve().parents[1]

_TINY_AHDR = {"model.channels": 8, "model.growth": 4, "model.n_blocks": 1, "model.n_dense": 2}
_TINY_DRDB = {"model.drdb_blocks": 1, "model.drdb_channels": 8, "model.drdb_growth": 4, "model.drdb_layers": 2}
_TINY_UNET = {"model.ch": 8, "model.ch_mult": (1, 2), "model.attn_levels": (1,), "model.head_dim": 8,
              "model.groups": 4, "model.cond_channels": 8, "model.cond_conv_hidden": 8,
              "optimizer.warmup_steps": 0, "sampler.steps": 2}
# name -> (config file, modules it needs, tiny overrides). A missing config or a module that does not
# import fails the test.
CASES = {
    "ahdrnet": ("ahdrnet.py", ["hdr_jax.models.ahdrnet"], _TINY_AHDR),
    "vam": ("vam.py", ["hdr_jax.models.vam"], {}),
    # The direct head: the merge head's zero-initialised last layer would leave a fresh network's output
    # (the classical merge, computed in float32) the same in both dtypes, comparing nothing.
    "vam_drdb": ("vam_drdb.py", ["hdr_jax.models.vam"], {**_TINY_DRDB, "model.output_head": "exposure"}),
    "gan": ("gan.py", ["hdr_jax.tasks.gan", "hdr_jax.models.ahdrnet"],
            {"model.name": "ahdrnet", **_TINY_AHDR, "disc.features": 8, "disc.n_layers": 2}),
    "diffusion": ("diffusion.py", ["hdr_jax.tasks.diffusion", "hdr_jax.models.unet"], _TINY_UNET),
}
# Compiled comparisons cost 5-50 s of XLA compilation each on CPU, so they run where they add most:
# AHDRNet trains two steps in both dtypes and predicts in both; VAM+DRDB (every HDR-VAM layer plus
# the DRDB stem; test_vam.py compares the bare HDR-VAM forward) predicts in both.
NUMERIC_TRAIN = ("ahdrnet",)
NUMERIC_PREDICT = ("ahdrnet", "vam_drdb")
BATCH, PATCH, STEPS = 2, 32, 2
RTOL = {"loss": 0.01, "grad_norm": 0.05}
PREDICT_REL = 0.05


def load_config(name: str, dtype: str):
  file, modules, tiny = CASES[name]
  path = ROOT / "configs" / file
  assert path.is_file(), f"configs/{file} is missing"
  for m in modules:
    importlib.import_module(m)
  spec = importlib.util.spec_from_file_location(f"_hdr_jax_config_{name}", path)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return config_base.apply_overrides(module.get_config(), {**tiny, "dtype": dtype, "batch_size": BATCH,
                                                         "data.patch_size": PATCH})


def make_batches():
  """Smooth scenes (a ramp of random colour, 2 % multiplicative noise), exposures -2/0/+2 stops."""
  rng = np.random.default_rng(0)
  ramp = np.add.outer(np.linspace(0, 1, PATCH), np.linspace(0, 1, PATCH))[None, ..., None]
  exposures = np.tile(np.float32([[-2.0, 0.0, 2.0]]), (BATCH, 1))
  out = []
  for _ in range(STEPS):
    radiance = (0.05 + rng.uniform(0, 1, (BATCH, 1, 1, 3)) * ramp) * rng.uniform(0.98, 1.02, (BATCH, PATCH, PATCH, 3))
    frames = np.stack([np.clip(radiance * 2.0**e, 0, 1) ** (1 / hdr_math.GAMMA) for e in exposures[0]], 1)
    out.append({"frames": np.round(frames * 255).astype(np.uint8), "exposures": exposures,
                "gt": (radiance ** (1 / hdr_math.GAMMA)).astype(np.float32)})
  return out


def float_dtypes(tree) -> dict:
  return {jax.tree_util.keystr(p): x.dtype for p, x in jax.tree_util.tree_leaves_with_path(tree)
          if jnp.issubdtype(x.dtype, jnp.floating)}


def init(engine):
  # Non-partitionable threefry compiles the initialisation program several times faster on CPU; the
  # comparison needs the same initial values in both dtypes, not particular ones.
  with jax.threefry_partitionable(False):
    return engine.init_state(jax.random.key(0))


@pytest.mark.parametrize("name", list(CASES))
def test_bfloat16_keeps_float32_state_and_output(name):
  engine = engine_lib.Engine(load_config(name, "bfloat16"))
  assert engine.task.dtype == jnp.bfloat16
  state = jax.eval_shape(engine.init_state, jax.random.key(0))
  before = float_dtypes(state)
  assert before and all(d == jnp.float32 for d in before.values()), before
  batch = {k: jax.ShapeDtypeStruct(np.shape(v), np.asarray(v).dtype) for k, v in make_batches()[0].items()}
  new_state, metrics = jax.eval_shape(engine.train_step, state, batch, jax.random.key(1))
  after = float_dtypes(new_state)
  assert after == before, {k: d for k, d in after.items() if d != jnp.float32}
  assert any("['opt_state']" in k for k in after), "no optimiser state in the bundle"
  assert all(m.dtype == jnp.float32 for m in metrics.values()), metrics

  frames = jax.ShapeDtypeStruct((BATCH, 3, PATCH, PATCH, 3), jnp.float32)
  exposures = jax.ShapeDtypeStruct((BATCH, 3), jnp.float32)

  def forward(s, frames, exposures):
    model = engine.bundle(s).model
    if engine.config.task == "diffusion":
      x = jnp.zeros((BATCH, PATCH, PATCH, 3), jnp.float32)
      estimate = jnp.zeros((BATCH, PATCH, PATCH, 3), jnp.float32) if model.cond_estimate else None
      return model(x, jnp.zeros((BATCH,), jnp.int32), model.encode(frames, exposures, estimate))
    return model(frames, exposures)

  out = jax.eval_shape(forward, state, frames, exposures)
  assert out.shape == (BATCH, PATCH, PATCH, 3) and out.dtype == jnp.float32


@pytest.mark.parametrize("name", sorted(set(NUMERIC_TRAIN) | set(NUMERIC_PREDICT)))
def test_bfloat16_agrees_with_float32(name):
  batches = make_batches()
  engines = {dt: engine_lib.Engine(load_config(name, dt)) for dt in ("float32", "bfloat16")}
  state = init(engines["float32"])
  # Both runs start from these float32 values; the bf16 engine only needs its graph (traced, not run).
  jax.eval_shape(engines["bfloat16"].init_state, jax.random.key(0))
  if name in NUMERIC_PREDICT:
    # Same parameters, float32 vs bfloat16 computation.
    b = batches[0]
    p = {dt: e.predict(state, b["frames"], b["exposures"], jax.random.key(7)) for dt, e in engines.items()}
    assert p["bfloat16"].dtype == np.float32 and np.all(np.isfinite(p["bfloat16"]))
    rel = np.sqrt(np.mean((p["bfloat16"] - p["float32"]) ** 2)) / np.std(p["float32"])
    print(f"{name}: predict rms(bf16 - f32) / std(f32) = {rel:.2e}")
    assert 0 < rel < PREDICT_REL
  if name in NUMERIC_TRAIN:
    curves = {}
    for dt, e in engines.items():
      s = jax.tree.map(jnp.copy, state)  # the train step donates its state
      rows = []
      for i, b in enumerate(batches):
        s, m = e.train_step(s, e.global_batch(b), jax.random.key(100 + i))
        rows.append({k: float(m[k]) for k in RTOL})
      curves[dt] = rows
      if dt == "bfloat16":
        assert all(d == jnp.float32 for d in float_dtypes(s).values())
    for k in curves["float32"][0]:
      a32 = np.array([r[k] for r in curves["float32"]])
      a16 = np.array([r[k] for r in curves["bfloat16"]])
      print(f"{name}: {k} max relative difference {np.max(np.abs(a16 / a32 - 1)):.2e}")
      np.testing.assert_allclose(a16, a32, rtol=RTOL[k], err_msg=k)
