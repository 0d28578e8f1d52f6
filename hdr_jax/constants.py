"""The shared numeric constants of hdr_jax, in one place.

Pure Python (no NumPy, no JAX), so that every module can import it, including those that must stay
free of JAX (:mod:`hdr_jax.synthesize`, :mod:`hdr_jax.brackets`, :mod:`hdr_jax.sig17`, :mod:`hdr_jax.fileio`)
and the benchmarks' PyTorch peers. :mod:`hdr_jax.hdr_math` re-exports them under the same names.
"""

GAMMA = 2.24
"""NTIRE's gamma: LDR frames are ``radiance ** (1 / GAMMA)``, and so is the internal gamma-domain HDR."""

SIG17_GAMMA = 2.2
"""The SIG17 (Kalantari 2017) protocol's gamma for mapping LDR frames to linear (docs/sig17.md)."""

MU = 5000.0
"""The mu of the mu-law tone map ``log(1 + mu * h) / log(1 + mu)`` (NTIRE's metrics and losses)."""

PERCENTILE = 99.0
"""The percentile of the reference's linear radiance that normalises NTIRE's PSNR-mu tone map."""
