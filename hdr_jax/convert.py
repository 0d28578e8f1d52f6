r"""Turns published weights into a hdr_jax workdir that ``evaluate`` and ``predict`` use.

  python -m hdr_jax.convert --from=ahdrnet-pytorch --weights=AHDRNet.pt --workdir=runs/ahdrnet_official
  python -m hdr_jax.convert --from=hdrvam-keras --weights=HDR-VAM.h5 --workdir=runs/vam_official

The official AHDRNet weights were trained on Kalantari's data (linear HDR in [0, 1], gamma 2.2), so
the converted config uses ``model.gamma=2.2`` and the plain sigmoid head; override with
``--config.model.gamma=2.24`` etc. ``--protocol=sig17`` records the official convention for SIG17 scenes
instead (``data.protocol='sig17'``, gamma 2.2, stops counted from the shortest frame, and the
``exposure`` head, whose output mapped back to the SIG17 label scale is the official sigmoid output;
docs/sig17.md). PyTorch (extra ``hdr_jax[torch]``) is needed only for ``.pt`` files;
Keras ``.h5`` files are read with h5py, without TensorFlow.
"""

from __future__ import annotations

from pathlib import Path

import jax
from absl import flags
from flax import nnx

from hdr_jax import checkpoint as ckpt_lib
from hdr_jax import cli, config_base
from hdr_jax import engine as engine_lib
from hdr_jax import fileio
from hdr_jax import sig17
from hdr_jax.config_base import get_base_config
from hdr_jax.constants import SIG17_GAMMA

SOURCES = {
    # name: (model name, model config overrides)
    "ahdrnet-pytorch": ("ahdrnet", {"gamma": SIG17_GAMMA, "output_head": "sigmoid"}),  # Kalantari data
    # The official HDR-VAM learns sigmoid(gt); its inference is clip(logit(out), 0) ** 2.24.
    "hdrvam-keras": ("vam", {"output_head": "logit"}),
}


def _define_flags():
  """Command-line flags, defined when the program runs (importing the module defines none)."""
  global _FROM, _WEIGHTS, _WORKDIR, _PROTOCOL
  _FROM = flags.DEFINE_enum("from", None, list(SOURCES), "Kind of published weights.")
  _WEIGHTS = flags.DEFINE_string("weights", None, "The weights file (.pt/.pth state_dict or Keras .h5).")
  _WORKDIR = flags.DEFINE_string("workdir", None, "Workdir to create (config.json + checkpoints/0).")
  _PROTOCOL = flags.DEFINE_enum("protocol", "ntire", ["ntire", "sig17"], "Data convention the workdir records: "
                                "ntire (default) or sig17 (official AHDRNet convention on SIG17 scenes).")


def load_weights(kind: str, model, path) -> None:
  if kind == "ahdrnet-pytorch":
    from hdr_jax.models import ahdrnet

    ahdrnet.load_torch_state_dict(model, ahdrnet.torch_state_dict_from_file(path))
  elif kind == "hdrvam-keras":
    from hdr_jax.models import vam

    vam.load_keras_h5(model, path)
  else:
    raise ValueError(f"--from: unknown source {kind!r}")


# What --protocol=sig17 records: the official AHDRNet mapping on Kalantari's data. The 'exposure' head is
# sigmoid * 2 ** (stops_medium - stops_short) relative to the medium frame, which hdr_math.internal_to_sig17
# divides back out: the official sigmoid output, exactly (a power of two).
SIG17_MODEL = {"ahdrnet": {**sig17.MODEL_SETTINGS, "output_head": "exposure"}}


def convert(kind: str, weights, workdir, overrides: dict | None = None, protocol: str = "ntire") -> Path:
  """Writes ``workdir`` (config.json + checkpoint 0) from the published ``weights`` of ``kind``;
  ``protocol='sig17'`` records the official convention for SIG17 scenes (see the module docstring)."""
  weights, workdir = Path(weights), Path(workdir)
  if not weights.is_file():
    raise fileio.DataError(weights, "file is missing")
  if (workdir / "checkpoints").is_dir() and any((workdir / "checkpoints").iterdir()):
    raise fileio.DataError(workdir, "workdir already holds checkpoints; choose a new --workdir")
  model_name, model_overrides = SOURCES[kind]
  config = get_base_config()
  config.model.name = model_name
  for k, v in model_overrides.items():
    config.model[k] = v
  if protocol == "sig17":
    if model_name not in SIG17_MODEL:
      raise ValueError(f"--protocol=sig17: no SIG17 convention is defined for --from={kind}")
    config.model.update(SIG17_MODEL[model_name])
  config.data.protocol = protocol
  config_base.apply_overrides(config, overrides)
  cli.use_compilation_cache(config)
  engine = engine_lib.Engine(config)
  state = engine.init_state(jax.random.key(config.seed))
  bundle = engine.bundle(state)
  load_weights(kind, bundle.model, weights)
  state = jax.device_put(nnx.state(bundle), engine.replicated)
  workdir.mkdir(parents=True, exist_ok=True)
  ckpt_lib.save_config(workdir, config)
  ckpts = ckpt_lib.Checkpoints(workdir, keep=config.keep_checkpoints)
  ckpts.save(0, state, meta={"converted_from": kind, "weights": str(weights.absolute())})
  ckpts.close()
  print(f"converted {weights} ({kind}) -> {workdir.absolute()} (checkpoint step 0)")
  return workdir


def main(argv=None):
  _define_flags()
  cli.run_cli(  # --config.KEY=VALUE overrides of the converted config (e.g. --config.model.gamma=2.24)
      lambda overrides: convert(_FROM.value, _WEIGHTS.value, _WORKDIR.value, overrides, _PROTOCOL.value),
      argv, required=(_FROM, _WEIGHTS, _WORKDIR), config_overrides=True)


if __name__ == "__main__":
  main()
