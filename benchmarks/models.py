"""Model throughput: train step, full-frame inference, FLOPs/MFU and memory for each model and dtype.

For every model (a config in ``configs/``) and dtype (``config.dtype``), in this one process:

* train: the jitted train step of :class:`hdr_jax.engine.Engine` (the trainer's own step, batch placed
  with ``engine.global_batch``) on a random uint8 batch of ``--batch`` x ``--patch``^2 crops; ms/step
  is the median over ``--repeats`` repeats of ``--iters`` back-to-back steps, after the first call
  (trace + compile + one step, reported as ``compile s`` = first call - one step) and ``--warmup`` steps;
* infer: the engine's jitted predict on one ``(1, 3, H, W, 3)`` frame (default 1060x1900), device latency
  (inputs on device) and end to end (``engine.predict``: host uint8 in, host HDR out), measured in a
  fresh subprocess per model and dtype so that its peak device memory is its own (the allocator's
  high-water mark cannot be reset; the train peaks are this process's high-water mark after each
  train phase, shown as ``<=`` when an earlier phase set it); on CPU each phase reports the growth of
  the host's resident memory over it (sampled; compilation included) instead, and every row also
  carries XLA's static buffer sizes;
* model FLOPs counted from the jaxpr (``common.model_flops``: 2 per multiply-accumulate of every
  convolution and matrix product): per frame, of the engine's predict; per train step, of the train
  step's own jaxpr, forward and backward (``flops_forward`` stays in the JSON beside it: 3 x that, the
  usual estimate, agrees to within 1 % for the regression models at benchmark sizes). XLA's own cost
  analyses (``flops_xla`` of the executable, ``flops_xla_hlo`` of the lowered program) stay in the
  JSON, flagged ``*`` when they differ by > 25 %: a GPU executable's analysis omits the convolutions
  that run as cuDNN calls. MFU = FLOPs / time / peak, the peak measured per dtype with a large matmul
  (``--peak_tflops=auto``) or given (``--peak_tflops=989`` or
  ``--peak_tflops=float32=495,bfloat16=989``).

``--torch``: the official PyTorch AHDRNet (tests/torch_ahdr_reference.py) on the same device (CUDA if
available), Adam + mu-law L1, same batch and frame, in two variants: ``eager`` as the official code runs
it (NCHW, Adam's default implementation) and ``tuned`` (channels_last model and inputs, fused Adam);
float32 with PyTorch's defaults (TF32 allowed in convolutions: ``cudnn.allow_tf32``) and bfloat16
``torch.autocast``; ``cudnn.benchmark`` on unless ``--no_torch_cudnn_benchmark`` (XLA autotunes its
convolutions too). ``--torch_compile`` adds ``torch.compile`` of the tuned model (shapes specialised, so
the frame compiles its own static kernels after the train step's; skipped with the error recorded when it
fails). Full-frame inference runs each variant's model (channels_last, compiled) under
``torch.inference_mode`` and, for bfloat16 rows, the same autocast. JAX rows of ``ahdrnet`` show the
speed ratio JAX/PyTorch = PyTorch time / JAX time (> 1: JAX faster) against each variant and against the
fastest one of the run (``best``, the strongest peer).

  python benchmarks/models.py                                          # GPU: all models, f32 + bf16
  python benchmarks/models.py --batch=2 --patch=64 --height=64 --width=96 --repeats=2 --torch  # CPU check
  python benchmarks/models.py --summary=benchmarks/out/models.json     # print the tables of a JSON

``--config.KEY=VALUE`` (repeatable) overrides a config value for every model, as the trainer's flag does;
``--models=NAME@KEY=VALUE`` for one entry only.

Writes JSON (``--json``, rewritten after every measurement so a killed run keeps what it measured) with
the device, versions, date, settings, measured peaks and one row per (model, dtype, framework).
"""

from __future__ import annotations

import argparse
import contextlib
import gc
import importlib.util
import json
import math
import os
import signal
import subprocess
import sys
import time
import traceback
from pathlib import Path

# Before jax is imported (here or in a worker): grow the device pool on demand, so that the
# inference subprocess finds memory and peak_bytes_in_use measures what was used.
os.environ.setdefault("XLA_PYTHON_CLIENT_PREALLOCATE", "false")

import numpy as np  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(Path(__file__).resolve().parent)]

import common  # noqa: E402

from hdr_jax.constants import GAMMA, MU  # noqa: E402

_MARK = "@@MODELS_BENCH_RESULT@@ "
class Terminated(Exception):
  """SIGTERM (e.g. from ``timeout``): stop, keep what was measured."""


def _on_sigterm(signum, frame):
  raise Terminated(f"signal {signum}")


def _error(e: BaseException) -> str:
  tb = traceback.format_exception(type(e), e, e.__traceback__)
  return f"{type(e).__name__}: {e}"[:2000] + "\n" + "".join(tb[-3:])[-2000:]


# --------------------------------------------------------------------------------------------------
# Inputs and configs
# --------------------------------------------------------------------------------------------------


