"""Model families, one a file, and the registry the trainer builds them from.

``build_model(model_config, dtype, rngs)`` looks up ``model_config.name`` and passes every other key of
the config as a keyword argument to that family's constructor.
"""

from __future__ import annotations

import importlib

import jax.numpy as jnp

# name -> "module:callable"; modules are imported on first use.
REGISTRY = {
    "ahdrnet": "hdr_jax.models.ahdrnet:AHDRNet",
    "vam": "hdr_jax.models.vam:vam",
    "vam_drdb": "hdr_jax.models.vam:vam_drdb",
    "unet": "hdr_jax.models.unet:UNet",
    "patch_discriminator": "hdr_jax.models.discriminator:PatchDiscriminator",
}

# The regression networks, (frames, exposures) -> HDR: the generators a GAN can train (configs/gan.py takes
# its model block from configs/<name>.py; hdr_jax.tasks.gan builds it with build_model).
GENERATORS = ("vam_drdb", "vam", "ahdrnet")

DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16, "float16": jnp.float16}


def get_dtype(name):
  if not isinstance(name, str):
    return name
  if name not in DTYPES:
    raise ValueError(f"config.dtype: unknown dtype {name!r}; choose one of {sorted(DTYPES)}")
  return DTYPES[name]


def get_constructor(name: str):
  if name not in REGISTRY:
    raise ValueError(f"config.model.name: unknown model {name!r}; choose one of {sorted(REGISTRY)}")
  module, attr = REGISTRY[name].split(":")
  return getattr(importlib.import_module(module), attr)


def build_model(model_config, dtype="float32", *, rngs):
  """Builds ``model_config.name`` with the other keys of ``model_config`` as keyword arguments."""
  cfg = dict(model_config)
  name = cfg.pop("name")
  constructor = get_constructor(name)
  try:
    return constructor(**cfg, dtype=get_dtype(dtype), param_dtype=jnp.float32, rngs=rngs)
  except (TypeError, ValueError) as e:  # a config value of the wrong kind: say which settings it came from
    if str(e).startswith("config."):
      raise
    raise ValueError(f"config.model (model {name!r}): {e}") from e
