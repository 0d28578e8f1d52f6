"""HDR-VAM (Omrani & Moroni): the visual-attention network as the official code wires it (docs/reference.md, HDR-VAM).

  python -m hdr_jax.train --config=configs/vam.py --workdir=runs/vam
"""

from hdr_jax.config_base import get_base_config


def get_config():
  c = get_base_config()
  c.model.name = "vam"
  c.batch_size = 16
  c.num_train_steps = 2000
  c.optimizer.learning_rate = 1e-3  # the official Adam learning rate
  return c
