r"""Conditional DDPM for HDR (docs/reference.md, Conditional DDPM): a U-Net noise predictor conditioned on
the three LDR frames through an encoder (VAM+DRDB features at full scale), DDIM/ancestral sampling
over overlapping tiles.

Default (``--config=configs/diffusion.py``): a CPU-sized demonstration that runs end to end on its
own in a few minutes on 2 cores (3.5 minutes measured on an idle 2-core machine, 7 minutes on a loaded
one): embedded dataset (24 scenes of 128x128, 2 validation scenes of 128x192), 64x64 patches,
batch 8, a 2.7 M parameter U-Net (16 channels, multipliers 1-2-4-8) with the two-conv LDR encoder,
400 steps, DDIM with 25 steps (eta 1) for the validation samples. It shows the pipeline working, not a
useful model (400 steps are far too few for a diffusion model: its samples stay noisy).

  python -m hdr_jax.train --config=configs/diffusion.py                # -> runs/diffusion

Full scale (``:full``): the real NTIRE folders, a ~35 M parameter U-Net (64 channels, multipliers
1-1-2-4-5, 2 residual blocks per level, attention at 16x16 and 8x8 for 128x128 crops), the default
VAM+DRDB encoder, 128x128 patches, batch 32, 300k steps, bfloat16 compute, 1000-step ancestral
sampling (DDPM) on 256x256 tiles blended with 32-pixel overlaps for 1060x1900 validation frames:

  python -m hdr_jax.train --config=configs/diffusion.py:full --workdir=runs/diffusion_full \
      --config.data.root=/data/ntire/train --config.data.val_root=/data/ntire/val

Other useful switches: ``--config.sampler.name=ddim --config.sampler.steps=50`` (fast sampling;
``--config.sampler.eta=0`` makes it deterministic, at a measured cost in quality),
``--config.diffusion.prediction=v``, ``--config.diffusion.schedule=cosine``,
``--config.model.cond_encoder=vam_drdb`` (the VAM+DRDB encoder on CPU, with the light stem below:
about 4x the CPU time per training step), ``--config.model.cond_encoder=conv`` (at full scale),
``--config.model.conditional=False`` (unconditional HDR generation, as the source project).

``:tiny`` is the tests' size: a two-level U-Net of 8 channels (attention at the lower level), a merge-head
AHDRNet estimator of 8 channels, 10 diffusion steps and DDIM-2 sampling, batches of 2 x 16x16 from 2
embedded scenes of 32x32 (one validation scene of 24x40), no warmup of the U-Net's learning rate.
"""

import ml_collections

from hdr_jax.config_base import get_base_config


