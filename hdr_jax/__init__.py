"""hdr_jax: multi-frame HDR reconstruction in JAX/Flax NNX.

The notebook API is exported lazily, so that ``import hdr_jax`` stays cheap (no JAX import until a
model is loaded): :func:`load` (a training workdir or ``pretrained=NAME``) returns an
:class:`HDRModel` whose ``predict(frames, exposures)`` gives linear HDR; :func:`read_bracket` reads a
folder of three photos (frames and EXIF exposures). See :mod:`hdr_jax.api`.
"""

_EXPORTS = {"load": "hdr_jax.api", "HDRModel": "hdr_jax.api", "read_bracket": "hdr_jax.brackets",
            "Bracket": "hdr_jax.brackets"}
__all__ = sorted(_EXPORTS)


def __getattr__(name):
  if name in _EXPORTS:
    import importlib

    value = getattr(importlib.import_module(_EXPORTS[name]), name)
    globals()[name] = value
    return value
  raise AttributeError(f"module 'hdr_jax' has no attribute {name!r}")


def __dir__():
  return sorted(list(globals()) + __all__)
