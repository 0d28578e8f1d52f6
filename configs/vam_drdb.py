"""VAM+DRDB, the project's main regression model: HDR-VAM with DRDBs deepening the feature
extraction of the 6-channel frame inputs (SPEC section 5).

  python -m hdr_jax.train --config=configs/vam_drdb.py --workdir=runs/vam_drdb
"""

from hdr_jax.config_base import get_base_config


def get_config():
  c = get_base_config()
  c.model.name = "vam_drdb"
  c.model.dense_form = "scatter"  # or "concat" (the paper's wiring): the same DRDB function; scatter is faster
  c.batch_size = 16
  c.num_train_steps = 2000
  c.optimizer.learning_rate = 1e-3
  return c
