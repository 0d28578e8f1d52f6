"""AHDRNet (Yan et al., CVPR 2019) with the official training recipe (SPEC section 3).

  python -m hdr_jax.train --config=configs/ahdrnet.py --workdir=runs/ahdrnet
"""

from hdr_jax.config_base import get_base_config


def get_config():
  c = get_base_config()
  c.model.name = "ahdrnet"
  c.model.channels = 64
  c.model.growth = 32
  c.model.n_dense = 6  # dense layers per DRDB
  c.model.n_blocks = 3  # DRDBs
  c.model.gamma = 2.24  # NTIRE data (the paper's Kalantari data used 2.2)
  c.model.input_domain = "linear"  # H = LDR ** gamma / 2 ** ev
  c.model.output_head = "exposure"  # sigmoid * 2 ** -ev_short (linear HDR relative to the medium frame)
  c.model.polyphase = True  # dilated DRDB trunk in the polyphase layout: identical output, faster gradients
  c.model.dense_form = "scatter"  # or "concat" (the paper's wiring): the same DRDB function; scatter is faster
  c.batch_size = 8
  c.num_train_steps = 2000
  c.optimizer.learning_rate = 1e-4  # Adam(0.9, 0.999, 1e-8), x0.1 after 80% of training
  return c