def split_model_spec(spec: str, overrides: dict) -> tuple[str, dict]:
  """``"ahdrnet@model.dense_form=scatter"`` -> ``("ahdrnet", {**overrides, "model.dense_form": "scatter"})``:
  a config name with overrides of its own (``@KEY=VALUE``, repeatable: the per-entry form of
  ``--config.KEY=VALUE``, values parsed the same way), so one run can measure variants of a model side by
  side."""
  from hdr_jax import cli

  name, *sets = spec.split("@")
  try:
    return name, {**overrides, **cli.parse_overrides(sets, flag="@")}
  except ValueError as e:
    raise SystemExit(f"--models: {spec!r}: {e}") from None


def load_config(name: str, dtype: str, batch: int, patch: int, overrides: dict):
  """``configs/<name>.py``'s config (``NAME:ARG``: its variant ``get_config(ARG)``, as ``diffusion:full``)
  with ``dtype``, ``batch_size``, ``data.patch_size`` and the overrides (``--config.KEY=VALUE``, ``NAME@KEY=VALUE``)."""
  from hdr_jax import config_base

  stem, _, arg = name.partition(":")
  path = ROOT / "configs" / f"{stem}.py"
  if not path.is_file():
    raise FileNotFoundError(f"--models={name}: no config {path}")
  config = config_base.load_config_file(path, arg)
  config.dtype = dtype
  config.batch_size = batch
  config.data.patch_size = patch
  config.progress = False
  return config_base.apply_overrides(config, overrides)


def synthetic_batch(batch: int, size_hw: tuple[int, int], seed: int = 0) -> dict:
  """Random uint8 frames (never zeros), exposures [-2, 0, 2] stops, gamma-domain targets in [0, 1.2)."""
  rng = np.random.default_rng(seed)
  h, w = size_hw
  return {"frames": rng.integers(0, 256, (batch, 3, h, w, 3), dtype=np.uint8),
          "exposures": np.tile(np.float32([-2.0, 0.0, 2.0]), (batch, 1)),
          "gt": rng.uniform(0.0, 1.2, (batch, h, w, 3)).astype(np.float32)}


# --------------------------------------------------------------------------------------------------
# JAX: train step (this process) and full-frame inference (a worker process)
# --------------------------------------------------------------------------------------------------


def jax_train(name: str, dtype: str, args, overrides: dict) -> dict:
  import jax

  dev = jax.devices()[0]
  peak_before = common.peak_bytes(dev)
  config = load_config(name, dtype, args.batch, args.patch, overrides)
  eng = common.engine(config)
  start = time.perf_counter()
  state = jax.block_until_ready(eng.init_state(jax.random.key(config.seed)))
  init_s = time.perf_counter() - start
  n_params = eng.param_count(state)
  batch = eng.global_batch(synthetic_batch(args.batch, (args.patch, args.patch)))
  key = jax.random.key(1)
  holder = {"state": state}
  del state

  def step():
    holder["state"], metrics = eng.train_step(holder["state"], batch, key)
    return metrics

  def sync(metrics):
    return jax.block_until_ready((holder["state"], metrics))

  with common.RssPeak() as rss:
    _, first_s = common.timed(step, sync)
    lowered = eng.train_step.lower(holder["state"], batch, key)  # the engine's executable (compile cache hit)
    compiled = lowered.compile()
    t = common.time_repeats(step, repeats=args.repeats, warmup=args.warmup, iters=args.iters, sync=sync)
    metrics = jax.device_get(step())
  peak = common.peak_bytes(dev)
  # Model FLOPs: the convolutions and matrix products of the train step's own jaxpr, forward and backward
  # (nothing compiled). For a regression model this is the usual 3 x forward less the input gradients
  # nobody needs (0.24 % less for AHDRNet). Unlike 3 x forward it also holds for the GAN, whose step
  # trains a discriminator too, and for the DDPM, whose predict is a whole sampler. The forward's count
  # and XLA's own counts (which omit cuDNN convolutions on GPU) stay in the JSON.
  flops_train = common.model_flops(eng.train_step, holder["state"], batch, key)
  flops_fwd = common.model_flops(eng.predict_step, holder["state"], batch["frames"], batch["exposures"], key)
  flops_xla = common.cost_flops(compiled)
  out = {"ms_per_step": 1e3 * t["median_s"], "steps_per_s": 1 / t["median_s"],
         "crops_per_s": args.batch / t["median_s"], "min_ms": 1e3 * t["min_s"], "max_ms": 1e3 * t["max_s"],
         "first_call_s": first_s,
         "compile_s": max(0.0, first_s - t["median_s"]), "init_s": init_s, "timing": t,
         "flops": flops_train or (3 * flops_fwd if flops_fwd else flops_xla), "flops_train_jaxpr": flops_train,
         "flops_forward": flops_fwd, "flops_xla": flops_xla,
         "flops_xla_hlo": common.cost_flops(lowered),
         "xla_memory": common.xla_memory(compiled), "peak_bytes": peak, "rss_growth_bytes": rss.growth,
         "peak_set_here": None if peak is None else (peak_before is None or peak > peak_before),
         "loss": float(metrics["loss"]), "finite": bool(np.isfinite(metrics["loss"]) and metrics["params_finite"] == 1),
         "params": n_params, "batch": args.batch, "patch": args.patch}
  # Drop the references (closures above hold them) so gc can free device memory now.
  holder.clear()
  batch = compiled = lowered = None
  gc.collect()
  return out


