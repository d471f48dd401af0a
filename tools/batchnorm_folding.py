"""What folding BatchNorm into the convolutions could buy in CPU inference, before building it.

  python -m tools.batchnorm_folding                    # ResNet18 and ResNet34, batch 256

Folding a BatchNorm into the convolution before it turns x * scale + shift into a bias add, so it
saves the multiply but keeps one elementwise pass. This times `checkpointing._probabilities`
(batch --batch in chunks of 16) three ways, in interleaved rounds: with BatchNorm as trained,
with each BatchNorm replaced by the per-channel bias add that folding would leave, and with each
BatchNorm removed (the upper bound of any BatchNorm work). Only speed is meaningful here: the last
two change the network's outputs.
"""

from __future__ import annotations

import argparse
import statistics
from collections.abc import Callable

import jax
from flax import nnx

from mcalc_jax import checkpointing
from tools import benchmark
from tools.inference_chunks import device_inference

_TRAINED = nnx.BatchNorm.__call__
VARIANTS: dict[str, Callable] = {
  "BatchNorm": _TRAINED,
  "bias add (folded)": lambda self, x, **_: x + self.bias[...],
  "removed (upper bound)": lambda self, x, **_: x,
}


def measure(model: str, batch: int, rounds: int, seconds: float) -> dict[str, float]:
  """Median patches/s of one network's inference per BatchNorm variant, interleaved rounds."""
  run = device_inference(model, batch)
  chunk = checkpointing.CPU_INFERENCE_MICRO_BATCH[model]

  def call() -> None:
    run(chunk)

  rates: dict[str, list[float]] = {name: [] for name in VARIANTS}
  try:
    for _ in range(rounds):
      for name, variant in VARIANTS.items():
        nnx.BatchNorm.__call__ = variant
        jax.clear_caches()  # retrace with this variant
        rates[name].append(benchmark.timed_rate(call, batch, 1, seconds))
  finally:
    nnx.BatchNorm.__call__ = _TRAINED
  return {name: statistics.median(values) for name, values in rates.items()}


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--models", default="resnet18,resnet34")
  parser.add_argument("--batch", type=int, default=256)
  parser.add_argument("--rounds", type=int, default=2)
  parser.add_argument("--seconds", type=float, default=2.0)
  args = parser.parse_args()
  print("| network | BatchNorm as | patches/s | x trained |\n| --- | --- | --- | --- |")
  for model in args.models.split(","):
    rates = measure(model, args.batch, args.rounds, args.seconds)
    for name, rate in rates.items():
      print(f"| {model} | {name} | {rate:.1f} | {rate / rates['BatchNorm']:.2f} |", flush=True)


if __name__ == "__main__":
  main()
