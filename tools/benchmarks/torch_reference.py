"""AlexNet, ResNet18 and ResNet34 defined directly in PyTorch, as references for the JAX models.

torchvision from PyPI does not import beside the installed torch, so the networks are written
out here in torchvision's layouts (AlexNet features + AdaptiveAvgPool2d(6) + dropout classifier;
ResNet basic blocks with a 7x7/2 stem and max-pool), with 1 input channel and 2 classes, so that
only torch's CPU build is needed. torch is an optional extra: importing this module without torch
raises ImportError, which callers report as "PyTorch absent".
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
from torch import nn

# Parameter counts of mcalc_jax.model.models with 1 input channel and 2 classes.
EXPECTED_PARAMS = {"alexnet": 56_996_546, "resnet18": 11_171_266, "resnet34": 21_279_426}


class AlexNet(nn.Module):
  """torchvision AlexNet with a 1-channel stem."""

  def __init__(self, num_classes: int = 2, in_channels: int = 1, dropout: float = 0.5):
    super().__init__()
    self.features = nn.Sequential(
      nn.Conv2d(in_channels, 64, 11, 4, 2),
      nn.ReLU(inplace=True),
      nn.MaxPool2d(3, 2),
      nn.Conv2d(64, 192, 5, padding=2),
      nn.ReLU(inplace=True),
      nn.MaxPool2d(3, 2),
      nn.Conv2d(192, 384, 3, padding=1),
      nn.ReLU(inplace=True),
      nn.Conv2d(384, 256, 3, padding=1),
      nn.ReLU(inplace=True),
      nn.Conv2d(256, 256, 3, padding=1),
      nn.ReLU(inplace=True),
      nn.MaxPool2d(3, 2),
    )
    self.avgpool = nn.AdaptiveAvgPool2d(6)
    self.classifier = nn.Sequential(
      nn.Dropout(dropout),
      nn.Linear(256 * 6 * 6, 4096),
      nn.ReLU(inplace=True),
      nn.Dropout(dropout),
      nn.Linear(4096, 4096),
      nn.ReLU(inplace=True),
      nn.Linear(4096, num_classes),
    )

  def forward(self, x: torch.Tensor) -> torch.Tensor:
    x = self.avgpool(self.features(x))
    return self.classifier(torch.flatten(x, 1))


class BasicBlock(nn.Module):
  """ResNet basic block: two 3x3 convs and a projected shortcut when the shape changes."""

  def __init__(self, in_ch: int, out_ch: int, stride: int):
    super().__init__()
    self.conv1 = nn.Conv2d(in_ch, out_ch, 3, stride, 1, bias=False)
    self.bn1 = nn.BatchNorm2d(out_ch)
    self.relu = nn.ReLU(inplace=True)
    self.conv2 = nn.Conv2d(out_ch, out_ch, 3, 1, 1, bias=False)
    self.bn2 = nn.BatchNorm2d(out_ch)
    self.downsample = None
    if stride != 1 or in_ch != out_ch:
      self.downsample = nn.Sequential(
        nn.Conv2d(in_ch, out_ch, 1, stride, bias=False), nn.BatchNorm2d(out_ch)
      )

  def forward(self, x: torch.Tensor) -> torch.Tensor:
    y = self.relu(self.bn1(self.conv1(x)))
    y = self.bn2(self.conv2(y))
    shortcut = x if self.downsample is None else self.downsample(x)
    return self.relu(y + shortcut)


class ResNet(nn.Module):
  """torchvision ResNet with basic blocks: 7x7/2 stem, 3x3/2 max-pool, 4 stages, global pool."""

  def __init__(self, stage_sizes: Sequence[int], num_classes: int = 2, in_channels: int = 1):
    super().__init__()
    self.conv1 = nn.Conv2d(in_channels, 64, 7, 2, 3, bias=False)
    self.bn1 = nn.BatchNorm2d(64)
    self.relu = nn.ReLU(inplace=True)
    self.maxpool = nn.MaxPool2d(3, 2, 1)
    layers, in_ch = [], 64
    for stage, size in enumerate(stage_sizes):
      out_ch = 64 * 2**stage
      blocks = []
      for i in range(size):
        blocks.append(BasicBlock(in_ch, out_ch, 2 if stage > 0 and i == 0 else 1))
        in_ch = out_ch
      layers.append(nn.Sequential(*blocks))
    self.layers = nn.Sequential(*layers)
    self.avgpool = nn.AdaptiveAvgPool2d(1)
    self.fc = nn.Linear(in_ch, num_classes)
    for m in self.modules():  # torchvision's initialisation
      if isinstance(m, nn.Conv2d):
        nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")

  def forward(self, x: torch.Tensor) -> torch.Tensor:
    x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
    x = self.avgpool(self.layers(x))
    return self.fc(torch.flatten(x, 1))


def create(model: str, num_classes: int = 2) -> nn.Module:
  """Builds `model` (alexnet | resnet18 | resnet34) with a 1-channel input."""
  if model == "alexnet":
    return AlexNet(num_classes)
  if model == "resnet18":
    return ResNet((2, 2, 2, 2), num_classes)
  if model == "resnet34":
    return ResNet((3, 4, 6, 3), num_classes)
  raise ValueError(f"unknown model {model!r}; choose one of {sorted(EXPECTED_PARAMS)}")


def param_count(net: nn.Module) -> int:
  """Trainable parameters (BatchNorm running statistics are buffers, as in Flax's batch_stats)."""
  return sum(p.numel() for p in net.parameters())


def check_param_count(model: str, net: nn.Module) -> None:
  """Raises if `net` drifted from the JAX model's layout, so timings compare the same network."""
  got = param_count(net)
  if got != EXPECTED_PARAMS[model]:
    raise AssertionError(f"{model}: {got} parameters, the JAX model has {EXPECTED_PARAMS[model]}")


def preprocessing(sigma: float, device: str = "cpu") -> Callable[[torch.Tensor], torch.Tensor]:
  """The JAX path's preprocessing in PyTorch (Gaussian blur, per-patch z-score), NCHW in and out.

  So that a timed PyTorch forward does the same work as `Classifier.probabilities`, which
  preprocesses on the device (same numbers up to float32 rounding; see tests).
  """
  radius = max(1, int(3.0 * sigma + 0.5))
  taps = torch.exp(-0.5 * (torch.arange(-radius, radius + 1) / max(sigma, 1e-6)) ** 2)
  taps = (taps / taps.sum()).to(device)
  rows, cols = taps.view(1, 1, -1, 1), taps.view(1, 1, 1, -1)

  def apply(x: torch.Tensor) -> torch.Tensor:
    if sigma > 0:
      x = nn.functional.pad(x, (radius, radius, radius, radius), mode="reflect")
      x = nn.functional.conv2d(nn.functional.conv2d(x, rows), cols)
    mean, std = x.mean((1, 2, 3), keepdim=True), x.std((1, 2, 3), correction=0, keepdim=True)
    return ((x - mean) / std.clamp_min(1e-4)).contiguous(memory_format=torch.channels_last)

  return apply
