"""The DDPM noise predictor: a U-Net (Ho et al. 2020) with an optional LDR conditioning encoder.

``UNet(x_t, t, cond=None) -> model output (B, H, W, out_channels)`` float32, for noisy images
``x_t (B, H, W, 3)``, integer steps ``t (B,)`` (or a scalar) and conditioning features ``cond
(B, H, W, cond_channels)`` from ``UNet.encode(frames, exposures)`` (frames ``(B, 3, H, W, 3)`` in
[0, 1], exposures ``(B, 3)``). The features are computed once per sample and reused at every
denoising step; they are concatenated to ``x_t`` at full resolution and, with ``cond_all_scales``,
average-pooled and added (1x1 projection) at the start of every U-Net level.

Architecture: sinusoidal step embedding -> MLP (``4 ch``); per level ``num_res_blocks`` residual
blocks (GroupNorm, SiLU, 3x3 conv, step embedding added, GroupNorm, SiLU, zero-initialised 3x3 conv)
at ``ch * ch_mult[level]`` channels, self-attention at the levels in ``attn_levels`` (default: the
lowest resolution), strided-conv downsampling; a middle block (res, attention, res); the mirrored
decoder with skip connections and nearest-neighbour upsampling; GroupNorm, SiLU and a
zero-initialised 3x3 output conv. Any H, W (edge-padded to a multiple of ``2 ** (levels - 1)`` and
cropped back).

Conditioning encoders (``cond_encoder``): ``'vam_drdb'`` the VAM+DRDB feature extractor
(:class:`hdr_jax.models.vam.VAMFeatures` with its DRDB stem, the module behind ``HDRVAM.features``:
224 channels, projected 1x1 to ``cond_channels``; ``cond_vam_drdb`` overrides the stem's ``drdb_*``
settings), or ``'conv'`` two 3x3 convs (SiLU) on the 18-channel ``hdr_math.ldr_to_hdr_inputs``.
``conditional=False`` builds the unconditional model (no encoder; ``cond`` must be None).

Computation runs in ``dtype``; parameters are ``param_dtype`` (float32). The convolutions and dense
layers (:func:`Conv`, the shared :class:`hdr_jax.models.layers.Conv2d` set up as ``nnx.Conv``, and
:class:`Dense`) have flax's parameters and initialisation, and accumulate their bias gradients in float32
(in bfloat16, flax's layers give bias gradients 30-70 % off).
"""

from __future__ import annotations

import itertools
import math

import jax
import jax.numpy as jnp
from flax import nnx

from hdr_jax import hdr_math
from hdr_jax.models import vam
from hdr_jax.models.layers import Conv2d, avg_pool, bias_add, pad_to_multiple

COND_ENCODERS = ("vam_drdb", "conv")
GN_STATS = ("group", "channel")


def timestep_embedding(t, dim: int, max_period: float = 10000.0):
  """Sinusoidal embedding ``[sin(t f), cos(t f)]`` with ``f = max_period ** (-k / (dim/2))``."""
  half = dim // 2
  freqs = jnp.exp(-math.log(max_period) * jnp.arange(half, dtype=jnp.float32) / half)
  args = jnp.asarray(t, jnp.float32)[:, None] * freqs[None]
  emb = jnp.concatenate([jnp.sin(args), jnp.cos(args)], axis=-1)
  return jnp.pad(emb, ((0, 0), (0, dim % 2)))


def _ints(field: str, values) -> tuple[int, ...]:
  try:
    return tuple(int(v) for v in values)
  except (TypeError, ValueError):
    raise ValueError(f"config.model.{field}: expected a tuple of integers such as (1, 2, 2), got {values!r}") from None


def _groups(channels: int, groups: int) -> int:
  return math.gcd(channels, groups)


def Conv(in_ch: int, out_ch: int, kernel_size=(3, 3), *, strides=(1, 1),  # noqa: N802
         kernel_init=nnx.initializers.lecun_normal(), dtype=jnp.float32, param_dtype=jnp.float32, rngs) -> Conv2d:
  """The U-Net's convolution: a 'SAME'-padded :class:`~hdr_jax.models.layers.Conv2d` with ``nnx.Conv``'s
  parameters (``kernel (k, k, in, out)``, ``bias (out,)``), initialisation (LeCun normal, zeros) and
  random-key use, so checkpoints and seeds are as with ``nnx.Conv``. Its bias is added as ``nnx.Conv``
  adds it, in ``dtype`` (``bias_precision='compute'``), but its gradient is summed in float32
  (``nnx.Conv`` sums it in ``dtype``)."""
  return Conv2d(in_ch, out_ch, kernel_size, stride=strides, padding="SAME", kernel_init=kernel_init,
                bias_init=nnx.initializers.zeros, bias_precision="compute", dtype=dtype, param_dtype=param_dtype,
                rngs=rngs)


