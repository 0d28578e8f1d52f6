"""The open GPU speed targets of issue 20 as one table, from the JSON that ``benchmarks/gpu_issue20.sh`` wrote.

Reads, in ``--out``: ``ahdr_bf16.json`` and ``ahdr_f32.json`` (``benchmarks/models.py``: AHDRNet's train
step and full frame, JAX and the PyTorch variants of the same run), ``ddpm.json``
(``benchmarks/diffusion_sampling.py``: the compiled 1000-step loop and the PyTorch variants),
``opt_ddpm_<name>.json`` / ``opt_frame_<name>.json`` (the same JAX measurements under other XLA flags)
and ``status.jsonl`` (each step's outcome). Prints one table and writes ``targets.json``. A target
whose measurement is missing is "not measured", never guessed.

  python benchmarks/gpu_targets.py --out=benchmarks/out/issue20
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import common  # noqa: E402

TRAIN_SPEEDUP = 2.0  # JAX train step at least 2x faster than the best PyTorch peer, same precision
FRAME_MS = 20.0  # a bf16 1060x1900 frame in at most 20 ms
SAMPLE_S = 1.5  # a 1000-step sample of the 35 M U-Net in at most 1.5 s
PEERS = ("eager", "tuned", "compile", "reduce-overhead", "max-autotune")


def _load(path: Path) -> dict | None:
  try:
    return json.loads(path.read_text())
  except (OSError, json.JSONDecodeError):
    return None


def _models_rows(report: dict | None, dtype: str, phase: str, key: str) -> tuple[float | None, dict]:
  """(JAX AHDRNet time, {PyTorch variant: time}) of one phase of a ``models.py`` report."""
  jax_t, peers = None, {}
  for r in (report or {}).get("rows", []):
    if r.get("model_name") != "ahdrnet" or r.get("dtype") != dtype:
      continue
    t = (r.get(phase) or {}).get(key)
    if r["framework"] == "jax" and jax_t is None:
      jax_t = t
    elif r["framework"] == "torch" and t:
      peers[r["variant"]] = t
  return jax_t, peers


def _ddpm(report: dict | None) -> tuple[float | None, dict, dict]:
  """(JAX compiled seconds per sample, {PyTorch variant: seconds per sample}, setting) of a diffusion
  report's first size; PyTorch's per-sample time is its per-step time x T (it times ``--torch_steps``)."""
  sizes = (report or {}).get("sizes") or {}
  if not sizes:
    return None, {}, {}
  size, res = next(iter(sizes.items()))
  args = report.get("args", {})
  steps = args.get("steps")
  setting = {"size": size, "params": (res.get("jax") or {}).get("params"), "batch": args.get("batch"),
             "height": args.get("height"), "width": args.get("width"), "steps": steps, "dtype": args.get("dtype")}
  jax_s = (res.get("jax") or {}).get("compiled_total_s")
  peers = {v: r["s_per_step"] * steps for v, r in ((res.get("torch") or {}).get("variants") or {}).items()
           if r.get("s_per_step")}
  return jax_s, peers, setting


def _target(name, unit, jax_t, peers, goal, met, needs_peer=False) -> dict:
  best = min(peers, key=peers.get) if peers else None
  ratio = peers[best] / jax_t if best and jax_t else None
  if jax_t is None or (needs_peer and ratio is None):
    verdict = "not measured" if jax_t is None else "no peer measured"
  else:
    verdict = "met" if met(jax_t, ratio) else "NOT met"
    if peers and not any(p in peers for p in ("compile", "reduce-overhead", "max-autotune")):
      verdict += " (no compiled peer)"  # torch.compile failed or ran out of time: the best peer may be missing
  return {"target": name, "unit": unit, "jax": jax_t, "peers": peers, "best_peer": best, "jax_vs_best": ratio,
          "goal": goal, "verdict": verdict}


def summarize(out: Path) -> dict:
  out = Path(out)
  bf16, f32, ddpm = (_load(out / f"{n}.json") for n in ("ahdr_bf16", "ahdr_f32", "ddpm"))
  targets = []
  for dtype, report in (("bfloat16", bf16), ("float32", f32)):
    s = (report or {}).get("settings", {})
    jax_t, peers = _models_rows(report, dtype, "train", "ms_per_step")
    targets.append(_target(f"AHDRNet train step {dtype} ({s.get('batch', '?')}x{s.get('patch', '?')}^2)",
                           "ms", jax_t, peers, f">= {TRAIN_SPEEDUP:g}x best peer", lambda t, r: r >= TRAIN_SPEEDUP,
                           needs_peer=True))
  s = (bf16 or {}).get("settings", {})
  jax_t, peers = _models_rows(bf16, "bfloat16", "infer", "ms")
  targets.append(_target(f"AHDRNet frame bfloat16 ({s.get('height', '?')}x{s.get('width', '?')})", "ms", jax_t,
                         peers, f"<= {FRAME_MS:g} ms", lambda t, r: t <= FRAME_MS))
  jax_s, peers, st = _ddpm(ddpm)
  params = f"{st['params'] / 1e6:.3g} M " if st.get("params") else ""
  targets.append(_target(f"DDPM {st.get('steps', '?')}-step sample, {st.get('size', '?')} U-Net {params}"
                         f"{st.get('dtype', '?')} ({st.get('batch', '?')}x{st.get('height', '?')}^2)", "s",
                         jax_s, peers, f"<= {SAMPLE_S:g} s", lambda t, r: t <= SAMPLE_S))

  # XLA options: the same JAX measurement under other flags against the default run of this script
  # (per image for the sampler, whose option runs may change the batch)
  base = {"ddpm": _ddpm(ddpm), "frame": _models_rows(bf16, "bfloat16", "infer", "ms")[0]}
  options = []
  for path in sorted(out.glob("opt_*.json")):
    kind, _, name = path.stem.removeprefix("opt_").partition("_")
    report = _load(path) or {}
    if kind == "ddpm":
      value, _, st = _ddpm(report)
      unit, flags = f"s/sample of {st.get('batch', '?')}", report.get("xla_flags")
      b, _, bst = base["ddpm"]
      speedup = (b / bst["batch"]) / (value / st["batch"]) if b and value else None
    else:
      value, unit = _models_rows(report, "bfloat16", "infer", "ms")[0], "ms/frame"
      flags, b = (report.get("env") or {}).get("XLA_FLAGS"), base["frame"]
      speedup = b / value if b and value else None
    options.append({"option": name, "target": kind, "value": value, "unit": unit, "default": b, "speedup": speedup,
                    "xla_flags": flags})
  steps = []
  for line in (out / "status.jsonl").read_text().splitlines() if (out / "status.jsonl").is_file() else []:
    try:
      steps.append(json.loads(line))
    except json.JSONDecodeError:
      pass
  device = ((bf16 or f32 or {}).get("device") or {}).get("device_kind")
  return {"device": device, "date": common.utc_now(), "targets": targets, "options": options, "steps": steps}


def format_summary(summary: dict) -> str:
  f = lambda x: common.fmt(x, ".3g")
  rows = []
  for t in summary["targets"]:
    rows.append([t["target"], t["unit"], f(t["jax"]), *[f(t["peers"].get(p)) for p in PEERS],
                 t["best_peer"] or "-", common.fmt(t["jax_vs_best"], ".2f") + ("x" if t["jax_vs_best"] else ""),
                 t["goal"], t["verdict"]])
  lines = [f"issue 20 GPU targets on {summary.get('device') or '?'} (JAX against PyTorch in the same run; PyTorch "
           "DDPM sample = its per-step time x T)",
           common.table(["target", "unit", "JAX", *PEERS, "best", "JAX vs best", "goal", ""], rows)]
  if summary["options"]:
    lines.append("\nXLA options (JAX only, each its own process; speed-up against this run's default flags, per "
                 "image for the sampler):")
    lines.append(common.table(
        ["option", "target", "value", "unit", "default", "speed-up", "XLA_FLAGS"],
        [[o["option"], o["target"], f(o["value"]), o["unit"], f(o["default"]),
          common.fmt(o["speedup"], ".2f") + ("x" if o["speedup"] else ""), (o["xla_flags"] or "")[:110]]
         for o in summary["options"]]))
  bad = [s for s in summary["steps"] if s.get("status") != "ok"]
  if bad:
    lines.append("steps not ok: " + ", ".join(f"{s['step']} {s['status']}" for s in bad))
  return "\n".join(lines)


def main(argv=None) -> dict:
  p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  p.add_argument("--out", required=True, help="the folder gpu_issue20.sh wrote ($OUT)")
  args = p.parse_args(argv)
  summary = summarize(Path(args.out))
  print(format_summary(summary))
  common.write_json(Path(args.out) / "targets.json", summary)
  return summary


if __name__ == "__main__":
  main()
