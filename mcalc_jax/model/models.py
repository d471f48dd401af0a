"""The paper's patch classifiers as Flax NNX modules: AlexNet and the basic-block ResNets.

Architecture only: which network a config names, and how a built one is tuned for a CPU, live in
`mcalc_jax.model.networks` and `mcalc_jax.model.cpu_tuning`. Layouts follow torchvision (so parameter counts
match it with 1 input channel and 2 classes), in NHWC. Parameters are float32; `dtype` sets the
compute dtype (bfloat16 on accelerators). Every module takes `train` at call time instead of
holding a train/eval flag, so one graph definition serves the jitted train and eval functions;
AlexNet's dropout takes its key at call time, so the model holds no RNG state and a step's
randomness is a pure function of (seed, step).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from mcalc_jax.model import morphology

# torchvision initialises ResNet convolutions with He normal (fan_out); BatchNorm momentum 0.1 in
# torch is 0.9 in Flax (the weight of the old running average).
_HE_NORMAL = nnx.initializers.variance_scaling(2.0, "fan_out", "normal")
_BN_MOMENTUM = 0.9
_BN_EPSILON = 1e-5


def _conv(
  in_ch: int,
  out_ch: int,
  kernel: int,
  stride: int,
  pad: int,
  *,
  dtype: Any,
  rngs: nnx.Rngs,
  resnet: bool = False,
) -> nnx.Conv:
  """A square conv with torch-style explicit padding; ResNet convs have no bias and He init."""
  extra = {"use_bias": False, "kernel_init": _HE_NORMAL} if resnet else {}
  return nnx.Conv(
    in_ch,
    out_ch,
    (kernel, kernel),
    (stride, stride),
    padding=((pad, pad), (pad, pad)),
    dtype=dtype,
    rngs=rngs,
    **extra,
  )


def _batch_norm(features: int, *, dtype: Any, rngs: nnx.Rngs) -> nnx.BatchNorm:
  return nnx.BatchNorm(features, momentum=_BN_MOMENTUM, epsilon=_BN_EPSILON, dtype=dtype, rngs=rngs)


def adaptive_avg_pool(x: jax.Array, output_size: int) -> jax.Array:
  """torch's AdaptiveAvgPool2d for NHWC inputs: cell i averages rows floor(i*H/n):ceil((i+1)*H/n).

  Written as two small averaging matrices, so it works for any input size (smaller inputs are
  spread over several output cells, larger ones averaged).
  """

  if not min(x.shape[1:3]):
    raise ValueError(
      f"the feature map vanished ({x.shape[1]}x{x.shape[2]}) before the pooling: the input is "
      "too small for this network; use a larger preprocess.input_size (AlexNet needs >= 63)"
    )

  def matrix(size: int) -> np.ndarray:
    m = np.zeros((output_size, size), np.float32)
    for i in range(output_size):
      start, end = (i * size) // output_size, -(-((i + 1) * size) // output_size)
      m[i, start:end] = 1.0 / (end - start)
    return m

  rows, cols = matrix(x.shape[1]), matrix(x.shape[2])
  return jnp.einsum("ih,jw,nhwc->nijc", rows.astype(x.dtype), cols.astype(x.dtype), x)


class AlexNet(nnx.Module):
  """torchvision AlexNet with a 1-channel input and a `num_classes` head.

  How a 112x112 patch reaches the classifier: conv 11x11/4 (pad 2) -> 27x27, max-pool 3/2 -> 13,
  conv 5x5 -> 13, max-pool -> 6, three 3x3 convs -> 6, max-pool -> 2x2x256. torchvision's adaptive
  average pool to 6x6 then copies each of the 2x2 cells into a 3x3 block (for 224x224 inputs it is
  the identity), so the classifier keeps torchvision's 256*6*6 = 9216 inputs and its parameter
  count. Inputs need at least 63 pixels a side to leave one cell after the last pool.
  """

  def __init__(
    self,
    num_classes: int,
    *,
    dtype: Any,
    rngs: nnx.Rngs,
    dropout_rate: float = 0.5,
    in_channels: int = 1,
  ):
    layout = [
      (in_channels, 64, 11, 4, 2),
      (64, 192, 5, 1, 2),
      (192, 384, 3, 1, 1),
      (384, 256, 3, 1, 1),
      (256, 256, 3, 1, 1),
    ]  # (in, out, kernel, stride, padding) as in torchvision
    self.convs = nnx.List([_conv(*c, dtype=dtype, rngs=rngs) for c in layout])
    self.pool_after = (0, 1, 4)  # indices of the convs followed by a 3x3/2 max-pool
    self.fc1 = nnx.Linear(256 * 6 * 6, 4096, dtype=dtype, rngs=rngs)
    self.fc2 = nnx.Linear(4096, 4096, dtype=dtype, rngs=rngs)
    self.head = nnx.Linear(4096, num_classes, dtype=dtype, rngs=rngs)
    self.dropout = nnx.Dropout(dropout_rate)

  def __call__(
    self, x: jax.Array, *, train: bool, dropout_key: jax.Array | None = None
  ) -> jax.Array:
    for i, conv in enumerate(self.convs):
      x = nnx.relu(conv(x))
      if i in self.pool_after:
        x = nnx.max_pool(x, (3, 3), strides=(2, 2))
    x = adaptive_avg_pool(x, 6).reshape(x.shape[0], -1)
    keys = jax.random.split(dropout_key, 2) if train else (None, None)
    x = nnx.relu(self.fc1(self.dropout(x, deterministic=not train, rngs=keys[0])))
    x = nnx.relu(self.fc2(self.dropout(x, deterministic=not train, rngs=keys[1])))
    return self.head(x).astype(jnp.float32)


class BasicBlock(nnx.Module):
  """ResNet basic block: two 3x3 convs and a (projected, when the shape changes) shortcut."""

  def __init__(self, in_ch: int, out_ch: int, stride: int, *, dtype: Any, rngs: nnx.Rngs):
    kw = {"dtype": dtype, "rngs": rngs}
    conv_kw = {**kw, "resnet": True}
    self.conv1 = _conv(in_ch, out_ch, 3, stride, 1, **conv_kw)
    self.bn1 = _batch_norm(out_ch, **kw)
    self.conv2 = _conv(out_ch, out_ch, 3, 1, 1, **conv_kw)
    self.bn2 = _batch_norm(out_ch, **kw)
    self.projects = stride != 1 or in_ch != out_ch
    if self.projects:
      self.proj_conv = _conv(in_ch, out_ch, 1, stride, 0, **conv_kw)
      self.proj_bn = _batch_norm(out_ch, **kw)

  def __call__(self, x: jax.Array, *, train: bool) -> jax.Array:
    y = nnx.relu(self.bn1(self.conv1(x), use_running_average=not train))
    y = self.bn2(self.conv2(y), use_running_average=not train)
    if self.projects:
      x = self.proj_bn(self.proj_conv(x), use_running_average=not train)
    return nnx.relu(x + y)


class ResNet(nnx.Module):
  """torchvision ResNet with basic blocks: 7x7/2 stem, 3x3/2 max-pool, 4 stages, global pool."""

  def __init__(
    self,
    stage_sizes: Sequence[int],
    num_classes: int,
    *,
    dtype: Any,
    rngs: nnx.Rngs,
    in_channels: int = 1,
  ):
    self.stem = _conv(in_channels, 64, 7, 2, 3, resnet=True, dtype=dtype, rngs=rngs)
    self.stem_bn = _batch_norm(64, dtype=dtype, rngs=rngs)
    blocks, in_ch = [], 64
    for stage, size in enumerate(stage_sizes):
      out_ch = 64 * 2**stage
      for i in range(size):
        stride = 2 if stage > 0 and i == 0 else 1
        blocks.append(BasicBlock(in_ch, out_ch, stride, dtype=dtype, rngs=rngs))
        in_ch = out_ch
    self.blocks = nnx.List(blocks)
    self.head = nnx.Linear(in_ch, num_classes, dtype=dtype, rngs=rngs)

  def __call__(self, x: jax.Array, *, train: bool) -> jax.Array:
    x = nnx.relu(self.stem_bn(self.stem(x), use_running_average=not train))
    x = nnx.max_pool(x, (3, 3), strides=(2, 2), padding=((1, 1), (1, 1)))
    for block in self.blocks:
      x = block(x, train=train)
    return self.head(jnp.mean(x, axis=(1, 2))).astype(jnp.float32)


def _speck_channels(x: jax.Array, radii: Sequence[float], dog_sigma: float) -> list[jax.Array]:
  """White top-hats at `radii` and a DoG at `dog_sigma` of [N, H, W, 1] intensities."""
  return [morphology.white_tophat(x, r) for r in radii] + [
    morphology.difference_of_gaussians(x, dog_sigma)
  ]


class TopHatFloor(nnx.Module):
  """The classical floor: logistic regression on a handful of speck features of a patch.

  Per patch: the maximum of white top-hats at `radii` pixels, of a Difference of Gaussians and of
  the local standard deviation, and log(1 + the number of pixels whose middle top-hat exceeds each
  of `count_thresholds` (intensities in [0, 1])); standardised by a BatchNorm, then one linear
  layer. Trained with the same loop, folds and thresholds as the CNNs, it is the floor a network
  must beat (a ten-line feature of this kind beat the paper's CNNs on MIAS).
  """

  def __init__(
    self,
    num_classes: int,
    *,
    dtype: Any,
    rngs: nnx.Rngs,
    radii: Sequence[float] = (2.0, 3.0, 5.0),
    dog_sigma: float = 1.0,
    std_window: int = 5,
    count_thresholds: Sequence[float] = (8 / 255, 16 / 255),
  ):
    self.radii, self.dog_sigma = tuple(radii), dog_sigma
    self.std_window, self.count_thresholds = std_window, tuple(count_thresholds)
    features = len(self.radii) + 2 + len(self.count_thresholds)
    self.norm = nnx.BatchNorm(features, momentum=_BN_MOMENTUM, epsilon=_BN_EPSILON, rngs=rngs)
    self.head = nnx.Linear(features, num_classes, dtype=dtype, rngs=rngs)

  def features(self, x: jax.Array) -> jax.Array:
    """[N, features] of [N, H, W, 1] intensities."""
    channels = _speck_channels(x, self.radii, self.dog_sigma)
    channels.append(morphology.local_std(x, self.std_window))
    peaks = [jnp.max(c, axis=(1, 2, 3)) for c in channels]
    middle = channels[len(self.radii) // 2]
    counts = [jnp.log1p(jnp.sum(middle > t, axis=(1, 2, 3))) for t in self.count_thresholds]
    return jnp.stack(peaks + counts, axis=-1).astype(jnp.float32)

  def __call__(self, x: jax.Array, *, train: bool) -> jax.Array:
    return self.head(self.norm(self.features(x), use_running_average=not train)).astype(jnp.float32)


class MorphologicalFrontEnd(nnx.Module):
  """A fixed speck-detector front end before a CNN: it sees what a top-hat sees, from step one.

  Channels: the patch z-scored, white top-hats at `radii` pixels and a DoG, each standardised by
  a BatchNorm (the top-hats' scale depends on the detector); `inner` takes them as its input
  channels (1 + len(radii) + 1). The patch reaches it as intensities in [0, 1] (preprocessing
  normalisation 'unit'), so specks keep their contrast against their surround.
  """

  def __init__(
    self,
    inner: nnx.Module,
    *,
    rngs: nnx.Rngs,
    radii: Sequence[float] = (2.0, 4.0),
    dog_sigma: float = 1.0,
  ):
    self.inner, self.radii, self.dog_sigma = inner, tuple(radii), dog_sigma
    channels = len(self.radii) + 2
    self.norm = nnx.BatchNorm(channels, momentum=_BN_MOMENTUM, epsilon=_BN_EPSILON, rngs=rngs)

  @staticmethod
  def channels(radii: Sequence[float]) -> int:
    return len(radii) + 2

  def __call__(self, x: jax.Array, *, train: bool, **randomness: jax.Array) -> jax.Array:
    mean = x.mean(axis=(1, 2, 3), keepdims=True)
    zscored = (x - mean) / jnp.maximum(x.std(axis=(1, 2, 3), keepdims=True), 1e-4)
    stack = jnp.concatenate([zscored, *_speck_channels(x, self.radii, self.dog_sigma)], axis=-1)
    return self.inner(self.norm(stack, use_running_average=not train), train=train, **randomness)


class SpeckNet(nnx.Module):
  """A small CNN built for specks: learnt speck filters, and a maximum over the patch.

  A calcification patch differs from tissue by a few bright specks anywhere in it, so this
  network keeps full resolution for its first two 3x3 convolutions (a 1-mm speck is 5-10 of its
  0.1-mm pixels), halves it once, convolves twice more, and summarises each feature map by its
  global maximum (is there a speck?) and mean (how many?) before one linear layer: the learnable
  counterpart of a top-hat maximum. Meant to follow the morphological front end; about 17k
  parameters at width 16, so 18 clusters' patches can train it without it memorising them.
  """

  def __init__(
    self, num_classes: int, *, dtype: Any, rngs: nnx.Rngs, in_channels: int = 1, width: int = 16
  ):
    shapes = [(in_channels, width), (width, width), (width, 2 * width), (2 * width, 2 * width)]
    self.convs = nnx.List(
      [_conv(a, b, 3, 1, 1, resnet=True, dtype=dtype, rngs=rngs) for a, b in shapes]
    )
    self.norms = nnx.List([_batch_norm(b, dtype=dtype, rngs=rngs) for _, b in shapes])
    self.head = nnx.Linear(4 * width, num_classes, dtype=dtype, rngs=rngs)

  def __call__(self, x: jax.Array, *, train: bool) -> jax.Array:
    for i, (conv, norm) in enumerate(zip(self.convs, self.norms, strict=True)):
      x = nnx.relu(norm(conv(x), use_running_average=not train))
      if i == 1:
        x = nnx.max_pool(x, (2, 2), strides=(2, 2))
    pooled = jnp.concatenate([jnp.max(x, axis=(1, 2)), jnp.mean(x, axis=(1, 2))], axis=-1)
    return self.head(pooled).astype(jnp.float32)
