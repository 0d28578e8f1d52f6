"""The machinery shared by ``train``, ``evaluate`` and ``predict``: the device mesh, the jitted and
sharded step/predict functions of a task, data resolution, full-frame evaluation, and loading a
model from a workdir.

Data parallelism: one mesh axis ``data`` over all devices of all processes. The batch is sharded
along ``data``; parameters and optimiser state are replicated. Every function is a plain
``jax.jit`` with ``NamedSharding`` in/out shardings (no ``pmap``).
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx
from jax.experimental import multihost_utils
from jax.sharding import NamedSharding, PartitionSpec as P

from hdr_jax import hdr_math
from hdr_jax import io as hio
from hdr_jax import sig17, tasks

_MULTIPROCESS_ENV = ("JAX_COORDINATOR_ADDRESS", "COORDINATOR_ADDRESS", "MEGASCALE_COORDINATOR_ADDRESS",
                     "TPU_WORKER_HOSTNAMES", "SLURM_NTASKS", "OMPI_COMM_WORLD_SIZE")


def maybe_initialize_distributed(mode: str = "auto") -> None:
  """``jax.distributed.initialize()`` when asked (``true``) or when a multi-process environment is
  detected (``auto``: coordinator address, TPU pod worker list, SLURM or Open MPI variables).

  JAX finds the processes of a Cloud TPU pod, SLURM or Open MPI job itself and reads
  ``JAX_COORDINATOR_ADDRESS``; for a manual launch ``JAX_NUM_PROCESSES`` and ``JAX_PROCESS_ID`` give
  the process count and index (JAX does not read these two from the environment)."""
  mode = str(mode).lower()
  if mode in ("false", "0", "no", "off"):
    return
  if mode == "auto":
    detected = [v for v in _MULTIPROCESS_ENV if os.environ.get(v)]
    if "TPU_WORKER_HOSTNAMES" in detected and "," not in os.environ["TPU_WORKER_HOSTNAMES"]:
      detected.remove("TPU_WORKER_HOSTNAMES")  # single-host TPU VM
    if "SLURM_NTASKS" in detected and os.environ["SLURM_NTASKS"] == "1":
      detected.remove("SLURM_NTASKS")
    if not detected:
      return
  if jax.distributed.is_initialized():
    return
  kwargs = {}
  for var, arg in (("JAX_NUM_PROCESSES", "num_processes"), ("JAX_PROCESS_ID", "process_id")):
    if os.environ.get(var):
      try:
        kwargs[arg] = int(os.environ[var])
      except ValueError:
        raise ValueError(f"{var}={os.environ[var]!r}: expected an integer") from None
  jax.distributed.initialize(**kwargs)


def setup_compilation_cache(setting="auto") -> str | None:
  """Points JAX's persistent compilation cache at a directory, so that a restarted run (a resume after
  a crash, evaluate after train) loads its compiled programs instead of compiling them again: on a GPU
  the train step of HDR-VAM+DRDB and the DDPM's sampling loop take from tens of seconds to minutes to
  compile. ``setting`` (``config.compilation_cache``): ``'auto'`` = on GPU/TPU, under the data cache
  (``$HDR_JAX_CACHE`` or ``~/.cache/hdr_jax``) in ``xla/``, off on CPU (compilation is quick there);
  ``''``/``'off'`` = leave JAX's setting alone; anything else = that directory. JAX stores only
  programs that took at least ``jax_persistent_cache_min_compile_time_secs`` (1 s) to compile.
  Returns the directory in use, or None."""
  setting = "" if setting is None else str(setting).strip()
  if setting.lower() in ("", "off", "false", "none"):
    return None
  if setting.lower() == "auto":
    if jax.default_backend() == "cpu":
      return None
    from hdr_jax import synthesize

    setting = str(synthesize.default_cache_dir() / "xla")
  if not hio.is_remote(setting):
    try:
      Path(setting).expanduser().mkdir(parents=True, exist_ok=True)
    except OSError as e:
      raise ValueError(f"config.compilation_cache={setting!r}: cannot create the directory ({e})") from None
    setting = str(Path(setting).expanduser())
  if jax.config.jax_compilation_cache_dir != setting:
    jax.config.update("jax_compilation_cache_dir", setting)
  return setting


def parse_overrides(items) -> dict:
  """``["a.b=1", "c=x"]`` (the ``--set`` flags) -> ``{"a.b": 1, "c": "x"}`` (JSON values where they parse)."""
  out = {}
  for item in items:
    if "=" not in item:
      raise ValueError(f"--set {item!r}: expected KEY=VALUE")
    k, v = item.split("=", 1)
    try:
      out[k] = json.loads(v)
    except json.JSONDecodeError:
      out[k] = v
  return out


def apply_overrides(config, overrides: dict | None):
  """Sets dotted keys (``{"model.gamma": 2.2}``) on a ConfigDict; a missing key is an error."""
  for k, v in (overrides or {}).items():
    *path, last = k.split(".")
    node = config
    try:
      for p in path:
        node = node[p]
      node[last] = v
    except (KeyError, AttributeError, TypeError) as e:
      raise ValueError(f"--set {k}={v!r}: {e}") from None
  return config


def run_cli(body, argv=None, required=()) -> None:
  """The absl entry point shared by train/evaluate/predict/convert: rejects stray arguments, checks
  ``required`` flags, quiets library logging, and turns an input problem (``DataError``,
  ``ValueError``, ``KeyError``, ``FloatingPointError``) into one ``error: ...`` line and exit code 1."""
  import sys

  from absl import app

  def _main(args):
    if len(args) > 1:
      raise app.UsageError(f"unexpected arguments: {args[1:]}")
    quiet_logging()
    for f in required:
      if f.value is None or f.value == "":
        raise app.UsageError(f"--{f.name} is required")
    try:
      body()
    except (ValueError, KeyError, FloatingPointError) as e:  # DataError is a ValueError
      print(f"error: {e}", file=sys.stderr, flush=True)
      sys.exit(1)

  app.run(_main, argv=argv, flags_parser=_parse_flags)


def _parse_flags(argv):
  """absl's flag parsing, plus a one-line error for a ``--config.KEY=VALUE`` that names no config field:
  ml_collections raises ``AttributeError``/``KeyError`` for it (a traceback under absl's parser)."""
  import re
  import sys

  from absl import app

  for i, a in enumerate(argv[1:], start=1):  # ml_collections reports a missing file as 'config_config'
    value = a[len("--config="):] if a.startswith("--config=") else (
        argv[i + 1] if a == "--config" and i + 1 < len(argv) else None)
    if value and not Path(value.split(":", 1)[0]).is_file():
      print(f"error: --config={value}: {value.split(':', 1)[0]} is not a file (a config file such as "
            f"configs/ahdrnet.py, optionally with ':ARG')", file=sys.stderr, flush=True)
      sys.exit(1)
  try:
    return app.parse_flags_with_usage(argv)
  except (AttributeError, KeyError) as e:
    text = str(e)  # e.g. AttributeError("'\\'chanels\\'\\nDid you mean ...'"): a KeyError's repr, nested
    found = re.search(r"[A-Za-z_]\w*", text)
    name = found.group(0) if found else "?"
    given = [a.split("=", 1)[0] for a in argv[1:] if a.startswith("--config.")]
    culprit = next((a for a in given if name in a[len("--config."):].split(".")), "a --config.KEY override")
    suggestion = re.search(r'Did you mean "([^"]+)"', text)
    hint = f' Did you mean "{suggestion.group(1)}"?' if suggestion else ""
    print(f"error: {culprit}: the config has no field {name!r}.{hint}", file=sys.stderr, flush=True)
    sys.exit(1)


def quiet_logging() -> None:
  """Orbax and JAX log every checkpoint step at INFO; show warnings and errors only unless the user
  asked for ``--verbosity``."""
  from absl import flags, logging

  if not flags.FLAGS["verbosity"].present:
    logging.set_verbosity(logging.WARNING)


def make_mesh() -> jax.sharding.Mesh:
  # Auto axis type: XLA propagates shardings through the model (the batch axis is the only sharded one).
  return jax.make_mesh((jax.device_count(),), ("data",), axis_types=(jax.sharding.AxisType.Auto,))


def to_host(x) -> np.ndarray:
  """A (possibly multi-process, sharded) array as a full NumPy array on every process."""
  if isinstance(x, jax.Array) and not x.is_fully_addressable:
    return np.asarray(multihost_utils.process_allgather(x, tiled=True))
  return np.asarray(x)


class Engine:
  """A task's bundle on a mesh, with jitted train and predict functions."""

  def __init__(self, config, task=None, mesh=None):
    self.config = config
    self.compilation_cache = setup_compilation_cache(config.get("compilation_cache", "auto"))
    self.task = task or tasks.get_task(config)
    self.mesh = mesh or make_mesh()
    self.replicated = NamedSharding(self.mesh, P())
    self.data_sharding = NamedSharding(self.mesh, P("data"))
    self.num_shards = self.mesh.shape["data"]
    self.graphdef = None
    self._train = None
    self._predict = None
    self._estimate = None

  # ---------------------------------------------------------------------------------------------
  def init_state(self, key) -> nnx.State:
    """Creates the task's bundle and returns its state, replicated over the mesh."""
    # Built abstractly, then initialised in one compiled program directly into its sharding (eager
    # construction compiles one small program per distinct parameter shape, which is slow).
    self.graphdef, _ = nnx.split(nnx.eval_shape(lambda: self.task.create(key)))
    # Non-partitionable threefry: XLA compiles this program ~3.5x faster on CPU (the state is
    # replicated, so partitionable random bits buy nothing here).
    with jax.threefry_partitionable(False):
      init = jax.jit(lambda k: nnx.state(self.task.create(k)), out_shardings=self.replicated)
      if isinstance(key, jax.core.Tracer) or jax.default_backend() != "cpu":  # e.g. under jax.eval_shape
        return init(key)
      # A one-off program of random draws: on CPU, skipping XLA's expensive backend passes compiles it
      # faster (about 1.5x here); values agree to float32 rounding.
      options = {"xla_backend_optimization_level": 0, "xla_llvm_disable_expensive_passes": True}
      return init.lower(key).compile(compiler_options=options)(key)

  def bundle(self, state):
    return nnx.merge(self.graphdef, state)

  # ---------------------------------------------------------------------------------------------
  def _make_train(self):
    task, graphdef = self.task, self.graphdef

    def step(state, batch, key):
      bundle = nnx.merge(graphdef, state)
      batch = dict(batch, frames=hdr_math.unit_frames(batch["frames"]))
      metrics = task.train_step(bundle, batch, key)
      new_state = nnx.state(bundle)
      # 1.0 when every parameter is finite after the update: the trainer never checkpoints otherwise.
      metrics["params_finite"] = jnp.all(jnp.stack(
          [jnp.all(jnp.isfinite(x)) for x in jax.tree.leaves(nnx.state(bundle, nnx.Param))])).astype(jnp.float32)
      return new_state, metrics

    return jax.jit(step, in_shardings=(self.replicated, self.data_sharding, self.replicated),
                   out_shardings=(self.replicated, self.replicated), donate_argnums=(0,))

  def train_step(self, state, batch, key):
    if self._train is None:
      self._train = self._make_train()
    return self._train(state, batch, key)

  def global_batch(self, local_batch: dict) -> dict:
    """Assembles the global batch from this process's share (``jax.make_array_from_process_local_data``)."""
    return {k: jax.make_array_from_process_local_data(self.data_sharding, np.asarray(v))
            for k, v in local_batch.items() if k in ("frames", "exposures", "gt")}

  # ---------------------------------------------------------------------------------------------
  def _make_predict(self, estimate: bool = False):
    task, graphdef = self.task, self.graphdef

    def predict(state, frames, exposures, key):
      bundle = nnx.merge(graphdef, state)
      frames = hdr_math.unit_frames(frames)
      if estimate:
        return task.predict_estimate(bundle, frames, exposures)
      return task.predict(bundle, frames, exposures, key)

    return jax.jit(predict, in_shardings=(self.replicated, self.data_sharding, self.data_sharding, self.replicated),
                   out_shardings=self.data_sharding)

  def predict(self, state, frames_u8: np.ndarray, exposures: np.ndarray, key=None) -> np.ndarray:
    """Gamma-domain HDR for a batch of whole frames ``(B, 3, H, W, 3)`` (same on every process): uint8
    or uint16 codes, or float32 in [0, 1] (:func:`hdr_math.unit_frames`); one compilation per dtype.

    The batch is padded with copies to a multiple of the mesh size, sharded, and cut back.
    """
    if self._predict is None:
      self._predict = self._make_predict()
    return self._run(self._predict, state, frames_u8, exposures, key)

  def predict_estimate(self, state, frames_u8: np.ndarray, exposures: np.ndarray) -> np.ndarray:
    """The deterministic estimate a task's prediction refines (``task.has_estimate``), as :meth:`predict`."""
    if self._estimate is None:
      self._estimate = self._make_predict(estimate=True)
    return self._run(self._estimate, state, frames_u8, exposures, None)

  def _run(self, fn, state, frames_u8, exposures, key):
    if key is None:
      key = jax.random.key(self.config.seed)
    b = frames_u8.shape[0]
    pad = (-b) % self.num_shards
    if pad:
      frames_u8 = np.concatenate([frames_u8, np.repeat(frames_u8[-1:], pad, 0)])
      exposures = np.concatenate([exposures, np.repeat(exposures[-1:], pad, 0)])
    put = lambda x: jax.make_array_from_callback(x.shape, self.data_sharding, lambda idx: x[idx])
    out = fn(state, put(frames_u8), put(np.asarray(exposures, np.float32)), key)
    return to_host(out)[:b]


# -------------------------------------------------------------------------------------------------
# Evaluation on whole frames
# -------------------------------------------------------------------------------------------------


def _same_size_groups(scenes, group: int):
  """Consecutive scenes of equal frame size, at most ``group`` at a time."""
  batch, size = [], None
  for s in scenes:
    h, w = sig17.frame_size(s)
    if batch and ((h, w) != size or len(batch) == group):
      yield batch
      batch = []
    batch.append(s)
    size = (h, w)
  if batch:
    yield batch


def iter_predictions(engine: Engine, state, scenes, key=None, batch_size: int | None = None):
  """Yields ``(scene_dict, hdr_prediction)`` for each scene, NTIRE or SIG17 (read with ``sig17.read_any``)."""
  group = batch_size or engine.num_shards
  for chunk in _same_size_groups(scenes, group):
    data = [sig17.read_any(s) for s in chunk]
    frames = np.stack([d["frames"] for d in data])  # float32 [0, 1], at the precision the files hold
    exposures = np.stack([d["exposures"] for d in data])
    preds = engine.predict(state, frames, exposures, key)
    for d, p in zip(data, preds):
      if not np.all(np.isfinite(p)):
        raise FloatingPointError(f"scene {d['id']}: the model produced NaN/inf values")
      yield d, p


@jax.jit
def _ssim_pair(ref, res):
  return hdr_math.ssim_mu(ref, res), hdr_math.ssim_l(ref, res)


def scene_metrics(gt: np.ndarray, pred: np.ndarray) -> dict:
  """PSNR-mu/PSNR-L exactly as the official scoring program (NumPy path), SSIM-mu/SSIM-L."""
  ssim_mu, ssim_l = _ssim_pair(jnp.asarray(gt), jnp.asarray(pred))
  return {"psnr_mu": hdr_math.np_psnr_mu(gt, pred), "psnr_l": hdr_math.np_psnr_l(gt, pred),
          "ssim_mu": float(ssim_mu), "ssim_l": float(ssim_l)}


def evaluate_scenes(engine: Engine, state, scenes, *, key=None, writer=None, step: int = 0,
                    preview: int = 0, baseline: bool = True) -> tuple[dict, list[dict]]:
  """Whole-frame evaluation. Returns ``(means, per_scene)``; means include the medium-frame
  baseline (``baseline_psnr_mu`` ...) so every number has its reference beside it. SIG17 scenes
  (``d['protocol'] == 'sig17'``) are scored with the SIG17 metrics on their linear labels
  (:func:`hdr_jax.sig17.scene_metrics`)."""
  from hdr_jax import metrics_log

  rows = []
  for i, (d, pred) in enumerate(iter_predictions(engine, state, scenes, key)):
    if d.get("protocol") == "sig17":
      full = lambda p: sig17.scene_metrics(d, p)  # noqa: E731
      psnrs = lambda p: sig17.scene_metrics(d, p, ssim=False)  # noqa: E731
      medium = hdr_math.sig17_to_internal(sig17.baseline_linear(d), d["exposures"])
    else:
      full = lambda p: scene_metrics(d["gt"], p)  # noqa: E731
      psnrs = lambda p: {"psnr_mu": hdr_math.np_psnr_mu(d["gt"], p),  # noqa: E731
                         "psnr_l": hdr_math.np_psnr_l(d["gt"], p)}
      medium = d["frames"][1]
    row = {"id": d["id"], **full(pred)}
    if engine.task.has_estimate:  # the deterministic estimate the prediction refines, scored beside it
      est = psnrs(engine.predict_estimate(state, d["frames"][None], d["exposures"][None])[0])
      row["estimate_psnr_mu"], row["estimate_psnr_l"] = est["psnr_mu"], est["psnr_l"]
    if baseline:
      base = psnrs(medium)
      row["baseline_psnr_mu"], row["baseline_psnr_l"] = base["psnr_mu"], base["psnr_l"]
    rows.append(row)
    if writer is not None and i < preview:
      writer.write_image(step, f"preview_{d['id']}", metrics_log.preview_grid(d["frames"], pred, d["gt"]))
  keys = [k for k in rows[0] if k != "id"] if rows else []
  means = {k: float(np.mean([r[k] for r in rows])) for k in keys}
  return means, rows


# -------------------------------------------------------------------------------------------------
# Loading a trained model
# -------------------------------------------------------------------------------------------------


def load_from_workdir(workdir, step: int | str | None = None, config_overrides: dict | None = None):
  """``(config, engine, state, step)`` for a workdir's checkpoint: ``step`` an int, ``'latest'``
  (default) or ``'best'`` (by validation PSNR-mu)."""
  from hdr_jax import checkpoint

  config = apply_overrides(checkpoint.load_config(workdir), config_overrides)
  ckpts = checkpoint.Checkpoints(workdir, read_only=True)
  if step in (None, "latest"):
    chosen = ckpts.latest_step()
  elif step == "best":
    chosen = ckpts.best_step() or ckpts.latest_step()
  else:
    chosen = int(step)
  if chosen is None:
    raise hio.DataError(ckpts.directory, "no checkpoint found in this workdir")
  engine = Engine(config)
  state = engine.init_state(jax.random.key(config.seed))
  try:
    state, _ = ckpts.restore(chosen, state, sharding=engine.replicated)
  except checkpoint.DamagedCheckpoint as e:  # read-only: name it and point at the others, move nothing
    others = [s for s in ckpts.all_steps() if s != chosen]
    hint = (f"use --step={others[-1]} (available: {', '.join(map(str, others))})" if others
            else "no other checkpoint in this workdir")
    raise hio.DataError(e.path, f"{e.problem}; {hint}") from None
  finally:
    ckpts.close()
  return config, engine, state, chosen
