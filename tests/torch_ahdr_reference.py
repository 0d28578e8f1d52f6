"""The official AHDRNet model (Yan et al., CVPR 2019, class ``AHDR`` of the official ``model.py``) in
PyTorch, written from docs/reference.md, AHDRNet with the official attribute names, so that its ``state_dict`` keys are
the official ones. Used by the tests and benchmarks as the reference for ``hdr_jax.models.ahdrnet``.

Like the official file it defines two attention convolutions, ``attConv1`` and ``attConv3``, that
``forward`` never calls: they appear in the ``state_dict`` but not in the 1,441,283 used parameters.
"""

import torch
from torch import nn
from torch.nn import functional as F


class DilatedDenseLayer(nn.Module):
  """``cat(x, ReLU(conv3x3(x, dilation 2, padding 2)))`` (official ``make_dilation_dense``)."""

  def __init__(self, in_channels: int, growth: int):
    super().__init__()
    self.conv = nn.Conv2d(in_channels, growth, 3, padding=2, dilation=2, bias=True)

  def forward(self, x):
    return torch.cat((x, F.relu(self.conv(x))), 1)


class DRDB(nn.Module):
  """Dilated residual dense block: dense layers, a 1x1 fusion conv, plus the block input."""

  def __init__(self, channels: int, n_dense: int, growth: int):
    super().__init__()
    self.dense_layers = nn.Sequential(*[DilatedDenseLayer(channels + i * growth, growth) for i in range(n_dense)])
    self.conv_1x1 = nn.Conv2d(channels + n_dense * growth, channels, 1, padding=0, bias=True)

  def forward(self, x):
    return self.conv_1x1(self.dense_layers(x)) + x


class AHDR(nn.Module):
  """The official network: three 6-channel NCHW inputs (short, reference, long) -> sigmoid RGB."""

  def __init__(self, n_channel: int = 6, n_dense: int = 6, n_feat: int = 64, growth: int = 32):
    super().__init__()
    c = n_feat
    self.conv1 = nn.Conv2d(n_channel, c, 3, padding=1, bias=True)
    self.conv2 = nn.Conv2d(3 * c, c, 3, padding=1, bias=True)
    self.att11 = nn.Conv2d(2 * c, 2 * c, 3, padding=1, bias=True)
    self.att12 = nn.Conv2d(2 * c, c, 3, padding=1, bias=True)
    self.attConv1 = nn.Conv2d(c, c, 3, padding=1, bias=True)  # unused, as in the official file
    self.att31 = nn.Conv2d(2 * c, 2 * c, 3, padding=1, bias=True)
    self.att32 = nn.Conv2d(2 * c, c, 3, padding=1, bias=True)
    self.attConv3 = nn.Conv2d(c, c, 3, padding=1, bias=True)  # unused, as in the official file
    self.RDB1 = DRDB(c, n_dense, growth)
    self.RDB2 = DRDB(c, n_dense, growth)
    self.RDB3 = DRDB(c, n_dense, growth)
    self.GFF_1x1 = nn.Conv2d(3 * c, c, 1, padding=0, bias=True)
    self.GFF_3x3 = nn.Conv2d(c, c, 3, padding=1, bias=True)
    self.conv_up = nn.Conv2d(c, c, 3, padding=1, bias=True)
    self.conv3 = nn.Conv2d(c, 3, 3, padding=1, bias=True)
    self.relu = nn.LeakyReLU(0.01)

  def forward(self, x1, x2, x3):
    z1, z2, z3 = (self.relu(self.conv1(x)) for x in (x1, x2, x3))
    a1 = torch.sigmoid(self.att12(self.relu(self.att11(torch.cat((z1, z2), 1)))))
    a3 = torch.sigmoid(self.att32(self.relu(self.att31(torch.cat((z3, z2), 1)))))
    f0 = self.conv2(torch.cat((z1 * a1, z2, z3 * a3), 1))
    f1 = self.RDB1(f0)
    f2 = self.RDB2(f1)
    f3 = self.RDB3(f2)
    f = self.GFF_3x3(self.GFF_1x1(torch.cat((f1, f2, f3), 1))) + z2
    return torch.sigmoid(self.conv3(self.conv_up(f)))


def kaiming_init_(model: nn.Module, nonlinearity: str = "leaky_relu") -> nn.Module:
  """Kaiming-normal conv weights (biases keep PyTorch's default init). The default is the official
  ``weights_init_kaiming``; ``nonlinearity='linear'`` (std ``1 / sqrt(fan_in)``) keeps the random
  network's sigmoid output unsaturated, which makes numerical comparisons sensitive."""
  for m in model.modules():
    if isinstance(m, nn.Conv2d):
      nn.init.kaiming_normal_(m.weight, nonlinearity=nonlinearity)
  return model
