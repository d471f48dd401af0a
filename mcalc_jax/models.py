"""The paper's three patch classifiers as Flax NNX modules: AlexNet, ResNet18 and ResNet34.

Layouts follow torchvision (so parameter counts match it with 1 input channel and 2 classes), in
NHWC. Parameters are float32; `dtype` sets the compute dtype (bfloat16 on accelerators). Every
module takes `train` at call time instead of holding a train/eval flag, so one graph definition
serves the jitted train and eval functions, and dropout takes its key at call time, so the model
holds no RNG state and a step's randomness is a pure function of (seed, step).
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from flax import nnx

# torchvision initialises ResNet convolutions with He normal (fan_out); BatchNorm momentum 0.1 in
# torch is 0.9 in Flax (the weight of the old running average).
_HE_NORMAL = nnx.initializers.variance_scaling(2.0, "fan_out", "normal")
_BN_MOMENTUM = 0.9
_BN_EPSILON = 1e-5

# Images per convolution on one CPU device (see `conv_batch_chunk`): the best of 4-16 for every
# network in `python -m tools.conv_chunks` (docs/performance.md).
CPU_CONV_BATCH_CHUNK = 8


def cpu_chunk(value: int, cpu_default: int, devices: int) -> int:
  """Resolves a chunk-size setting: N >= 0 as given, -1 `cpu_default` on one CPU device, else 0.

  Chunks keep a CPU's caches warm; accelerators want whole batches, and slicing a batch sharded
  over several devices would move it between them.
  """
  if value >= 0:
    return value
  return cpu_default if devices == 1 and jax.default_backend() == "cpu" else 0


def conv_batch_chunk(config: ml_collections.ConfigDict) -> int:
  """Images per convolution call (0: the whole batch at once).

  `config.conv_batch_chunk` -1 (the default) chunks on a single CPU device and turns chunking
  off on accelerators and when a batch is sharded over several devices; 0 turns it off, N > 0
  forces chunks of N.
  """
  value = int(config.get("conv_batch_chunk", -1))
  return cpu_chunk(value, CPU_CONV_BATCH_CHUNK, jax.device_count())


@functools.cache
def batch_chunked_conv(chunk: int) -> Callable[..., jax.Array]:
  """`lax.conv_general_dilated` run on `chunk` images at a time, the results concatenated.

  Why: XLA:CPU's convolutions, their weight gradients above all, slow down per image once a
  batch's activations outgrow the caches (ResNet18's train step at batch 128: 30 -> 41 samples/s
  in chunks of 8). Each image is convolved alone either way, so outputs are the same and only
  the summation order of the weight gradient changes. Python slices rather than `lax.map`: the
  backward pass of a scan over convolutions ran ten times slower. Cached, so equal chunks give
  equal graph definitions (and jit cache hits).
  """

  def conv(lhs: jax.Array, rhs: jax.Array, *args: Any, **kwargs: Any) -> jax.Array:
    pieces = range(0, lhs.shape[0], chunk) if chunk > 0 else [0]
    if len(pieces) == 1:
      return jax.lax.conv_general_dilated(lhs, rhs, *args, **kwargs)
    return jnp.concatenate(
      [jax.lax.conv_general_dilated(lhs[i : i + chunk], rhs, *args, **kwargs) for i in pieces]
    )

  return conv


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
  batch_chunk: int = 0,
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
    conv_general_dilated=batch_chunked_conv(batch_chunk),
    **extra,
  )


def _batch_norm(features: int, *, dtype: Any, rngs: nnx.Rngs) -> nnx.BatchNorm:
  return nnx.BatchNorm(features, momentum=_BN_MOMENTUM, epsilon=_BN_EPSILON, dtype=dtype, rngs=rngs)


def adaptive_avg_pool(x: jax.Array, output_size: int) -> jax.Array:
  """torch's AdaptiveAvgPool2d for NHWC inputs: cell i averages rows floor(i*H/n):ceil((i+1)*H/n).

  Written as two small averaging matrices, so it works for any input size (smaller inputs are
  spread over several output cells, larger ones averaged).
  """

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
    batch_chunk: int = 0,
  ):
    layout = [
      (1, 64, 11, 4, 2),
      (64, 192, 5, 1, 2),
      (192, 384, 3, 1, 1),
      (384, 256, 3, 1, 1),
      (256, 256, 3, 1, 1),
    ]  # (in, out, kernel, stride, padding) as in torchvision
    self.convs = nnx.List(
      [_conv(*c, dtype=dtype, rngs=rngs, batch_chunk=batch_chunk) for c in layout]
    )
    self.pool_after = (0, 1, 4)  # indices of the convs followed by a 3x3/2 max-pool
    self.fc1 = nnx.Linear(256 * 6 * 6, 4096, dtype=dtype, rngs=rngs)
    self.fc2 = nnx.Linear(4096, 4096, dtype=dtype, rngs=rngs)
    self.head = nnx.Linear(4096, num_classes, dtype=dtype, rngs=rngs)
    self.dropout = nnx.Dropout(dropout_rate)

  def __call__(self, x: jax.Array, *, train: bool, dropout_key: jax.Array | None = None):
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

  def __init__(
    self, in_ch: int, out_ch: int, stride: int, *, dtype: Any, rngs: nnx.Rngs, batch_chunk: int = 0
  ):
    kw = {"dtype": dtype, "rngs": rngs}
    conv_kw = {**kw, "resnet": True, "batch_chunk": batch_chunk}
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
    batch_chunk: int = 0,
  ):
    self.stem = _conv(1, 64, 7, 2, 3, resnet=True, dtype=dtype, rngs=rngs, batch_chunk=batch_chunk)
    self.stem_bn = _batch_norm(64, dtype=dtype, rngs=rngs)
    blocks, in_ch = [], 64
    for stage, size in enumerate(stage_sizes):
      out_ch = 64 * 2**stage
      for i in range(size):
        stride = 2 if stage > 0 and i == 0 else 1
        blocks.append(
          BasicBlock(in_ch, out_ch, stride, dtype=dtype, rngs=rngs, batch_chunk=batch_chunk)
        )
        in_ch = out_ch
    self.blocks = nnx.List(blocks)
    self.head = nnx.Linear(in_ch, num_classes, dtype=dtype, rngs=rngs)

  def __call__(self, x: jax.Array, *, train: bool, dropout_key: jax.Array | None = None):
    del dropout_key  # ResNets have no dropout; the argument keeps one call signature.
    x = nnx.relu(self.stem_bn(self.stem(x), use_running_average=not train))
    x = nnx.max_pool(x, (3, 3), strides=(2, 2), padding=((1, 1), (1, 1)))
    for block in self.blocks:
      x = block(x, train=train)
    return self.head(jnp.mean(x, axis=(1, 2))).astype(jnp.float32)


_FACTORIES: dict[str, Callable[..., nnx.Module]] = {
  "alexnet": AlexNet,
  "resnet18": lambda num_classes, **kw: ResNet((2, 2, 2, 2), num_classes, **kw),
  "resnet34": lambda num_classes, **kw: ResNet((3, 4, 6, 3), num_classes, **kw),
}


def create_model(config: ml_collections.ConfigDict, rngs: nnx.Rngs) -> nnx.Module:
  """Builds `config.model` with `config.num_classes` outputs in compute dtype `config.dtype`."""
  if config.model not in _FACTORIES:
    raise ValueError(f"unknown model {config.model!r}; choose one of {sorted(_FACTORIES)}")
  return _FACTORIES[config.model](
    config.num_classes,
    dtype=jnp.dtype(config.dtype),
    rngs=rngs,
    batch_chunk=conv_batch_chunk(config),
  )
