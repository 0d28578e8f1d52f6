r"""Seconds per DDPM sampling step: the compiled loop vs Python stepping vs PyTorch in its variants.

The source project's setting (docs/reference.md, Conditional DDPM): 128x128 images, batch 8, T = 1000
ancestral steps; its eager per-step loop took 71.89 s per step on CPU. The same sampler run these ways,
in one process, on one device, at one batch:

  (a) ``compiled``: ``hdr_jax.diffusion.sample`` -- all steps in one ``jax.jit`` (``lax.scan``);
  (b) ``python``: the same U-Net and update as one jitted step, called from a Python loop;
  (c) ``torch``: a PyTorch DDPM U-Net of the same layout (if torch is importable), ``--torch_steps`` steps
      per timed run, in the variants of ``--torch_variants`` (``TORCH_VARIANTS``): ``eager`` (NCHW,
      ``torch.no_grad``, cudnn.benchmark off: the peer of the earlier runs), ``tuned`` (channels_last,
      ``cudnn.benchmark`` on CUDA, ``torch.inference_mode``), ``compile`` (tuned + ``torch.compile`` of the
      whole step, U-Net and update, default mode), on CUDA ``reduce-overhead`` (the compiled step
      replayed as a CUDA graph), and with ``--torch_max_autotune`` ``max-autotune`` (compiles slowly).
      Every variant runs under bfloat16 autocast when ``--dtype=bfloat16``. The compiled loop's speed-up
      is reported against each variant and against the fastest one (``best``, the strongest peer).

Model FLOPs per step: 2 per multiply-accumulate of every convolution and matrix product of one U-Net
forward at the batch size, counted from its jaxpr (``common.model_flops``; XLA's cost analysis of a
GPU program omits the convolutions that run as cuDNN calls, and gave NaN there). MFU = FLOPs per step / seconds per step / peak
(``--peak_tflops``: a number, or ``auto`` to measure a large bf16/f32 matmul on the device first).

  python benchmarks/diffusion_sampling.py                                    # source setting
  python benchmarks/diffusion_sampling.py --size=small --height=64 --width=64 --batch=2 --steps=50  # CPU
  python benchmarks/diffusion_sampling.py --size=full --dtype=bfloat16 --peak_tflops=989          # GPU

Sizes (unconditional U-Net, as the source; ``--conditional`` adds the LDR encoder's features), with
parameters and multiply-accumulates per step at 8 x 128x128:
``small`` is configs/diffusion.py's CPU model; ``full`` its ``:full`` model (34.3 M parameters,
145 GMAC; 64 channels, 1-1-2-4-5); ``matched`` a 39.3 M U-Net of 237 GMAC (64 channels, 1-2-3-4-5),
the cost of the issue's reference DDPM (35.7 M, 233.7 GMAC); ``ddpm`` the layout of Ho et al.'s
35.7 M CIFAR-10 model (128 channels, 1-2-2-2) whose full-resolution 128-channel level makes it
725 GMAC per step at 128x128.
Timings: warm-up (compilation) excluded, ``jax.block_until_ready`` / ``torch.cuda.synchronize``, median of
``--repeats``, the compiled and Python-stepped runs interleaved. The JSON (``--json``) is rewritten after
every measurement.
"""

from __future__ import annotations

import argparse
import math
import os
import statistics
import sys
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "benchmarks")]

from configs.diffusion import get_config  # noqa: E402
import common  # noqa: E402
from hdr_jax import diffusion  # noqa: E402
from hdr_jax.models.unet import UNet  # noqa: E402

DDPM_CIFAR = dict(ch=128, ch_mult=(1, 2, 2, 2), num_res_blocks=2, attn_levels=(3,), head_dim=128, groups=32)
SIZES = ("small", "full", "matched", "ddpm")
MATCHED = dict(ch=64, ch_mult=(1, 2, 3, 4, 5), num_res_blocks=2, attn_levels=(3, 4), head_dim=64, groups=32)


