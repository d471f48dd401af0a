"""Whole-mammogram scoring speed: the scorer against a naive tile loop and PyTorch, in one run.

  python -m tools.benchmarks.scoring [--models=alexnet,resnet18] [--strides=112,56] [--images=2]
      [--batch_size=256] [--naive_tiles=64]

A 4000x3000 12-bit synthetic mammogram is scored tile by tile over its whole area (no
background skipping, so every method scores the same tiles) with randomly initialised networks
(timing needs no trained weights). Reported per model and stride: seconds per mammogram and
tiles/s for
  - mcalc_jax.whole_image.scoring.Scorer: tiles cut on the devices, fixed batches, `--images` mammograms
    streamed (compilation excluded, on a small warm-up image);
  - a naive loop: one tile cut on the host and scored per call (`Classifier.probabilities`),
    timed on `--naive_tiles` tiles and extrapolated;
  - the same network in PyTorch (`tools.benchmarks.torch_reference`: torchvision's layout, defined without
    torchvision; channels_last, batches of `--batch_size` tiles cut with `unfold`), when torch is
    importable (the optional `torch` extra);
with the scorer's speed-up over each as a ratio.
"""

from __future__ import annotations

import argparse
import os
import time
from typing import Any

import jax
import numpy as np
from flax import nnx

from input_pipeline import patches
from input_pipeline.mammogram import Mammogram
from mcalc_jax.base import parallel
from mcalc_jax.configs import default
from mcalc_jax.model import inference, networks
from mcalc_jax.whole_image import scoring

SHAPE = (4000, 3000)
_PATCH = 112
_MAX_VALUE = 4095


def synthetic_mammogram(shape: tuple[int, int], seed: int = 0) -> Mammogram:
  """A 12-bit image: noisy tissue in a half ellipse on the chest wall (left)."""
  rng = np.random.default_rng(seed)
  rows, cols = np.mgrid[: shape[0], : shape[1]]
  breast = ((rows - shape[0] / 2) / (0.45 * shape[0])) ** 2 + (cols / (0.9 * shape[1])) ** 2 < 1
  pixels = np.where(breast, rng.normal(1800, 300, shape), 40).clip(0, _MAX_VALUE)
  return Mammogram(
    pixels=pixels.astype(np.uint16),
    max_value=_MAX_VALUE,
    bits_stored=12,
    pixel_spacing_mm=(0.07, 0.07),
    spacing_assumed=True,
    laterality="L",
    view="CC",
    flipped=False,
    original_shape=shape,
    path="synthetic",
  )


def random_classifier(
  model: str, dtype: str = "float32", overrides: dict[str, Any] | None = None
) -> inference.Classifier:
  """A randomly initialised classifier of the default configuration (the paper's preprocessing).

  `overrides` sets further configuration fields (e.g. {'cpu_tuning': {'conv_chunk': 0}}).
  """
  config = default.get_config("recipe=paper")  # the preprocessing the PyTorch side repeats
  config.model, config.dtype = model, dtype
  config.update(overrides or {})
  config.patch_size = _PATCH
  config.field_of_view_mm = patches.NATIVE_PIXELS  # the paper's native-pixel patches
  return classifier_of(config)


def classifier_of(config: Any) -> inference.Classifier:
  """A randomly initialised classifier of `config`, replicated over this host's devices."""
  graphdef, params, batch_stats = nnx.split(
    networks.create_model(config, nnx.Rngs(0)), nnx.Param, nnx.BatchStat
  )
  mesh = parallel.make_mesh()
  variables = jax.device_put(
    {"params": params, "batch_stats": batch_stats}, parallel.replicated(mesh)
  )
  return inference.Classifier(config, graphdef, variables, mesh)


def time_scorer(
  classifier: inference.Classifier,
  stride: int,
  images: int,
  batch_size: int,
  min_breast_fraction: float = 0.0,
) -> tuple[float, int]:
  """Seconds per mammogram and tiles scored per mammogram, after a warm-up.

  `min_breast_fraction` 0 scores every tile; the scorer's default (0.1) skips the background.
  """
  scorer = scoring.Scorer(
    classifier, stride=stride, batch_size=batch_size, min_breast_fraction=min_breast_fraction
  )
  scorer.score(synthetic_mammogram((1000, 800)))  # compiles the network and the tile cutter
  prepared = scorer.prepare(synthetic_mammogram(SHAPE))
  start = time.perf_counter()
  results = list(scorer.score_stream((n, prepared) for n in range(images)))
  seconds = (time.perf_counter() - start) / images
  return seconds, results[0][1].tiles_scored


