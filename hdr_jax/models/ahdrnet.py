"""AHDRNet (Yan et al., CVPR 2019) in Flax NNX, exact to the official PyTorch ``AHDR`` (docs/reference.md, AHDRNet).

``AHDRNet.forward_official(x1, x2, x3)`` is the official network on 6-channel ``[LDR, H]`` NHWC inputs;
``AHDRNet(frames, exposures)`` is the project's regression interface (docs/reference.md, Data). With
``polyphase=True`` the dilation-2 DRDB trunk runs on polyphase-folded sub-images with plain 3x3
convolutions (identical outputs, much faster gradients under XLA; docs/reference.md, AHDRNet, polyphase trunk).

``load_torch_state_dict`` copies the official PyTorch ``state_dict`` (keys ``conv1.weight``,
``att11.weight``, ``RDB1.dense_layers.0.conv.weight``, ``RDB1.conv_1x1.weight``, ``GFF_1x1.weight``, ...)
into a model; ``torch_state_dict_from_file`` reads one from a ``.pt``/``.pth`` file.
"""

from __future__ import annotations

from collections.abc import Mapping

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from hdr_jax import hdr_math
from hdr_jax.models.layers import DRDB, Conv2d, polyphase_fold, polyphase_unfold

# Convolutions the official file defines but never calls: present in its state_dict, absent here.
UNUSED_TORCH_PREFIXES = ("attConv1", "attConv3")
LEAKY_SLOPE = 0.01
DILATION = 2


OUTPUT_HEADS = ("exposure", "sigmoid", "merge")