def model_kwargs(size: str, conditional: bool) -> dict:
  if size in ("ddpm", "matched"):
    kw = dict(DDPM_CIFAR if size == "ddpm" else MATCHED)
  else:
    cfg = get_config("full" if size == "full" else "")
    kw = {k: v for k, v in cfg.model.items() if k != "name"}
    kw["ch_mult"], kw["attn_levels"] = tuple(kw["ch_mult"]), tuple(kw["attn_levels"])
    kw["cond_vam_drdb"] = dict(kw["cond_vam_drdb"])
  kw["conditional"] = conditional
  if conditional:
    kw.setdefault("cond_encoder", "conv")
  return kw


def parse_model_set(items) -> dict:
  """``--model_set KEY=VALUE`` -> U-Net keyword overrides (values parsed as Python literals if they can be)."""
  import ast

  out = {}
  for item in items or ():
    key, sep, value = item.partition("=")
    if not sep or not key:
      raise ValueError(f"--model_set: expected KEY=VALUE, got {item!r}")
    try:
      out[key] = ast.literal_eval(value)
    except (ValueError, SyntaxError):
      out[key] = value
  return out


def median_times(fns, repeats: int) -> list[float]:
  """Median wall time of each function, the runs interleaved (fair under drifting machine load)."""
  times = [[] for _ in fns]
  for _ in range(repeats):
    for fn, ts in zip(fns, times):
      t0 = time.perf_counter()
      jax.block_until_ready(fn())
      ts.append(time.perf_counter() - t0)
  return [statistics.median(ts) for ts in times]


# --------------------------------------------------------------------------------------------------
# JAX
# --------------------------------------------------------------------------------------------------


def init_unet(size: str, dtype_name: str, conditional: bool = False, overrides: dict | None = None):
  """``(graphdef, state)`` of the U-Net of ``size`` (``model_kwargs``, then ``overrides``) computing in
  ``dtype_name``, its parameters initialised by one compiled program (eager init compiles per shape)."""
  dtype = {"float32": jnp.float32, "bfloat16": jnp.bfloat16}[dtype_name]
  kw = {**model_kwargs(size, conditional), **(overrides or {})}
  create = lambda: UNet(**kw, dtype=dtype, rngs=nnx.Rngs(0))
  graphdef, _ = nnx.split(nnx.eval_shape(create))
  with jax.threefry_partitionable(False):
    state = jax.jit(lambda: nnx.state(create()))()
  return graphdef, state


def bench_jax(args, over_deadline=lambda: False) -> dict:
  graphdef, state = init_unet(args.size, args.dtype, args.conditional, parse_model_set(args.model_set))
  n_params = sum(x.size for x in jax.tree.leaves(nnx.state(nnx.merge(graphdef, state), nnx.Param)))
  sched = diffusion.make_schedule("linear", args.steps, 1e-4, 0.02)
  shape = (args.batch, args.height, args.width, 3)
  cond = None
  if args.conditional:
    frames = jax.random.uniform(jax.random.key(1), (args.batch, 3, args.height, args.width, 3))
    cond = jax.jit(lambda s, f: nnx.merge(graphdef, s).encode(f, jnp.tile(jnp.float32([[-2, 0, 2]]), (args.batch, 1))))(
        state, frames)

  def denoise(s, x, t):
    return nnx.merge(graphdef, s)(x, t, cond)

  # Model FLOPs of one forward from its jaxpr (XLA's analysis of a GPU program omits cuDNN convolutions).
  flops = common.model_flops(denoise, state, jax.ShapeDtypeStruct(shape, jnp.float32), jnp.int32(0)) or float("nan")

  # (a) the compiled loop
  loop = jax.jit(lambda s, k: diffusion.sample(lambda x, t: denoise(s, x, t), sched, shape, k, sampler="ddpm",
                                               unroll=args.unroll))
  key = jax.random.key(0)
  t0 = time.perf_counter()
  jax.block_until_ready(loop(state, key))
  compile_loop = time.perf_counter() - t0

  # (b) one jitted step called from Python
  @jax.jit
  def step(s, x, t, i, k_loop):
    noise = jax.random.normal(jax.random.fold_in(k_loop, i), shape, jnp.float32)
    return diffusion.ddpm_step(sched, x, t, denoise(s, x, t), noise)

  k_init, k_loop = diffusion.sampler_keys(key)
  x0 = jax.random.normal(k_init, shape)
  n_py = min(args.python_steps, args.steps)
  if n_py:
    jax.block_until_ready(step(state, x0, jnp.int32(args.steps - 1), jnp.int32(0), k_loop))

  def python_loop():
    x = x0
    for i in range(n_py):
      x = step(state, x, jnp.int32(args.steps - 1 - i), jnp.int32(i), k_loop)
    return x

  fns = [lambda: loop(state, key)] + ([python_loop] if n_py else [])
  loop_s, *py_s = median_times(fns, args.repeats)
  py_s = py_s[0] / n_py if n_py else None
  ddim = {}
  if args.ddim_steps and not over_deadline():
    ddim_loop = jax.jit(lambda s, k: diffusion.sample(lambda x, t: denoise(s, x, t), sched, shape, k, sampler="ddim",
                                                      steps=args.ddim_steps, unroll=args.unroll))
    jax.block_until_ready(ddim_loop(state, key))
    (ddim_s,) = median_times([lambda: ddim_loop(state, key)], args.repeats)
    ddim = {"ddim_steps": args.ddim_steps, "ddim_s_per_sample": ddim_s, "ddim_s_per_step": ddim_s / args.ddim_steps}
  return {**ddim, "params": int(n_params), "flops_per_step": flops, "compile_loop_s": compile_loop,
          "compiled_s_per_step": loop_s / args.steps, "compiled_total_s": loop_s, "python_s_per_step": py_s,
          "python_steps_timed": n_py, "device": str(jax.devices()[0].device_kind), "backend": jax.default_backend()}


