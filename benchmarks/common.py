"""Small helpers shared by the benchmarks: timing, device/version description, tables and JSON.

Timing follows one rule everywhere: warm up first (compilation excluded), wait for the device after
every timed repeat (``jax.block_until_ready`` or a given ``sync``), report the median of the repeats
(per iteration) with min and max beside it.
"""

from __future__ import annotations

import datetime
import importlib.metadata
import json
import os
import platform
import statistics
import subprocess
import threading
import time
from pathlib import Path

_PACKAGES = ("jax", "jaxlib", "jax-cuda12-plugin", "jax-cuda13-plugin", "flax", "optax", "numpy", "torch", "grain",
             "tensorflow-datasets", "orbax-checkpoint", "opencv-python-headless")


def engine(config):
  """The trainer's Engine for ``config``, its task prepared as the trainer prepares it (l-DAE's PCA basis
  fitted on the config's training data, the embedded dataset by default), so a benchmark measures the
  model a run trains; compiled programs are cached as the trainer caches them."""
  from hdr_jax import cli, data, tasks
  from hdr_jax import engine as engine_lib

  cli.use_compilation_cache(config)
  task = tasks.get_task(config)
  if task.prepares_from_data:
    task.prepare(data.resolve_data(config)[0])
  return engine_lib.Engine(config, task=task)


def time_repeats(fn, *, repeats: int, warmup: int = 1, iters: int = 1, sync=None) -> dict:
  """Runs ``fn()`` ``warmup`` times, then ``repeats`` times ``iters`` calls; waits for the result of the
  last call of each repeat (``sync(result)``, default ``jax.block_until_ready``) before reading the clock.
  Returns seconds per call: ``median_s``, ``min_s``, ``max_s`` and every repeat's ``times_s``."""
  if sync is None:
    import jax

    sync = jax.block_until_ready
  for _ in range(warmup):
    sync(fn())
  times = []
  for _ in range(max(1, repeats)):
    start = time.perf_counter()
    for _ in range(iters):
      out = fn()
    sync(out)
    times.append((time.perf_counter() - start) / iters)
  return {"median_s": statistics.median(times), "min_s": min(times), "max_s": max(times), "repeats": len(times),
          "iters": iters, "warmup": warmup, "times_s": times}


def timed(fn, sync=None):
  """``(result, seconds)`` of one call of ``fn()``, waiting for the result (compile + first run)."""
  if sync is None:
    import jax

    sync = jax.block_until_ready
  start = time.perf_counter()
  out = fn()
  sync(out)
  return out, time.perf_counter() - start


def versions() -> dict:
  """Installed versions of the packages the benchmarks touch (read from metadata, nothing imported)."""
  out = {"python": platform.python_version()}
  for name in _PACKAGES:
    try:
      out[name] = importlib.metadata.version(name)
    except importlib.metadata.PackageNotFoundError:
      pass
  return out


def git_revision(root) -> str | None:
  """``HEAD`` of the checkout at ``root`` (``+dirty`` when tracked files differ), or None outside git."""
  try:
    rev = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=root, capture_output=True, text=True,
                         timeout=10, check=True).stdout.strip()
    dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=root,
                           capture_output=True, text=True, timeout=10, check=True).stdout.strip()
  except (OSError, subprocess.SubprocessError):
    return None
  return rev + ("+dirty" if dirty else "")


def device_info() -> dict:
  """The JAX backend, its devices and the host (CPUs, platform)."""
  import jax

  devs = jax.devices()
  info = {"platform": devs[0].platform, "device_kind": devs[0].device_kind, "device_count": len(devs),
          "process_count": jax.process_count(), "cpus": os.cpu_count(), "host": platform.platform(),
          "default_matmul_precision": str(jax.config.jax_default_matmul_precision)}
  stats = memory_stats(devs[0])
  if stats and "bytes_limit" in stats:
    info["memory_bytes_limit"] = int(stats["bytes_limit"])
  return info


def memory_stats(device) -> dict | None:
  """``device.memory_stats()`` where the backend provides it (GPU/TPU), else None."""
  try:
    return device.memory_stats() or None
  except (AttributeError, NotImplementedError, RuntimeError):
    return None


def peak_bytes(device) -> int | None:
  """The device allocator's high-water mark since process start (it cannot be reset), or None."""
  stats = memory_stats(device)
  return int(stats["peak_bytes_in_use"]) if stats and "peak_bytes_in_use" in stats else None


def bytes_in_use(device) -> int | None:
  stats = memory_stats(device)
  return int(stats["bytes_in_use"]) if stats and "bytes_in_use" in stats else None


