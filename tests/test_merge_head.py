"""The merge-prior output head (``model.output_head=merge``) on both model families: an untrained
network is the classical exposure merge, and the head's settings are checked by name."""

import jax
import ml_collections
import numpy as np
import pytest
from flax import nnx

from hdr_jax import hdr_math, synthesize
from hdr_jax.models import build_model

SMALL = {"ahdrnet": dict(channels=8, growth=4, n_blocks=1, n_dense=2),
         "vam_drdb": dict(drdb_blocks=1, drdb_channels=8, drdb_growth=4, drdb_layers=2)}


@pytest.mark.parametrize("name", sorted(SMALL))
def test_untrained_merge_head_is_the_classical_merge(name):
  scenes = [synthesize.synthesize_scene(s, 32, 48) for s in (3, 4)]
  frames = np.stack([s["frames"] for s in scenes]).astype(np.float32) / 255
  ev = np.stack([s["exposures"] for s in scenes]).astype(np.float32)
  model = build_model(ml_collections.ConfigDict(dict(name=name, output_head="merge", **SMALL[name])),
                      rngs=nnx.Rngs(0))
  model.eval()
  out = np.asarray(jax.jit(lambda f, e: model(f, e))(frames, ev))
  np.testing.assert_allclose(out, np.asarray(hdr_math.merge_exposures(frames, ev)), atol=1e-5, rtol=1e-5)
  assert out.shape == (2, 32, 48, 3)


@pytest.mark.parametrize("name", sorted(SMALL))
def test_unknown_output_head_is_refused_by_name(name):
  with pytest.raises(ValueError, match=r"config.model .*output_head must be one of .*'merge'"):
    build_model(ml_collections.ConfigDict(dict(name=name, output_head="blend", **SMALL[name])), rngs=nnx.Rngs(0))
