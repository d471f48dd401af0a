"""mcalc-evaluate: metrics, predictions and plots of a trained run, in WORKDIR/eval/<split>/.

mcalc-evaluate --workdir=runs/task1_alexnet [--split=test|all] [--checkpoint=best|latest]
    [--threshold=youden|fixed:T|sensitivity:S] [--bootstrap_resamples=1000] [--seed=0]
    [--dataset=mcalc_patches/mias_11p2mm --data_dir=DIR]   # on another dataset (transfer)
"""

from __future__ import annotations

import json

from absl import app, flags, logging

from mcalc_jax.base import metrics
from mcalc_jax.cli import cluster, common
from mcalc_jax.reports import evaluation

_WORKDIR = flags.DEFINE_string("workdir", None, "Run directory (checkpoints).", required=True)
_SPLIT = flags.DEFINE_string("split", "test", "Split to evaluate (threshold from validation).")
_CHECKPOINT = flags.DEFINE_enum("checkpoint", "best", ["best", "latest"], "Checkpoint to load.")
_THRESHOLD = flags.DEFINE_string(
  "threshold", "youden", "Threshold policy on validation: youden, fixed:T or sensitivity:S."
)
_RESAMPLES = flags.DEFINE_integer(
  "bootstrap_resamples", evaluation.BOOTSTRAP_RESAMPLES, "Patient bootstrap resamples."
)
_SEED = flags.DEFINE_integer("seed", 0, "Seed of the patient bootstrap.")
_DATASET = flags.DEFINE_string(
  "dataset", "", "Evaluate on this TFDS dataset instead of the run's own (name/config)."
)
_DATA_DIR = flags.DEFINE_string("data_dir", "", "Its TFDS data_dir (with --dataset).")


def main(argv: list[str]) -> None:
  common.no_extra_arguments(argv)
  try:
    metrics.ThresholdPolicy.parse(_THRESHOLD.value)  # fail before loading a model
  except ValueError as e:
    raise app.UsageError(str(e)) from e
  cluster.start_job()
  result = evaluation.evaluate_run(
    _WORKDIR.value,
    _SPLIT.value,
    _CHECKPOINT.value,
    threshold_policy=_THRESHOLD.value,
    seed=_SEED.value,
    resamples=_RESAMPLES.value,
    dataset=_DATASET.value,
    data_dir=_DATA_DIR.value,
  )
  values = {name: m["value"] for name, m in result["metrics"].items()}
  logging.info("%s split, threshold %s: %s", _SPLIT.value, result["threshold"], json.dumps(values))


def run() -> None:
  common.run(main)


if __name__ == "__main__":
  run()