def rss_bytes() -> int | None:
  """This process's current resident memory (Linux ``/proc/self/statm``), or None elsewhere."""
  try:
    return int(Path("/proc/self/statm").read_text().split()[1]) * os.sysconf("SC_PAGE_SIZE")
  except (OSError, ValueError, IndexError):
    return None


class RssPeak:
  """Context manager sampling the current resident memory every ``interval`` seconds in a thread:
  ``growth`` = highest sample - resident memory at entry (host-side peak of what ran inside; short
  spikes between samples can be missed)."""

  def __init__(self, interval: float = 0.002):
    self.interval = interval
    self.start = self.peak = None
    self._stop = threading.Event()

  def _run(self):
    while not self._stop.wait(self.interval):
      self.peak = max(self.peak, rss_bytes())

  def __enter__(self):
    self.start = self.peak = rss_bytes()
    if self.start is not None:
      self._thread = threading.Thread(target=self._run, daemon=True)
      self._thread.start()
    return self

  def __exit__(self, *exc):
    if self.start is not None:
      self._stop.set()
      self._thread.join()
      self.peak = max(self.peak, rss_bytes())

  @property
  def growth(self) -> int | None:
    return None if self.start is None else self.peak - self.start


def cost_flops(compiled) -> float | None:
  """FLOPs from XLA's cost analysis of a compiled (or lowered) computation; None when unavailable."""
  try:
    ca = compiled.cost_analysis()
  except Exception:  # noqa: BLE001 - backends differ in what they support
    return None
  if isinstance(ca, (list, tuple)):  # older jax: one dict per computation
    ca = ca[0] if ca else None
  if not ca or "flops" not in ca:
    return None
  return float(ca["flops"])


def _jaxpr_flops(jaxpr) -> float:
  """Multiply-add FLOPs (2 per MAC) of the convolutions and matrix products in a jaxpr, recursing into
  nested jaxprs (jit, custom derivatives, remat; a scan counts ``length`` times, a cond its costliest
  branch, a while loop's body once)."""
  import math

  from jax.extend import core as jcore

  def sub(value):
    if isinstance(value, jcore.ClosedJaxpr):
      return [value.jaxpr]
    if isinstance(value, jcore.Jaxpr):
      return [value]
    if isinstance(value, (tuple, list)):
      return [j for v in value for j in sub(v)]
    return []

  total = 0.0
  for eqn in jaxpr.eqns:
    name = eqn.primitive.name
    if name == "conv_general_dilated":
      rhs, out = eqn.invars[1].aval, eqn.outvars[0].aval
      spec = eqn.params["dimension_numbers"].rhs_spec  # (out features, in features, spatial...)
      per_output = rhs.shape[spec[1]] * math.prod(rhs.shape[d] for d in spec[2:])
      total += 2.0 * math.prod(out.shape) * per_output / max(1, eqn.params.get("batch_group_count", 1))
    elif name == "dot_general":
      (contract, _), _ = eqn.params["dimension_numbers"]
      lhs, out = eqn.invars[0].aval, eqn.outvars[0].aval
      total += 2.0 * math.prod(out.shape) * math.prod(lhs.shape[d] for d in contract)
    if name == "cond":
      total += max((_jaxpr_flops(j) for j in sub(eqn.params["branches"])), default=0.0)
      continue
    inner = sum(_jaxpr_flops(j) for v in eqn.params.values() for j in sub(v))
    total += inner * (eqn.params.get("length", 1) if name == "scan" else 1)
  return total


def model_flops(fn, *args) -> float | None:
  """FLOPs of ``fn(*args)`` counted from its jaxpr: 2 per multiply-accumulate of every convolution and
  matrix product (the usual "model FLOPs" of MFU; elementwise work is not counted). Unlike XLA's cost
  analysis this does not depend on the backend: a GPU executable's analysis omits the convolutions
  that run as cuDNN calls. None if ``fn`` cannot be traced."""
  import jax

  try:
    return _jaxpr_flops(jax.make_jaxpr(fn)(*args).jaxpr)
  except Exception:  # noqa: BLE001 - a benchmark row without FLOPs rather than no row
    return None


def xla_memory(compiled) -> dict | None:
  """XLA's static buffer sizes of a compiled computation (arguments, outputs, temporaries), in bytes."""
  try:
    m = compiled.memory_analysis()
  except Exception:  # noqa: BLE001
    return None
  if m is None:
    return None
  keys = ("argument_size_in_bytes", "output_size_in_bytes", "alias_size_in_bytes", "temp_size_in_bytes")
  out = {k.removesuffix("_size_in_bytes"): int(getattr(m, k)) for k in keys if hasattr(m, k)}
  if {"argument", "output", "alias", "temp"} <= out.keys():
    out["total"] = out["argument"] + out["output"] - out["alias"] + out["temp"]
  return out