# --------------------------------------------------------------------------------------------------
# PyTorch (eager), the same U-Net layout
# --------------------------------------------------------------------------------------------------


def torch_unet(kw: dict):
  import torch
  from torch import nn
  import torch.nn.functional as F

  def gn(c):
    return nn.GroupNorm(math.gcd(c, kw["groups"]), c, eps=1e-6)

  class Res(nn.Module):
    def __init__(self, cin, cout, temb):
      super().__init__()
      self.n1, self.c1, self.t = gn(cin), nn.Conv2d(cin, cout, 3, padding=1), nn.Linear(temb, cout)
      self.n2, self.c2 = gn(cout), nn.Conv2d(cout, cout, 3, padding=1)
      self.skip = nn.Conv2d(cin, cout, 1) if cin != cout else nn.Identity()

    def forward(self, x, temb):
      h = self.c1(F.silu(self.n1(x))) + self.t(F.silu(temb))[:, :, None, None]
      return self.skip(x) + self.c2(F.silu(self.n2(h)))

  class Attn(nn.Module):
    def __init__(self, c):
      super().__init__()
      self.heads = max(1, c // kw["head_dim"])
      self.n, self.qkv, self.proj = gn(c), nn.Linear(c, 3 * c), nn.Linear(c, c)

    def forward(self, x):
      b, c, h, w = x.shape
      q, k, v = self.qkv(self.n(x).flatten(2).transpose(1, 2)).reshape(b, h * w, 3, self.heads, -1).unbind(2)
      o = F.scaled_dot_product_attention(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2))
      return x + self.proj(o.transpose(1, 2).reshape(b, h * w, c)).transpose(1, 2).reshape(b, c, h, w)

  class Net(nn.Module):
    def __init__(self):
      super().__init__()
      ch, mult, nrb, attn = kw["ch"], kw["ch_mult"], kw["num_res_blocks"], kw["attn_levels"]
      self.ch, self.levels, self.nrb = ch, len(mult), nrb
      self.temb = nn.Sequential(nn.Linear(ch, 4 * ch), nn.SiLU(), nn.Linear(4 * ch, 4 * ch))
      self.conv_in = nn.Conv2d(3, ch, 3, padding=1)
      chans, skips = ch, [ch]
      self.down, self.down_attn, self.downsample = nn.ModuleList(), nn.ModuleList(), nn.ModuleList()
      for i, m in enumerate(mult):
        for _ in range(nrb):
          self.down.append(Res(chans, ch * m, 4 * ch))
          self.down_attn.append(Attn(ch * m) if i in attn else nn.Identity())
          chans = ch * m
          skips.append(chans)
        if i != len(mult) - 1:
          self.downsample.append(nn.Conv2d(chans, chans, 3, stride=2, padding=1))
          skips.append(chans)
      self.mid1, self.mid_attn, self.mid2 = Res(chans, chans, 4 * ch), Attn(chans), Res(chans, chans, 4 * ch)
      self.up, self.up_attn, self.upsample = nn.ModuleList(), nn.ModuleList(), nn.ModuleList()
      for i in reversed(range(len(mult))):
        for _ in range(nrb + 1):
          self.up.append(Res(chans + skips.pop(), ch * mult[i], 4 * ch))
          self.up_attn.append(Attn(ch * mult[i]) if i in attn else nn.Identity())
          chans = ch * mult[i]
        if i != 0:
          self.upsample.append(nn.Conv2d(chans, chans, 3, padding=1))
      self.out = nn.Sequential(gn(chans), nn.SiLU(), nn.Conv2d(chans, 3, 3, padding=1))

    def forward(self, x, t):
      half = self.ch // 2
      f = torch.exp(-math.log(10000.0) * torch.arange(half, device=x.device) / half)
      a = t.float()[:, None] * f[None]
      temb = self.temb(torch.cat([a.sin(), a.cos()], 1))
      h = self.conv_in(x)
      hs, k = [h], 0
      for i in range(self.levels):
        for _ in range(self.nrb):
          h = self.down_attn[k](self.down[k](h, temb))
          hs.append(h)
          k += 1
        if i != self.levels - 1:
          h = self.downsample[i](h)
          hs.append(h)
      h = self.mid2(self.mid_attn(self.mid1(h, temb)), temb)
      k = 0
      for j, i in enumerate(reversed(range(self.levels))):
        for _ in range(self.nrb + 1):
          h = self.up_attn[k](self.up[k](torch.cat([h, hs.pop()], 1), temb))
          k += 1
        if i != 0:
          h = self.upsample[j](F.interpolate(h, scale_factor=2, mode="nearest"))
      return self.out(h)

  return Net()


