r"""Predicts HDR images for a folder of NTIRE scenes with a trained checkpoint.

  python -m hdr_jax.predict --workdir=runs/vam_drdb --input=NTIRE_DIR --output=OUT [--format=ntire|exr|hdr]
  python -m hdr_jax.predict --pretrained=NAME --input=NTIRE_DIR --output=OUT    # a model shipped in the package

On an NTIRE folder ``ntire`` (default) writes the official results layout (``NNNN.png`` 16-bit +
``NNNN_alignratio.npy``) that ``python -m hdr_jax.score`` and the official scoring program read;
``exr``/``hdr`` write linear radiance. On a SIG17 folder (detected; docs/sig17.md) each scene's linear HDR goes to
``OUTPUT/<scene id>.hdr`` (default) or ``.exr``, the id being the scene's folder path under INPUT.
Full-resolution frames; ground truth in the input folder is not needed.
"""

from __future__ import annotations

import time
from pathlib import Path

import jax
from absl import flags

from hdr_jax import engine as engine_lib
from hdr_jax import io as hio
from hdr_jax import sig17


def _define_flags():
  """Command-line flags, defined when the program runs (importing the module defines none)."""
  global _WORKDIR, _PRETRAINED, _INPUT, _OUTPUT, _FORMAT, _STEP, _SET
  _WORKDIR = flags.DEFINE_string("workdir", None, "Training workdir holding config.json and checkpoints/.")
  _PRETRAINED = flags.DEFINE_string("pretrained", None, "A model shipped in the package, instead of --workdir "
                                    "(hdr_jax.pretrained.available() lists them).")
  _INPUT = flags.DEFINE_string("input", None, "NTIRE folder of scenes (NNNN_short/medium/long.png, NNNN_exposures.npy) "
                                  "or a SIG17 root (scene folders of .tif frames and exposure.txt).")
  _OUTPUT = flags.DEFINE_string("output", None, "Output folder.")
  _FORMAT = flags.DEFINE_enum("format", None, ["ntire", "exr", "hdr"], "Output format (default: ntire for NTIRE "
                              "input, hdr for SIG17).")
  _STEP = flags.DEFINE_string("step", "latest", "Checkpoint step: an integer, 'latest' or 'best'.")
  _SET = flags.DEFINE_multi_string("set", [], "Config overrides KEY=VALUE (e.g. sampler.steps=50 for diffusion).")


def run(workdir, input_dir, output_dir, fmt=None, step="latest", overrides=None, pretrained=None) -> list[Path]:
  """Predicts every scene of ``input_dir`` into ``output_dir`` with the checkpoint of ``workdir``, or
  with the shipped model ``pretrained`` (exactly one of the two); returns the files written."""
  if (workdir is None) == (pretrained is None):
    raise ValueError("give exactly one of --workdir (a training run) and --pretrained (a shipped model)")
  if pretrained is not None:
    from hdr_jax import pretrained as pretrained_lib

    workdir = pretrained_lib.path(pretrained)
  layout = sig17.detect_layout(input_dir)
  fmt = fmt or ("hdr" if layout == "sig17" else "ntire")
  if layout == "sig17" and fmt == "ntire":
    raise ValueError(f"--format=ntire: {input_dir} is a SIG17 folder; its results are linear 'hdr' or 'exr' files")
  write = (lambda d, p: sig17.write_result(output_dir, d, p, fmt)) if layout == "sig17" else (
      lambda d, p: hio.write_result(output_dir, d["id"], p, fmt))
  scenes = sig17.validate_scenes(input_dir, layout)
  if jax.process_index() == 0:  # before the model is built: an unwritable --output fails at once
    hio.writable_dir(output_dir, "output folder")
  config, engine, state, chosen = engine_lib.load_from_workdir(workdir, step, overrides)
  sig17.warn_mismatch(config, layout)
  written = []
  t0 = time.perf_counter()
  for d, pred in engine_lib.iter_predictions(engine, state, scenes, key=jax.random.key(config.seed)):
    if jax.process_index() == 0:
      try:
        written += write(d, pred)
      except OSError as e:  # each file is atomic, so what is there is complete
        raise hio.DataError(Path(output_dir).absolute(), f"cannot write the result of scene {d['id']} "
                            f"({e.strerror or e}); the {len(written)} file(s) written before it are "
                            f"complete") from None
  if jax.process_index() == 0:
    print(f"{len(scenes)} scene(s) predicted with {config.model.name} (step {chosen}) in "
          f"{time.perf_counter() - t0:.1f} s -> {Path(output_dir).absolute()} ({fmt})")
  return written


def main(argv=None):
  _define_flags()
  engine_lib.run_cli(
      lambda: run(_WORKDIR.value, _INPUT.value, _OUTPUT.value, _FORMAT.value, _STEP.value,
                  engine_lib.parse_overrides(_SET.value), _PRETRAINED.value), argv, required=(_INPUT, _OUTPUT))


if __name__ == "__main__":
  main()