def matmul_peak_tflops(dtype_name: str, n: int, repeats: int = 5, iters: int = 10) -> dict:
  """The device's measured dense matmul rate: an ``n x n @ n x n`` product in ``dtype_name`` at JAX's
  default precision (random operands), median of ``repeats``; TFLOP/s counting ``2 n^3`` per product."""
  import jax
  import jax.numpy as jnp

  dtype = jnp.dtype(dtype_name)
  ka, kb = jax.random.split(jax.random.key(0))
  a = jax.random.normal(ka, (n, n), jnp.float32).astype(dtype)
  b = jax.random.normal(kb, (n, n), jnp.float32).astype(dtype)
  mm = jax.jit(lambda x, y: x @ y)
  t = time_repeats(lambda: mm(a, b), repeats=repeats, warmup=2, iters=iters)
  return {"dtype": dtype_name, "n": n, "tflops": 2 * n**3 / t["median_s"] / 1e12, "ms": 1e3 * t["median_s"]}


def utc_now() -> str:
  return datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")


def write_json(path, obj) -> Path:
  """Writes ``obj`` as indented JSON atomically (a partial run never leaves a truncated file)."""
  path = Path(path)
  path.parent.mkdir(parents=True, exist_ok=True)
  tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
  tmp.write_text(json.dumps(obj, indent=2, default=str))
  os.replace(tmp, path)
  return path


def fmt(value, spec: str = ".1f", missing: str = "-") -> str:
  """``format(value, spec)``, or ``missing`` for None/NaN."""
  if value is None or (isinstance(value, float) and value != value):
    return missing
  return format(value, spec)


def fmt_bytes(n, missing: str = "-") -> str:
  if n is None:
    return missing
  for unit, scale in (("GiB", 2**30), ("MiB", 2**20), ("KiB", 2**10)):
    if abs(n) >= scale:
      return f"{n / scale:.2f} {unit}"
  return f"{n} B"


def table(headers, rows) -> str:
  """A plain text table: right-aligned columns (the first left-aligned), one header line and a rule."""
  cells = [[str(h) for h in headers]] + [[str(c) for c in r] for r in rows]
  widths = [max(len(r[i]) for r in cells) for i in range(len(headers))]

  def line(r):
    return "  ".join(c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(r, widths))).rstrip()

  return "\n".join([line(cells[0]), "  ".join("-" * w for w in widths).rstrip()] + [line(r) for r in cells[1:]])


# Input pipeline: the training sources over a synthesised NTIRE folder, and their delivered rate
# (benchmarks/input_pipeline.py).

PIPELINE_SOURCES = ("png", "tiles", "prepared/tfds", "prepared/array_record")


def folder_bytes(path: Path) -> int:
  return sum(p.stat().st_size for p in Path(path).rglob("*") if p.is_file())


def pipeline_sources(folder, workdir, wanted, *, tile: int = 128, verbose: bool = True) -> tuple[dict, dict]:
  """Opens the ``wanted`` training sources (names from ``PIPELINE_SOURCES``, in the given order) over the
  NTIRE ``folder``, preparing what they need under ``workdir`` (kept if already there).

  Returns ``(sources, prepared)``: name -> ``hdr_jax.data`` source, and per prepared format (``tiles``,
  ``array_record``) ``{'prepare_s', 'bytes'}``, or ``{'error'}`` when preparing it failed (for example
  a dependency of tensorflow_datasets missing on the host) or ``{'skipped'}`` when
  tensorflow_datasets is not installed. A format that could not be prepared leaves its sources out;
  the others are still opened.
  """
  import importlib.util

  from hdr_jax import data, tiles

  unknown = [s for s in wanted if s not in PIPELINE_SOURCES]
  if unknown:
    raise ValueError(f"unknown pipeline sources {unknown}; choose from {list(PIPELINE_SOURCES)}")
  folder, workdir = Path(folder), Path(workdir)
  sources, prepared = {}, {}
  if "tiles" in wanted:
    start = time.perf_counter()
    tiled = workdir / f"tiles{tile}"
    if not (tiled / tiles.INDEX).is_file():
      tiles.prepare(folder, tiled, tile=tile, verbose=False)
    prepared["tiles"] = {"prepare_s": time.perf_counter() - start, "bytes": folder_bytes(tiled)}
  backends = [s.split("/")[1] for s in wanted if s.startswith("prepared/")]
  version_dir = None
  if backends and importlib.util.find_spec("tensorflow_datasets") is None:
    prepared["array_record"] = {"skipped": "tensorflow_datasets is not installed"}
  elif backends:
    try:
      from hdr_jax import tfds_ntire

      start = time.perf_counter()
      version_dir = tfds_ntire.prepare(folder, workdir / "tfds")
      prepared["array_record"] = {"prepare_s": time.perf_counter() - start, "bytes": folder_bytes(version_dir)}
    except Exception as e:  # noqa: BLE001 - the other sources go on
      prepared["array_record"] = {"error": f"{type(e).__name__}: {e}".splitlines()[0]}
  for name in dict.fromkeys(wanted):
    if name == "png":
      sources[name] = data.NtireSource(folder, decode=False)
    elif name == "tiles":
      sources[name] = data.open_prepared(workdir / f"tiles{tile}")
    elif version_dir is not None:
      sources[name] = data.PreparedSource(version_dir, "train", backend=name.split("/")[1])
  if verbose:
    for name, p in prepared.items():
      if "error" in p:
        print(f"pipeline {name}: FAILED {p['error']}", flush=True)
      elif "skipped" in p:
        print(f"pipeline {name}: skipped: {p['skipped']}", flush=True)
  return sources, prepared


