"""HDR-VAM (Omrani & Moroni): the visual-attention network as the official code wires it (docs/reference.md, HDR-VAM).

  python -m hdr_jax.train --config=configs/vam.py --workdir=runs/vam

``:tiny``: the same network (HDR-VAM has no width settings) with a constant learning rate on the tiny
run of every ``:tiny`` variant (``config_base.set_tiny``: batches of 2 x 32x32 from 4 embedded scenes of
48x64), for tests and quick checks.
"""

from hdr_jax.config_base import get_base_config, set_tiny


def get_config(arg: str = ""):
  arg = (arg or "").strip()
  if arg not in ("", "tiny"):
    raise ValueError(f"configs/vam.py: unknown variant {arg!r} (use '' or 'tiny')")
  c = get_base_config()
  c.model.name = "vam"
  c.batch_size = 16
  c.num_train_steps = 2000
  c.optimizer.learning_rate = 1e-3  # the official Adam learning rate
  if arg == "tiny":
    c.optimizer.schedule = "constant"
    set_tiny(c)
  return c