def get_config(arg: str = ""):
  arg = (arg or "").strip()
  if arg not in ("", "full", "unconditional", "tiny"):
    raise ValueError(f"configs/diffusion.py: unknown variant {arg!r} (use '', 'full', 'unconditional' or 'tiny')")
  c = get_base_config()
  c.task = "diffusion"

  c.model.name = "unet"
  c.model.ch = 16
  c.model.ch_mult = (1, 2, 4, 8)
  c.model.num_res_blocks = 1
  c.model.attn_levels = (3,)  # the lowest resolution
  c.model.head_dim = 64
  c.model.groups = 8
  c.model.conditional = True
  # vam_drdb | conv. The CPU demonstration uses 'conv': the VAM+DRDB encoder makes a CPU training step
  # ~4x slower (depthwise convolutions, Otsu masks), which would not fit the 10-minute budget.
  c.model.cond_encoder = "conv"
  c.model.cond_channels = 16
  c.model.cond_all_scales = True
  # VAM+DRDB stem of the encoder (hdr_jax.models.vam): a light one for CPU.
  c.model.cond_vam_drdb = ml_collections.ConfigDict(
      dict(drdb_blocks=1, drdb_channels=16, drdb_growth=8, drdb_layers=2, drdb_reference=True, polyphase=True))
  c.model.cond_conv_hidden = 32  # used by cond_encoder='conv'
  c.model.gn_stats = "group"  # group | channel: how GroupNorm reduces its statistics (same values)

  c.diffusion = ml_collections.ConfigDict()
  c.diffusion.timesteps = 1000
  c.diffusion.beta_start = 1e-4
  c.diffusion.beta_end = 0.02
  c.diffusion.schedule = "linear"  # linear | cosine
  c.diffusion.ema_decay = 0.999
  c.diffusion.ema_warmup = True  # decay min(ema_decay, (1 + n) / (10 + n)) after n steps
  # Residual mode: the DDPM refines a deterministic estimate, here a small AHDRNet with the merge head
  # trained jointly (it starts as the classical merge); 'merge' uses the classical merge itself, 'none'
  # diffuses the whole image. x0-prediction with the U-Net's zero-initialised output: an untrained DDPM
  # returns the estimate exactly.
  c.diffusion.estimate = "network"  # none | merge | network
  c.diffusion.prediction = "x0"  # eps | v | x0
  c.diffusion.residual_scale = 2.0  # the residual (mu-law units of x0) is diffused x2
  c.estimator = ml_collections.ConfigDict(
      dict(name="ahdrnet", output_head="merge", channels=16, growth=8, n_blocks=2, n_dense=3, merge_residual=0.25))
  c.estimator_optimizer = ml_collections.ConfigDict(dict(
      name="adam", learning_rate=3e-3, b1=0.9, b2=0.999, eps=1e-8, weight_decay=0.0, schedule="cosine",
      decay_at=0.8, decay_factor=0.1, warmup_steps=20, grad_clip=1.0))

  c.sampler = ml_collections.ConfigDict()
  c.sampler.name = "ddim"  # ddim | ddpm (ancestral, all timesteps)
  c.sampler.steps = 25  # DDIM steps (ignored by ddpm)
  # DDIM noise: 0 deterministic, 1 the ancestral noise level. 1 by default: on a trained model DDIM-50
  # with eta 1 came within 0.6 dB PSNR-mu of 1000 ancestral steps, eta 0 2.7 dB behind at any step
  # count (benchmarks/RESULTS.md, "DDIM against ancestral sampling").
  c.sampler.eta = 1.0
  c.sampler.clip_x0 = True
  c.sampler.use_ema = True
  c.sampler.tile_size = 256  # frames larger than this are sampled in overlapping tiles
  c.sampler.tile_overlap = 32
  c.sampler.tile_batch = 4  # tiles per model call (bounds the activation memory)

  c.batch_size = 8
  c.num_train_steps = 400
  c.log_every = 50
  c.eval_every = 400
  c.checkpoint_every = 400
  c.optimizer.learning_rate = 1e-3
  c.optimizer.schedule = "cosine"
  c.optimizer.warmup_steps = 20
  c.optimizer.grad_clip = 1.0
  c.data.patch_size = 64
  c.data.embedded.train_scenes = 24
  c.data.embedded.height = 128
  c.data.embedded.width = 128
  c.data.embedded.val_scenes = 2
  c.data.embedded.val_height = 128
  c.data.embedded.val_width = 192

  if arg == "full":
    c.model.ch = 64
    c.model.ch_mult = (1, 1, 2, 4, 5)
    c.model.num_res_blocks = 2
    c.model.attn_levels = (3, 4)
    c.model.groups = 32
    c.model.cond_encoder = "vam_drdb"
    c.model.cond_channels = 32
    c.model.cond_vam_drdb = ml_collections.ConfigDict(
        dict(drdb_blocks=2, drdb_channels=64, drdb_growth=32, drdb_layers=4, drdb_reference=True, polyphase=True))
    c.model.cond_conv_hidden = 64
    c.dtype = "bfloat16"
    c.sampler.name = "ddpm"
    c.sampler.steps = 1000
    c.sampler.tile_batch = 8
    c.batch_size = 32
    c.num_train_steps = 300_000
    c.log_every = 100
    c.eval_every = 10_000
    c.checkpoint_every = 5_000
    c.eval.max_scenes = 8  # 1000-step sampling of whole frames is costly; evaluate a subset
    c.optimizer.learning_rate = 2e-4
    c.optimizer.warmup_steps = 5_000
    c.estimator = ml_collections.ConfigDict(dict(name="vam_drdb", output_head="merge", merge_residual=0.25))
    c.estimator_optimizer.update(learning_rate=2e-4, warmup_steps=5_000, grad_clip=0.0)
    c.data.patch_size = 128
    c.data.num_workers = 8
  if arg == "unconditional":  # HDR images generated from noise (no frames, so no estimate to refine)
    c.model.conditional = False
    c.diffusion.estimate = "none"
    c.diffusion.prediction = "eps"
  if arg == "tiny":
    c.model.update(ch=8, ch_mult=(1, 2), num_res_blocks=1, attn_levels=(1,), head_dim=8, groups=4, cond_channels=4,
                   cond_conv_hidden=8)
    c.estimator.update(channels=8, growth=4, n_blocks=1, n_dense=2)
    c.diffusion.timesteps = 10
    c.sampler.steps = 2
    c.batch_size = 2
    c.optimizer.warmup_steps = 0
    c.data.patch_size = 16
    c.data.embedded.update(train_scenes=2, val_scenes=1, height=32, width=32, val_height=24, val_width=40)
    c.progress = False
  return c