def jax_infer(name: str, dtype: str, args, overrides: dict) -> dict:
  import jax

  dev = jax.devices()[0]
  config = load_config(name, dtype, args.batch, args.patch, overrides)
  eng = common.engine(config)
  state = jax.block_until_ready(eng.init_state(jax.random.key(config.seed)))
  n_params = eng.param_count(state)
  frame = synthetic_batch(1, (args.height, args.width), seed=1)
  frames, exposures = frame["frames"], frame["exposures"]
  in_use0, peak0 = common.bytes_in_use(dev), common.peak_bytes(dev)
  with common.RssPeak() as rss:
    pred, first_s = common.timed(lambda: eng.predict(state, frames, exposures), sync=lambda x: x)
    key = jax.random.key(config.seed)
    f_dev = jax.device_put(frames, eng.data_sharding)
    e_dev = jax.device_put(exposures, eng.data_sharding)
    lowered = eng.predict_step.lower(state, f_dev, e_dev, key)  # the executable engine.predict just compiled
    compiled = lowered.compile()
    t = common.time_repeats(lambda: eng.predict_step(state, f_dev, e_dev, key), repeats=args.repeats,
                            warmup=args.warmup)
    e2e = common.time_repeats(lambda: eng.predict(state, frames, exposures), repeats=max(1, min(args.repeats, 5)),
                              warmup=1, sync=lambda x: x)
  peak = common.peak_bytes(dev)
  return {"ms": 1e3 * t["median_s"], "min_ms": 1e3 * t["min_s"], "max_ms": 1e3 * t["max_s"],
          "e2e_ms": 1e3 * e2e["median_s"], "first_call_s": first_s, "compile_s": max(0.0, first_s - e2e["median_s"]),
          "timing": t, "flops": common.model_flops(eng.predict_step, state, f_dev, e_dev, key),
          "flops_xla": common.cost_flops(compiled), "flops_xla_hlo": common.cost_flops(lowered),
          "xla_memory": common.xla_memory(compiled), "peak_bytes": peak,
          "peak_set_here": None if peak is None else (peak0 is None or peak > peak0),
          "bytes_in_use_before": in_use0, "peak_bytes_before": peak0,
          "rss_growth_bytes": rss.growth, "finite": bool(np.all(np.isfinite(pred))),
          "output_shape": list(pred.shape), "params": n_params, "height": args.height, "width": args.width}


def infer_subprocess(name: str, dtype: str, args, timeout: float) -> dict:
  """:func:`jax_infer` in a fresh interpreter (its own device-memory high-water mark)."""
  cmd = [sys.executable, str(Path(__file__).resolve()), "--_worker=infer", f"--models={name}", f"--dtypes={dtype}",
         f"--batch={args.batch}", f"--patch={args.patch}", f"--height={args.height}", f"--width={args.width}",
         f"--repeats={args.repeats}", f"--warmup={args.warmup}",
         *[f"--config.{k}={json.dumps(v)}" for k, v in args.config_overrides.items()]]
  proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, cwd=ROOT)
  for line in proc.stdout.splitlines():
    if line.startswith(_MARK):
      result = json.loads(line[len(_MARK):])
      if "error" in result:
        raise RuntimeError(result["error"])
      return result
  raise RuntimeError(f"inference worker exited with {proc.returncode} and no result:\n{proc.stderr[-3000:]}")


# --------------------------------------------------------------------------------------------------
# PyTorch: the official AHDRNet
# --------------------------------------------------------------------------------------------------


def _torch_reference():
  spec = importlib.util.spec_from_file_location("torch_ahdr_reference", ROOT / "tests" / "torch_ahdr_reference.py")
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module


TORCH_VARIANTS = {"eager": "the official code's way: NCHW, Adam's default implementation",
                  "tuned": "channels_last model and inputs, fused Adam (foreach where fused is refused)",
                  "compile": "tuned + torch.compile (default mode, shapes specialised)"}


