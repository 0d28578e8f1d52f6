r"""Predicts HDR images for a folder of NTIRE scenes, or for one's own bracketed photos, with a trained
checkpoint.

  python -m hdr_jax.predict --workdir=runs/vam_drdb --input=NTIRE_DIR --output=OUT [--format=ntire|exr|hdr]
  python -m hdr_jax.predict --pretrained=NAME --input=NTIRE_DIR --output=OUT    # a model shipped in the package
  python -m hdr_jax.predict --pretrained=NAME --input=PHOTOS --output=OUT [--format=exr|hdr]
      [--exposures=-2,0,2] [--align=mtb|ecc|ecc-affine|none] [--tile=512]

The input kind is detected (:func:`input_kind`): NTIRE scene files (``NNNN_short.png`` ...), a SIG17
root (scene folders of 16-bit ``.tif`` frames + ``exposure.txt``; docs/sig17.md), else a bracket folder
(three JPEG/PNG/TIFF frames) or a folder of bracket folders (:mod:`hdr_jax.brackets`). For NTIRE scenes
``ntire`` (default) writes the official results layout (``NNNN.png`` 16-bit + ``NNNN_alignratio.npy``)
that ``python -m hdr_jax.score`` and the official scoring program read; ``exr``/``hdr`` write linear
radiance. On a SIG17 root each scene's linear HDR goes to ``OUTPUT/<scene id>.hdr`` (default) or ``.exr``,
the id being the scene's folder path under INPUT. For brackets ``exr`` (default) or ``hdr`` linear
radiance plus a tone-mapped ``NAME_preview.png``, predicted in tiles (the whole-frame result at the memory
of one tile; :mod:`hdr_jax.tiling`). Full-resolution frames; ground truth in the input is not needed.
``--config.KEY=VALUE`` (repeatable) overrides a value of the model's config, as for ``train`` (e.g.
``--config.sampler.steps=50`` for a diffusion model).
"""

from __future__ import annotations

import time
from pathlib import Path

import jax
from absl import flags

from hdr_jax import brackets
from hdr_jax import cli
from hdr_jax import engine as engine_lib
from hdr_jax import evaluation
from hdr_jax import fileio
from hdr_jax import sig17


def _define_flags():
  """Command-line flags, defined when the program runs (importing the module defines none)."""
  global _WORKDIR, _PRETRAINED, _INPUT, _OUTPUT, _FORMAT, _STEP, _EXPOSURES, _ALIGN, _TILE
  _WORKDIR = flags.DEFINE_string("workdir", None, "Training workdir holding config.json and checkpoints/.")
  _PRETRAINED = flags.DEFINE_string("pretrained", None, "A model shipped in the package, instead of --workdir "
                                    "(hdr_jax.pretrained.available() lists them).")
  _INPUT = flags.DEFINE_string("input", None, "NTIRE folder of scenes (NNNN_short/medium/long.png, NNNN_exposures.npy), "
                               "a SIG17 root (scene folders of .tif frames and exposure.txt), a folder of "
                               "three JPEG/PNG/TIFF frames, or a folder of such folders.")
  _OUTPUT = flags.DEFINE_string("output", None, "Output folder.")
  _FORMAT = flags.DEFINE_enum("format", None, ["ntire", "exr", "hdr"], "Output format (default: ntire for NTIRE "
                              "scenes, hdr for SIG17, exr for brackets).")
  _EXPOSURES = flags.DEFINE_string("exposures", None, "Brackets: the frames' exposures in stops, in file-name order "
                                   "(e.g. -2,0,2); default from the EXIF.")
  _ALIGN = flags.DEFINE_enum("align", None, list(brackets.ALIGN_METHODS), "Brackets: global alignment of the "
                             "short and long frames onto the medium one (default mtb).")
  _TILE = flags.DEFINE_integer("tile", None, "Brackets: output pixels per tile side (default 512 for "
                               "translation-local models; 0 = the whole frame at once).")
  _STEP = flags.DEFINE_string("step", "latest", "Checkpoint step: an integer, 'latest' or 'best'.")


def input_kind(input_dir) -> str:
  """``'ntire'`` (NTIRE scene files), ``'sig17'`` (SIG17 scene folders with their ``exposure.txt`` or
  label) or ``'brackets'`` (image frames, or folders of them), checked in that order; anything else is read as NTIRE (whose reader
  names the problem)."""
  folder = Path(input_dir)
  if not folder.is_dir() or any(p.name.endswith("_short.png") for p in folder.iterdir()):
    return "ntire"
  if sig17.has_sig17_scenes(folder):
    return "sig17"
  return "brackets" if brackets.is_bracket_input(folder) else "ntire"