class AHDRNet(nnx.Module):
  """Attention-guided HDR network with dilated residual dense blocks.

  Args:
    channels: feature width (official 64).
    growth: DRDB growth rate (32).
    n_dense: dense layers per DRDB (6).
    n_blocks: number of DRDBs (3).
    gamma: gamma of the LDR -> linear mapping of the inputs.
    input_domain: ``'linear'`` (``H = LDR ** gamma / 2 ** ev``, the paper) or ``'gamma'``.
    exposure_reference: the frame ``ev`` of the inputs is counted from: ``'medium'`` (NTIRE's convention:
      the short frame's ``H`` reaches ``2 ** -ev_short``, 8-16) or ``'short'`` (the paper's and Kalantari's
      data: ``H`` in [0, 1]). The output is linear HDR relative to the medium frame either way.
    output_head: ``'exposure'`` (sigmoid times ``hdr_math.max_radiance``), ``'sigmoid'`` (the raw
      sigmoid: Kalantari-style [0, 1] linear HDR, what the published weights produce) or ``'merge'``
      (the last convolution, zero-initialised, gives per-pixel merge-weight gains and a bounded
      residual: :func:`hdr_math.merge_head`; an untrained network is the classical merge).
    merge_residual: the merge head's residual bound, in the mu-law domain of radiance over
      ``hdr_math.max_radiance`` (:func:`hdr_math.merge_head`).
    polyphase: run the DRDB trunk in the polyphase-folded layout.
    dense_form: how the DRDBs' dense layers are evaluated, ``'concat'`` or ``'scatter'`` (same
      parameters and function; :class:`hdr_jax.models.layers.DRDB`).
    dtype: computation dtype (float32 or bfloat16); the output of ``__call__`` is float32.
    param_dtype: parameter dtype.
  """

  def __init__(self, *, channels: int = 64, growth: int = 32, n_dense: int = 6, n_blocks: int = 3,
               gamma: float = hdr_math.GAMMA, input_domain: str = "linear", exposure_reference: str = "medium",
               output_head: str = "exposure",
               merge_residual: float = 0.25, polyphase: bool = True, dense_form: str = "scatter", dtype=jnp.float32, param_dtype=jnp.float32,
               rngs: nnx.Rngs):
    if input_domain not in ("linear", "gamma"):
      raise ValueError(f"input_domain must be 'linear' or 'gamma', got {input_domain!r}")
    if exposure_reference not in hdr_math.EXPOSURE_REFERENCES:
      raise ValueError(f"exposure_reference must be one of {hdr_math.EXPOSURE_REFERENCES}, got {exposure_reference!r}")
    if output_head not in OUTPUT_HEADS:
      raise ValueError(f"output_head must be one of {OUTPUT_HEADS}, got {output_head!r}")
    c = channels
    kw = dict(dtype=dtype, param_dtype=param_dtype, rngs=rngs)
    self.conv1 = Conv2d(6, c, 3, **kw)
    self.att11 = Conv2d(2 * c, 2 * c, 3, **kw)
    self.att12 = Conv2d(2 * c, c, 3, **kw)
    self.att31 = Conv2d(2 * c, 2 * c, 3, **kw)
    self.att32 = Conv2d(2 * c, c, 3, **kw)
    self.conv2 = Conv2d(3 * c, c, 3, **kw)
    self.rdbs = nnx.List([DRDB(c, growth, n_dense, DILATION, form=dense_form, **kw) for _ in range(n_blocks)])
    self.gff_1x1 = Conv2d(n_blocks * c, c, 1, **kw)
    self.gff_3x3 = Conv2d(c, c, 3, **kw)
    self.conv_up = Conv2d(c, c, 3, **kw)
    if output_head == "merge":  # 3 merge-weight log gains + 3 residual channels, zero at initialisation
      self.conv3 = Conv2d(c, 6, 3, kernel_init=nnx.initializers.zeros, **kw)
    else:
      self.conv3 = Conv2d(c, 3, 3, **kw)
    self.gamma = gamma
    self.input_domain = input_domain
    self.exposure_reference = exposure_reference
    self.output_head = output_head
    self.merge_residual = merge_residual
    self.polyphase = polyphase
    self.dtype = dtype

  def forward_official(self, x1, x2, x3):
    """The official ``AHDR.forward``: three ``(B, H, W, 6)`` inputs (short, reference, long) ->
    sigmoid output ``(B, H, W, 3)`` in float32. Exact for any H, W: the polyphase trunk is used when
    ``polyphase`` is set and H, W are even, the dilated one otherwise."""
    return jax.nn.sigmoid(self.raw_output(x1, x2, x3))

  def raw_output(self, x1, x2, x3):
    """The network before its output activation: ``(B, H, W, 3)`` logits, or ``(B, H, W, 6)`` for the
    merge head, float32."""
    b = x1.shape[0]
    z = _lrelu(self.conv1(jnp.concatenate([x1, x2, x3], axis=0)))  # one shared conv for the 3 frames
    z1, z2, z3 = z[:b], z[b:2 * b], z[2 * b:]
    a1 = jax.nn.sigmoid(self.att12(_lrelu(self.att11(jnp.concatenate([z1, z2], axis=-1)))))
    a3 = jax.nn.sigmoid(self.att32(_lrelu(self.att31(jnp.concatenate([z3, z2], axis=-1)))))
    f = self.conv2(jnp.concatenate([z1 * a1, z2, z3 * a3], axis=-1))
    h, w = f.shape[1], f.shape[2]
    folded = self.polyphase and h % DILATION == 0 and w % DILATION == 0
    if folded:
      f = polyphase_fold(f, DILATION)
    feats = []
    for rdb in self.rdbs:
      f = rdb(f, folded=folded)
      feats.append(f)
    f = self.gff_1x1(jnp.concatenate(feats, axis=-1))  # pointwise: valid in the folded layout
    if folded:
      f = polyphase_unfold(f, DILATION)
    f = self.gff_3x3(f) + z2
    return self.conv3(self.conv_up(f)).astype(jnp.float32)

  def __call__(self, frames, exposures):
    """``frames`` ``(B, 3, H, W, 3)`` in [0, 1] (short, medium, long), ``exposures`` ``(B, 3)`` in
    stops -> linear HDR ``(B, H, W, 3)`` float32. Any H, W, with the official model's border handling
    (zero padding of every convolution): even sizes run the polyphase trunk, odd ones the dilated
    trunk, both exact."""
    x = hdr_math.ldr_to_hdr_inputs(frames, exposures, self.gamma, domain=self.input_domain,
                                   reference=self.exposure_reference)
    if self.output_head == "merge":
      z = self.raw_output(x[:, 0], x[:, 1], x[:, 2])
      return hdr_math.merge_head(frames, exposures, z, self.merge_residual, self.gamma)
    out = self.forward_official(x[:, 0], x[:, 1], x[:, 2])
    if self.output_head == "exposure":
      out = out * hdr_math.max_radiance(exposures).astype(out.dtype)[:, None, None, None]
    return out

  def receptive_radius(self) -> int:
    """How far (in pixels) an output pixel sees into the inputs: the sum of the half-widths of the
    convolutions on the longest path (conv1, the attention pair, conv2, every dense layer of every
    DRDB at dilation 2, the global fusion 3x3, conv_up, conv3). Every layer is a convolution with zero
    padding and the merge head is per pixel, so the network is translation-local: a prediction in
    tiles with at least this halo equals the whole-frame one (``hdr_jax.tiling``). Official model: 43;
    the shipped ``ahdrnet-merge-cpu`` (4 layers x 3 blocks): 31."""
    half = lambda conv, dilation=1: dilation * (conv.kernel_size - 1) // 2
    radius = half(self.conv1) + half(self.att11) + half(self.att12) + half(self.conv2)
    radius += sum(half(conv, rdb.dilation) for rdb in self.rdbs for conv in rdb.dense)
    return radius + half(self.gff_3x3) + half(self.conv_up) + half(self.conv3)

  def macs_per_pixel(self) -> int:
    """Multiply-accumulates per output pixel, summed from the convolution kernel shapes (the shared
    ``conv1`` runs once per frame). The official model: 1,446,720."""
    return sum(int(np.prod(conv.kernel.shape)) * (3 if conv is self.conv1 else 1)
               for conv in torch_conv_map(self).values())


