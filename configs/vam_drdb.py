"""VAM+DRDB, the project's main regression model: HDR-VAM with DRDBs deepening the feature
extraction of the 6-channel frame inputs (docs/reference.md, VAM+DRDB).

  python -m hdr_jax.train --config=configs/vam_drdb.py --workdir=runs/vam_drdb

``:tiny``: a DRDB stem of one block (8 channels, growth 4, two layers), a constant learning rate and the
tiny run of every ``:tiny`` variant (``config_base.set_tiny``: batches of 2 x 32x32 from 4 embedded
scenes of 48x64), for tests and quick checks.
"""

from hdr_jax.config_base import get_base_config, set_tiny


def get_config(arg: str = ""):
  arg = (arg or "").strip()
  if arg not in ("", "tiny"):
    raise ValueError(f"configs/vam_drdb.py: unknown variant {arg!r} (use '' or 'tiny')")
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
  if arg == "tiny":
    c.model.update(drdb_blocks=1, drdb_channels=8, drdb_growth=4, drdb_layers=2)
    c.optimizer.schedule = "constant"
    set_tiny(c)
  return c