class Dense(nnx.Module):
  """``nnx.Linear``'s parameters, initialisation and random-key use, its bias added by
  :func:`hdr_jax.models.layers.bias_add` (as :class:`Conv`)."""

  def __init__(self, in_features: int, out_features: int, *, kernel_init=nnx.initializers.lecun_normal(),
               dtype=jnp.float32, param_dtype=jnp.float32, rngs):
    self.kernel = nnx.Param(kernel_init(rngs.params(), (in_features, out_features), param_dtype))
    self.bias = nnx.Param(nnx.initializers.zeros(rngs.params(), (out_features,), param_dtype))
    self.dtype = dtype

  def __call__(self, x):
    y = jax.lax.dot_general(x.astype(self.dtype), self.kernel[...].astype(self.dtype), (((x.ndim - 1,), (0,)), ((), ())))
    return bias_add(y, self.bias[...])


class GroupNorm(nnx.Module):
  """Group normalisation (eps 1e-6, learned per-channel ``scale`` and ``bias``), optionally followed
  by SiLU, as two kernels: the float32 mean and mean square of each group in one reduction, then one
  fused per-channel multiply-add (and SiLU) in the computation dtype. ``nnx.GroupNorm`` gives the same
  values (to float32 rounding) but broadcasts the statistics back over the full tensor before scaling;
  folding them into a ``(B, C)`` scale and shift first makes the U-Net's forward ~13% faster on an
  H200 (bf16, 8 x 128x128)."""

  def __init__(self, channels: int, groups: int, *, epsilon: float = 1e-6, stats: str = "group",
               dtype=jnp.float32, param_dtype=jnp.float32, rngs=None):
    if channels % groups:
      raise ValueError(f"GroupNorm: {channels} channels do not split into {groups} groups")
    if stats not in GN_STATS:
      raise ValueError(f"config.model.gn_stats: unknown {stats!r}; choose one of {GN_STATS}")
    self.stats = stats
    self.scale = nnx.Param(jnp.ones((channels,), param_dtype))
    self.bias = nnx.Param(jnp.zeros((channels,), param_dtype))
    self.groups = groups
    self.epsilon = epsilon
    self.dtype = dtype

  def __call__(self, x, silu: bool = False):
    b, h, w, c = x.shape
    g = self.groups
    xf = x.astype(jnp.float32)
    if self.stats == "group":  # one reduction over (H*W, C/G) per (B, G)
      xg = xf.reshape(b, h * w, g, c // g)
      mean, mean_sq = xg.mean(axis=(1, 3)), jnp.square(xg).mean(axis=(1, 3))
    else:  # 'channel': per-channel sums over H, W (the channel axis stays contiguous), then per group
      n = h * w * (c // g)
      mean = xf.sum(axis=(1, 2)).reshape(b, g, c // g).sum(-1) / n
      mean_sq = jnp.square(xf).sum(axis=(1, 2)).reshape(b, g, c // g).sum(-1) / n
    var = jnp.maximum(mean_sq - jnp.square(mean), 0.0)
    inv = jax.lax.rsqrt(var + self.epsilon)  # (B, G)
    gamma = self.scale[...].astype(jnp.float32).reshape(g, c // g)
    mul = (inv[:, :, None] * gamma).reshape(b, c)
    add = self.bias[...].astype(jnp.float32) - (mean[:, :, None] * inv[:, :, None] * gamma).reshape(b, c)
    y = xf * mul[:, None, None, :] + add[:, None, None, :]
    if silu:
      y = nnx.silu(y)
    return y.astype(self.dtype)


class ResBlock(nnx.Module):
  """GN-SiLU-conv, + Dense(SiLU(temb)), GN-SiLU-conv (zero init), 1x1 skip when channels change.

  ``__call__(x, temb_out)`` takes the block's projected step embedding ``temb(SiLU(temb))`` (B,
  out_ch): the U-Net computes all blocks' projections in one matrix product (:meth:`UNet.__call__`).
  """

  def __init__(self, in_ch: int, out_ch: int, temb_dim: int, groups: int, *, gn_stats: str = "group", dtype,
               param_dtype, rngs):
    kw = dict(dtype=dtype, param_dtype=param_dtype, rngs=rngs)
    self.norm1 = GroupNorm(in_ch, _groups(in_ch, groups), stats=gn_stats, **kw)
    self.conv1 = Conv(in_ch, out_ch, (3, 3), **kw)
    self.temb = Dense(temb_dim, out_ch, **kw)
    self.norm2 = GroupNorm(out_ch, _groups(out_ch, groups), stats=gn_stats, **kw)
    self.conv2 = Conv(out_ch, out_ch, (3, 3), kernel_init=nnx.initializers.zeros, **kw)
    self.skip = Conv(in_ch, out_ch, (1, 1), **kw) if in_ch != out_ch else None

  def __call__(self, x, temb_out):
    h = self.conv1(self.norm1(x, silu=True))
    h = bias_add(h, temb_out[:, None, None, :])
    h = self.conv2(self.norm2(h, silu=True))
    return (self.skip(x) if self.skip is not None else x) + h


class AttnBlock(nnx.Module):
  """Multi-head self-attention over all positions (GN, qkv 1x1, softmax, zero-initialised proj)."""

  def __init__(self, ch: int, head_dim: int, groups: int, *, gn_stats: str = "group", dtype, param_dtype, rngs):
    kw = dict(dtype=dtype, param_dtype=param_dtype, rngs=rngs)
    self.heads = max(1, ch // head_dim)
    self.norm = GroupNorm(ch, _groups(ch, groups), stats=gn_stats, **kw)
    self.qkv = Dense(ch, 3 * ch, **kw)
    self.proj = Dense(ch, ch, kernel_init=nnx.initializers.zeros, **kw)

  def __call__(self, x):
    b, h, w, c = x.shape
    qkv = self.qkv(self.norm(x)).reshape(b, h * w, 3, self.heads, c // self.heads)
    o = jax.nn.dot_product_attention(qkv[:, :, 0], qkv[:, :, 1], qkv[:, :, 2])
    return x + self.proj(o.reshape(b, h, w, c))


class ConvEncoder(nnx.Module):
  """18-channel ``[LDR, LDR**gamma / 2**ev]`` of the three frames -> 3x3 conv, SiLU, 3x3 conv."""

  def __init__(self, out_ch: int, hidden: int = 64, *, dtype, param_dtype, rngs):
    kw = dict(dtype=dtype, param_dtype=param_dtype, rngs=rngs)
    self.conv1 = Conv(18, hidden, (3, 3), **kw)
    self.conv2 = Conv(hidden, out_ch, (3, 3), **kw)

  def __call__(self, frames, exposures):
    x = hdr_math.ldr_to_hdr_inputs(frames, exposures)  # (B, 3, H, W, 6)
    b, _, h, w, _ = x.shape
    x = x.transpose(0, 2, 3, 1, 4).reshape(b, h, w, 18)
    return self.conv2(nnx.silu(self.conv1(x)))


class VamDrdbEncoder(nnx.Module):
  """VAM+DRDB features (``fe``: :class:`hdr_jax.models.vam.VAMFeatures` with the DRDB stem, state
  compatible with ``HDRVAM.fe``) -> 1x1 conv to ``out_ch``. Odd sizes are edge-padded to even."""

  def __init__(self, out_ch: int, *, dtype, param_dtype, rngs, **stem_kw):
    kw = dict(dtype=dtype, param_dtype=param_dtype, rngs=rngs)
    cfg = {**vam.VAM_DRDB_DEFAULTS, "polyphase": True, **stem_kw}
    stem = None
    if cfg["drdb_blocks"] > 0:
      stem = vam.DRDBStem(blocks=cfg["drdb_blocks"], channels=cfg["drdb_channels"], growth=cfg["drdb_growth"],
                          layers=cfg["drdb_layers"], reference=cfg["drdb_reference"], polyphase=cfg["polyphase"], **kw)
    self.fe = vam.VAMFeatures(stem=stem, **kw)
    self.proj = Conv(vam.FEATURE_CHANNELS, out_ch, (1, 1), **kw)

  def __call__(self, frames, exposures):
    h, w = frames.shape[2:4]
    ph, pw = h % 2, w % 2
    if ph or pw:
      frames = jnp.pad(frames, ((0, 0), (0, 0), (0, ph), (0, pw), (0, 0)), mode="edge")
    feats = self.fe(*vam.vam_inputs(frames, exposures))
    return self.proj(feats[:, :h, :w])


class UNet(nnx.Module):
  """DDPM U-Net noise predictor (module docstring).

  Args:
    ch: base width; level ``i`` has ``ch * ch_mult[i]`` channels.
    ch_mult: channel multipliers, one per resolution level.
    num_res_blocks: residual blocks per level (the decoder has one more).
    attn_levels: levels with self-attention (None: the lowest resolution only).
    head_dim: attention head width (heads = channels // head_dim, at least 1).
    groups: GroupNorm groups (reduced to gcd with the channel count).
    out_channels: 3 (eps or v of an RGB image).
    conditional: build the LDR conditioning encoder.
    cond_encoder: ``'vam_drdb'`` or ``'conv'``.
    cond_channels: width of the conditioning features.
    cond_all_scales: also inject pooled features at every level.
    cond_vam_drdb: overrides of the ``'vam_drdb'`` encoder's stem (``drdb_blocks``, ``drdb_channels``,
      ``drdb_growth``, ``drdb_layers``, ``drdb_reference``, ``polyphase``; default
      ``vam.VAM_DRDB_DEFAULTS``).
    cond_conv_hidden: hidden width of the ``'conv'`` encoder.
    cond_estimate: the conditioning also holds a deterministic estimate of the image (3 more channels
      after the encoder's features, given to :meth:`encode`): the DDPM task's residual mode.
    gn_stats: how GroupNorm reduces its statistics: ``'group'`` (one reduction over ``(H*W, C/G)`` per
      group) or ``'channel'`` (per-channel sums over ``H, W``, then per group); the same values to
      float32 rounding, two ways for XLA to schedule the reduction (GroupNorm statistics were 24 % of
      the U-Net's kernel time on an H200; ``benchmarks/diffusion_sampling.py --model_set`` compares).
  """

  def __init__(self, *, ch: int = 64, ch_mult=(1, 2, 2), num_res_blocks: int = 2, attn_levels=None,
               head_dim: int = 64, groups: int = 32, out_channels: int = 3, conditional: bool = True,
               cond_encoder: str = "vam_drdb", cond_channels: int = 32, cond_all_scales: bool = True,
               cond_vam_drdb=None, cond_conv_hidden: int = 64, cond_estimate: bool = False,
               gn_stats: str = "group", dtype=jnp.float32,
               param_dtype=jnp.float32,
               rngs: nnx.Rngs):
    ch_mult = _ints("ch_mult", ch_mult)
    levels = len(ch_mult)
    attn_levels = (levels - 1,) if attn_levels is None else _ints("attn_levels", attn_levels)
    if conditional and cond_encoder not in COND_ENCODERS:
      raise ValueError(f"config.model.cond_encoder: unknown {cond_encoder!r}; choose one of {COND_ENCODERS}")
    kw = dict(dtype=dtype, param_dtype=param_dtype, rngs=rngs)
    self.ch = ch
    self.levels = levels
    self.num_res_blocks = num_res_blocks
    self.attn_levels = attn_levels
    self.conditional = conditional
    self.cond_all_scales = conditional and cond_all_scales
    self.dtype = dtype
    temb_dim = 4 * ch
    self.temb1 = Dense(ch, temb_dim, **kw)
    self.temb2 = Dense(temb_dim, temb_dim, **kw)

    encoder = None
    if conditional:
      if cond_encoder == "vam_drdb":
        encoder = VamDrdbEncoder(cond_channels, **dict(cond_vam_drdb or {}), **kw)
      else:
        encoder = ConvEncoder(cond_channels, cond_conv_hidden, **kw)
    self.encoder = encoder
    self.cond_estimate = conditional and cond_estimate
    cond_in = cond_channels + (3 if self.cond_estimate else 0)
    self.conv_in = Conv(3 + (cond_in if conditional else 0), ch, (3, 3), **kw)

    def attn(c):
      return AttnBlock(c, head_dim, groups, gn_stats=gn_stats, **kw)

    chans, skips = ch, [ch]
    down, down_attn, downsample, cond_proj = [], [], [], []
    for i, m in enumerate(ch_mult):
      out = ch * m
      if self.cond_all_scales:
        cond_proj.append(Conv(cond_in, chans, (1, 1), kernel_init=nnx.initializers.zeros, **kw))
      for _ in range(num_res_blocks):
        down.append(ResBlock(chans, out, temb_dim, groups, gn_stats=gn_stats, **kw))
        down_attn.append(attn(out) if i in attn_levels else None)
        chans = out
        skips.append(chans)
      if i != levels - 1:
        downsample.append(Conv(chans, chans, (3, 3), strides=(2, 2), **kw))
        skips.append(chans)
    self.down = nnx.List(down)
    self.down_attn = nnx.List(down_attn)
    self.downsample = nnx.List(downsample)
    self.cond_proj = nnx.List(cond_proj)
    self.mid1 = ResBlock(chans, chans, temb_dim, groups, gn_stats=gn_stats, **kw)
    self.mid_attn = attn(chans)
    self.mid2 = ResBlock(chans, chans, temb_dim, groups, gn_stats=gn_stats, **kw)
    up, up_attn, upsample = [], [], []
    for i in reversed(range(levels)):
      out = ch * ch_mult[i]
      for _ in range(num_res_blocks + 1):
        up.append(ResBlock(chans + skips.pop(), out, temb_dim, groups, gn_stats=gn_stats, **kw))
        up_attn.append(attn(out) if i in attn_levels else None)
        chans = out
      if i != 0:
        upsample.append(Conv(chans, chans, (3, 3), **kw))
    self.up = nnx.List(up)
    self.up_attn = nnx.List(up_attn)
    self.upsample = nnx.List(upsample)
    self.norm_out = GroupNorm(chans, _groups(chans, groups), stats=gn_stats, **kw)
    self.conv_out = Conv(chans, out_channels, (3, 3), kernel_init=nnx.initializers.zeros, **kw)

  def encode(self, frames, exposures, estimate=None):
    """Conditioning features ``(B, H, W, cond_channels)`` from the LDR frames (computation dtype),
    followed by ``estimate (B, H, W, 3)`` when the model conditions on one (``cond_estimate``)."""
    if self.encoder is None:
      raise ValueError("encode: the model is unconditional (config.model.conditional=False)")
    if (estimate is None) == self.cond_estimate:
      raise ValueError("UNet.encode: pass an estimate exactly when the model conditions on one (cond_estimate)")
    feats = self.encoder(frames.astype(jnp.float32), exposures).astype(self.dtype)
    if estimate is not None:
      feats = jnp.concatenate([feats, estimate.astype(self.dtype)], axis=-1)
    return feats

  def __call__(self, x, t, cond=None):
    if (cond is None) == self.conditional:
      raise ValueError("UNet: pass cond features exactly when the model is conditional")
    b, h, w = x.shape[:3]
    t = jnp.broadcast_to(jnp.asarray(t), (b,))
    x = x.astype(self.dtype)
    if cond is not None:
      x = jnp.concatenate([x, cond.astype(self.dtype)], axis=-1)
    x, _ = pad_to_multiple(x, 2 ** (self.levels - 1), mode="edge")
    cond_p = x[..., 3:] if cond is not None else None
    temb = self.temb2(nnx.silu(self.temb1(timestep_embedding(t, self.ch).astype(self.dtype))))
    # Every residual block's step projection Dense(SiLU(temb)) in one matrix product (one kernel
    # instead of one per block); each block reads its own columns.
    blocks = [*self.down, self.mid1, self.mid2, *self.up]
    kernel = jnp.concatenate([blk.temb.kernel[...] for blk in blocks], axis=1).astype(self.dtype)
    bias = jnp.concatenate([blk.temb.bias[...] for blk in blocks])
    proj = bias_add(nnx.silu(temb) @ kernel, bias)
    sizes = [blk.temb.kernel.shape[1] for blk in blocks]
    splits = jnp.split(proj, list(itertools.accumulate(sizes))[:-1], axis=-1)
    nd = len(self.down)
    t_down, t_mid1, t_mid2, t_up = splits[:nd], splits[nd], splits[nd + 1], splits[nd + 2:]

    hcur = self.conv_in(x)
    hs = [hcur]
    k = 0
    for i in range(self.levels):
      if self.cond_all_scales:
        hcur = hcur + self.cond_proj[i](avg_pool(cond_p, 2 ** i))
      for _ in range(self.num_res_blocks):
        hcur = self.down[k](hcur, t_down[k])
        if self.down_attn[k] is not None:
          hcur = self.down_attn[k](hcur)
        hs.append(hcur)
        k += 1
      if i != self.levels - 1:
        hcur = self.downsample[i](hcur)
        hs.append(hcur)
    hcur = self.mid2(self.mid_attn(self.mid1(hcur, t_mid1)), t_mid2)
    k = 0
    for j, i in enumerate(reversed(range(self.levels))):
      for _ in range(self.num_res_blocks + 1):
        hcur = self.up[k](jnp.concatenate([hcur, hs.pop()], axis=-1), t_up[k])
        if self.up_attn[k] is not None:
          hcur = self.up_attn[k](hcur)
        k += 1
      if i != 0:
        hcur = jnp.repeat(jnp.repeat(hcur, 2, axis=1), 2, axis=2)
        hcur = self.upsample[j](hcur)
    out = self.conv_out(self.norm_out(hcur, silu=True))
    return out[:, :h, :w].astype(jnp.float32)
