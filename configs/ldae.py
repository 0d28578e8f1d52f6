r"""l-DAE denoising pretraining of the VAM+DRDB feature extractor (docs/reference.md, l-DAE; hdr_jax/tasks/ldae.py).

  python -m hdr_jax.train --config=configs/ldae.py --workdir=runs/ldae
  python -m hdr_jax.train --config=configs/vam_drdb.py --workdir=runs/vam_drdb_ldae \
      --config.init.feature_extractor=runs/ldae

The downstream run must build the same feature extractor: the same ``model.name`` and ``model.*``
keys (e.g. ``--config.model.name=vam`` here and ``configs/vam.py`` there). Its logged ``eval/psnr_mu``
is that of the denoised medium frame (a sanity check, see the task's docstring), not an HDR score.

``:tiny``: the feature extractor of ``configs/vam_drdb.py:tiny`` (a one-block DRDB stem of 8 channels),
a constant learning rate and the tiny run of every ``:tiny`` variant (``config_base.set_tiny``: batches
of 2 x 32x32 from 4 embedded scenes of 48x64), for tests and quick checks.
"""

import ml_collections

from hdr_jax.config_base import get_base_config, set_tiny


def get_config(arg: str = ""):
  arg = (arg or "").strip()
  if arg not in ("", "tiny"):
    raise ValueError(f"configs/ldae.py: unknown variant {arg!r} (use '' or 'tiny')")
  c = get_base_config()
  c.task = "ldae"
  c.model.name = "vam_drdb"  # vam | vam_drdb (with their model.* keys)

  c.ldae = ml_collections.ConfigDict()
  c.ldae.patch = 4  # PCA patches of p x p pixels of one RGB frame (D = 48 values)
  c.ldae.latent_dim = 16  # d: PCA dimensions the noise goes into
  c.ldae.sigmas = (0.02, 0.05, 0.1, 0.2, 0.4)  # latent noise std, one drawn per training image
  c.ldae.residual = "keep"  # keep: x + sigma V^T eps | drop: V^T (V (x - m) + sigma eps) + m
  c.ldae.decoder_channels = 64  # head: 1x1 conv 224 -> 64, ReLU, 3x3 conv -> 9 (0: one 3x3 conv)
  c.ldae.pca_batches = 8  # training batches the PCA is fitted on
  c.ldae.pca_max_patches = 65536  # p x p patches used at most (a seeded random subset)
  c.ldae.eval_sigma = 0.0  # latent noise on the validation frames (0: the real frames)

  c.batch_size = 16
  c.num_train_steps = 2000
  c.optimizer.learning_rate = 1e-3
  if arg == "tiny":
    c.model.update(drdb_blocks=1, drdb_channels=8, drdb_growth=4, drdb_layers=2)
    c.optimizer.schedule = "constant"
    set_tiny(c)
  return c
