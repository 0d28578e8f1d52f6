r"""Where a step's device time goes: a JAX profiler trace of a few steps and a table of its kernels.

Targets (all through the project's own code):

* ``train:<config>``: the trainer's jitted train step (``hdr_jax.engine.Engine``) of ``configs/<config>.py``
  on a random batch of ``--batch`` x ``--patch``^2 crops;
* ``predict:<config>``: the engine's jitted full-frame predict on one ``--height`` x ``--width`` scene;
* ``unet:<size>``: one forward of the DDPM U-Net as the samplers call it (sizes of
  ``benchmarks/diffusion_sampling.py``), ``--batch`` x ``--height`` x ``--width``.

The trace (``--out``/plugins/profile/<run>/, viewable with xprof/TensorBoard) is summarised from its
Chrome-trace JSON: device (GPU stream) events grouped by XLA op and by kernel, with the share of the
traced steps' wall time the device was busy (the rest is launch gaps and host time). Runs anywhere; on
CPU the table holds host-side XLA thunks instead of kernels.

  python benchmarks/profile_step.py --target=train:ahdrnet --dtype=bfloat16
  python benchmarks/profile_step.py --target=unet:ddpm --dtype=bfloat16 --batch=8 --height=128 --width=128
  python benchmarks/profile_step.py --analyze=benchmarks/out/profile/train_ahdrnet_bfloat16   # a saved trace
"""

from __future__ import annotations

import argparse
import collections
import gzip
import json
import re
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(Path(__file__).resolve().parent)]

import common  # noqa: E402

_KINDS = (("conv", re.compile(r"conv(?!ert)|cudnn|xmma_fprop|dgrad|wgrad|implicit_gemm|sm\d+_xmma", re.I)),
          ("gemm", re.compile(r"gemm|cutlass|nvjet|cublas|dot", re.I)),
          ("triton", re.compile(r"triton", re.I)),
          ("reduce", re.compile(r"reduc|input_reduce|row_reduction|column_reduction", re.I)),
          ("concatenate", re.compile(r"concatenate", re.I)),
          ("convert", re.compile(r"convert", re.I)),
          ("copy/transpose", re.compile(r"copy|transpose|memcpy|memset", re.I)),
          ("fusion", re.compile(r"fusion|loop_|input_", re.I)))


def kind_of(name: str) -> str:
  for kind, pattern in _KINDS:
    if pattern.search(name):
      return kind
  return "other"


def summarize(trace_dir, steps: int, top: int = 25) -> dict:
  """Reads the newest ``*.trace.json.gz`` under ``trace_dir`` and aggregates its device events."""
  files = sorted(Path(trace_dir).rglob("*.trace.json.gz"), key=lambda p: p.stat().st_mtime)
  if not files:
    raise FileNotFoundError(f"{trace_dir}: no *.trace.json.gz (was the trace written?)")
  events = json.loads(gzip.decompress(files[-1].read_bytes()))["traceEvents"]
  names = {e["pid"]: e["args"]["name"] for e in events if e.get("ph") == "M" and e.get("name") == "process_name"}
  threads = {(e["pid"], e["tid"]): e["args"]["name"] for e in events
             if e.get("ph") == "M" and e.get("name") == "thread_name"}
  device_pids = {pid for pid, n in names.items() if "/device:" in n}
  pids = device_pids or set(names)
  spans = [e for e in events if e.get("ph") == "X" and e.get("pid") in pids and "dur" in e]
  # A device's kernels are on its "Stream #..." lines; derived lines ("XLA Modules", "XLA Ops", "Steps")
  # repeat the same time at coarser grain, and "XLA Ops" names the HLO op of each span.
  line = lambda e: threads.get((e["pid"], e.get("tid")), "")
  kernels = [e for e in spans if "Stream" in line(e)] if device_pids else spans
  kernels = kernels or spans
  op_spans = [e for e in spans if line(e) == "XLA Ops"] if device_pids else []
  by_kernel, by_op, by_kind, count = (collections.Counter(), collections.Counter(), collections.Counter(),
                                      collections.Counter())
  busy = []
  for e in kernels:
    name = e["name"]
    op = (e.get("args") or {}).get("hlo_op") or name
    by_kernel[name] += e["dur"]
    if not op_spans:
      by_op[op] += e["dur"]
    kind = kind_of(name)  # the kernel's own name first; the XLA op (maybe a command buffer) if that says nothing
    by_kind[kind if kind != "other" else kind_of(op)] += e["dur"]
    count[name] += 1
    busy.append((e["ts"], e["ts"] + e["dur"]))
  for e in op_spans:
    by_op[e["name"]] += e["dur"]
  busy.sort()
  merged, start, end = 0.0, None, None
  for a, b in busy:
    if end is None or a > end:
      if end is not None:
        merged += end - start
      start, end = a, b
    else:
      end = max(end, b)
  if end is not None:
    merged += end - start
  window = (max(b for _, b in busy) - busy[0][0]) if busy else 0.0
  total = sum(by_kernel.values())
  per = max(1, steps)
  return {"trace": str(files[-1]), "device_timeline": bool(device_pids), "steps": steps,
          "device_busy_ms_per_step": merged / 1e3 / per, "window_ms_per_step": window / 1e3 / per,
          "busy_fraction": merged / window if window else None, "kernel_ms_per_step": total / 1e3 / per,
          "by_kind": {k: v / 1e3 / per for k, v in by_kind.most_common()},
          "top_ops": [{"op": k, "ms_per_step": v / 1e3 / per} for k, v in by_op.most_common(top)],
          "top_kernels": [{"kernel": k[:160], "ms_per_step": v / 1e3 / per, "calls_per_step": count[k] / per}
                          for k, v in by_kernel.most_common(top)]}