def torch_bench(dtype: str, args, variant: str) -> dict:
  """Train step and/or full-frame inference (``--phases``) of the official AHDRNet, ``variant`` one of
  :data:`TORCH_VARIANTS`."""
  import torch

  ref = _torch_reference()
  device = common.torch_device()
  cuda = device == "cuda"
  torch.backends.cudnn.benchmark = args.torch_cudnn_benchmark
  torch.manual_seed(0)
  model = ref.kaiming_init_(ref.AHDR()).to(device)
  tuned = variant in ("tuned", "compile")
  layout = torch.channels_last if tuned else torch.contiguous_format
  model = model.to(memory_format=layout)
  adam = dict(lr=1e-4, betas=(0.9, 0.999), eps=1e-8)
  adam_impl = "default"
  if tuned:
    try:
      opt = torch.optim.Adam(model.parameters(), fused=True, **adam)
      adam_impl = "fused"
    except (RuntimeError, ValueError):
      opt = torch.optim.Adam(model.parameters(), foreach=True, **adam)
      adam_impl = "foreach"
  else:
    opt = torch.optim.Adam(model.parameters(), **adam)
  net = common.torch_compile(model, variant)

  def sync(_=None):
    common.torch_sync(device)

  def autocast():
    if dtype == "bfloat16":
      return torch.autocast(device_type=device, dtype=torch.bfloat16)
    return contextlib.nullcontext()

  def forward(frames_u8, exposures):
    """The project's regression interface on the official network: linear HDR (B, 3, H, W) float32."""
    f = frames_u8.float() / 255.0  # (B, 3, H, W, 3)
    ev = exposures - exposures[:, 1:2]
    lin = f.clamp_min(0).pow(GAMMA) / torch.exp2(ev)[:, :, None, None, None]
    x = torch.cat([f, lin], -1).permute(0, 1, 4, 2, 3)  # (B, 3, 6, H, W)
    x1, x2, x3 = (x[:, i].contiguous(memory_format=layout) for i in range(3))
    with autocast():
      out = net(x1, x2, x3)
    return out.float() * torch.exp2(-ev[:, 0])[:, None, None, None]

  def mu(h):
    return torch.log1p(MU * h) / math.log1p(MU)

  batch = {k: torch.from_numpy(v).to(device) for k, v in synthetic_batch(args.batch, (args.patch, args.patch)).items()}
  target = batch["gt"].clamp_min(0).pow(GAMMA).permute(0, 3, 1, 2)

  def train_step():
    opt.zero_grad(set_to_none=True)
    loss = (mu(forward(batch["frames"], batch["exposures"])) - mu(target)).abs().mean()
    loss.backward()
    opt.step()
    return loss

  out = {"device": device, "variant": variant, "memory_format": "channels_last" if tuned else "contiguous",
         "adam": adam_impl, **common.torch_settings(),
         "params": sum(p.numel() for n, p in model.named_parameters() if not n.startswith(("attConv1", "attConv3")))}
  train, infer = {}, {}
  out["train"], out["infer"] = train, infer
  phases = args.phases.split(",")  # --phases: the train step, then the frame
  if "train" in phases:
    if cuda:
      torch.cuda.reset_peak_memory_stats()
    loss, first_s = common.timed(train_step, sync)
    t = common.time_repeats(train_step, repeats=args.repeats, warmup=args.warmup, iters=args.iters, sync=sync)
    loss = float(train_step().detach())
    train.update(ms_per_step=1e3 * t["median_s"], steps_per_s=1 / t["median_s"], crops_per_s=args.batch / t["median_s"],
                 min_ms=1e3 * t["min_s"], max_ms=1e3 * t["max_s"], first_call_s=first_s,
                 compile_s=max(0.0, first_s - t["median_s"]), timing=t, loss=loss, finite=math.isfinite(loss),
                 peak_bytes=torch.cuda.max_memory_allocated() if cuda else None)
    if variant == "eager":
      from torch.utils.flop_counter import FlopCounterMode

      with FlopCounterMode(display=False) as counter:
        train_step()
      sync()
      train["flops_counter"] = float(counter.get_total_flops())

  batch = target = None  # free the train inputs before inference (train_step's closure holds them)
  opt.zero_grad(set_to_none=True)
  if "infer" in phases:
    frame = {k: torch.from_numpy(v).to(device) for k, v in synthetic_batch(1, (args.height, args.width), seed=1).items()}

    @torch.inference_mode()
    def predict():
      return forward(frame["frames"], frame["exposures"]).clamp_min(0).pow(1 / GAMMA)

    if cuda:
      torch.cuda.empty_cache()
      torch.cuda.reset_peak_memory_stats()
    pred, first_s = common.timed(predict, sync)
    t = common.time_repeats(predict, repeats=args.repeats, warmup=args.warmup, sync=sync)
    infer.update(ms=1e3 * t["median_s"], min_ms=1e3 * t["min_s"], max_ms=1e3 * t["max_s"], first_call_s=first_s,
                 compile_s=max(0.0, first_s - t["median_s"]), timing=t, finite=bool(torch.isfinite(pred).all()),
                 peak_bytes=torch.cuda.max_memory_allocated() if cuda else None, height=args.height, width=args.width)
    if variant == "eager":
      from torch.utils.flop_counter import FlopCounterMode

      with FlopCounterMode(display=False) as counter:
        predict()
      sync()
      infer["flops_counter"] = float(counter.get_total_flops())
  model = net = opt = frame = pred = None
  gc.collect()
  if cuda:
    torch.cuda.empty_cache()
  return out


