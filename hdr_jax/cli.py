"""What the programs (``train``, ``evaluate``, ``predict``, ``convert``, the notebook API and the
benchmarks) set up around the library, kept out of the engine so that building an Engine changes no
process-wide state: the absl entry point (flag parsing, one-line errors, quiet logging), the
``--config.KEY=VALUE`` overrides of the programs that load their config from a workdir,
``jax.distributed`` initialisation, and JAX's persistent compilation cache.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import jax

from hdr_jax import fileio

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
    setting = str(fileio.default_cache_dir() / "xla")
  if not fileio.is_remote(setting):
    try:
      Path(setting).expanduser().mkdir(parents=True, exist_ok=True)
    except OSError as e:
      raise ValueError(f"config.compilation_cache={setting!r}: cannot create the directory ({e})") from None
    setting = str(Path(setting).expanduser())
  if jax.config.jax_compilation_cache_dir != setting:
    jax.config.update("jax_compilation_cache_dir", setting)
  return setting


def use_compilation_cache(config) -> str | None:
  """:func:`setup_compilation_cache` with ``config.compilation_cache`` (``'auto'`` where the config has no
  such key): what a program calls once it has its config and before it builds an Engine."""
  return setup_compilation_cache(config.get("compilation_cache", "auto"))


CONFIG_OVERRIDE = "--config."


def split_config_overrides(argv) -> tuple[list, list]:
  """``(argv without its --config.KEY=VALUE arguments, ["KEY=VALUE", ...])``; what follows ``--`` is left
  alone. For the programs whose config comes from a workdir or a shipped model rather than a config
  file (evaluate, predict, convert, the benchmarks): the trainer's ``--config.KEY=VALUE`` syntax, taken
  out before absl or argparse sees the command line and applied to the loaded config
  (:func:`parse_overrides`, ``config_base.apply_overrides``)."""
  rest, items = [], []
  for i, a in enumerate(argv):
    if a == "--":
      rest += argv[i:]
      break
    if a.startswith(CONFIG_OVERRIDE):
      items.append(a[len(CONFIG_OVERRIDE):])
    else:
      rest.append(a)
  return rest, items


def parse_overrides(items, flag: str = CONFIG_OVERRIDE) -> dict:
  """``["a.b=1", "c=x"]`` -> ``{"a.b": 1, "c": "x"}`` (JSON values where they parse); ``flag`` is how the
  items were written, for the error message (``--config.`` for :func:`split_config_overrides`)."""
  out = {}
  for item in items:
    if "=" not in item:
      raise ValueError(f"{flag}{item}: expected {flag}KEY=VALUE")
    k, v = item.split("=", 1)
    try:
      out[k] = json.loads(v)
    except json.JSONDecodeError:
      out[k] = v
  return out


# XLA:CPU's YNNPACK fusions (on by default in jaxlib 0.10) make the convolution-heavy train steps of
# these models slower on CPU: with them off the steps run faster (measured in benchmarks/RESULTS.md).
# A CPU-only flag: GPU and TPU backends ignore it.
CPU_XLA_FLAGS = ("--xla_cpu_experimental_ynn_fusion_type=",)
_CPU_FLAGS_SINCE = (0, 10)  # the jaxlib releases measured with this flag; older ones may not know it


def set_cpu_xla_flags(environ=None) -> str:
  """Adds ``CPU_XLA_FLAGS`` to ``XLA_FLAGS`` (before JAX starts its backends) unless the user's
  ``XLA_FLAGS`` already sets them; returns the resulting value. Entry points call it, the library does
  not: a notebook user's JAX stays as configured (README, Speed)."""
  import jaxlib

  environ = os.environ if environ is None else environ
  current = environ.get("XLA_FLAGS", "")
  version = tuple(int(p) for p in jaxlib.__version__.split(".")[:2] if p.isdigit())
  if version < _CPU_FLAGS_SINCE:
    return current
  added = [f for f in CPU_XLA_FLAGS if f.split("=", 1)[0] not in current]
  if added:
    environ["XLA_FLAGS"] = " ".join([current, *added]).strip()
  return environ.get("XLA_FLAGS", "")


def run_cli(body, argv=None, required=(), config_overrides=False) -> None:
  """The absl entry point shared by train/evaluate/predict/convert: rejects stray arguments, checks
  ``required`` flags, quiets library logging, and turns an input problem (``DataError``,
  ``ValueError``, ``KeyError``, ``FloatingPointError``) into one ``error: ...`` line and exit code 1.
  Sets the CPU XLA flags first (``set_cpu_xla_flags``). With ``config_overrides`` (a program whose
  config is loaded, not given as a config flag) the ``--config.KEY=VALUE`` arguments are taken out of
  the command line before absl parses it (:func:`split_config_overrides`) and ``body`` is called with
  them as a dict (:func:`parse_overrides`) to apply to the config it loads."""
  import sys

  from absl import app

  argv = list(sys.argv if argv is None else argv)
  items = []
  if config_overrides:
    argv, items = split_config_overrides(argv)

  def _main(args):
    if len(args) > 1:
      raise app.UsageError(f"unexpected arguments: {args[1:]}")
    quiet_logging()
    for f in required:
      if f.value is None or f.value == "":
        raise app.UsageError(f"--{f.name} is required")
    try:
      if config_overrides:
        body(parse_overrides(items))
      else:
        body()
    except (ValueError, KeyError, FloatingPointError) as e:  # DataError is a ValueError
      print(f"error: {e}", file=sys.stderr, flush=True)
      sys.exit(1)

  set_cpu_xla_flags()
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
