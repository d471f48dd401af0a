"""Patient-grouped k-fold cross-validation, so every patient of a small cohort is evaluated once.

A single 70/20/10 split of a cohort like mini-MIAS leaves one or two clusters in test; here every
patient is predicted once, by a model that never saw it. The steps, each a room of its own: the
folds and their training runs (`folds`; hard-negative mining rounds: `mining`), the pooled
out-of-fold evaluation (here), and the whole-image pass (`localization`). Layout:

  WORKDIR/config.json      the experiment: training and evaluation settings (configs/default.py)
  WORKDIR/folds.json       the fold assignment; WORKDIR/fold_<i>/ each fold's runs
  WORKDIR/eval/test/       the pooled evaluation (mcalc-report WORKDIR reads it); with
                           `config.cv.calibrate` each fold first Platt-scaled on its validation part
  WORKDIR/eval/froc*/      the whole images, with `config.whole_image.source` (`localization`)
  WORKDIR/cv_summary.json  per-fold AUC and accuracy, their mean and spread, whole-image metrics

`mcalc-cv --workdir=WORKDIR` alone reruns a cross-validation from its config.json and folds.json.
A rerun skips folds whose predictions exist, and a half-trained fold resumes from its checkpoint;
it may change how the folds are evaluated, not what they train. With several processes
(jax.distributed) every fold trains and predicts on all of them and process 0 alone writes the
files; the whole-image pass and mining need one process.
"""

from __future__ import annotations

import dataclasses
import json
import os
import pathlib
from collections.abc import Mapping, Sequence
from typing import Any

import jax
import ml_collections

from mcalc_jax.base import calibration, files, metrics, parallel
from mcalc_jax.experiments import folds, localization, mining
from mcalc_jax.model import checkpointing, train
from mcalc_jax.reports import evaluation

SUMMARY_FILE = "cv_summary.json"
PRETRAINING_DIR = "pretraining"  # a fold's run on the training-only patches alone
# What a rerun may change: where and how it runs, and how its folds are evaluated.
_NOT_TRAINING = {
  "cv",
  "whole_image",
  "marks",
  "data_dir",
  "num_workers",
  "prefetch",
  "input_backend",
  "log_every_steps",
  "async_checkpointing",
  "cpu_tuning",
  "distributed",
  "eval_batch_size",
}


def cross_validate(
  config: ml_collections.ConfigDict,
  workdir: str | os.PathLike,
  k: int = 5,
  seed: int = 0,
  *,
  cohort: folds.Patches | None = None,
) -> dict[str, Any]:
  """Trains `k` patient-grouped models, pools their out-of-fold predictions and evaluates them;
  with `config.whole_image.source`, its images too, out of fold. `cohort` defaults to the patches
  of `config.dataset` (and `config.cv.train_also`'s, training only). Returns the summary written
  to WORKDIR/cv_summary.json."""
  workdir = _recorded(config, pathlib.Path(workdir))
  whole = localization.WholeImagePass.from_config(config)
  _check(config, whole)
  cohort = cohort or folds.load_cohort(config)
  assignment = folds.assign(workdir, str(config.dataset), cohort.labels, k, seed)
  trained = [
    _fold(config, workdir / f"fold_{i}", fold, cohort, whole) for i, fold in enumerate(assignment)
  ]
  per_fold = [preds for _, preds in trained]
  maps = [_platt(preds) for preds in per_fold] if config.cv.calibrate else None
  summary = _pooled(config, workdir, per_fold, maps, seed)
  if whole is not None:
    run_dirs = [run for run, _ in trained]
    summary["whole_image"] = localization.localize_folds(
      workdir, assignment, whole, run_dirs, seed, config.cv.bootstrap_resamples, maps
    )
  if parallel.is_writer():
    files.write_text(workdir / SUMMARY_FILE, json.dumps(summary, indent=2))
  return summary


def rerun(workdir: str | os.PathLike) -> dict[str, Any]:
  """The cross-validation WORKDIR holds, again, from its config.json and folds.json alone."""
  k, seed = folds.recorded(workdir)
  return cross_validate(checkpointing.load_config(workdir), workdir, k, seed)


def _check(config: ml_collections.ConfigDict, whole: localization.WholeImagePass | None) -> None:
  if config.cv.train_also_as not in folds.TRAINING_ONLY:
    raise ValueError(f"cv.train_also_as must be one of {folds.TRAINING_ONLY}")
  if config.cv.mining_rounds and whole is None:
    raise ValueError("hard-negative mining scores whole images: set config.whole_image.source")
  if jax.process_count() > 1 and whole is not None:
    raise NotImplementedError("the whole-image pass and mining of a CV run in one process")


def _training(config: ml_collections.ConfigDict) -> dict[str, Any]:
  """The config's fields that decide what the folds train (as config.json records them)."""
  fields = json.loads(config.to_json_best_effort())
  return {name: value for name, value in fields.items() if name not in _NOT_TRAINING}


