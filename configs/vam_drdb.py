"""VAM+DRDB, the project's main regression model: HDR-VAM with DRDBs deepening the feature
extraction of the 6-channel frame inputs (docs/reference.md, VAM+DRDB).

  python -m hdr_jax.train --config=configs/vam_drdb.py --workdir=runs/vam_drdb
"""

from hdr_jax.config_base import get_base_config


def get_config():
  c = get_base_config()
  c.model.name = "vam_drdb"
  c.model.dense_form = "scatter"  # or "concat" (the paper's wiring): the same DRDB function; scatter is faster
  # merge: per-pixel gains of the classical merge's weights plus a bounded residual, zero-initialised so
  # an untrained network is the classical merge (hdr_math.merge_head); 'exposure' is the direct
  # sigmoid * max_radiance head, which trails the medium frame on real photographs (benchmarks/RESULTS.md).
  c.model.output_head = "merge"
  c.batch_size = 16
  c.num_train_steps = 2000
  c.optimizer.learning_rate = 1e-3
  return c