# --------------------------------------------------------------------------------------------------
# Peaks, MFU, ratios
# --------------------------------------------------------------------------------------------------


def resolve_peaks(spec: str, dtypes, platform: str, n: int | None) -> dict:
  """``{dtype: {"tflops", "source", ...}}`` from ``--peak_tflops`` (auto | none | X | dtype=X,...)."""
  spec = str(spec).strip().lower()
  if spec in ("", "none", "0"):
    return {}
  if spec == "auto":
    size = n or (1024 if platform == "cpu" else 8192)
    peaks = {}
    for d in dtypes:
      try:
        peaks[d] = {**common.matmul_peak_tflops(d, size), "source": "measured"}
        print(f"matmul peak {d}: {peaks[d]['tflops']:.3g} TFLOP/s ({size}^3, {peaks[d]['ms']:.2f} ms)", flush=True)
      except Exception as e:  # noqa: BLE001
        peaks[d] = {"tflops": None, "source": "measured", "error": _error(e)}
    return peaks
  if "=" in spec:
    pairs = dict(item.split("=", 1) for item in spec.split(","))
    return {d: {"tflops": float(v), "source": "given"} for d, v in pairs.items()}
  return {d: {"tflops": float(spec), "source": "given"} for d in dtypes}


def add_derived(rows, peaks: dict) -> None:
  """MFU per phase, and on JAX rows the PyTorch/JAX time ratios for the same model and dtype."""
  for r in rows:
    peak = (peaks.get(r["dtype"]) or {}).get("tflops")
    for phase, ms_key in (("train", "ms_per_step"), ("infer", "ms")):
      p = r.get(phase) or {}
      flops = p.get("flops") or p.get("flops_counter")
      p.pop("mfu", None)
      if peak and flops and p.get(ms_key):
        p["mfu"] = flops / (p[ms_key] / 1e3) / (peak * 1e12)
  for r in rows:
    if r["framework"] != "jax" or r.get("model_name") != "ahdrnet":
      continue
    peers = [t for t in rows if t["framework"] == "torch" and t["dtype"] == r["dtype"]]
    r["vs_torch"] = {t["variant"]: {} for t in peers}
    for phase, ms_key in (("train", "ms_per_step"), ("infer", "ms")):
      times = {t["variant"]: (t.get(phase) or {}).get(ms_key) for t in peers}
      # per variant, and "best": against the fastest PyTorch variant of the phase, the strongest peer
      for variant, ratio in common.speed_ratios((r.get(phase) or {}).get(ms_key), times).items():
        r["vs_torch"].setdefault(variant, {})[phase] = ratio


# --------------------------------------------------------------------------------------------------
# Report
# --------------------------------------------------------------------------------------------------

_DT = {"float32": "f32", "bfloat16": "bf16", "float16": "f16"}


def _mem(phase: dict, platform: str | None) -> str:
  peak = phase.get("peak_bytes")
  if peak is not None:
    return ("<=" if phase.get("peak_set_here") is False else "") + common.fmt_bytes(peak)
  if phase.get("rss_growth_bytes") is not None and platform == "cpu":
    return "rss+" + common.fmt_bytes(phase["rss_growth_bytes"])
  xla = phase.get("xla_memory") or {}
  return "~" + common.fmt_bytes(xla["total"]) if "total" in xla else "-"


def _ratio(r: dict) -> str:
  parts = []
  for variant, ratio in (r.get("vs_torch") or {}).items():
    if not ratio:
      continue
    tag = {"eager": "", "tuned": "t:", "compile": "c:", "best": "best:"}.get(variant, variant + ":")
    parts.append(f"{tag}{common.fmt(ratio.get('train'), '.2f')}/{common.fmt(ratio.get('infer'), '.2f')}")
  return " ".join(parts) or "-"


