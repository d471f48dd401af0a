"""mcalc-cv: patient-grouped k-fold cross-validation of one of the paper's classifiers.

  mcalc-cv --config=configs/default.py:task=1,model=alexnet --folds=5 \
      --workdir=runs/cv_task1_alexnet --config.data_dir=runs/tfds \
      [--data_config=configs/data.py:source=mias]
  mcalc-report runs/cv_task1_alexnet

Trains one model per fold in WORKDIR/fold_<i>, pools the out-of-fold predictions (every patient
predicted once, by a model that never saw it) into WORKDIR/eval/test and prints the per-fold AUC
and accuracy with their spread. With --data_config (the dataset's source), each fold's model
also scores its test patients' whole mammograms, pooled into WORKDIR/eval/froc (FROC, image and
breast AUC, cluster ranks), and a tile reranker refitted per fold on those scored tiles into
WORKDIR/eval/froc_reranked (--rerank); both once more with each image read against the other
breast's into WORKDIR/eval/froc*_bilateral (--bilateral_weight). Rerunning with the same flags
resumes where it stopped.
"""

from __future__ import annotations

import json

from absl import flags

from mcalc_jax import bilateral, cv, reranking, scoring
from mcalc_jax.cli import cluster, common

_CONFIG = common.define_config_flag("Training config (configs/default.py:task=T,model=NET).")
_WORKDIR = flags.DEFINE_string(
  "workdir", None, "Directory for the folds' runs and the pooled evaluation.", required=True
)
_FOLDS = flags.DEFINE_integer("folds", 5, "Number of patient-grouped folds (k).", lower_bound=2)
_SEED = flags.DEFINE_integer("cv_seed", 0, "Seed of the fold assignment.")
_THRESHOLD = flags.DEFINE_string(
  "threshold_policy", "youden", "Operating threshold chosen on the pooled validation parts."
)
_DATA_CONFIG = common.define_config_flag(
  "The dataset's data config: its images are scored whole, out of fold.", "data_config", False
)
_STRIDE = flags.DEFINE_integer("localize_stride", 0, "Whole-image tile stride; 0: patch size.")
_MIN_BREAST = flags.DEFINE_float(
  "localize_min_breast_fraction",
  scoring.DEFAULT_MIN_BREAST_FRACTION,
  "Whole-image tiles with less breast are not scored (default: as the training patches).",
)
_CALIBRATE = flags.DEFINE_bool(
  "calibrate", False, "Platt-scale each fold on its validation part before pooling."
)
_RERANK = flags.DEFINE_enum(
  "rerank",
  "classical",
  list(cv.RERANK_MODES),
  "Whole-image tile reranker refitted per fold on the scored tiles (WORKDIR/eval/froc_reranked):"
  " classical tile features, 'stacked' with the network's logit, '' none.",
)
_RERANK_FEATURES = flags.DEFINE_list(
  "rerank_features",
  list(reranking.DEFAULT_FEATURES),
  f"The reranker's tile features, of {', '.join(reranking.FEATURES)}.",
)
_BILATERAL = flags.DEFINE_float(
  "bilateral_weight",
  bilateral.DEFAULT_WEIGHT,
  "Evaluate whole images once more, each against the other breast (WORKDIR/eval/froc*_bilateral):"
  " this times the other breast's peak logit off its logits; 0: not.",
)
_MINING_ROUNDS = flags.DEFINE_integer(
  "mining_rounds", 0, "Rounds of hard-negative mining per fold (needs --data_config)."
)
_MINING_PER_IMAGE = flags.DEFINE_integer(
  "mining_per_image", 4, "Hard negatives mined from each training image per round."
)


def main(argv: list[str]) -> None:
  common.no_extra_arguments(argv)
  cluster.start_job(_CONFIG.value)
  localization = None
  if _DATA_CONFIG.value is not None:
    findings = common.load_findings(_DATA_CONFIG.value)
    localization = cv.Localization(
      findings,
      stride=_STRIDE.value,
      min_breast_fraction=_MIN_BREAST.value,
      rerank=_RERANK.value,
      rerank_features=tuple(_RERANK_FEATURES.value),
      bilateral_weight=_BILATERAL.value,
    )
  summary = cv.cross_validate(
    _CONFIG.value,
    _WORKDIR.value,
    _FOLDS.value,
    _SEED.value,
    threshold_policy=_THRESHOLD.value,
    localization=localization,
    mining_rounds=_MINING_ROUNDS.value,
    mining_per_image=_MINING_PER_IMAGE.value,
    calibrate=_CALIBRATE.value,
  )
  print(json.dumps(summary, indent=2))


def run() -> None:
  common.run(main)


if __name__ == "__main__":
  run()
