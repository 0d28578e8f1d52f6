r"""Conditional GAN for HDR (docs/reference.md, Conditional GAN): a regression generator (VAM+DRDB by
default) conditioned on the three LDR frames, a PatchGAN discriminator on tone-mapped HDR conditioned
on the reference frame, the source's cross-entropy losses plus the papers' mu-law L1 reconstruction term, and k
discriminator updates per generator update.

  python -m hdr_jax.train --config=configs/gan.py --workdir=runs/gan
  python -m hdr_jax.train --config=configs/gan.py:ahdrnet --workdir=runs/gan_ahdrnet

The generator is any regression network; ``configs/gan.py:NAME`` takes the ``model.*`` block
(``model.name`` and the network's arguments) from ``configs/NAME.py`` (vam_drdb by default, vam,
ahdrnet), so ``--config.model.<argument>=...`` overrides work as for regression. Other useful
switches: ``--config.gan.d_steps=2``, ``--config.gan.loss=minimax``,
``--config.disc.spectral_norm=False --config.disc.norm=instance``, and
``--config.model.conditional=False`` (the source's unconditional GAN: HDR from noise, ``noise_gen.*``).

``configs/gan.py:tiny`` is the tests' size: an AHDRNet generator of 8 channels (one DRDB of one dense
layer), a discriminator of 8 features and two stride-2 layers, 2 discriminator updates per generator
update, and the tiny run of every ``:tiny`` variant (``config_base.set_tiny``: batches of 2 x 32x32 from 4
embedded scenes of 48x64).
"""

import importlib.util
from pathlib import Path

import ml_collections

from hdr_jax.config_base import get_base_config, set_tiny
from hdr_jax.models import GENERATORS


def generator_model_config(name: str) -> ml_collections.ConfigDict:
  """The ``model`` block of the regression config ``configs/<name>.py``."""
  if name not in GENERATORS:
    raise ValueError(f"configs/gan.py: unknown generator {name!r}; choose one of {GENERATORS} (or 'tiny')")
  spec = importlib.util.spec_from_file_location(f"_gan_generator_{name}", Path(__file__).with_name(f"{name}.py"))
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module.get_config().model


def get_config(arg: str = ""):
  arg = (arg or "").strip()
  c = get_base_config()
  c.task = "gan"
  c.model = generator_model_config("ahdrnet" if arg == "tiny" else arg or "vam_drdb")  # the generator
  c.model.conditional = True  # False: generate from noise (NoiseGenerator, noise_gen.*), frames unused

  # Generator of the unconditional mode.
  c.noise_gen = ml_collections.ConfigDict()
  c.noise_gen.noise_channels = 8
  c.noise_gen.features = 32
  c.noise_gen.n_layers = 4

  c.disc = ml_collections.ConfigDict()
  c.disc.features = 64
  c.disc.n_layers = 3  # stride-2 layers (pix2pix's 70x70 PatchGAN)
  c.disc.norm = "none"  # none | group | instance
  c.disc.groups = 8
  c.disc.spectral_norm = True
  c.disc.power_iterations = 1
  c.disc.leaky_slope = 0.2

  c.gan = ml_collections.ConfigDict()
  c.gan.loss = "nonsaturating"  # nonsaturating: L_G = H(1, D(G)) | minimax: L_G = -H(0, D(G))
  c.gan.adv_weight = 1e-2
  c.gan.recon_weight = 1.0  # mu-law L1 on linear HDR (conditional mode only)
  c.gan.d_steps = 1  # k discriminator updates per generator update, on the same batch
  c.gan.warn_window = 5  # consecutive log points with the discriminator winning before the warning
  c.gan.warn_acc = 0.99

  c.batch_size = 16
  c.num_train_steps = 2000
  c.optimizer.learning_rate = 2e-4
  c.optimizer.b1 = 0.5
  c.disc_optimizer = ml_collections.ConfigDict(c.optimizer.to_dict())  # its schedule counts D updates
  if arg == "tiny":
    c.model.update(channels=8, growth=4, n_blocks=1, n_dense=1)
    c.disc.update(features=8, n_layers=2)
    c.gan.d_steps = 2
    set_tiny(c)
  return c
