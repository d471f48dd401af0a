"""mcalc-demo: the whole system on a synthetic screening cohort, in one command.

  mcalc-demo --workdir=runs/demo [--patients=40 --epochs=8 --model=specknet]

What it runs: `mcalc_jax.experiments.demo`.
"""

from __future__ import annotations

import os

from absl import flags, logging

from mcalc_jax.base import runtime
from mcalc_jax.cli import common
from mcalc_jax.experiments import demo
from mcalc_jax.model import networks

_WORKDIR = flags.DEFINE_string("workdir", "runs/demo", "Where everything is written.")
_PATIENTS = flags.DEFINE_integer("patients", 40, "Synthetic patients (4 mammograms each).")
_EPOCHS = flags.DEFINE_integer("epochs", 8, "Training epochs per task.")
_MODEL = flags.DEFINE_enum(
  "model",
  "specknet",
  list(networks.NETWORKS),
  "Network (the paper's: alexnet, resnet18, resnet34).",
)
_DIFFICULTY = flags.DEFINE_float("difficulty", 0.5, "Synthetic speck subtlety, 0 (easy) to 1.")
_HEATMAPS = flags.DEFINE_integer(
  "heatmaps", 16, "Test mammograms to score whole (those with clusters first; 0: skip)."
)
_SEED = flags.DEFINE_integer("seed", 0, "Seeds the cohort, the splits and the training.")


def main(argv: list[str]) -> None:
  common.no_extra_arguments(argv)
  logging.set_verbosity(logging.WARNING)  # the stages' own lines and progress bars only
  runtime.start_job()
  demo.run_demo(
    os.path.abspath(_WORKDIR.value),
    patients=_PATIENTS.value,
    epochs=_EPOCHS.value,
    model=_MODEL.value,
    difficulty=_DIFFICULTY.value,
    heatmaps=_HEATMAPS.value,
    seed=_SEED.value,
  )


def run() -> None:
  common.run(main)


if __name__ == "__main__":
  run()
