r"""DDIM with few steps against the full ancestral sampler, on one trained conditional DDPM.

Trains ``configs/<config>.py`` through the real trainer (``python -m hdr_jax.train``, skipped when the
workdir already holds a checkpoint), then evaluates the same checkpoint on the same validation scenes
with each sampler of ``--samplers`` (``ddpm`` = all T ancestral steps, ``ddim:N:ETA`` = N DDIM steps
with that eta, ``ddim:N`` = eta 0) and each sampling seed of ``--seeds``, through ``hdr_jax.evaluate.run``. Prints PSNR-mu /
PSNR-L (mean over scenes, then mean and spread over seeds) with the medium-frame baseline, the gap of
each sampler to the first one (the reference), and wall seconds per scene; writes JSON. The evaluations
share one persistent XLA compilation cache (``<workdir>/xla_cache``): a sampler's later seeds load its
compiled program instead of compiling it again (tiny CPU check, DDIM-5 over two seeds: 10.6 s per
scene on average against 20.3 s without the cache).

  python benchmarks/sampler_quality.py --workdir=/tmp/sq --train_steps=3000 --val_scenes=8    # GPU
  python benchmarks/sampler_quality.py --workdir=/tmp/sq --train_steps=4 --val_scenes=1 --samplers=ddpm,ddim:5 \
      --seeds=0 --config.diffusion.timesteps=20 --config.data.embedded.train_scenes=2  # check

``--config.KEY=VALUE`` (repeatable) is handed to the trainer as it is.

The issue's target: DDIM-50 within 0.5 dB PSNR-mu of 1000 ancestral steps.
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(Path(__file__).resolve().parent)]

import common  # noqa: E402


def parse_sampler(text: str) -> dict:
  """``ddpm`` | ``ddim:N`` (eta 0) | ``ddim:N:ETA``."""
  name, *rest = text.split(":")
  bad = ValueError(f"--samplers: {text!r} is not 'ddpm', 'ddim:N' or 'ddim:N:ETA' (ETA in [0, 1])")
  if name == "ddpm" and not rest:
    return {"label": "ddpm (all T)", "name": name, "steps": None, "eta": 0.0}
  if name != "ddim" or not 1 <= len(rest) <= 2 or not rest[0].isdigit():
    raise bad
  try:
    eta = float(rest[1]) if len(rest) == 2 else 0.0
  except ValueError:
    raise bad from None
  if not 0.0 <= eta <= 1.0:
    raise bad
  return {"label": f"ddim-{rest[0]} eta {eta:g}", "name": name, "steps": int(rest[0]), "eta": eta}


def train(args) -> None:
  workdir = Path(args.workdir)
  if (workdir / "checkpoints").is_dir() and any((workdir / "checkpoints").iterdir()):
    print(f"{workdir}: checkpoint found, training skipped")
    return
  stem, _, variant = args.config.partition(":")
  cmd = [sys.executable, "-m", "hdr_jax.train", f"--config={ROOT / 'configs' / stem}.py" + (f":{variant}" if variant else ""),
         f"--workdir={workdir}", f"--config.num_train_steps={args.train_steps}",
         f"--config.eval_every={args.train_steps}", f"--config.checkpoint_every={args.train_steps}",
         f"--config.data.embedded.val_scenes={args.val_scenes}", "--config.progress=False"]
  cmd += args.config_overrides
  print("+", " ".join(cmd), flush=True)
  subprocess.run(cmd, check=True, cwd=ROOT)


def main(argv=None):
  from hdr_jax import cli

  argv, overrides = cli.split_config_overrides(sys.argv[1:] if argv is None else list(argv))
  p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter,
                              epilog="--config.KEY=VALUE (repeatable): a config override for the training run")
  p.add_argument("--workdir", required=True)
  p.add_argument("--config", default="diffusion",
                 help="configs/<name>.py (a diffusion config; NAME:ARG for its variant, e.g. diffusion:tiny)")
  p.add_argument("--train_steps", type=int, default=3000)
  p.add_argument("--val_scenes", type=int, default=8, help="embedded validation scenes (evaluated)")
  p.add_argument("--samplers", default="ddpm,ddim:50:1,ddim:25:1,ddim:50:0",
                 help="comma-separated ddpm | ddim:N | ddim:N:ETA; the first one is the reference")
  p.add_argument("--seeds", default="0,1", help="sampling seeds (config.seed at evaluation)")
  p.add_argument("--json", default=str(ROOT / "benchmarks" / "out" / "sampler_quality.json"))
  args = p.parse_args(argv)
  args.config_overrides = [f"--config.{kv}" for kv in overrides]  # handed to the trainer as given
  cli.set_cpu_xla_flags()  # the entry points' CPU flags: same numbers as the CLI
  samplers = [parse_sampler(s) for s in args.samplers.split(",") if s]
  seeds = [int(s) for s in args.seeds.split(",") if s]

  train(args)
  from hdr_jax import evaluate

  rows = []
  report = {"date": common.utc_now(), "args": vars(args), "device": common.device_info(), "versions": common.versions(),
            "rows": rows}
  for smp in samplers:
    for seed in seeds:
      overrides = {"sampler.name": smp["name"], "sampler.eta": smp["eta"], "seed": seed,
                   "compilation_cache": str(Path(args.workdir) / "xla_cache")}
      if smp["steps"]:
        overrides["sampler.steps"] = smp["steps"]
      start = time.perf_counter()
      res = evaluate.run(args.workdir, overrides=overrides, json_path=str(Path(args.workdir) / "eval_tmp.json"))
      took = time.perf_counter() - start
      rows.append({"sampler": smp["label"], "seed": seed, "s_per_scene": took / len(res["scenes"]),
                   "scenes": len(res["scenes"]), **res["mean"]})
      common.write_json(args.json, report)
      # One line per evaluation, so that a run cut short by a time limit still shows what it finished.
      print(f"sampler quality: {smp['label']}, seed {seed}: PSNR-mu {res['mean']['psnr_mu']:.2f} dB, "
            f"PSNR-L {res['mean']['psnr_l']:.2f} dB, {took:.1f} s for {len(res['scenes'])} scenes "
            f"(compilation included)", flush=True)

  ref = samplers[0]["label"]
  agg = {}
  for smp in samplers:
    sel = [r for r in rows if r["sampler"] == smp["label"]]
    mu = [r["psnr_mu"] for r in sel]
    agg[smp["label"]] = {"psnr_mu": statistics.mean(mu), "psnr_mu_sd": statistics.stdev(mu) if len(mu) > 1 else 0.0,
                         "psnr_l": statistics.mean(r["psnr_l"] for r in sel),
                         "s_per_scene": statistics.mean(r["s_per_scene"] for r in sel)}
  for a in agg.values():
    a["gap_to_reference_db"] = a["psnr_mu"] - agg[ref]["psnr_mu"]
  report["summary"] = agg
  base = rows[0]
  report["baseline"] = {"psnr_mu": base.get("baseline_psnr_mu"), "psnr_l": base.get("baseline_psnr_l")}
  common.write_json(args.json, report)
  print(f"\nsampler quality: {args.config} trained {args.train_steps} steps, {rows[0]['scenes']} validation scenes, "
        f"seeds {seeds}; medium-frame baseline PSNR-mu {common.fmt(base.get('baseline_psnr_mu'), '.2f')} dB")
  print(common.table(["sampler", "PSNR-mu", "sd (seeds)", "PSNR-L", f"vs {ref} (dB)", "s/scene (incl. compile)"],
                     [[k, f"{a['psnr_mu']:.2f}", f"{a['psnr_mu_sd']:.2f}", f"{a['psnr_l']:.2f}",
                       f"{a['gap_to_reference_db']:+.2f}", f"{a['s_per_scene']:.2f}"] for k, a in agg.items()]))
  print(f"wrote {args.json}")
  return report


if __name__ == "__main__":
  main()