TORCH_VARIANTS = {
    "eager": "the earlier peer: NCHW, torch.no_grad, cudnn.benchmark off (PyTorch's default)",
    "tuned": "channels_last model and tensors, cudnn.benchmark on (CUDA), torch.inference_mode",
    "compile": "tuned + torch.compile of the whole step (U-Net and update), default mode",
    "reduce-overhead": "tuned + torch.compile mode='reduce-overhead': the step replayed as a CUDA graph",
    "max-autotune": "tuned + torch.compile mode='max-autotune' (compiles slowly)",
}


def torch_variant_list(spec: str, cuda: bool, max_autotune: bool = False) -> list[str]:
  """``--torch_variants``: ``auto`` = eager, tuned, compile, and on CUDA reduce-overhead (CUDA graphs;
  on a CPU it is the default mode again); ``--torch_max_autotune`` adds max-autotune."""
  if spec == "auto":
    names = ["eager", "tuned", "compile"] + (["reduce-overhead"] if cuda else [])
  else:
    names = [v.strip() for v in spec.split(",") if v.strip()]
  if max_autotune and "max-autotune" not in names:
    names.append("max-autotune")
  unknown = [v for v in names if v not in TORCH_VARIANTS]
  if unknown:
    raise ValueError(f"--torch_variants: unknown {unknown}; choose from {', '.join(TORCH_VARIANTS)} or auto")
  return names