def time_naive_loop(classifier: inference.Classifier, tiles: int) -> float:
  """Tiles per second of one host-cut tile per call."""
  pixels = synthetic_mammogram(SHAPE).pixels
  origins = [(r, c) for r in range(0, 4000 - _PATCH, 560) for c in range(0, 3000 - _PATCH, 336)]

  def tile(n: int) -> np.ndarray:
    r, c = origins[n % len(origins)]
    return (pixels[r : r + _PATCH, c : c + _PATCH] / _MAX_VALUE).astype(np.float32)[None, ..., None]

  classifier.probabilities(tile(0))  # compile
  start = time.perf_counter()
  for n in range(tiles):
    classifier.probabilities(tile(n))
  return tiles / (time.perf_counter() - start)


def torch_tiles_per_second(
  model: str,
  stride: int,
  batch_size: int,
  device: str = "cpu",
  dtype: str = "float32",
) -> float:
  """Tiles per second of the same network and preprocessing in PyTorch (raises ImportError).

  Every tile is scored (PyTorch has no breast mask here); `dtype` bfloat16 runs under autocast.
  """
  import torch  # noqa: PLC0415 (the optional extra)

  from tools.benchmarks import torch_reference  # noqa: PLC0415 (needs torch; no torchvision)

  torch.set_num_threads(os.cpu_count() or 1)
  net = torch_reference.create(model)
  torch_reference.check_param_count(model, net)
  net = net.eval().to(device, memory_format=torch.channels_last)
  preprocessing = torch_reference.preprocessing(
    default.get_config("recipe=paper").preprocess.blur_sigma, device
  )
  image = torch.from_numpy(synthetic_mammogram(SHAPE).pixels.astype(np.float32) / _MAX_VALUE)
  image = image.to(device)
  tiles = image.unfold(0, _PATCH, stride).unfold(1, _PATCH, stride).reshape(-1, 1, _PATCH, _PATCH)

  def score(batch: torch.Tensor) -> torch.Tensor:
    return torch.softmax(net(preprocessing(batch)), -1)

  autocast = torch.autocast(device, torch.bfloat16, enabled=dtype == "bfloat16")
  with torch.inference_mode(), autocast:
    score(tiles[:batch_size]).cpu()  # warm-up
    start = time.perf_counter()
    scores = [score(tiles[b : b + batch_size]) for b in range(0, len(tiles), batch_size)]
    torch.cat(scores).cpu()  # waits for the device, as the scorer's host copy does
    return len(tiles) / (time.perf_counter() - start)


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--models", default="alexnet,resnet18")
  parser.add_argument("--strides", default="112,56")
  parser.add_argument("--images", type=int, default=2)
  parser.add_argument("--batch_size", type=int, default=256)
  parser.add_argument("--naive_tiles", type=int, default=64)
  args = parser.parse_args()
  print(
    f"devices: {jax.local_device_count()} x {jax.devices()[0].device_kind} "
    f"({jax.default_backend()}), jax {jax.__version__}; image {SHAPE[0]}x{SHAPE[1]} "
    f"12-bit, all tiles scored, batch {args.batch_size}"
  )
  for model in args.models.split(","):
    classifier = random_classifier(model)
    naive = time_naive_loop(classifier, args.naive_tiles)
    for stride in map(int, args.strides.split(",")):
      seconds, tiles = time_scorer(classifier, stride, args.images, args.batch_size)
      rate = tiles / seconds
      print(
        f"{model} stride {stride}: {tiles} tiles; scorer {seconds:.2f} s/mammogram, "
        f"{rate:.0f} tiles/s | naive loop {tiles / naive:.1f} s/mammogram, {naive:.0f} "
        f"tiles/s (scorer {rate / naive:.1f}x)",
        end=" | ",
        flush=True,
      )
      try:
        torch_rate = torch_tiles_per_second(model, stride, args.batch_size)
        print(
          f"PyTorch {tiles / torch_rate:.2f} s/mammogram, {torch_rate:.0f} tiles/s "
          f"(scorer {rate / torch_rate:.2f}x)"
        )
      except ImportError:
        print("PyTorch: torch not importable here (optional extra mcalc_jax[torch]), not compared")


if __name__ == "__main__":
  main()
