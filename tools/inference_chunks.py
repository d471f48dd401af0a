"""How many images per forward pass make CPU inference fastest: the sweep behind
`checkpointing.CPU_INFERENCE_MICRO_BATCH`.

  python -m tools.inference_chunks                      # all networks, batch 256, chunks 8-128
  python -m tools.inference_chunks --models=resnet18 --chunks=0,16,32 --rounds=3

For each network, one process times `checkpointing._probabilities` (preprocessing, network,
softmax) on one device-resident batch, whole (chunk 0) and in chunks of each size, in
interleaved rounds so that other jobs on the cores slow every variant alike; prints the median
patches/s per chunk size, its ratio to the whole batch, and the largest probability difference
from the whole batch.
"""

from __future__ import annotations

import argparse
import statistics
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from mcalc_jax import checkpointing
from mcalc_jax.preprocess import PreprocessOptions
from tools import benchmark, benchmark_scoring


def device_inference(model: str, batch: int) -> Callable[[int], jax.Array]:
  """run(chunk): probabilities of one device-resident batch under random weights, waited for."""
  classifier = benchmark_scoring.random_classifier(model)
  options = PreprocessOptions.from_config(classifier.config)
  images = jnp.asarray(np.random.default_rng(0).uniform(0, 1, (batch, 112, 112, 1)), jnp.float32)

  def run(chunk: int) -> jax.Array:
    return checkpointing._probabilities(
      classifier.graphdef, classifier.variables, images, options, chunk
    ).block_until_ready()

  return run


def sweep(model: str, batch: int, chunks: list[int], rounds: int, seconds: float) -> dict:
  """{chunk: (median patches/s, max |probability difference| from the whole batch)}."""
  run = device_inference(model, batch)
  whole = run(0)
  differences = {chunk: float(jnp.abs(run(chunk) - whole).max()) for chunk in chunks}  # compiles
  calls = {chunk: (lambda c=chunk: run(c)) for chunk in chunks}
  rates = interleaved(calls, batch, rounds, seconds, warmup=0)  # compiled and run above
  return {chunk: (rates[chunk], differences[chunk]) for chunk in chunks}


def interleaved(
  calls: dict[int, Callable[[], Any]], items: int, rounds: int, seconds: float, warmup: int = 1
) -> dict[int, float]:
  """{key: median items/s} over `rounds` rounds that each time every call in turn.

  Interleaving makes other jobs on the cores slow every variant alike.
  """
  rates: dict[int, list[float]] = {key: [] for key in calls}
  for _ in range(rounds):
    for key, call in calls.items():
      rates[key].append(benchmark.timed_rate(call, items, 1, seconds, warmup))
  return {key: statistics.median(r) for key, r in rates.items()}


def chunk_sizes(text: str) -> list[int]:
  """'8,16' -> [0, 8, 16]: the whole batch (0) always comes first, as the reference."""
  chunks = [int(c) for c in text.split(",")]
  return chunks if chunks[0] == 0 else [0, *chunks]


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--models", default="alexnet,resnet18,resnet34")
  parser.add_argument("--batch", type=int, default=256)
  parser.add_argument("--chunks", default="0,8,16,32,64,128")
  parser.add_argument("--rounds", type=int, default=3)
  parser.add_argument("--seconds", type=float, default=2.0)
  args = parser.parse_args()
  chunks = chunk_sizes(args.chunks)
  print(f"batch {args.batch}, {jax.devices()[0].platform}, median of {args.rounds} rounds")
  print("| network | chunk | patches/s | x whole batch | max abs difference |")
  print("| --- | --- | --- | --- | --- |")
  for model in args.models.split(","):
    results = sweep(model, args.batch, chunks, args.rounds, args.seconds)
    for chunk, (rate, difference) in results.items():
      print(
        f"| {model} | {chunk or 'whole'} | {rate:.1f} | {rate / results[0][0]:.2f} | "
        f"{difference:.1e} |",
        flush=True,
      )


if __name__ == "__main__":
  main()
