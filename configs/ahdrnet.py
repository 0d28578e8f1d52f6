"""AHDRNet (Yan et al., CVPR 2019) with the official training recipe (docs/reference.md, AHDRNet).

  python -m hdr_jax.train --config=configs/ahdrnet.py --workdir=runs/ahdrnet

``:cpu`` is the project's CPU recipe (under an hour on 2 cores): the merge head (an untrained network
is the classical exposure merge; it learns where the merge ghosts or is noisy), inputs in the paper's
[0, 1] range (exposures counted from the short frame), Adam 1e-3 with warmup and a cosine decay, and
training scenes synthesised from real radiance maps mixed with procedural ones, varied per scene (a
quarter static, motion and noise scales drawn from ranges: ``data.embedded.static_fraction``,
``motion_range``, ``noise_range``):

  python -m hdr_jax.train --config=configs/ahdrnet.py:cpu --workdir=runs/ahdrnet_cpu \
      --config.data.embedded.hdr_files="('procedural', 'a.exr', 'b.exr', 'c.exr')"

``:tiny`` is the tests' size: 16 channels, one DRDB of two dense layers, a constant learning rate, and
the tiny run of every ``:tiny`` variant (``config_base.set_tiny``: batches of 2 x 32x32 from 4 embedded
scenes of 48x64).
"""

from hdr_jax.config_base import get_base_config, set_tiny
from hdr_jax.constants import GAMMA


def get_config(arg: str = ""):
  arg = (arg or "").strip()
  if arg not in ("", "cpu", "tiny"):
    raise ValueError(f"configs/ahdrnet.py: unknown variant {arg!r} (use '', 'cpu' or 'tiny')")
  c = get_base_config()
  c.model.name = "ahdrnet"
  c.model.channels = 64
  c.model.growth = 32
  c.model.n_dense = 6  # dense layers per DRDB
  c.model.n_blocks = 3  # DRDBs
  c.model.gamma = GAMMA  # NTIRE data (2.24) (the paper's Kalantari data used 2.2)
  c.model.input_domain = "linear"  # H = LDR ** gamma / 2 ** ev
  c.model.output_head = "exposure"  # sigmoid * 2 ** -ev_short (linear HDR relative to the medium frame)
  c.model.polyphase = True  # dilated DRDB trunk in the polyphase layout: identical output, faster gradients
  c.model.dense_form = "scatter"  # or "concat" (the paper's wiring): the same DRDB function; scatter is faster
  c.batch_size = 8
  c.num_train_steps = 2000
  c.optimizer.learning_rate = 1e-4  # Adam(0.9, 0.999, 1e-8), x0.1 after 80% of training
  if arg == "cpu":
    c.model.update(channels=32, growth=16, n_dense=4, n_blocks=3, output_head="merge", exposure_reference="short")
    c.optimizer.update(learning_rate=1e-3, schedule="cosine", warmup_steps=100, grad_clip=1.0)
    c.num_train_steps = 4000
    c.batch_size = 8
    c.data.patch_size = 64
    c.log_every = 100
    c.eval_every = c.checkpoint_every = 500
    # Every other scene procedural, the rest from the radiance maps given (see the docstring). A quarter of
    # the scenes without motion, the others' motion scaled by 0.5-3 and every scene's noise by 0.25-4:
    # tripod shots and clean frames are taught too (benchmarks/RESULTS.md: +0.8 and +1.6 dB on static
    # held-out scenes, the hard level unchanged).
    c.data.embedded.update(train_scenes=512, height=128, width=128, val_scenes=4, val_height=128, val_width=192,
                           hdr_files=("procedural",), static_fraction=0.25, motion_range=(0.5, 3.0),
                           noise_range=(0.25, 4.0))
  if arg == "tiny":
    c.model.update(channels=16, growth=8, n_blocks=1, n_dense=2)
    c.optimizer.schedule = "constant"
    set_tiny(c)
  return c