def bench_torch(args, variants, over_deadline=lambda: False, on_variant=None) -> dict | None:
  """The PyTorch U-Net of the same layout (``--model_set`` applied), ``--torch_steps`` DDPM steps per
  timed run, in each of ``variants`` (:data:`TORCH_VARIANTS`), one after the other in this process;
  bfloat16 autocast in every variant when ``--dtype=bfloat16``. A failing variant (e.g. torch.compile
  without a compiler) records its error and the next one runs; none starts after the deadline."""
  try:
    import torch
  except ImportError:
    return None
  kw = {**model_kwargs(args.size, False), **parse_model_set(args.model_set)}
  dev = common.torch_device()
  torch.manual_seed(0)
  base = torch_unet(kw).to(dev).eval()
  sched = diffusion.make_schedule("linear", args.steps, 1e-4, 0.02)
  c = {k: torch.tensor(np.asarray(getattr(sched, k)), device=dev, dtype=torch.float32) for k in
       ("alphas_cumprod", "posterior_mean_coef1", "posterior_mean_coef2", "posterior_log_variance")}
  n = min(args.torch_steps, args.steps)
  ts = torch.arange(args.steps - 1, args.steps - 1 - n, -1, device=dev)[:, None]  # the sampler's first n steps
  out = {"params": int(sum(p.numel() for p in base.parameters())), "device": dev, "steps_timed": n,
         "autocast": "bfloat16" if args.dtype == "bfloat16" else None, "variants": {}}
  for variant in variants:
    if over_deadline():
      out["variants"][variant] = {"skipped": "--deadline_s reached"}
    else:
      try:
        out["variants"][variant] = _torch_variant(args, variant, base, c, ts)
      except Exception as e:  # noqa: BLE001 - record, go on with the next variant
        out["variants"][variant] = {"error": f"{type(e).__name__}: {e}"[:2000]}
    res = out["variants"][variant]
    breaks = f", {res['graph_breaks']} graph breaks" if res.get("graph_breaks") is not None else ""
    if "s_per_step" in res:
      state = f"{1e3 * res['s_per_step']:.3f} ms/step (first run {res['first_call_s']:.1f} s{breaks})"
    else:
      state = ("SKIPPED " + res["skipped"]) if "skipped" in res else "FAILED " + res["error"].splitlines()[0]
    print(f"torch/{variant} ({dev}): {state}", flush=True)
    if on_variant:
      on_variant(out)
  return out


def _torch_variant(args, variant: str, base, c: dict, ts) -> dict:
  import copy

  import torch

  dev = common.torch_device()
  tuned = variant != "eager"
  layout = torch.channels_last if tuned else torch.contiguous_format
  torch.backends.cudnn.benchmark = tuned and dev == "cuda"
  net = copy.deepcopy(base).to(memory_format=layout)
  b, h, w = args.batch, args.height, args.width

  def step(y, t, z):
    """One ancestral step at the timestep tensor ``t`` of shape (1,): coefficients gathered on the device
    and no data-dependent branch, so torch.compile captures one graph for every step (indexing with a
    0-d tensor would read it on the host and break the graph)."""
    eps = net(y, t.expand(b)).float()
    abar = c["alphas_cumprod"][t]
    x0 = ((y - (1 - abar).sqrt() * eps) / abar.sqrt()).clamp(-1, 1)
    mean = c["posterior_mean_coef1"][t] * x0 + c["posterior_mean_coef2"][t] * y
    return mean + (t > 0) * (0.5 * c["posterior_log_variance"][t]).exp() * z

  step_fn = common.torch_compile(step, variant)
  graphs = variant == "reduce-overhead" and dev == "cuda"
  gen = torch.Generator(device=dev)

  def noise():
    if tuned:  # drawn in (B, H, W, C) order: a channels_last (B, C, H, W) view without a copy
      return torch.randn((b, h, w, 3), device=dev, generator=gen).permute(0, 3, 1, 2)
    return torch.randn((b, 3, h, w), device=dev, generator=gen)

  def run():
    gen.manual_seed(0)
    with (torch.inference_mode() if tuned else torch.no_grad()), \
        torch.autocast(dev, torch.bfloat16, enabled=args.dtype == "bfloat16"):
      y = noise()
      for t in ts:
        if graphs:  # a CUDA graph's output lives in its pool until the next replay: keep a copy
          torch.compiler.cudagraph_mark_step_begin()
          y = step_fn(y, t, noise()).clone()
        else:
          y = step_fn(y, t, noise())
    return y

  sync = lambda _: common.torch_sync(dev)
  breaks = _graph_breaks()
  y, first_s = common.timed(run, sync)
  breaks = None if breaks is None else _graph_breaks() - breaks
  t = common.time_repeats(run, repeats=args.repeats, warmup=1, sync=sync)
  y = run()
  finite = bool(torch.isfinite(y).all())
  n = len(ts)
  return {"s_per_step": t["median_s"] / n, "first_call_s": first_s, "compile_s": max(0.0, first_s - t["median_s"]),
          "timing": t, "finite": finite, "memory_format": "channels_last" if tuned else "contiguous",
          "grad_mode": "inference_mode" if tuned else "no_grad",
          "compile_mode": common.TORCH_COMPILE_MODES.get(variant),
          "cuda_graphs": graphs, "graph_breaks": breaks if step_fn is not step else None, **common.torch_settings()}


