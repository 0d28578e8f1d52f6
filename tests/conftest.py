"""Shared pytest fixtures: small synthetic NTIRE data written with the project's own writers."""

import numpy as np
import pytest

from hdr_jax import io


@pytest.fixture
def tiny_scene_dir(tmp_path):
  """A folder with 3 complete NTIRE scenes (ids 0000-0002, 24x32, exposures [-2, 0, 2]): random
  uint8 frames and a random gamma-domain target in [0, 1.6] (16-bit PNG + alignratio)."""
  folder = tmp_path / "scenes"
  rng = np.random.default_rng(1234)
  for sid in ("0000", "0001", "0002"):
    frames = rng.integers(0, 256, (3, 24, 32, 3), dtype=np.uint8)
    gt = rng.uniform(0.0, 1.6, (24, 32, 3)).astype(np.float32)
    io.write_scene(folder, sid, frames, [-2.0, 0.0, 2.0], gt)
  return folder