def run(workdir, input_dir, output_dir, fmt=None, step="latest", overrides=None, pretrained=None,
        exposures=None, align=None, tile=None) -> list[Path]:
  """Predicts every scene or bracket of ``input_dir`` (:func:`input_kind`) into ``output_dir`` with the
  checkpoint of ``workdir``, or with the shipped model ``pretrained`` (exactly one of the two);
  returns the files written. ``exposures``, ``align`` and ``tile`` are for brackets only."""
  if (workdir is None) == (pretrained is None):
    raise ValueError("give exactly one of --workdir (a training run) and --pretrained (a shipped model)")
  kind = input_kind(input_dir)
  if kind == "brackets":
    return _run_brackets(workdir, input_dir, output_dir, fmt or "exr", step, overrides, pretrained, exposures,
                         align, tile)
  for name, value in (("exposures", exposures), ("align", align), ("tile", tile)):
    if value is not None:
      raise ValueError(f"--{name} is for bracket folders (JPEG/PNG/TIFF frames); {input_dir} holds "
                       f"{'SIG17' if kind == 'sig17' else 'NTIRE'} scenes")
  if pretrained is not None:
    from hdr_jax import pretrained as pretrained_lib

    workdir = pretrained_lib.path(pretrained)
  layout = sig17.detect_layout(input_dir)
  fmt = fmt or ("hdr" if layout == "sig17" else "ntire")
  if layout == "sig17" and fmt == "ntire":
    raise ValueError(f"--format=ntire: {input_dir} is a SIG17 folder; its results are linear 'hdr' or 'exr' files")
  write = (lambda d, p: sig17.write_result(output_dir, d, p, fmt)) if layout == "sig17" else (
      lambda d, p: fileio.write_result(output_dir, d["id"], p, fmt))
  scenes = sig17.validate_scenes(input_dir, layout)
  if jax.process_index() == 0:  # before the model is built: an unwritable --output fails at once
    fileio.writable_dir(output_dir, "output folder")
  config, engine, state, chosen = engine_lib.load_from_workdir(workdir, step, overrides,
                                                               prepare=cli.use_compilation_cache)
  sig17.warn_mismatch(config, layout)
  written = []
  t0 = time.perf_counter()
  for d, pred in evaluation.iter_predictions(engine, state, scenes, key=jax.random.key(config.seed)):
    if jax.process_index() == 0:
      try:
        written += write(d, pred)
      except OSError as e:  # each file is atomic, so what is there is complete
        raise fileio.DataError(Path(output_dir).absolute(), f"cannot write the result of scene {d['id']} "
                            f"({e.strerror or e}); the {len(written)} file(s) written before it are "
                            f"complete") from None
  if jax.process_index() == 0:
    print(f"{len(scenes)} scene(s) predicted with {config.model.name} (step {chosen}) in "
          f"{time.perf_counter() - t0:.1f} s -> {Path(output_dir).absolute()} ({fmt})")
  return written


def _run_brackets(workdir, input_dir, output_dir, fmt, step, overrides, pretrained, exposures, align, tile):
  """Bracket folders: all checked (frames, sizes, exposures) before the model loads; :mod:`hdr_jax.brackets`."""
  from hdr_jax import api

  if fmt not in brackets.OUTPUT_FORMATS:
    raise ValueError(f"--format={fmt}: bracket folders are written as exr or hdr (linear radiance); "
                     "the ntire format is for NTIRE scene folders")
  checked = brackets.check_inputs(input_dir, exposures)
  fileio.writable_dir(output_dir, "output folder")
  model = api.load(workdir, pretrained=pretrained, step=step, overrides=overrides)
  model.tiles_for(1, 1, tile)  # a model that cannot be tiled refuses an explicit --tile here
  t0 = time.perf_counter()
  written = brackets.predict_folder(model, input_dir, output_dir, fmt, exposures, align or brackets.DEFAULT_ALIGN,
                                    tile, checked=checked)
  print(f"{len(checked)} bracket(s) predicted with {model.config.model.name} (step {model.step}) in "
        f"{time.perf_counter() - t0:.1f} s -> {Path(output_dir).absolute()} ({fmt} + preview png)")
  return written


def main(argv=None):
  _define_flags()
  cli.run_cli(  # --config.KEY=VALUE overrides of the model's config (e.g. --config.sampler.steps=50)
      lambda overrides: run(_WORKDIR.value, _INPUT.value, _OUTPUT.value, _FORMAT.value, _STEP.value, overrides,
                            _PRETRAINED.value, _EXPOSURES.value, _ALIGN.value, _TILE.value),
      argv, required=(_INPUT, _OUTPUT), config_overrides=True)


if __name__ == "__main__":
  main()