def _graph_breaks() -> int | None:
  """torch.compile's graph breaks so far in this process (0 after a variant: the step is one graph)."""
  try:
    from torch._dynamo.utils import counters
  except ImportError:
    return None
  return sum(counters["graph_break"].values())


# --------------------------------------------------------------------------------------------------


def main(argv=None):
  p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  p.add_argument("--size", default="full",
                 help="comma-separated sizes: small, full, matched, ddpm (each measured in turn)")
  p.add_argument("--height", type=int, default=128)
  p.add_argument("--width", type=int, default=128)
  p.add_argument("--batch", type=int, default=8)
  p.add_argument("--steps", type=int, default=1000, help="T: ancestral steps of one sample")
  p.add_argument("--ddim_steps", type=int, default=50, help="also time a DDIM sample of this many steps (0: no)")
  p.add_argument("--dtype", choices=("float32", "bfloat16"), default="float32")
  p.add_argument("--repeats", type=int, default=3)
  p.add_argument("--python_steps", type=int, default=100, help="steps timed for Python stepping (0: not timed)")
  p.add_argument("--torch_steps", type=int, default=20, help="steps per timed PyTorch run")
  p.add_argument("--torch_variants", default="auto",
                 help="comma-separated: " + ", ".join(TORCH_VARIANTS) + "; auto = eager,tuned,compile "
                      "(+ reduce-overhead on CUDA)")
  p.add_argument("--torch_max_autotune", action="store_true", help="also torch.compile mode='max-autotune' (slow)")
  p.add_argument("--no_torch", action="store_true")
  p.add_argument("--conditional", action="store_true", help="conditional U-Net (features computed once)")
  p.add_argument("--unroll", type=int, default=1, help="lax.scan unroll of the compiled loop")
  p.add_argument("--model_set", action="append", default=[],
                 help="U-Net keyword override KEY=VALUE, e.g. gn_stats=channel or ch=32 (repeatable; the PyTorch "
                      "U-Net takes the layout keys: ch, ch_mult, num_res_blocks, attn_levels, head_dim, groups)")
  p.add_argument("--peak_tflops", default=None,
                 help="device peak for MFU (dtype-matched): TFLOP/s, or 'auto' to measure a matmul (8192^3; CPU 1024^3)")
  p.add_argument("--deadline_s", type=float, default=0,
                 help="start no DDIM run or PyTorch variant after this many seconds (0: no deadline)")
  p.add_argument("--json", default=str(ROOT / "benchmarks" / "out" / "diffusion_sampling.json"))
  args = p.parse_args(argv)
  from hdr_jax import cli
  cli.set_cpu_xla_flags()  # the entry points' CPU flags: same numbers as the CLI
  t0 = time.perf_counter()
  over_deadline = lambda: bool(args.deadline_s) and time.perf_counter() - t0 > args.deadline_s
  sizes = [x.strip() for x in args.size.split(",") if x.strip()]
  for size in sizes:
    if size not in SIZES:
      p.error(f"--size: unknown {size!r}; choose from {', '.join(SIZES)}")
  try:
    import torch
    cuda = torch.cuda.is_available()
  except ImportError:
    cuda = False
  try:
    variants = [] if args.no_torch else torch_variant_list(args.torch_variants, cuda, args.torch_max_autotune)
  except ValueError as e:
    p.error(str(e))

  peak = None
  if args.peak_tflops == "auto":
    peak = common.matmul_peak_tflops(args.dtype, 8192 if jax.default_backend() != "cpu" else 1024)["tflops"]
    print(f"measured {args.dtype} matmul peak: {peak:.1f} TFLOP/s")
  elif args.peak_tflops:
    peak = float(args.peak_tflops)
  out = {"args": vars(args), "date": common.utc_now(), "versions": common.versions(), "peak_tflops": peak,
         "xla_flags": os.environ.get("XLA_FLAGS"),
         "torch_variants": {v: TORCH_VARIANTS[v] for v in variants}, "sizes": {}}
  for size in sizes:
    def save(result, size=size):  # after every measurement: a run cut short keeps what it measured
      out["sizes"][size] = result
      common.write_json(args.json, out)

    run_size(args, size, peak, variants, over_deadline, save)
  common.write_json(args.json, out)
  print(f"wrote {args.json}")
  return out


