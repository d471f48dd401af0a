"""How many images per convolution and per inference pass make a CPU fastest: the sweeps behind
`mcalc_jax.model.cpu_tuning.CPU_CONV_CHUNK` and each network's `cpu_inference_chunk`.

  python -m tools.benchmarks.cpu_chunks                       # both sweeps, all networks
  python -m tools.benchmarks.cpu_chunks --sweep=inference --models=resnet18 --chunks=0,16,32

`--sweep=conv` builds the project's train step (batch 16 and 128) and `Classifier.probabilities`
(batch 256) with `config.cpu_tuning.conv_chunk` set to each chunk; `--sweep=inference` times
`inference.probabilities` on one device-resident batch of 256, whole or in chunks of each size,
and reports the largest probability difference from the whole batch. Variants are timed in
interleaved rounds, so that other jobs on the cores slow every variant alike; each row gives the
median samples/s and the ratio to the whole batch (chunk 0). Run it on a new CPU to choose new
values; that chunked paths give the plain path's numbers is tested in tests/test_cpu_tuning.py.
"""

from __future__ import annotations

import argparse
import statistics
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from mcalc_jax.model import inference
from mcalc_jax.model.preprocess import PreprocessOptions
from tools.benchmarks import networks as benchmark
from tools.benchmarks import scoring as benchmark_scoring

PATCH = 112


def interleaved(
  calls: dict[int, Callable[[], Any]], items: int, rounds: int, seconds: float, warmup: int = 1
) -> dict[int, float]:
  """{key: median items/s} over `rounds` rounds that each time every call in turn."""
  rates: dict[int, list[float]] = {key: [] for key in calls}
  for _ in range(rounds):
    for key, call in calls.items():
      rates[key].append(benchmark.timed_rate(call, items, 1, seconds, warmup))
  return {key: statistics.median(r) for key, r in rates.items()}


def chunk_sizes(text: str) -> list[int]:
  """'8,16' -> [0, 8, 16]: the whole batch (0) always comes first, as the reference."""
  chunks = [int(c) for c in text.split(",")]
  return chunks if chunks[0] == 0 else [0, *chunks]


def _conv(chunk: int) -> dict[str, Any]:
  return {"cpu_tuning": {"conv_chunk": chunk}}


def conv_rows(model: str, chunks: list[int], rounds: int, seconds: float) -> list[tuple]:
  """(job, batch, chunk, samples/s, '') for train 16, train 128 and inference 256."""
  rows = []
  for batch in (16, 128):
    calls = {c: benchmark.jax_train_call(model, batch, "float32", _conv(c)) for c in chunks}
    rates = interleaved(calls, batch, rounds, seconds)
    rows += [("train", batch, c, rate, "") for c, rate in rates.items()]
  images = np.random.default_rng(0).uniform(0, 1, (256, PATCH, PATCH, 1)).astype(np.float32)
  classifiers = {c: benchmark_scoring.random_classifier(model, overrides=_conv(c)) for c in chunks}
  calls = {c: (lambda k=k: k.probabilities(images)) for c, k in classifiers.items()}
  rates = interleaved(calls, 256, rounds, seconds)
  return rows + [("inference", 256, c, rate, "") for c, rate in rates.items()]


def inference_rows(model: str, chunks: list[int], rounds: int, seconds: float) -> list[tuple]:
  """(job, batch, chunk, patches/s, max |difference| from the whole batch) at batch 256."""
  classifier = benchmark_scoring.random_classifier(model)
  options = PreprocessOptions.from_config(classifier.config)
  images = jnp.asarray(np.random.default_rng(0).uniform(0, 1, (256, PATCH, PATCH, 1)), jnp.float32)

  def run(chunk: int) -> jax.Array:
    return inference.probabilities(
      classifier.graphdef, classifier.variables, images, options, chunk
    ).block_until_ready()

  whole = run(0)
  differences = {chunk: float(jnp.abs(run(chunk) - whole).max()) for chunk in chunks}  # compiles
  rates = interleaved({c: (lambda c=c: run(c)) for c in chunks}, 256, rounds, seconds, warmup=0)
  return [("inference", 256, c, rates[c], f"{differences[c]:.1e}") for c in chunks]


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--sweep", choices=("conv", "inference", "both"), default="both")
  parser.add_argument("--models", default="alexnet,resnet18,resnet34")
  parser.add_argument("--chunks", default="", help="default: 0,4,8,16 (conv), 0,8,...,128")
  parser.add_argument("--rounds", type=int, default=3)
  parser.add_argument("--seconds", type=float, default=3.0)
  args = parser.parse_args()
  sweeps = {"conv": (conv_rows, "0,4,8,16"), "inference": (inference_rows, "0,8,16,32,64,128")}
  chosen = list(sweeps) if args.sweep == "both" else [args.sweep]
  print(f"{jax.devices()[0].platform}, float32, median of {args.rounds} interleaved rounds")
  print(
    "| sweep | network | job | batch | chunk | samples/s | x whole batch | max abs difference |"
  )
  print("| --- | --- | --- | --- | --- | --- | --- | --- |")
  for sweep in chosen:
    rows_of, default_chunks = sweeps[sweep]
    for model in args.models.split(","):
      rows = rows_of(model, chunk_sizes(args.chunks or default_chunks), args.rounds, args.seconds)
      whole = {(job, batch): rate for job, batch, chunk, rate, _ in rows if chunk == 0}
      for job, batch, chunk, rate, difference in rows:
        ratio = rate / whole[job, batch]
        print(
          f"| {sweep} | {model} | {job} | {batch} | {chunk or 'whole'} | {rate:.1f} | "
          f"{ratio:.2f} | {difference} |",
          flush=True,
        )


if __name__ == "__main__":
  main()
