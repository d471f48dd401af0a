"""mcalc-cv: patient-grouped k-fold cross-validation of one of the paper's classifiers.

  mcalc-cv --config=configs/default.py:task=1,model=specknet --folds=5 \
      --workdir=runs/cv_task1 --config.data_dir=runs/tfds [--config.whole_image.source=mias]
  mcalc-cv --workdir=runs/cv_task1          # reruns it from its config.json and folds.json
  mcalc-report runs/cv_task1

Trains one model per fold in WORKDIR/fold_<i>, pools the out-of-fold predictions (every patient
predicted once, by a model that never saw it) into WORKDIR/eval/test and prints the per-fold AUC
and accuracy with their spread. With `config.whole_image.source` (a data source of
configs/data.py), each fold's model also scores its test patients' whole mammograms, pooled into
WORKDIR/eval/froc*, with the tile reranker and the other breast's reading (`config.whole_image`),
and its CAD marks classified out of fold (`config.marks`; WORKDIR/mark_classifier.json is the
classifier `mcalc-score --mark_classifier` applies to new images).
Everything that changes the result is a config field, recorded in WORKDIR/config.json; the flags
say where and how to run. Rerunning resumes where it stopped.
"""

from __future__ import annotations

import json

from absl import flags

from mcalc_jax.cli import cluster, common
from mcalc_jax.experiments import cv
from mcalc_jax.model import checkpointing

_CONFIG = common.define_config_flag(
  "Training and evaluation config (configs/default.py:task=T,model=NET); without it, the one "
  "WORKDIR/config.json records.",
  required=False,
)
_WORKDIR = flags.DEFINE_string(
  "workdir", None, "Directory for the folds' runs and the pooled evaluation.", required=True
)
_FOLDS = flags.DEFINE_integer(
  "folds",
  5,
  "Number of patient-grouped folds (k); a rerun takes WORKDIR/folds.json's.",
  lower_bound=2,
)
_SEED = flags.DEFINE_integer(
  "cv_seed", 0, "Seed of the fold assignment; a rerun takes WORKDIR/folds.json's."
)


def main(argv: list[str]) -> None:
  common.no_extra_arguments(argv)
  config = _CONFIG.value or checkpointing.load_config(_WORKDIR.value)
  cluster.start_job(config)
  if _CONFIG.value is None:
    summary = cv.rerun(_WORKDIR.value)
  else:
    summary = cv.cross_validate(config, _WORKDIR.value, _FOLDS.value, _SEED.value)
  print(json.dumps(summary, indent=2))


def run() -> None:
  common.run(main)


if __name__ == "__main__":
  run()