def _lrelu(x):
  return jax.nn.leaky_relu(x, LEAKY_SLOPE)


def torch_conv_map(model: AHDRNet) -> dict[str, Conv2d]:
  """Official PyTorch module name -> the corresponding convolution of ``model``."""
  convs = {name: getattr(model, name) for name in ("conv1", "att11", "att12", "att31", "att32", "conv2")}
  for k, rdb in enumerate(model.rdbs, start=1):
    for i, conv in enumerate(rdb.dense):
      convs[f"RDB{k}.dense_layers.{i}.conv"] = conv
    convs[f"RDB{k}.conv_1x1"] = rdb.fuse
  convs.update(GFF_1x1=model.gff_1x1, GFF_3x3=model.gff_3x3, conv_up=model.conv_up, conv3=model.conv3)
  return convs


def _to_numpy(value) -> np.ndarray:
  if hasattr(value, "detach"):  # a torch tensor (possibly bfloat16, which numpy cannot hold)
    value = value.detach().cpu().float().numpy()
  return np.asarray(value)


def load_torch_state_dict(model: AHDRNet, state_dict: Mapping) -> None:
  """Copies an official PyTorch ``AHDR`` ``state_dict`` (name -> numpy array or torch tensor) into
  ``model`` in place. Weights ``(out, in, kh, kw)`` become kernels ``(kh, kw, in, out)``; the unused
  ``attConv1``/``attConv3`` entries are ignored. Raises ``ValueError`` listing every missing,
  unexpected and mismatched-shape key (and then changes nothing)."""
  targets = {}
  for name, conv in torch_conv_map(model).items():
    kh, kw, cin, cout = conv.kernel.shape
    targets[f"{name}.weight"] = (conv.kernel, (cout, cin, kh, kw))
    targets[f"{name}.bias"] = (conv.bias, (cout,))
  arrays = {k: _to_numpy(v) for k, v in state_dict.items()}
  missing = sorted(set(targets) - set(arrays))
  unexpected = sorted(k for k in arrays if k not in targets and k.split(".")[0] not in UNUSED_TORCH_PREFIXES)
  mismatched = [f"{k}: got {tuple(arrays[k].shape)}, expected {targets[k][1]}"
                for k in sorted(set(targets) & set(arrays)) if tuple(arrays[k].shape) != targets[k][1]]
  if missing or unexpected or mismatched:
    parts = [f"{title} ({len(items)}): " + ", ".join(items)
             for title, items in (("missing keys", missing), ("unexpected keys", unexpected),
                                  ("shape mismatches", mismatched)) if items]
    raise ValueError("state_dict does not match the official AHDR model: " + "; ".join(parts))
  for key, (param, _) in targets.items():
    value = arrays[key]
    if value.ndim == 4:
      value = value.transpose(2, 3, 1, 0)
    param.set_value(jnp.asarray(value, dtype=param.dtype))


def torch_state_dict_from_file(path) -> dict:
  """Reads a PyTorch checkpoint (``torch.load(map_location='cpu', weights_only=True)``) and returns
  its ``state_dict``: a checkpoint dict wrapping it under ``'state_dict'``, ``'model_state_dict'``,
  ``'model'`` or ``'net'`` is unwrapped, and DataParallel's ``'module.'`` prefixes are removed."""
  import torch  # optional dependency, needed only here

  ckpt = torch.load(path, map_location="cpu", weights_only=True)
  for key in ("state_dict", "model_state_dict", "model", "net"):
    if isinstance(ckpt, Mapping) and isinstance(ckpt.get(key), Mapping):
      ckpt = ckpt[key]
      break
  if not isinstance(ckpt, Mapping):
    raise ValueError(f"{path}: not a state_dict (got {type(ckpt).__name__})")
  return {k.removeprefix("module."): v for k, v in ckpt.items()}