def delivered_rate(source, *, patch: int, batch: int, workers: int, crops: int = 1, threads: int = 1,
                   prefetch: int = 2, warmup: int = 2, batches: int = 12) -> dict:
  """Steady-state crops/s of ``hdr_jax.data.make_train_iterator`` over ``source``: ``warmup`` batches
  (worker start-up, the first burst) untimed, then ``batches`` timed."""
  from hdr_jax import data

  start = time.perf_counter()
  it = data.make_train_iterator(source, patch_size=patch, global_batch_size=batch, seed=0, num_workers=workers,
                                num_threads=threads, prefetch=prefetch, crops_per_scene=crops)
  try:
    for _ in range(warmup):
      next(it)
    startup = time.perf_counter() - start
    start = time.perf_counter()
    for _ in range(batches):
      next(it)
    elapsed = time.perf_counter() - start
  finally:
    close = getattr(it, "close", None)
    if close:
      close()
  return {"workers": workers, "crops_per_scene": crops, "threads": threads, "batches": batches,
          "crops_per_s": batches * batch / elapsed, "ms_per_batch": 1e3 * elapsed / batches, "startup_s": startup}


# The PyTorch peer in its variants (benchmarks/models.py and benchmarks/diffusion_sampling.py): the same
# names, settings and "best" ratio in both, so every comparison is against the strongest configuration
# of its run.

TORCH_COMPILE_MODES = {"compile": "default", "reduce-overhead": "reduce-overhead", "max-autotune": "max-autotune"}


def torch_device() -> str:
  """``"cuda"`` when this torch build sees a GPU, else ``"cpu"``."""
  import torch

  return "cuda" if torch.cuda.is_available() else "cpu"


def torch_sync(device: str) -> None:
  """Waits for the device's queued work (a no-op on CPU, where torch runs synchronously)."""
  if device == "cuda":
    import torch

    torch.cuda.synchronize()


def torch_compile(fn, variant: str):
  """``fn`` as ``variant`` runs it: ``torch.compile`` in the mode :data:`TORCH_COMPILE_MODES` names
  (``reduce-overhead``: CUDA graphs on a GPU), shapes specialised (``dynamic=False``: a second input
  shape compiles a kernel of its own instead of a slower dynamic-shape one); other variants unchanged."""
  if variant not in TORCH_COMPILE_MODES:
    return fn
  import torch

  return torch.compile(fn, mode=TORCH_COMPILE_MODES[variant], dynamic=False)


def torch_settings() -> dict:
  """What decides torch's speed besides the variant: threads and the cuDNN/TF32 switches."""
  import torch

  return {"version": torch.__version__, "threads": torch.get_num_threads(),
          "cudnn_benchmark": bool(torch.backends.cudnn.benchmark),
          "cudnn_allow_tf32": bool(torch.backends.cudnn.allow_tf32),
          "matmul_allow_tf32": bool(torch.backends.cuda.matmul.allow_tf32)}


def speed_ratios(ours_s: float, peers_s: dict) -> dict:
  """Speed of ours against each peer, ``peer time / our time`` (> 1: ours faster), keyed by the peer's
  variant, plus ``best``: against the fastest peer (the strongest one) where more than one was measured.
  Peers without a time (failed, skipped) are left out."""
  ratios = {k: s / ours_s for k, s in peers_s.items() if s and ours_s}
  if len(ratios) > 1:
    ratios["best"] = min(ratios.values())
  return ratios
