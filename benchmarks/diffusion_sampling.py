r"""Seconds per DDPM sampling step: the compiled loop vs Python stepping vs eager PyTorch.

The source project's setting (docs/reference.md, Conditional DDPM): 128x128 images, batch 8, T = 1000
ancestral steps; its eager per-step loop took 71.89 s per step on CPU. Three ways to run the same sampler:

  (a) ``compiled``: ``hdr_jax.diffusion.sample`` -- all steps in one ``jax.jit`` (``lax.scan``);
  (b) ``python``: the same U-Net and update as one jitted step, called from a Python loop;
  (c) ``torch``: an eager PyTorch DDPM U-Net of the same layout (if torch is importable).

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
Timings: warm-up (compilation) excluded, ``jax.block_until_ready``, median of ``--repeats`` with the
compiled and Python-stepped runs interleaved.
"""

from __future__ import annotations

import argparse
import json
import math
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


def bench_jax(args) -> dict:
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
  jax.block_until_ready(step(state, x0, jnp.int32(args.steps - 1), jnp.int32(0), k_loop))

  def python_loop():
    x = x0
    for i in range(n_py):
      x = step(state, x, jnp.int32(args.steps - 1 - i), jnp.int32(i), k_loop)
    return x

  loop_s, py_s = median_times([lambda: loop(state, key), python_loop], args.repeats)
  py_s /= n_py
  ddim = {}
  if args.ddim_steps:
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


def bench_torch(args) -> dict | None:
  try:
    import torch
  except ImportError:
    return None
  kw = model_kwargs(args.size, False)
  dev = "cuda" if torch.cuda.is_available() else "cpu"
  net = torch_unet(kw).to(dev).eval()
  n_params = sum(p.numel() for p in net.parameters())
  sched = diffusion.make_schedule("linear", args.steps, 1e-4, 0.02)
  c = {k: torch.tensor(np.asarray(getattr(sched, k)), device=dev) for k in
       ("alphas_cumprod", "posterior_mean_coef1", "posterior_mean_coef2", "posterior_log_variance")}
  use_bf16 = args.dtype == "bfloat16" and dev == "cuda"
  gen = torch.Generator(device=dev).manual_seed(0)
  x = torch.randn(args.batch, 3, args.height, args.width, device=dev, generator=gen)
  n = min(args.torch_steps, args.steps)

  def run():
    y = x
    with torch.no_grad(), torch.autocast(dev, torch.bfloat16, enabled=use_bf16):
      for i in range(n):
        t = args.steps - 1 - i
        eps = net(y, torch.full((args.batch,), t, device=dev)).float()
        abar = c["alphas_cumprod"][t]
        x0 = ((y - (1 - abar).sqrt() * eps) / abar.sqrt()).clamp(-1, 1)
        mean = c["posterior_mean_coef1"][t] * x0 + c["posterior_mean_coef2"][t] * y
        z = torch.randn(y.shape, device=dev, generator=gen)
        y = mean + (0.5 * c["posterior_log_variance"][t]).exp() * z if t > 0 else mean
    if dev == "cuda":
      torch.cuda.synchronize()
    return y

  run()  # warm-up
  times = []
  for _ in range(args.repeats):
    t0 = time.perf_counter()
    run()
    times.append(time.perf_counter() - t0)
  return {"params": int(n_params), "s_per_step": statistics.median(times) / n, "steps_timed": n, "device": dev,
          "threads": torch.get_num_threads()}


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
  p.add_argument("--python_steps", type=int, default=100, help="steps timed for Python stepping")
  p.add_argument("--torch_steps", type=int, default=20, help="steps timed for eager PyTorch")
  p.add_argument("--no_torch", action="store_true")
  p.add_argument("--conditional", action="store_true", help="conditional U-Net (features computed once)")
  p.add_argument("--unroll", type=int, default=1, help="lax.scan unroll of the compiled loop")
  p.add_argument("--model_set", action="append", default=[],
                 help="JAX U-Net keyword override KEY=VALUE, e.g. gn_stats=channel (repeatable)")
  p.add_argument("--peak_tflops", default=None,
                 help="device peak for MFU (dtype-matched): TFLOP/s, or 'auto' to measure a matmul (8192^3; CPU 1024^3)")
  p.add_argument("--json", default=str(ROOT / "benchmarks" / "out" / "diffusion_sampling.json"))
  args = p.parse_args(argv)
  from hdr_jax import cli
  cli.set_cpu_xla_flags()  # the entry points' CPU flags: same numbers as the CLI
  sizes = [x.strip() for x in args.size.split(",") if x.strip()]
  for size in sizes:
    if size not in SIZES:
      p.error(f"--size: unknown {size!r}; choose from {', '.join(SIZES)}")

  peak = None
  if args.peak_tflops == "auto":
    peak = common.matmul_peak_tflops(args.dtype, 8192 if jax.default_backend() != "cpu" else 1024)["tflops"]
    print(f"measured {args.dtype} matmul peak: {peak:.1f} TFLOP/s")
  elif args.peak_tflops:
    peak = float(args.peak_tflops)
  out = {"args": vars(args), "peak_tflops": peak, "sizes": {}}
  for size in sizes:
    out["sizes"][size] = run_size(args, size, peak)
    Path(args.json).parent.mkdir(parents=True, exist_ok=True)
    Path(args.json).write_text(json.dumps(out, indent=2))
  print(f"wrote {args.json}")
  return out


def run_size(args, size: str, peak) -> dict:
  args = argparse.Namespace(**{**vars(args), "size": size})
  res = bench_jax(args)
  torch_res = None if args.no_torch else bench_torch(args)
  flops = res["flops_per_step"]
  rows = [("compiled loop (jax.jit + lax.scan)", res["compiled_s_per_step"], args.steps),
          ("Python stepping (jitted step)", res["python_s_per_step"], args.steps)]
  if "ddim_s_per_step" in res:
    rows.append((f"compiled DDIM-{res['ddim_steps']}", res["ddim_s_per_step"], res["ddim_steps"]))
  if torch_res:
    rows.append((f"eager PyTorch ({torch_res['device']}, {torch_res['params'] / 1e6:.2f} M)", torch_res["s_per_step"],
                 args.steps))
  print(f"\nDDPM sampling: {size} U-Net ({res['params'] / 1e6:.2f} M params), {args.batch}x{args.height}x"
        f"{args.width}, T={args.steps}, {args.dtype}, {res['device']} ({res['backend']}); "
        f"{flops / 1e9:.1f} GFLOP per step (model FLOPs)")
  print(f"{'method':40s} {'ms/step':>9s} {'s/sample':>9s} {'TFLOP/s':>8s} {'MFU':>7s}")
  out_rows = []
  for name, s, n in rows:
    tflops = flops / s / 1e12
    mfu = tflops / peak if peak else None
    print(f"{name:40s} {1e3 * s:9.3f} {s * n:9.2f} {tflops:8.1f} "
          f"{(f'{100 * mfu:6.1f}%') if mfu is not None else '      -'}")
    out_rows.append({"method": name, "s_per_step": s, "steps": n, "s_per_sample": s * n, "tflops": tflops, "mfu": mfu})
  print(f"compiled loop: {res['compile_loop_s']:.1f} s to compile; speed-up over Python stepping "
        f"{res['python_s_per_step'] / res['compiled_s_per_step']:.2f}x"
        + (f", over eager PyTorch {torch_res['s_per_step'] / res['compiled_s_per_step']:.1f}x" if torch_res else ""))
  return {"jax": res, "torch": torch_res, "rows": out_rows}


if __name__ == "__main__":
  main()
