"""How many images per convolution make the CPU train step fastest: the sweep behind
`models.CPU_CONV_BATCH_CHUNK`.

  python -m tools.conv_chunks                                   # ResNets, train 16 and 128
  python -m tools.conv_chunks --models=alexnet --chunks=0,8,16 --rounds=3

For each network and batch size, one process builds the project's train step with
`config.conv_batch_chunk` set to each chunk (0 = whole batch) and times them in interleaved
rounds, so that other jobs on the cores slow every variant alike; then does the same for
inference (`Classifier.probabilities`, batch 256, with its own per-network micro-batch). Prints
median samples/s per chunk and the ratio to the whole batch. That the chunked convolutions give
the same logits and gradients is tested in tests/test_models.py.
"""

from __future__ import annotations

import argparse
from collections.abc import Callable

import jax
import numpy as np

from tools import benchmark, benchmark_scoring, inference_chunks


def infer_call(model: str, chunk: int, batch: int) -> Callable[[], None]:
  """One call = `Classifier.probabilities` on a host batch of `batch` patches."""
  classifier = benchmark_scoring.random_classifier(model, overrides={"conv_batch_chunk": chunk})
  images = np.random.default_rng(0).uniform(0, 1, (batch, 112, 112, 1)).astype(np.float32)
  return lambda: classifier.probabilities(images)


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--models", default="resnet18,resnet34")
  parser.add_argument("--train_batch_sizes", default="16,128")
  parser.add_argument("--infer_batch", type=int, default=256, help="0 skips inference")
  parser.add_argument("--chunks", default="0,4,8,16")
  parser.add_argument("--rounds", type=int, default=3)
  parser.add_argument("--seconds", type=float, default=4.0)
  args = parser.parse_args()
  chunks = inference_chunks.chunk_sizes(args.chunks)
  print(f"{jax.devices()[0].platform}, float32, median of {args.rounds} interleaved rounds")
  print("| network | job | batch | chunk | samples/s | x whole batch |")
  print("| --- | --- | --- | --- | --- | --- |")
  jobs = [("train", int(b)) for b in args.train_batch_sizes.split(",") if b]
  jobs += [("inference", args.infer_batch)] if args.infer_batch else []
  for model in args.models.split(","):
    for job, batch in jobs:
      if job == "train":
        calls = {
          c: benchmark.jax_train_call(model, batch, "float32", {"conv_batch_chunk": c})
          for c in chunks
        }
      else:
        calls = {c: infer_call(model, c, batch) for c in chunks}
      rates = inference_chunks.interleaved(calls, batch, args.rounds, args.seconds)
      for chunk, rate in rates.items():
        print(
          f"| {model} | {job} | {batch} | {chunk or 'whole'} | {rate:.1f} | "
          f"{rate / rates[0]:.2f} |",
          flush=True,
        )


if __name__ == "__main__":
  main()
