"""Patient-grouped k-fold cross-validation, so every patient of a small cohort is evaluated once.

A single 70/20/10 split of a cohort like mini-MIAS leaves one or two clusters in test; here the
patches of all three stored splits are pooled, patients are dealt into k folds stratified by their
label (`input_pipeline.splits.kfold_assignments`), and fold i trains on the other folds (with a
patient-grouped validation part for early stopping and the threshold) and predicts fold i. Layout:

  WORKDIR/folds.json                       the fold assignment (k, seed, patients per part)
  WORKDIR/fold_<i>/                        an ordinary training run (checkpoints, config.json)
  WORKDIR/fold_<i>/oof_predictions.npz     its test and validation predictions (marks it done)
  WORKDIR/eval/test/                       the pooled evaluation (mcalc-report WORKDIR reads it);
                                           with `calibrate`, each fold's probabilities are first
                                           Platt-scaled on its own validation part
  WORKDIR/fold_<i>/images/                 with a `Localization`: the fold's test patients'
                                           whole mammograms scored (mcalc_jax.archive layout)
  WORKDIR/eval/froc/                       ... and their pooled whole-image evaluation
                                           (mcalc_jax.froc): every image localised once, by
                                           the model that never saw its patient
  WORKDIR/eval/froc_reranked/              ... after the tile reranker refitted per fold
  WORKDIR/eval/froc*_bilateral/            ... each image read against the other breast's
  WORKDIR/cv_summary.json                  per-fold AUC and accuracy, their mean and spread

A rerun skips folds whose predictions exist; a half-trained fold resumes from its checkpoint.
With several processes (jax.distributed) every fold trains and predicts on all of them and
process 0 alone writes the files; whole-image localisation and mining still need one process.
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
import numpy as np

from input_pipeline import pipeline, splits, tfds_builder
from input_pipeline.manifest import Finding
from mcalc_jax import (
  archive,
  bilateral,
  calibration,
  checkpointing,
  discovery,
  evaluation,
  files,
  froc,
  heatmaps,
  inference,
  metrics,
  mining,
  parallel,
  reranking,
  scoring,
  train,
)
from mcalc_jax.tiling import ImageScores

FOLDS_FILE = "folds.json"
_SUMMARISED = ("metrics", "ci", "counts")  # what cv_summary.json keeps of a whole-image evaluation
IMAGES_DIR = "images"
SUMMARY_FILE = "cv_summary.json"
PREDICTIONS_FILE = "oof_predictions.npz"
RERANKER_FILE = "reranker.json"
RERANK_MODES = ("", "classical", "stacked")
_PARTS = ("test", "validation")


def load_patches(
  dataset: str, data_dir: str | None
) -> tuple[dict[str, np.ndarray], dict[str, str], float]:
  """Every patch of the TFDS dataset's stored splits, in memory, and each patient's label.

  Returns arrays keyed like the TFDS features (ids as str), patient -> 'malignant' | 'benign' |
  'none' (from the dataset's metadata, else from the patches), for stratifying the folds, and the
  millimetres a patch covers (0: native pixels).
  """
  builder = tfds_builder.open_builder(dataset, data_dir or None)
  records = []
  for split in sorted(builder.info.splits):
    source = builder.as_data_source(split)
    records += [source[i] for i in range(len(source))]
  if not records:
    raise ValueError(f"dataset {dataset} in {data_dir or 'the default data_dir'} has no patches")
  arrays = {
    "image": np.stack([np.asarray(r["image"]) for r in records]),
    **{
      k: np.array([int(r[k]) for r in records], np.int32)
      for k in ("max_value", "task1_label", "task2_label")
    },
    **{k: np.array([pipeline.as_text(r[k]) for r in records]) for k in pipeline.ID_FIELDS},
  }
  recorded = builder.info.metadata.get("patients", {}) if builder.info.metadata else {}
  labels = {
    p: str(recorded[p]["label"])
    for p in np.unique(arrays["patient_id"])
    if p in recorded and "label" in recorded[p]
  }
  if len(labels) < len(np.unique(arrays["patient_id"])):
    labels = patient_labels(arrays)
  return arrays, labels, tfds_builder.field_of_view_mm(builder)


def patient_labels(arrays: Mapping[str, np.ndarray]) -> dict[str, str]:
  """Patient -> worst calcification label of its patches (malignant > benign > none)."""
  rank: dict[str, int] = {}
  for patient, t1, t2 in zip(
    arrays["patient_id"], arrays["task1_label"], arrays["task2_label"], strict=True
  ):
    worst = 0 if t1 != 1 else (2 if t2 == 1 else 1 if t2 == 0 else 0)
    rank[str(patient)] = max(rank.get(str(patient), 0), worst)
  return {p: ("none", "benign", "malignant")[r] for p, r in rank.items()}


def fold_data(
  arrays: Mapping[str, np.ndarray],
  fold: Mapping[str, Sequence[str]],
  config: ml_collections.ConfigDict,
  field_of_view_mm: float = 0.0,
) -> pipeline.ArrayPatchData:
  """The fold's train / validation / test patients' patches as the config's three splits."""
  names = {"train": config.train_split, "validation": config.eval_split, "test": config.test_split}
  parts = {}
  for part, split in names.items():
    keep = np.isin(arrays["patient_id"], list(fold[part]))
    parts[split] = {k: v[keep] for k, v in arrays.items()}
  data = pipeline.ArrayPatchData(parts, config, field_of_view_mm=field_of_view_mm)
  for part, split in names.items():  # a part without patches of the task cannot train or score
    if data.num_examples(split) == 0:
      raise ValueError(
        f"the fold's {part} part ({len(fold[part])} patients) has no task "
        f"{config.task} patches; use fewer folds"
      )
  return data


def _as_saved(preds: Mapping[str, Mapping[str, np.ndarray]]) -> dict[str, dict[str, np.ndarray]]:
  """A fold's predictions as `load_predictions` reads them back (ids as str)."""
  return {
    part: {
      k: (np.asarray(v).astype(str) if k in pipeline.ID_FIELDS else np.asarray(v))
      for k, v in p.items()
    }
    for part, p in preds.items()
  }


def _save_predictions(path: pathlib.Path, preds: Mapping[str, Mapping[str, np.ndarray]]) -> None:
  """Writes atomically: the file's existence marks a finished fold."""
  flat = {f"{part}__{k}": v for part, p in preds.items() for k, v in p.items()}
  with files.atomic_write(path) as f:
    np.savez(f, **flat)


def load_predictions(path: str | os.PathLike) -> dict[str, dict[str, np.ndarray]]:
  """A fold's {'test': preds, 'validation': preds}, as `_save_predictions` wrote them."""
  out: dict[str, dict[str, np.ndarray]] = {}
  with np.load(path) as f:
    for key in f.files:
      part, field = key.split("__", 1)
      out.setdefault(part, {})[field] = f[key]
  return out


def _pool(parts: Sequence[Mapping[str, np.ndarray]]) -> dict[str, np.ndarray]:
  return {k: np.concatenate([p[k] for p in parts]) for k in ("prob", "label", *pipeline.ID_FIELDS)}


def _fold_metrics(preds: Mapping[str, Mapping[str, np.ndarray]], policy: str) -> dict[str, Any]:
  """Test AUC and accuracy of one fold, at the threshold its own validation part chose."""
  val, test = preds["validation"], preds["test"]
  try:
    threshold = metrics.choose_threshold(
      val["label"], val["prob"], metrics.ThresholdPolicy.parse(policy)
    )
  except metrics.UndefinedMetricError:
    threshold = 0.5  # validation part lacks a class: the untuned threshold
  points = metrics.point_metrics(test["label"], test["prob"], threshold, split="test")
  return {
    **{name: points[name].value for name in metrics.FOLD_SPREAD_METRICS},
    "threshold": threshold,
    "examples": int(len(test["label"])),
    "patients": int(len(np.unique(test["patient_id"]))),
  }


def _spread(values: Sequence[float | None]) -> dict[str, Any]:
  defined = np.array([v for v in values if v is not None], np.float64)
  return {
    "mean": float(defined.mean()) if defined.size else None,
    "std": float(defined.std(ddof=1)) if defined.size > 1 else None,
    "folds_defined": int(defined.size),
  }


def _assignment(workdir: pathlib.Path, record: dict) -> list[dict[str, list[str]]]:
  """Writes folds.json, or checks that a rerun uses the same folds (no silent mixing)."""
  path = workdir / FOLDS_FILE
  if path.exists():
    previous = json.loads(path.read_text())
    if previous != record:
      raise ValueError(f"{path} holds other folds (k, seed or dataset changed): use a new workdir")
  elif parallel.is_writer():
    files.write_text(path, json.dumps(record, indent=2))
  return record["folds"]


def cross_validate(
  config: ml_collections.ConfigDict,
  workdir: str | os.PathLike,
  folds: int = 5,
  seed: int = 0,
  *,
  arrays: Mapping[str, np.ndarray] | None = None,
  labels: Mapping[str, str] | None = None,
  field_of_view_mm: float = 0.0,
  threshold_policy: str = "youden",
  resamples: int = evaluation.BOOTSTRAP_RESAMPLES,
  localization: Localization | None = None,
  mining_rounds: int = 0,
  mining_per_image: int = 4,
  calibrate: bool = False,
) -> dict[str, Any]:
  """Trains `folds` patient-grouped models, pools their out-of-fold predictions, evaluates them.

  `arrays`/`labels`/`field_of_view_mm` default to `load_patches(config.dataset,
  config.data_dir)`. With `localization`, each fold's model also scores the whole mammograms of
  its test patients and the pooled whole-image evaluation goes to WORKDIR/eval/froc. With
  `mining_rounds` (which needs `localization`'s findings), each fold then mines
  `mining_per_image` hard negatives from every training image (`mcalc_jax.mining`) and goes on
  training from its best checkpoint, round after round (WORKDIR/fold_<i>/round_<r>). With
  `calibrate`, each fold's probabilities (patches and whole images) are Platt-scaled on its own
  validation part before pooling (one scale for k models; each fold's ranking unchanged). Returns
  the summary written to WORKDIR/cv_summary.json; the pooled evaluation is in WORKDIR/eval/test.
  """
  if mining_rounds and localization is None:
    raise ValueError("hard-negative mining scores whole images: give the cohort's findings")
  if jax.process_count() > 1 and localization is not None:
    raise NotImplementedError("whole-image localisation and mining in CV run in one process")
  workdir = pathlib.Path(workdir)
  workdir.mkdir(parents=True, exist_ok=True)
  if arrays is None:
    arrays, labels, field_of_view_mm = load_patches(config.dataset, config.data_dir)
  if labels is None:
    labels = patient_labels(arrays)
  patients = sorted(labels)
  assignment = _assignment(
    workdir,
    {
      "k": folds,
      "seed": seed,
      "dataset": str(config.dataset),
      "labels": dict(sorted(labels.items())),
      "folds": splits.kfold_assignments(patients, labels, folds, seed),
    },
  )

  per_fold = []
  for i, fold in enumerate(assignment):
    fold_dir = workdir / f"fold_{i}"
    path = fold_dir / PREDICTIONS_FILE
    final = _round_dir(fold_dir, mining_rounds) / checkpointing.CONFIG_FILE
    if not (path.exists() and final.exists()):  # (a run given more mining rounds goes on)
      data = fold_data(arrays, fold, config, field_of_view_mm)
      train.train_and_evaluate(config, fold_dir, data=data)
      for r in range(1, mining_rounds + 1):
        mined = _mined(fold_dir, r, fold, localization, mining_per_image, arrays["image"].shape[1])
        data = fold_data(_with(arrays, mined), fold, config, field_of_view_mm)
        tuned = _fine_tuning(config, _round_dir(fold_dir, r - 1))
        train.train_and_evaluate(tuned, _round_dir(fold_dir, r), data=data)
      classifier = inference.load_classifier(_round_dir(fold_dir, mining_rounds), "best")
      preds = _as_saved(
        {
          "test": inference.predict(classifier, data.eval_batches(config.test_split)),
          "validation": inference.predict(classifier, data.eval_batches(config.eval_split)),
        }
      )
      if parallel.is_writer():
        _save_predictions(path, preds)
      per_fold.append(preds)
    else:
      per_fold.append(load_predictions(path))

  maps = None
  if calibrate:
    maps = [
      calibration.fit_platt(p["validation"]["label"], p["validation"]["prob"]) for p in per_fold
    ]
    per_fold = [_calibrated(p, m) for p, m in zip(per_fold, maps, strict=True)]
  pooled = {part: _pool([p[part] for p in per_fold]) for part in _PARTS}
  result = evaluation.evaluate_predictions(
    pooled["validation"],
    pooled["test"],
    threshold_policy=threshold_policy,
    seed=seed,
    resamples=resamples,
  )
  result["run"] = {
    "workdir": os.fspath(workdir),
    "checkpoint": "best",
    "task": int(config.task),
    "network": str(config.model),
    "dataset": str(config.dataset),
    "cross_validation": {"folds": folds, "seed": seed},
  }
  if parallel.is_writer():
    evaluation.write_outputs(
      workdir / "eval" / "test", result, pooled, evaluation.task_class_names(int(config.task))
    )

  fold_metrics = [_fold_metrics(p, threshold_policy) for p in per_fold]
  summary = {
    "folds": folds,
    "seed": seed,
    "task": int(config.task),
    "network": str(config.model),
    "dataset": str(config.dataset),
    "per_fold": fold_metrics,
    "spread": {m: _spread([f[m] for f in fold_metrics]) for m in metrics.FOLD_SPREAD_METRICS},
    "pooled": {m: result["metrics"][m]["value"] for m in metrics.FOLD_SPREAD_METRICS},
    "pooled_counts": result["counts"],
    "calibration": [dataclasses.asdict(m) for m in maps] if maps else None,
  }
  if localization is not None:
    summary["whole_image"] = localize_folds(
      workdir, assignment, localization, seed, resamples, mining_rounds, maps
    )
  if parallel.is_writer():
    files.write_text(workdir / SUMMARY_FILE, json.dumps(summary, indent=2))
  return summary


@dataclasses.dataclass(frozen=True)
class Localization:
  """Whole-image scoring of each fold's test patients: the cohort's findings (every image, with
  absolute paths) and how to tile them."""

  findings: Sequence[Finding]
  stride: int = 0  # in patch pixels; 0: the patch size
  min_breast_fraction: float = scoring.DEFAULT_MIN_BREAST_FRACTION  # as mcalc-score
  batch_size: int = 256
  overlays: bool = False
  # A tile reranker refitted per fold on the scored tiles (mcalc_jax.reranking): "" none,
  # "classical" its tile features alone, "stacked" with the network's logit as one more.
  rerank: str = "classical"
  rerank_features: tuple[str, ...] = reranking.DEFAULT_FEATURES
  # > 0: each evaluation once more with every image read against the other breast's
  # (mcalc_jax.bilateral), into WORKDIR/eval/froc_bilateral and .../froc_reranked_bilateral.
  bilateral_weight: float = bilateral.DEFAULT_WEIGHT

  def __post_init__(self):
    if self.rerank not in RERANK_MODES:
      raise ValueError(f"rerank must be one of {RERANK_MODES}, not {self.rerank!r}")
    bilateral.check_weight(self.bilateral_weight)
    reranking.check_features(self.rerank_features)

  def scorer(self, run_dir: pathlib.Path) -> scoring.Scorer:
    """A whole-image scorer of the run's best model."""
    classifier = inference.load_classifier(run_dir, "best")
    return scoring.Scorer(
      classifier,
      stride=self.stride or None,
      batch_size=self.batch_size,
      min_breast_fraction=self.min_breast_fraction,
    )

  @property
  def base(self) -> str:
    """The images' common folder: image keys are their paths relative to it."""
    paths = sorted({f.image_path for f in self.findings})
    return os.path.commonpath(paths) if len(paths) > 1 else os.path.dirname(paths[0])


def localize_folds(
  workdir: pathlib.Path,
  assignment: Sequence[Mapping[str, Sequence[str]]],
  localization: Localization,
  seed: int,
  resamples: int,
  mining_rounds: int = 0,
  maps: Sequence[calibration.Platt] | None = None,
) -> dict[str, Any]:
  """Scores each fold's test images with its final model (resumable), evaluates them pooled,
  each fold's Task 1 grids mapped by its calibration (`maps`, one per fold)."""
  grids: dict[str, ImageScores] = {}
  inputs = discovery.inputs_from_findings(localization.findings, localization.base)
  patient = {f.image_path: f.patient_id for f in localization.findings}
  for i, fold in enumerate(assignment):
    fold_dir, test = workdir / f"fold_{i}", set(fold["test"])
    mine = [item for item in inputs if patient[item.path] in test]
    out = fold_dir / IMAGES_DIR
    scorer = localization.scorer(_round_dir(fold_dir, mining_rounds))
    archive.score_archive(scorer, mine, os.fspath(out), overlays=localization.overlays)
    grids |= {
      item.key: _calibrated_grid(heatmaps.read_scores(out / f"{item.key}.npz"), maps, i)
      for item in mine
      if (out / f"{item.key}.npz").exists()
    }
  keys = {item.path: item.key for item in inputs}
  images = froc.scored_images(localization.findings, keys, grids)
  whole = _evaluated(images, workdir / "eval" / "froc", localization, seed, resamples)
  if localization.rerank:
    whole["reranked"] = rerank_folds(
      workdir,
      assignment,
      localization,
      images,
      {item.key: item for item in inputs},
      seed,
      resamples,
    )
  return whole


def rerank_folds(
  workdir: pathlib.Path,
  assignment: Sequence[Mapping[str, Sequence[str]]],
  localization: Localization,
  images: Sequence[froc.ScoredImage],
  inputs: Mapping[str, discovery.Input],
  seed: int,
  resamples: int,
) -> dict[str, Any]:
  """Each fold's tile reranker, fitted on the out-of-fold grids of the other folds' images
  (WORKDIR/fold_<i>/reranker.json), applied to its own test images; their pooled evaluation goes
  to WORKDIR/eval/froc_reranked. Stacked, the training tiles' logits come from the other folds'
  models, as a test tile's comes from its own fold's. WORKDIR/reranker.json, fitted on every
  image, is the one `mcalc-score --reranker` applies to new images."""
  names = localization.rerank_features
  if localization.rerank == "stacked":
    names = (*names, reranking.NETWORK_FEATURE)
  features = reranking.image_features(images, inputs, names)
  fold_of = {p: k for k, fold in enumerate(assignment) for p in fold["test"]}
  reranked, models = reranking.refit_folds(images, features, fold_of, names)
  for k, model in models.items():
    reranking.save(workdir / f"fold_{k}" / RERANKER_FILE, model)
  reranking.save(workdir / RERANKER_FILE, reranking.fit_images(images, features, names))
  title = f"tile reranker ({localization.rerank}), refitted per fold"
  out = workdir / "eval" / "froc_reranked"
  whole = _evaluated(reranked, out, localization, seed, resamples, title)
  return {"mode": localization.rerank, "features": list(names), **whole}


def _evaluated(
  images: Sequence[froc.ScoredImage],
  out_dir: pathlib.Path,
  localization: Localization,
  seed: int,
  resamples: int,
  title: str = "",
) -> dict[str, Any]:
  """The pooled whole-image evaluation of `images` into `out_dir`, and with a bilateral weight
  once more, each image read against the other breast's, into `out_dir`_bilateral."""
  result = froc.evaluate(images, resamples=resamples, seed=seed)
  froc.write_outputs(out_dir, result, title=title)
  whole = {k: result[k] for k in _SUMMARISED}
  weight = localization.bilateral_weight
  if weight:
    compared = froc.against_other_breast(images, weight)
    result = froc.evaluate(compared, resamples=resamples, seed=seed)
    title = f"{title or 'network'}, against the other breast (weight {weight:g})"
    froc.write_outputs(out_dir.with_name(out_dir.name + "_bilateral"), result, title=title)
    whole["bilateral"] = {"weight": weight, **{k: result[k] for k in _SUMMARISED}}
  return whole


def _calibrated(
  preds: Mapping[str, Mapping[str, np.ndarray]], platt: calibration.Platt
) -> dict[str, dict[str, np.ndarray]]:
  return {part: {**p, "prob": platt.apply(p["prob"])} for part, p in preds.items()}


def _calibrated_grid(
  scores: ImageScores, maps: Sequence[calibration.Platt] | None, fold: int
) -> ImageScores:
  return dataclasses.replace(scores, task1=maps[fold].apply(scores.task1)) if maps else scores


def _round_dir(fold_dir: pathlib.Path, round_: int) -> pathlib.Path:
  """Where a fold's mining round trains (round 0: the fold's own run)."""
  return fold_dir if round_ == 0 else fold_dir / f"round_{round_}"


def _fine_tuning(
  config: ml_collections.ConfigDict, previous: pathlib.Path
) -> ml_collections.ConfigDict:
  config = ml_collections.ConfigDict(config.to_dict())
  config.init_from = os.fspath(previous)
  return config


def _mined(
  fold_dir: pathlib.Path,
  round_: int,
  fold: Mapping[str, Sequence[str]],
  localization: Localization,
  per_image: int,
  size: int,
) -> dict[str, np.ndarray]:
  """Every hard negative mined up to `round_` from the fold's training images (each round's
  mined once, saved in fold_<i>/mined_<r>.npz, read back on a rerun)."""
  rounds = []
  for r in range(1, round_ + 1):
    path = fold_dir / f"mined_{r}.npz"
    if not path.exists():
      train_patients = set(fold["train"])
      images = [
        (im.image_id, im.findings)
        for im in tfds_builder.group_images(localization.findings)
        if im.patient_id in train_patients
      ]
      found = mining.mine(localization.scorer(_round_dir(fold_dir, r - 1)), images, per_image, size)
      with files.atomic_write(path) as f:
        np.savez(f, **found)
    with np.load(path) as saved:
      rounds.append({k: saved[k] for k in saved.files})
  return mining.concatenate(rounds, size)


def _with(
  arrays: Mapping[str, np.ndarray], mined: Mapping[str, np.ndarray]
) -> dict[str, np.ndarray]:
  """The cohort's patch arrays with the mined ones appended (ids keep their full length)."""
  out = {}
  for key, values in arrays.items():
    joined = np.concatenate([values, np.asarray(mined[key])])
    out[key] = joined if values.dtype.kind in "US" else joined.astype(values.dtype)
  return out