def run_size(args, size: str, peak, variants, over_deadline, save) -> dict:
  """One U-Net size: the JAX rows, then each PyTorch variant (``save(result)`` after each)."""
  args = argparse.Namespace(**{**vars(args), "size": size})
  res = bench_jax(args, over_deadline)
  result = {"jax": res, "torch": None, "rows": []}
  save(result)
  if variants:
    result["torch"] = bench_torch(args, variants, over_deadline, lambda t: save(result))
  torch_res = result["torch"]
  flops = res["flops_per_step"]
  rows = [("compiled loop (jax.jit + lax.scan)", res["compiled_s_per_step"], args.steps, "jax", "compiled")]
  if res["python_s_per_step"]:
    rows.append(("Python stepping (jitted step)", res["python_s_per_step"], args.steps, "jax", "python"))
  if "ddim_s_per_step" in res:
    rows.append((f"compiled DDIM-{res['ddim_steps']}", res["ddim_s_per_step"], res["ddim_steps"], "jax", "ddim"))
  peers = {}
  if torch_res:
    peers = {v: r.get("s_per_step") for v, r in torch_res["variants"].items()}
    for v, s in peers.items():
      if s:
        name = f"PyTorch {v} ({torch_res['device']}, {torch_res['params'] / 1e6:.2f} M)"
        rows.append((name, s, args.steps, "torch", v))
    measured = {v: s for v, s in peers.items() if s}
    if len(measured) > 1:
      fastest = min(measured, key=measured.get)
      rows.append((f"PyTorch best (= {fastest})", measured[fastest], args.steps, "torch", "best"))
  # the compiled loop's speed against each PyTorch variant and the fastest one (the strongest peer)
  result["vs_torch"] = common.speed_ratios(res["compiled_s_per_step"], peers)
  print(f"\nDDPM sampling: {size} U-Net ({res['params'] / 1e6:.2f} M params), {args.batch}x{args.height}x"
        f"{args.width}, T={args.steps}, {args.dtype}, {res['device']} ({res['backend']}); "
        f"{flops / 1e9:.1f} GFLOP per step (model FLOPs)")
  print(f"{'method':48s} {'ms/step':>9s} {'s/sample':>9s} {'TFLOP/s':>8s} {'MFU':>7s} {'loop speed-up':>13s}")
  for name, s, n, framework, variant in rows:
    tflops = flops / s / 1e12
    mfu = tflops / peak if peak else None
    speedup = s / res["compiled_s_per_step"]
    print(f"{name:48s} {1e3 * s:9.3f} {s * n:9.2f} {tflops:8.1f} "
          f"{(f'{100 * mfu:6.1f}%') if mfu is not None else '      -'} {speedup:12.2f}x")
    result["rows"].append({"method": name, "framework": framework, "variant": variant, "s_per_step": s, "steps": n,
                           "s_per_sample": s * n, "tflops": tflops, "mfu": mfu, "loop_speedup": speedup})
  for v, r in (torch_res or {}).get("variants", {}).items():
    if "s_per_step" not in r:
      why = f"SKIPPED {r['skipped']}" if "skipped" in r else f"FAILED {r['error'].splitlines()[0]}"
      print(f"PyTorch {v}: {why}")
  print(f"compiled loop: {res['compile_loop_s']:.1f} s to compile"
        + (f"; speed-up over Python stepping {res['python_s_per_step'] / res['compiled_s_per_step']:.2f}x"
           if res["python_s_per_step"] else "")
        + "".join(f", over PyTorch {v} {r:.2f}x" for v, r in result["vs_torch"].items()))
  save(result)
  return result


if __name__ == "__main__":
  main()