def format_report(report: dict) -> str:
  s = report.get("settings", {})
  dev = report.get("device", {})
  lines = [f"device: {dev.get('device_kind')} ({dev.get('platform')}, {dev.get('device_count')} device(s), "
           f"{dev.get('cpus')} CPUs); jax {report.get('versions', {}).get('jax')}, torch "
           f"{report.get('versions', {}).get('torch', '-')}; {report.get('date')}"]
  peaks = report.get("peaks") or {}
  if peaks:
    lines.append("peak for MFU: " + ", ".join(
        f"{d} {common.fmt(p.get('tflops'), '.3g')} TFLOP/s ({p.get('source')})" for d, p in peaks.items()))
  rows = report.get("rows") or []
  if rows:
    lines.append(f"train: batch {s.get('batch')} x {s.get('patch')}x{s.get('patch')}; frame: "
                 f"{s.get('height')}x{s.get('width')}; median of {s.get('repeats')} repeats")
    table_rows = []
    for r in rows:
      tr, inf = r.get("train") or {}, r.get("infer") or {}
      fw = r["framework"] + ("" if r.get("variant") in (None, "jit", "eager") else f"/{r['variant']}")
      table_rows.append([
          r["model"], _DT.get(r["dtype"], r["dtype"]), fw,
          common.fmt(tr.get("ms_per_step"), ".2f"), common.fmt(tr.get("steps_per_s"), ".2f"),
          common.fmt(tr.get("crops_per_s")),
          common.fmt(tr.get("compile_s")), _gflop_cell(tr), common.fmt(_pct(tr.get("mfu"))),
          common.fmt(inf.get("ms"), ".2f"), common.fmt(inf.get("compile_s")), _gflop_cell(inf),
          common.fmt(_pct(inf.get("mfu"))), _mem(tr, report.get("device", {}).get("platform")) if tr else "-",
          _mem(inf, report.get("device", {}).get("platform")) if inf else "-", _ratio(r),
          _state(r)])
    lines.append(common.table(
        ["model", "dtype", "fw", "ms/step", "steps/s", "crops/s", "compile s", "GFLOP/step", "MFU %", "frame ms", "compile s",
         "GFLOP/frame", "MFU %", "train mem", "frame mem", "JAX/PT speed train/frame", ""], table_rows))
    lines += [
        "compile s: first call - one call (JAX: trace + XLA compile; torch: cuDNN autotuning, torch.compile).",
        "GFLOP/step (forward and backward) and GFLOP/frame: model FLOPs from the jaxpr (*: XLA's counts "
        "flops_xla/flops_xla_hlo in the JSON differ); torch: FlopCounterMode (convs/matmuls only).",
        "mem: device peak ('<=': the process high-water mark, set by an earlier phase); rss+: host resident-memory "
        "growth over the phase, compilation included; ~: XLA's static estimate.",
        "JAX/PT speed: JAX throughput / PyTorch throughput = PyTorch time / JAX time (> 1: JAX faster; "
        "t: vs PyTorch tuned (channels_last, fused Adam); c: vs torch.compile of the tuned model; best: vs the "
        "fastest PyTorch variant of the run)."]
    for r in rows:
      for phase, err in (r.get("errors") or {}).items():
        tag = "SKIPPED" if err.startswith("skipped") else "FAILED"
        lines.append(f"{tag} {r['model']} {r['dtype']} {r['framework']}/{r['variant']} {phase}: {err.splitlines()[0]}")
  for f in report.get("failures") or []:
    lines.append(("SKIPPED " if "skipped" in f.split("\n")[0] else "FAILED ") + f.splitlines()[0])
  return "\n".join(lines)


def _state(r: dict) -> str:
  errors = list((r.get("errors") or {}).values())
  if any(not e.startswith("skipped") for e in errors):
    return "FAILED"
  if errors:
    return "skipped"
  return "" if _finite(r) else "NaN!"


def failed(report: dict) -> bool:
  """Whether a measurement failed (skips for the deadline are not failures)."""
  return any(_state(r) in ("FAILED", "NaN!") for r in report.get("rows", [])) or any(
      "skipped" not in f.split("\n")[0] for f in report.get("failures", []))


def _gflop(phase: dict):
  flops = phase.get("flops") or phase.get("flops_counter")
  return None if not flops else flops / 1e9


def _gflop_cell(phase: dict) -> str:
  """GFLOP, with ``*`` when XLA's count of the executable (compiled or not) differs by more than 25 %."""
  g = _gflop(phase)
  other = [phase.get(k) for k in ("flops_xla", "flops_xla_hlo") if phase.get(k)]
  flag = "*" if g and any(abs(x / 1e9 / g - 1) > 0.25 for x in other) else ""
  return common.fmt(g, ".1f") + flag


def _pct(x):
  return None if x is None else 100 * x


def _finite(r: dict) -> bool:
  return all((r.get(p) or {}).get("finite", True) for p in ("train", "infer"))


# --------------------------------------------------------------------------------------------------
# Main
# --------------------------------------------------------------------------------------------------


