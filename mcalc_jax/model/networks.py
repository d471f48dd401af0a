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

from input_pipeline import morphology, patches
from mcalc_jax.model import cpu_tuning, models


class PatchNetwork(Protocol):
  """What a registered network's module implements."""

  def __call__(self, x: jax.Array, *, train: bool, **randomness: jax.Array) -> jax.Array: ...


@dataclasses.dataclass(frozen=True)
class Network:
  """A registered network: how to build it and what the rest of the system needs to know."""

  display_name: str  # as in the paper's tables
  factory: Callable[..., nnx.Module]  # (num_classes, *, dtype, rngs, **options) -> PatchNetwork
  stochastic: bool = False  # takes dropout_key= in training
  cpu_inference_chunk: int = 0  # images per forward pass on one CPU (cpu_tuning), 0: whole batch
  options: Callable[[ml_collections.ConfigDict], dict[str, Any]] | None = None  # config -> kwargs
  cnn: bool = True  # takes in_channels= (a front end can precede it)


# Speck sizes the morphological features look at, in millimetres: the white top-hat radii of
# the classical floor (2, 3 and 5 pixels of 0.2-mm film) and of the CNN front end.
FLOOR_RADII_MM = (0.4, 0.6, 1.0)
FRONT_END_RADII_MM = (0.4, 0.8)
_NATIVE_PIXEL_MM = 0.2  # assumed at native pixels, whose size varies, or before data tells


def pixel_size_mm(config: ml_collections.ConfigDict) -> float:
  """The network input's pixel size: the run's field of view over its input size."""
  fov = config.field_of_view_mm  # None until the dataset's is known
  if fov is None or fov == patches.NATIVE_PIXELS:
    return _NATIVE_PIXEL_MM
  return fov / config.preprocess.input_size


def _radii(config: ml_collections.ConfigDict, radii_mm: tuple[float, ...]) -> tuple[float, ...]:
  return tuple(morphology.pixels_of(r, pixel_size_mm(config)) for r in radii_mm)


def _floor_options(config: ml_collections.ConfigDict) -> dict[str, Any]:
  return {"radii": _radii(config, FLOOR_RADII_MM), "dog_sigma": 0.2 / pixel_size_mm(config)}


# Display order is the paper's Table 2 order, then the floor. CPU inference chunks: the best of
# 8-64 per network (docs/performance.md, kept change 1).
NETWORKS: dict[str, Network] = {
  "alexnet": Network("AlexNet", models.AlexNet, stochastic=True, cpu_inference_chunk=64),
  "resnet18": Network(
    "ResNet18", lambda n, **kw: models.ResNet((2, 2, 2, 2), n, **kw), cpu_inference_chunk=16
  ),
  "resnet34": Network(
    "ResNet34", lambda n, **kw: models.ResNet((3, 4, 6, 3), n, **kw), cpu_inference_chunk=16
  ),
  "specknet": Network("SpeckNet", models.SpeckNet, cpu_inference_chunk=64),
  "tophat": Network(
    "Top-hat floor", models.TopHatFloor, cpu_inference_chunk=64, options=_floor_options, cnn=False
  ),
}
FRONT_ENDS = ("", "tophat")


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
  behind the morphological front end `config.front_end` names (if any), with the CPU's
  convolution chunks applied (`cpu_tuning`)."""
  network = get(config.model)
  front_end = config.get("front_end", "")
  if front_end not in FRONT_ENDS:
    raise ValueError(f"unknown front_end {front_end!r}; choose one of {FRONT_ENDS}")
  if front_end and not network.cnn:
    raise ValueError(f"{config.model} takes no front end")
  kwargs = {"dtype": jnp.dtype(config.dtype), "rngs": rngs}
  kwargs |= network.options(config) if network.options else {}
  if front_end:
    radii = _radii(config, FRONT_END_RADII_MM)
    inner = network.factory(
      config.num_classes, in_channels=models.MorphologicalFrontEnd.channels(radii), **kwargs
    )
    model = models.MorphologicalFrontEnd(
      inner, rngs=rngs, radii=radii, dog_sigma=0.2 / pixel_size_mm(config)
    )
  else:
    model = network.factory(config.num_classes, **kwargs)
  return cpu_tuning.chunk_convolutions(model, cpu_tuning.conv_chunk(config))


def call(
  model: nnx.Module, name: str, images: jax.Array, *, train: bool, dropout_key: Any = None
) -> jax.Array:
  """Logits of registered network `name`, passing the dropout key only to networks that use it."""
  randomness = {"dropout_key": dropout_key} if train and get(name).stochastic else {}
  return model(images, train=train, **randomness)