def _recorded(config: ml_collections.ConfigDict, workdir: pathlib.Path) -> pathlib.Path:
  """The workdir with the experiment recorded in its config.json; a rerun that would train
  something else is refused."""
  if (workdir / checkpointing.CONFIG_FILE).exists():
    before, now = _training(checkpointing.load_config(workdir)), _training(config)
    changed = sorted(n for n in before.keys() | now.keys() if before.get(n) != now.get(n))
    if changed:
      raise ValueError(
        f"{workdir / checkpointing.CONFIG_FILE} records another training ({', '.join(changed)} "
        "differ): use a new workdir"
      )
  workdir.mkdir(parents=True, exist_ok=True)
  checkpointing.save_config(config, workdir)
  return workdir


def _fold(
  config: ml_collections.ConfigDict,
  fold_dir: pathlib.Path,
  fold: Mapping[str, Sequence[str]],
  cohort: folds.Patches,
  whole: localization.WholeImagePass | None,
) -> tuple[pathlib.Path, folds.Predictions]:
  """A fold's final run and its out-of-fold predictions; trained, with its mining rounds, unless
  an earlier run finished them (a run given more mining rounds goes on)."""
  final = mining.round_dir(fold_dir, config.cv.mining_rounds)

  def trained() -> tuple[pathlib.Path, Any]:
    data = folds.fold_data(cohort, fold, config, train_only=config.cv.train_also_as)
    if config.cv.train_also_as == "pretrain":  # then fine-tuned on the fold's real patches alone
      train.train_and_evaluate(config, fold_dir / PRETRAINING_DIR, data=data)
      data = folds.fold_data(cohort, fold, config, train_only="")
    train.train_and_evaluate(_fine_tuning(config, fold_dir), fold_dir, data=data)
    if not config.cv.mining_rounds:
      return fold_dir, data
    return mining.train_rounds(config, fold_dir, fold, cohort, whole.findings, whole.scorer)

  done = (final / checkpointing.CONFIG_FILE).exists()
  return final, folds.run_fold(config, fold_dir, trained, done)


def _fine_tuning(
  config: ml_collections.ConfigDict, fold_dir: pathlib.Path
) -> ml_collections.ConfigDict:
  """The fold's config, starting from its pretraining run's best checkpoint where it has one."""
  if config.cv.train_also_as != "pretrain":
    return config
  config = ml_collections.ConfigDict(config.to_dict())
  config.init_from = os.fspath(fold_dir / PRETRAINING_DIR)
  return config


def _pooled(
  config: ml_collections.ConfigDict,
  workdir: pathlib.Path,
  per_fold: Sequence[folds.Predictions],
  maps: Sequence[calibration.Platt] | None,
  seed: int,
) -> dict[str, Any]:
  """The pooled out-of-fold evaluation (WORKDIR/eval/test) and the summary of the folds."""
  if maps:
    per_fold = [_calibrated(p, m) for p, m in zip(per_fold, maps, strict=True)]
  pooled = folds.pool(per_fold)
  policy = config.cv.threshold_policy
  result = evaluation.evaluate_predictions(
    pooled["validation"],
    pooled["test"],
    threshold_policy=policy,
    seed=seed,
    resamples=config.cv.bootstrap_resamples,
  )
  named = {"task": int(config.task), "network": str(config.model), "dataset": str(config.dataset)}
  result["run"] = {
    "workdir": os.fspath(workdir),
    "checkpoint": "best",
    **named,
    "cross_validation": {"folds": len(per_fold), "seed": seed},
  }
  if parallel.is_writer():
    evaluation.write_outputs(
      workdir / "eval" / "test", result, pooled, evaluation.task_class_names(int(config.task))
    )
  fold_metrics = [folds.fold_metrics(p, policy) for p in per_fold]
  return {
    "folds": len(per_fold),
    "seed": seed,
    **named,
    "per_fold": fold_metrics,
    "spread": {m: folds.spread([f[m] for f in fold_metrics]) for m in metrics.FOLD_SPREAD_METRICS},
    "pooled": {m: result["metrics"][m]["value"] for m in metrics.FOLD_SPREAD_METRICS},
    "pooled_counts": result["counts"],
    "calibration": [dataclasses.asdict(m) for m in maps] if maps else None,
  }


def _platt(preds: folds.Predictions) -> calibration.Platt:
  """The fold's Platt scaling, fitted on its own validation part."""
  return calibration.fit_platt(preds["validation"]["label"], preds["validation"]["prob"])


def _calibrated(preds: folds.Predictions, platt: calibration.Platt) -> folds.Predictions:
  return {part: {**p, "prob": platt.apply(p["prob"])} for part, p in preds.items()}
