"""mcalc-cv: patient-grouped k-fold cross-validation of one of the paper's classifiers.

  mcalc-cv --config=configs/task1_alexnet.py --folds=5 --workdir=runs/cv_task1_alexnet \
      --config.dataset=mcalc_patches/mias
  mcalc-report runs/cv_task1_alexnet

Trains one model per fold in WORKDIR/fold_<i>, pools the out-of-fold predictions (every patient
predicted once, by a model that never saw it) into WORKDIR/eval/test and prints the per-fold AUC
and accuracy with their spread. Rerunning with the same flags resumes where it stopped.
"""

from __future__ import annotations

import json
from collections.abc import Sequence

import jax
from absl import app, flags, logging
from ml_collections import config_flags

from mcalc_jax import cv, parallel
from mcalc_jax.cli.flag_parsing import parse_flags

_CONFIG = config_flags.DEFINE_config_file(
  "config", None, "Experiment config file (configs/*.py).", lock_config=True
)
_WORKDIR = flags.DEFINE_string(
  "workdir", None, "Directory for the folds' runs and the pooled evaluation."
)
_FOLDS = flags.DEFINE_integer("folds", 5, "Number of patient-grouped folds (k).", lower_bound=2)
_SEED = flags.DEFINE_integer("cv_seed", 0, "Seed of the fold assignment.")
_THRESHOLD = flags.DEFINE_string(
  "threshold_policy", "youden", "Operating threshold chosen on the pooled validation parts."
)
flags.mark_flags_as_required(["config", "workdir"])


def main(argv: Sequence[str]) -> None:
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {' '.join(argv[1:])}")
  logging.info("Local devices: %s", jax.local_devices())
  parallel.enable_compilation_cache()
  summary = cv.cross_validate(
    _CONFIG.value, _WORKDIR.value, _FOLDS.value, _SEED.value, threshold_policy=_THRESHOLD.value
  )
  print(json.dumps(summary, indent=2))


def run() -> None:
  """Console-script entry point."""
  jax.config.config_with_absl()
  app.run(main, flags_parser=parse_flags)


if __name__ == "__main__":
  run()
