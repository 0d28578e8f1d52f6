r"""Evaluates a checkpoint on whole frames of an NTIRE or SIG17 folder (the layout is detected).

  python -m hdr_jax.evaluate --workdir=runs/vam_drdb [--data=NTIRE_DIR] [--step=N|best|latest] \
      [--config.KEY=VALUE ...]

Prints a per-scene table (PSNR-mu and PSNR-L exactly as the official scoring program, SSIM-mu,
SSIM-L, and the medium-frame baseline) and writes ``WORKDIR/eval_<step>.json``. On a SIG17 folder the
four metrics are the SIG17 protocol's (linear HDR clipped to [0, 1]; docs/sig17.md).
"""

from __future__ import annotations

import json
from pathlib import Path

import jax
from absl import flags

from hdr_jax import cli
from hdr_jax import engine as engine_lib
from hdr_jax import evaluation
from hdr_jax import fileio
from hdr_jax import sig17


def _define_flags():
  """Command-line flags, defined when the program runs (importing the module defines none)."""
  global _WORKDIR, _DATA, _STEP, _MAX, _OUT
  _WORKDIR = flags.DEFINE_string("workdir", None, "Training workdir holding config.json and checkpoints/.")
  _DATA = flags.DEFINE_string("data", None, "NTIRE or SIG17 folder with ground truth (default: the run's "
                              "validation data).")
  _STEP = flags.DEFINE_string("step", "latest", "Checkpoint step: an integer, 'latest' or 'best'.")
  _MAX = flags.DEFINE_integer("max_scenes", 0, "Evaluate at most this many scenes (0: all).")
  _OUT = flags.DEFINE_string("json", None, "Where to write the JSON (default WORKDIR/eval_<step>.json).")


def format_table(rows, means) -> str:
  cols = [k for k in means]
  w = max([5] + [len(str(r["id"])) for r in rows])
  lines = [f"{'scene':>{w}}  " + "  ".join(f"{c:>16}" for c in cols)]
  for r in rows:
    lines.append(f"{r['id']:>{w}}  " + "  ".join(f"{r[c]:16.4f}" for c in cols))
  lines.append(f"{'mean':>{w}}  " + "  ".join(f"{means[c]:16.4f}" for c in cols))
  return "\n".join(lines)


def run(workdir, data=None, step="latest", max_scenes=0, json_path=None, overrides=None) -> dict:
  config, engine, state, chosen = engine_lib.load_from_workdir(workdir, step, overrides,
                                                               prepare=cli.use_compilation_cache)
  if data:
    folder = Path(data)
  else:  # the run's own validation data (imported here: the input pipeline is needed only then)
    from hdr_jax import data as data_lib

    folder = data_lib.resolve_data(config)[1]
  layout = sig17.detect_layout(folder)
  sig17.warn_mismatch(config, layout)
  scenes = sig17.validate_scenes(folder, layout, require_gt=True)
  if max_scenes:
    scenes = scenes[:max_scenes]
  means, rows = evaluation.evaluate_scenes(engine, state, scenes, key=jax.random.key(config.seed))
  result = {"workdir": str(fileio.workdir_path(workdir)), "step": chosen, "data": str(folder.absolute()),
            "model": config.model.name, "mean": means, "scenes": rows}
  if jax.process_index() == 0:
    print(format_table(rows, means))
    out = fileio.workdir_path(json_path) if json_path else fileio.workdir_path(workdir) / f"eval_{chosen}.json"
    fileio.atomic_write_bytes(out, json.dumps(result, indent=2).encode())
    print(f"wrote {out}")
  return result


def main(argv=None):
  _define_flags()
  cli.run_cli(  # --config.KEY=VALUE overrides of the workdir's config (e.g. --config.sampler.steps=50)
      lambda overrides: run(_WORKDIR.value, _DATA.value, _STEP.value, _MAX.value, _OUT.value, overrides),
      argv, required=(_WORKDIR,), config_overrides=True)


if __name__ == "__main__":
  main()