def print_summary(s: dict) -> None:
  print(f"trace {s['trace']} ({'device' if s['device_timeline'] else 'host'} timeline, {s['steps']} steps)")
  print(f"per step: busy {s['device_busy_ms_per_step']:.3f} ms of a {s['window_ms_per_step']:.3f} ms window "
        f"({100 * (s['busy_fraction'] or 0):.0f}% busy); kernels summed {s['kernel_ms_per_step']:.3f} ms")
  print(common.table(["kind", "ms/step"], [[k, f"{v:.3f}"] for k, v in s["by_kind"].items()]))
  print(common.table(["XLA op", "ms/step"], [[r["op"][:90], f"{r['ms_per_step']:.3f}"] for r in s["top_ops"]]))
  print(common.table(["kernel", "calls/step", "ms/step"],
                     [[r["kernel"][:90], f"{r['calls_per_step']:.1f}", f"{r['ms_per_step']:.3f}"]
                      for r in s["top_kernels"]]))


def _target_fn(args):
  """``(fn, sync, description)``: ``fn()`` runs one step of the target."""
  import jax
  import jax.numpy as jnp

  kind, _, name = args.target.partition(":")
  if kind in ("train", "predict"):
    import models as model_bench

    config = model_bench.load_config(name, args.dtype, args.batch, args.patch, {})
    eng = common.engine(config)
    state = {"s": eng.init_state(jax.random.key(config.seed))}
    key = jax.random.key(1)
    if kind == "train":
      batch = eng.global_batch(model_bench.synthetic_batch(args.batch, (args.patch, args.patch)))

      def fn():
        state["s"], metrics = eng.train_step(state["s"], batch, key)
        return metrics

      return fn, lambda m: jax.block_until_ready((state["s"], m)), f"train step {name} {args.batch}x{args.patch}^2"
    scene = model_bench.synthetic_batch(1, (args.height, args.width))
    predict = eng.predict_step
    frames, exposures = jax.device_put(scene["frames"]), jax.device_put(scene["exposures"])
    return (lambda: predict(state["s"], frames, exposures, key), jax.block_until_ready,
            f"predict {name} {args.height}x{args.width}")
  if kind == "unet":
    from flax import nnx

    import diffusion_sampling

    graphdef, params = diffusion_sampling.init_unet(name, args.dtype)
    x = jax.random.normal(jax.random.key(0), (args.batch, args.height, args.width, 3))
    fwd = jax.jit(lambda s, x, t: nnx.merge(graphdef, s)(x, t))
    return (lambda: fwd(params, x, jnp.int32(500)), jax.block_until_ready,
            f"U-Net {name} forward {args.batch}x{args.height}x{args.width}")
  raise ValueError(f"--target={args.target!r}: use train:<config>, predict:<config> or unet:<size>")


def main(argv=None):
  p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  p.add_argument("--target", default="train:ahdrnet")
  p.add_argument("--dtype", choices=("float32", "bfloat16"), default="bfloat16")
  p.add_argument("--batch", type=int, default=8)
  p.add_argument("--patch", type=int, default=256)
  p.add_argument("--height", type=int, default=1060)
  p.add_argument("--width", type=int, default=1900)
  p.add_argument("--steps", type=int, default=10, help="steps traced (after --warmup untraced ones)")
  p.add_argument("--warmup", type=int, default=3)
  p.add_argument("--top", type=int, default=25)
  p.add_argument("--out", default=None, help="trace folder (default benchmarks/out/profile/<target>_<dtype>)")
  p.add_argument("--analyze", default=None, help="summarise an existing trace folder instead (--steps: its steps)")
  args = p.parse_args(argv)
  from hdr_jax import cli
  cli.set_cpu_xla_flags()  # the entry points' CPU flags: same numbers as the CLI

  if args.analyze:
    summary = summarize(args.analyze, args.steps, args.top)
    print_summary(summary)
    return summary

  import jax

  out = Path(args.out or ROOT / "benchmarks" / "out" / "profile" / f"{args.target.replace(':', '_')}_{args.dtype}")
  if out.exists() and not out.is_dir():
    raise SystemExit(f"--out={out}: exists and is not a directory (the trace is written into a folder)")
  fn, sync, what = _target_fn(args)
  first = common.timed(fn, sync)[1]
  t = common.time_repeats(fn, repeats=3, warmup=args.warmup, iters=args.steps, sync=sync)
  jax.profiler.start_trace(str(out))
  try:
    for _ in range(args.steps):
      res = fn()
    sync(res)
  finally:
    jax.profiler.stop_trace()
  summary = summarize(out, args.steps, args.top)
  summary.update({"what": what, "dtype": args.dtype, "first_call_s": first, "ms_per_step_untraced": 1e3 * t["median_s"],
                  "device": common.device_info(), "versions": common.versions(), "date": common.utc_now()})
  print(f"{what} ({args.dtype}): {1e3 * t['median_s']:.3f} ms/step untraced, first call {first:.1f} s")
  print_summary(summary)
  common.write_json(out / "summary.json", summary)
  return summary


if __name__ == "__main__":
  main()