def parse_args(argv=None):
  """The flags below, plus ``--config.KEY=VALUE`` (repeatable): a config override for every model, as the
  trainer takes it (e.g. ``--config.model.polyphase=false``), parsed into the dict ``config_overrides``."""
  from hdr_jax import cli

  argv, config_overrides = cli.split_config_overrides(sys.argv[1:] if argv is None else list(argv))
  p = argparse.ArgumentParser(description=__doc__.split("\n")[0],
                              epilog="--config.KEY=VALUE (repeatable): a config override for every model, "
                                     "e.g. --config.model.polyphase=false")
  p.add_argument("--models", default="ahdrnet,vam,vam_drdb",
                 help="configs/<name>.py, comma-separated; NAME:ARG takes the config's variant get_config(ARG) "
                      "(e.g. diffusion:full); NAME@KEY=VALUE[@KEY=VALUE] adds overrides for that entry only, "
                      "the per-entry form of --config.KEY=VALUE (e.g. ahdrnet@model.dense_form=scatter)")
  p.add_argument("--dtypes", default="float32,bfloat16")
  p.add_argument("--batch", type=int, default=8)
  p.add_argument("--patch", type=int, default=256)
  p.add_argument("--height", type=int, default=1060, help="full-frame inference height")
  p.add_argument("--width", type=int, default=1900)
  p.add_argument("--repeats", type=int, default=10, help="timed repeats (median reported)")
  p.add_argument("--iters", type=int, default=5, help="back-to-back train steps per timed repeat")
  p.add_argument("--warmup", type=int, default=2, help="untimed calls after the first (compiling) one")
  p.add_argument("--phases", default="train,infer", help="train and/or infer, measured in this order")
  p.add_argument("--phase_major", action="store_true",
                 help="every model's first phase before any model's second (default: model by model); "
                      "PyTorch then runs last")
  p.add_argument("--inference", choices=("subprocess", "inprocess"), default="subprocess",
                 help="where full-frame inference runs (subprocess: its own memory high-water mark)")
  p.add_argument("--xla_defaults", action="store_true",
                 help="XLA's own CPU flags (default: the entry points' hdr_jax.cli.CPU_XLA_FLAGS)")
  p.add_argument("--torch", action="store_true", help="also the official PyTorch AHDRNet")
  p.add_argument("--torch_compile", action="store_true", help="also torch.compile (with --torch)")
  p.add_argument("--no_torch_cudnn_benchmark", dest="torch_cudnn_benchmark", action="store_false")
  p.add_argument("--peak_tflops", default="auto", help="auto (measured matmul) | none | X | float32=X,bfloat16=Y")
  p.add_argument("--peak_n", type=int, default=None, help="matmul size for --peak_tflops=auto (CPU 1024, else 8192)")
  p.add_argument("--deadline_s", type=float, default=0, help="start no new measurement after this many seconds")
  p.add_argument("--child_timeout", type=float, default=600, help="seconds for one inference subprocess")
  p.add_argument("--json", default=str(ROOT / "benchmarks" / "out" / "models.json"))
  p.add_argument("--summary", default=None, help="print the tables of these JSON files (comma-separated) and exit")
  p.add_argument("--_worker", default=None, help=argparse.SUPPRESS)
  args = p.parse_args(argv)
  try:
    args.config_overrides = cli.parse_overrides(config_overrides)
  except ValueError as e:
    p.error(str(e))
  return args


def _worker_main(args) -> int:
  try:
    name, overrides = split_model_spec(args.models, args.config_overrides)
    result = jax_infer(name, args.dtypes, args, overrides)
  except Exception as e:  # noqa: BLE001 - reported to the parent
    result = {"error": _error(e)}
  print(_MARK + json.dumps(result, default=float), flush=True)
  return 0


