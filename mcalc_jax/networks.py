"""The networks a config can name: one registry, read by training, inference, reports and jobs.

A network is an `nnx.Module` built as `factory(num_classes, dtype=..., rngs=...)` and called as
`model(images, train=bool)` on float32 [N, S, S, 1] preprocessed patches, returning float32 logits
[N, num_classes]. A network with dropout (`stochastic=True`) also takes `dropout_key=` when
`train` is True, so a step's randomness stays a pure function of (seed, step). Adding a network
is one entry in `NETWORKS`; everything else (configs, `mcalc-demo --model`, report rows, CPU
tuning) reads it from here.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any, Protocol

import jax
import jax.numpy as jnp
import ml_collections
from flax import nnx

from mcalc_jax import cpu_tuning, models


class PatchNetwork(Protocol):
  """What a registered network's module implements."""

  def __call__(self, x: jax.Array, *, train: bool, **randomness: jax.Array) -> jax.Array: ...


@dataclasses.dataclass(frozen=True)
class Network:
  """A registered network: how to build it and what the rest of the system needs to know."""

  display_name: str  # as in the paper's tables
  factory: Callable[..., nnx.Module]  # (num_classes, *, dtype, rngs) -> PatchNetwork
  stochastic: bool = False  # takes dropout_key= in training
  cpu_inference_chunk: int = 0  # images per forward pass on one CPU (cpu_tuning), 0: whole batch


# Display order is the paper's Table 2 order. CPU inference chunks: the best of 8-64 per network
# (docs/performance.md, kept change 1).
NETWORKS: dict[str, Network] = {
  "alexnet": Network("AlexNet", models.AlexNet, stochastic=True, cpu_inference_chunk=64),
  "resnet18": Network(
    "ResNet18", lambda n, **kw: models.ResNet((2, 2, 2, 2), n, **kw), cpu_inference_chunk=16
  ),
  "resnet34": Network(
    "ResNet34", lambda n, **kw: models.ResNet((3, 4, 6, 3), n, **kw), cpu_inference_chunk=16
  ),
}


def get(name: str) -> Network:
  """The registered network `name`; the error lists the choices."""
  if name not in NETWORKS:
    raise ValueError(f"unknown model {name!r}; choose one of {sorted(NETWORKS)}")
  return NETWORKS[name]


def display_name(name: str) -> str:
  """'AlexNet' for 'alexnet'; an unregistered name as given."""
  return NETWORKS[name].display_name if name in NETWORKS else name


def create_model(config: ml_collections.ConfigDict, rngs: nnx.Rngs) -> nnx.Module:
  """Builds `config.model` with `config.num_classes` outputs in compute dtype `config.dtype`,
  with the CPU's convolution chunks applied (`cpu_tuning`)."""
  model = get(config.model).factory(config.num_classes, dtype=jnp.dtype(config.dtype), rngs=rngs)
  return cpu_tuning.chunk_convolutions(model, cpu_tuning.conv_chunk(config))


def call(
  model: nnx.Module, name: str, images: jax.Array, *, train: bool, dropout_key: Any = None
) -> jax.Array:
  """Logits of registered network `name`, passing the dropout key only to networks that use it."""
  randomness = {"dropout_key": dropout_key} if train and get(name).stochastic else {}
  return model(images, train=train, **randomness)
