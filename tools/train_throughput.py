"""Train-step compile time and steady-state samples/s of each network, on synthetic patches.

  python tools/train_throughput.py                      # all networks, batch 16 and 128
  python tools/train_throughput.py --models=resnet18 --batch_sizes=16 --dtype=bfloat16

Times the jitted, data-parallel train step of mcalc_jax.train (preprocessing included) on the
default 112x112 input: compile once, one warm-up step, then at least --min_steps steps and
--min_seconds seconds. Prints a Markdown table.
"""

from __future__ import annotations

import pathlib
import runpy
import time
from collections.abc import Sequence

import jax
import numpy as np
from absl import app, flags

from mcalc_jax import parallel, train

_MODELS = flags.DEFINE_list("models", ["alexnet", "resnet18", "resnet34"], "Networks to time.")
_BATCH_SIZES = flags.DEFINE_list("batch_sizes", ["16", "128"], "Global batch sizes.")
_DTYPE = flags.DEFINE_string("dtype", "float32", "Compute dtype (float32 | bfloat16).")
_MIN_STEPS = flags.DEFINE_integer("min_steps", 3, "Timed steps, at least.")
_MIN_SECONDS = flags.DEFINE_float("min_seconds", 10.0, "Timed seconds, at least.")

DEFAULT_CONFIG = pathlib.Path(__file__).parents[1] / "configs" / "default.py"


def measure(model: str, batch_size: int) -> tuple[float, float]:
  """Returns (compile seconds, steady-state samples/s) of one network's train step."""
  config = runpy.run_path(str(DEFAULT_CONFIG))["get_config"]()
  config.model, config.batch_size, config.dtype = model, batch_size, _DTYPE.value
  mesh = parallel.make_mesh()
  graphdef, tx, state = train.create_train_state(config, mesh)
  rng = np.random.default_rng(0)
  size = config.patch_size
  batch = parallel.global_batch(
    {
      "image": rng.uniform(0, 1, (batch_size, size, size, 1)).astype(np.float32),
      "label": rng.integers(0, 2, batch_size).astype(np.int32),
    },
    mesh,
  )
  start = time.perf_counter()
  step = train.make_train_step(config, graphdef, tx, mesh).lower(state, batch).compile()
  compile_seconds = time.perf_counter() - start
  state, metrics = step(state, batch)  # warm-up
  jax.block_until_ready(metrics)
  steps, start = 0, time.perf_counter()
  while steps < _MIN_STEPS.value or time.perf_counter() - start < _MIN_SECONDS.value:
    state, metrics = step(state, batch)
    jax.block_until_ready(metrics)
    steps += 1
  return compile_seconds, steps * batch_size / (time.perf_counter() - start)


def main(argv: Sequence[str]) -> None:
  del argv
  print(f"devices: {jax.devices()}, dtype {_DTYPE.value}, input 112x112x1")
  print("| network | batch | compile s | samples/s |\n| --- | --- | --- | --- |")
  for model in _MODELS.value:
    for batch_size in map(int, _BATCH_SIZES.value):
      compile_seconds, samples_per_second = measure(model, batch_size)
      print(
        f"| {model} | {batch_size} | {compile_seconds:.1f} | {samples_per_second:.1f} |", flush=True
      )


if __name__ == "__main__":
  app.run(main)
