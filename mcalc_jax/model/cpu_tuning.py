"""CPU speed settings applied to a built network from outside its architecture.

XLA:CPU's convolutions, their weight gradients above all, slow down per image once a batch's
activations outgrow the caches; running them a few images at a time keeps the caches warm
(docs/performance.md, kept changes 1 and 3). Accelerators want whole batches, and slicing a
batch sharded over several devices would move it between them, so every setting here is on by
default only on one CPU device. `config.cpu_tuning` holds the two settings:

  conv_chunk       images per convolution call (training and inference)
  inference_chunk  images per forward pass inside one inference call

each -1 (the default: this module's choice on one CPU device, else the whole batch), 0 (the whole
batch) or N > 0 (chunks of N). `python -m tools.tune_cpu_chunks` measures new values for a CPU.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
from flax import nnx

# Images per convolution on one CPU device: the best of 4-16 for every network.
CPU_CONV_CHUNK = 8


def resolve_chunk(value: int, cpu_default: int, devices: int) -> int:
  """A chunk setting: N >= 0 as given, -1 `cpu_default` on one CPU device, else 0 (no chunks)."""
  if value >= 0:
    return value
  return cpu_default if devices == 1 and jax.default_backend() == "cpu" else 0


def _setting(config: ml_collections.ConfigDict, name: str) -> int:
  return int(config.get("cpu_tuning", {}).get(name, -1))


def conv_chunk(config: ml_collections.ConfigDict) -> int:
  """Images per convolution call for a run on every device of this job (0: whole batch)."""
  return resolve_chunk(_setting(config, "conv_chunk"), CPU_CONV_CHUNK, jax.device_count())


def inference_chunk(config: ml_collections.ConfigDict, cpu_default: int, devices: int) -> int:
  """Images per forward pass inside one inference call on `devices` devices (0: whole batch)."""
  return resolve_chunk(_setting(config, "inference_chunk"), cpu_default, devices)


@functools.cache
def batch_chunked_conv(chunk: int) -> Callable[..., jax.Array]:
  """`lax.conv_general_dilated` run on `chunk` images at a time, the results concatenated.

  Each image is convolved alone either way, so outputs are the same and only the summation order
  of the weight gradient changes. Python slices rather than `lax.map`: the backward pass of a
  scan over convolutions ran ten times slower. Cached, so equal chunks give equal graph
  definitions (and jit cache hits).
  """

  def conv(lhs: jax.Array, rhs: jax.Array, *args: Any, **kwargs: Any) -> jax.Array:
    pieces = range(0, lhs.shape[0], chunk) if chunk > 0 else [0]
    if len(pieces) == 1:
      return jax.lax.conv_general_dilated(lhs, rhs, *args, **kwargs)
    return jnp.concatenate(
      [jax.lax.conv_general_dilated(lhs[i : i + chunk], rhs, *args, **kwargs) for i in pieces]
    )

  return conv


def chunk_convolutions(model: nnx.Module, chunk: int) -> nnx.Module:
  """Makes every `nnx.Conv` of `model` convolve `chunk` images at a time (0: leaves it as is)."""
  if chunk > 0:
    for _, module in nnx.iter_modules(model):
      if isinstance(module, nnx.Conv):
        module.conv_general_dilated = batch_chunked_conv(chunk)
  return model


def chunked_map(fn: Callable[[jax.Array], jax.Array], x: jax.Array, chunk: int) -> jax.Array:
  """`fn` over the leading axis of `x`, `chunk` rows per call (`lax.map`; 0: one call)."""
  n = x.shape[0]
  if not 0 < chunk < n:
    return fn(x)
  padded = jnp.pad(x, [(0, -n % chunk)] + [(0, 0)] * (x.ndim - 1))
  out = jax.lax.map(fn, padded.reshape(-1, chunk, *x.shape[1:]))
  return out.reshape(padded.shape[0], *out.shape[2:])[:n]