def main(argv=None) -> dict | None:
  args = parse_args(argv)
  if args.summary:
    for path in args.summary.split(","):
      print(format_report(json.loads(Path(path).read_text())))
    return None
  if not args.xla_defaults:
    from hdr_jax import cli
    cli.set_cpu_xla_flags()  # what train/predict run with; the JSON's env records it
  if args._worker == "infer":
    sys.exit(_worker_main(args))
  signal.signal(signal.SIGTERM, _on_sigterm)
  t0 = time.perf_counter()

  import jax

  models = [m for m in args.models.split(",") if m]
  dtypes = [d for d in args.dtypes.split(",") if d]
  phases = [p for p in dict.fromkeys(args.phases.split(",")) if p]  # in the given order
  if not phases or set(phases) - {"train", "infer"}:
    raise SystemExit(f"--phases={args.phases!r}: expected train and/or infer")
  overrides = args.config_overrides
  device = common.device_info()
  report = {"date": common.utc_now(), "device": device, "versions": common.versions(),
            "git": common.git_revision(ROOT),
            "settings": {k: v for k, v in vars(args).items() if k not in ("_worker", "summary")},
            "env": {k: os.environ.get(k) for k in ("XLA_PYTHON_CLIENT_PREALLOCATE", "XLA_FLAGS") if os.environ.get(k)},
            "peaks": {}, "rows": [], "failures": []}

  def save():
    common.write_json(args.json, report)

  def over_deadline() -> bool:
    return bool(args.deadline_s) and time.perf_counter() - t0 > args.deadline_s

  def remaining() -> float:
    if not args.deadline_s:
      return args.child_timeout
    return max(30.0, min(args.child_timeout, args.deadline_s - (time.perf_counter() - t0) + 60))

  specs = {name: split_model_spec(name, overrides) for name in models}  # entry -> (config name, overrides)

  def measure(name: str, dtype: str, phase: str, row: dict) -> None:
    if over_deadline():
      row["errors"][phase] = "skipped: --deadline_s reached"
      return
    base, own = specs[name]
    try:
      if phase == "train":
        row["train"] = jax_train(base, dtype, args, own)
        tr = row["train"]
        print(f"{name} {dtype} train: {tr['ms_per_step']:.2f} ms/step, {tr['crops_per_s']:.1f} crops/s "
              f"(compile {tr['compile_s']:.1f} s), {common.fmt(_gflop(tr))} GFLOP/step", flush=True)
      else:
        if args.inference == "subprocess":
          row["infer"] = infer_subprocess(name, dtype, args, remaining())
        else:
          row["infer"] = jax_infer(base, dtype, args, own)  # peak: this process's high-water mark
        inf = row["infer"]
        print(f"{name} {dtype} infer {args.height}x{args.width}: {inf['ms']:.2f} ms "
              f"(end to end {inf['e2e_ms']:.2f} ms, compile {inf['compile_s']:.1f} s), "
              f"{common.fmt(_gflop(inf))} GFLOP", flush=True)
    except Terminated:
      row["errors"][phase] = "terminated while running"
      raise
    except Exception as e:  # noqa: BLE001 - record, go on with the next measurement
      row["errors"][phase] = _error(e)
      print(f"{name} {dtype} {phase}: FAILED {row['errors'][phase].splitlines()[0]}", flush=True)
    add_derived(report["rows"], report["peaks"])
    save()

  print(f"{device['device_kind']} ({device['platform']}), jax {jax.__version__}; "
        f"models {models}, dtypes {dtypes}, batch {args.batch} x {args.patch}^2, frame {args.height}x{args.width}",
        flush=True)
  try:
    if models:
      report["peaks"] = resolve_peaks(args.peak_tflops, dtypes, device["platform"], args.peak_n)
      save()
    torch_done = False
    rows = {}
    if args.phase_major:  # every model's first phase, then every model's second
      plan = [(name, dtype, phase) for phase in phases for name in models for dtype in dtypes]
    else:
      plan = [(name, dtype, phase) for name in models for dtype in dtypes for phase in phases]
    for i, (name, dtype, phase) in enumerate(plan):
      row = rows.get((name, dtype))
      if row is None:
        row = rows[name, dtype] = {"model": name, "dtype": dtype, "framework": "jax", "variant": "jit", "errors": {}}
        try:
          base, own = specs[name]
          row["model_name"] = load_config(base, dtype, args.batch, args.patch, own).model.name
        except Exception as e:  # noqa: BLE001
          row["errors"]["config"] = _error(e)
        report["rows"].append(row)
      if not row["errors"].get("config"):
        measure(name, dtype, phase, row)
      last_of_model = i + 1 == len(plan) or plan[i + 1][0] != name
      is_ahdrnet = row.get("model_name") == "ahdrnet"
      if args.torch and not torch_done and not args.phase_major and last_of_model and is_ahdrnet:
        run_torch(args, dtypes, report, save, over_deadline)
        torch_done = True
    if args.torch and not torch_done:
      run_torch(args, dtypes, report, save, over_deadline)
  except Terminated as e:
    report["failures"].append(f"terminated ({e}) after {time.perf_counter() - t0:.0f} s; later measurements missing")
  add_derived(report["rows"], report["peaks"])
  report["wall_s"] = time.perf_counter() - t0
  save()
  print("\n" + format_report(report))
  print(f"\nwrote {args.json}")
  return report


def run_torch(args, dtypes, report: dict, save, over_deadline) -> None:
  """PyTorch rows for each dtype (eager, tuned, and torch.compile with ``--torch_compile``)."""
  if importlib.util.find_spec("torch") is None:
    report["failures"].append("torch: skipped: torch is not importable")
    return
  import jax
  import torch

  if jax.devices()[0].platform == "gpu" and not torch.cuda.is_available():
    report["failures"].append("torch: skipped: JAX runs on the GPU but this torch build has no CUDA")
    return
  variants = ["eager", "tuned"] + (["compile"] if args.torch_compile else [])
  counts = {}  # (dtype, phase) -> the eager FlopCounterMode count, for the torch.compile rows
  for variant in variants:
    for dtype in dtypes:
      row = {"model": "ahdrnet", "model_name": "ahdrnet", "dtype": dtype, "framework": "torch", "variant": variant,
             "errors": {}}
      report["rows"].append(row)
      if over_deadline():
        row["errors"]["train"] = "skipped: --deadline_s reached"
        continue
      try:
        out = torch_bench(dtype, args, variant)
        row.update(train=out.pop("train"), infer=out.pop("infer"), torch=out)
        for phase in ("train", "infer"):
          counted = counts.setdefault((dtype, phase), row[phase].get("flops_counter"))
          row[phase].setdefault("flops_counter", counted)
        print(f"torch/{variant} ahdrnet {dtype}: train {common.fmt(row['train'].get('ms_per_step'), '.2f')} ms/step, "
              f"frame {common.fmt(row['infer'].get('ms'), '.2f')} ms ({out['device']})", flush=True)
      except Terminated:
        row["errors"]["torch"] = "terminated while running"
        raise
      except Exception as e:  # noqa: BLE001 - e.g. torch.compile without a working compiler
        row["errors"]["torch"] = _error(e)
        print(f"torch/{variant} ahdrnet {dtype}: FAILED {row['errors']['torch'].splitlines()[0]}", flush=True)
      add_derived(report["rows"], report["peaks"])
      save()


if __name__ == "__main__":
  result = main()
  sys.exit(1 if result is not None and failed(result) else 0)
