"""The machinery shared by ``train``, ``evaluate`` and ``predict``: the device mesh, the jitted and
sharded step/predict functions of a task (:class:`Engine`), and loading a trained model from a workdir.
The programs' own set-up is :mod:`hdr_jax.cli`; whole-frame evaluation is :mod:`hdr_jax.evaluation`;
where the data is, :func:`hdr_jax.data.resolve_data`.

Data parallelism: one mesh axis ``data`` over all devices of all processes. The batch is sharded
along ``data``; parameters and optimiser state are replicated. Every function is a plain
``jax.jit`` with ``NamedSharding`` in/out shardings (no ``pmap``).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx
from jax.experimental import multihost_utils
from jax.sharding import NamedSharding, PartitionSpec as P

from hdr_jax import config_base, hdr_math
from hdr_jax import fileio
from hdr_jax import tasks


def make_mesh() -> jax.sharding.Mesh:
  # Auto axis type: XLA propagates shardings through the model (the batch axis is the only sharded one).
  return jax.make_mesh((jax.device_count(),), ("data",), axis_types=(jax.sharding.AxisType.Auto,))


def to_host(x) -> np.ndarray:
  """A (possibly multi-process, sharded) array as a full NumPy array on every process."""
  if isinstance(x, jax.Array) and not x.is_fully_addressable:
    return np.asarray(multihost_utils.process_allgather(x, tiled=True))
  return np.asarray(x)


class Engine:
  """A task's bundle on a mesh, with its jitted train and predict functions.

  Everything is built at construction and has no effect outside the object (no JAX setting is changed;
  programs set up the process with :mod:`hdr_jax.cli`):

  * ``graphdef``: the bundle's structure, traced abstractly (no parameter is computed), so a state from
    :meth:`init_state` or a checkpoint merges with it (:meth:`bundle`);
  * ``train_step(state, batch, key) -> (state, metrics)``: the jitted, sharded train step (the state is
    donated); ``batch`` from :meth:`global_batch`;
  * ``predict_step(state, frames, exposures, key)`` and ``estimate_step`` (the deterministic estimate, same
    arguments, the key unused):
    the jitted predict on device arrays sharded along ``data``, which :meth:`predict` and
    :meth:`predict_estimate` run on host arrays; their ``.lower(...)`` is the program they compile;
  * :meth:`param_count`: the trained parameters of a state (``task.param_state``).
  """

  def __init__(self, config, task=None, mesh=None):
    self.config = config
    self.task = task or tasks.get_task(config)
    self.mesh = mesh or make_mesh()
    self.replicated = NamedSharding(self.mesh, P())
    self.data_sharding = NamedSharding(self.mesh, P("data"))
    self.num_shards = self.mesh.shape["data"]
    # The bundle's structure from an abstract trace of its construction (shapes only; the key's value
    # does not matter), so the jitted functions below exist before any state does.
    self.graphdef, _ = nnx.split(nnx.eval_shape(lambda: self.task.create(jax.random.key(0))))
    self.train_step = self._make_train()
    self.predict_step = self._make_predict()
    self.estimate_step = self._make_predict(estimate=True)

  # ---------------------------------------------------------------------------------------------
  def init_state(self, key) -> nnx.State:
    """Creates the task's bundle and returns its state, replicated over the mesh."""
    # Initialised in one compiled program directly into its sharding (eager construction compiles one
    # small program per distinct parameter shape, which is slow).
    # Non-partitionable threefry: XLA compiles this program much faster on CPU (the state is
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
    """The task's bundle (networks and optimisers) of ``state``."""
    return nnx.merge(self.graphdef, state)

  def load_feature_extractor(self, state, workdir) -> nnx.State:
    """``state`` with a pretrained feature extractor (``config.init.feature_extractor``: the latest
    checkpoint of ``workdir``) copied to the paths the task declares (``task.feature_extractor_paths``,
    :func:`hdr_jax.pretrain.load_feature_extractor`); ValueError where the task takes none."""
    from hdr_jax import pretrain

    paths = self.task.feature_extractor_paths
    if not paths:
      raise ValueError(f"config.init.feature_extractor={workdir}: {self.task.feature_extractor_refusal}")
    return pretrain.load_feature_extractor(state, workdir, paths, config=self.config, sharding=self.replicated)

  def param_count(self, state) -> int:
    """How many trained parameters ``state`` holds (``task.param_state``: an EMA copy or a frozen part is
    not counted)."""
    from clu import parameter_overview

    return int(parameter_overview.count_parameters(self._trained(state)))

  def param_overview(self, state) -> str:
    """The table of trained parameters (name, shape, dtype, size, mean, std; ``clu.parameter_overview``)."""
    from clu import parameter_overview

    return parameter_overview.get_parameter_overview(self._trained(state))

  def receptive_radius(self, state) -> int | None:
    """How far (pixels) an output pixel sees into the input, for tiled prediction; None for a model
    that is not translation-local (it then predicts whole frames)."""
    return self.task.receptive_radius(self.bundle(state))

  def _trained(self, state) -> dict:
    return self.task.param_state(self.bundle(state)).to_pure_dict()

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
    return self._run(self.predict_step, state, frames_u8, exposures, key)

  @property
  def has_estimate(self) -> bool:
    """Whether predictions refine a deterministic estimate (:meth:`predict_estimate`): a DDPM around
    the classical merge or a regression head."""
    return bool(self.task.has_estimate)

  def predict_estimate(self, state, frames_u8: np.ndarray, exposures: np.ndarray) -> np.ndarray:
    """The deterministic estimate a task's prediction refines (:attr:`has_estimate`), as :meth:`predict`."""
    return self._run(self.estimate_step, state, frames_u8, exposures, None)

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
# Loading a trained model
# -------------------------------------------------------------------------------------------------


def load_from_workdir(workdir, step: int | str | None = None, config_overrides: dict | None = None, *,
                      prepare=None):
  """``(config, engine, state, step)`` for a workdir's checkpoint: ``step`` an int, ``'latest'``
  (default) or ``'best'`` (by validation PSNR-mu). ``prepare(config)``, when given, runs just before the
  Engine is built: a program sets up the process there (:func:`hdr_jax.cli.use_compilation_cache`)."""
  from hdr_jax import checkpoint

  config = config_base.apply_overrides(checkpoint.load_config(workdir), config_overrides)
  ckpts = checkpoint.Checkpoints(workdir, read_only=True)
  if step in (None, "latest"):
    chosen = ckpts.latest_step()
  elif step == "best":
    chosen = ckpts.best_step() or ckpts.latest_step()
  else:
    chosen = int(step)
  if chosen is None:
    raise fileio.DataError(ckpts.directory, "no checkpoint found in this workdir")
  if prepare is not None:
    prepare(config)
  engine = Engine(config)
  state = engine.init_state(jax.random.key(config.seed))
  try:
    state, _ = ckpts.restore(chosen, state, sharding=engine.replicated)
  except checkpoint.DamagedCheckpoint as e:  # read-only: name it and point at the others, move nothing
    others = [s for s in ckpts.all_steps() if s != chosen]
    hint = (f"use --step={others[-1]} (available: {', '.join(map(str, others))})" if others
            else "no other checkpoint in this workdir")
    raise fileio.DataError(e.path, f"{e.problem}; {hint}") from None
  finally:
    ckpts.close()
  return config, engine, state, chosen
