"""The folds of a cross-validation: patients dealt into folds, a training run per fold, and its
out-of-fold predictions.

The patches of all three stored splits are pooled, patients are dealt into k folds stratified by
their label (`input_pipeline.splits.kfold_assignments`), and fold i trains on the other folds
(with a patient-grouped validation part for early stopping and the threshold) and predicts fold i.

  WORKDIR/folds.json                    the fold assignment (k, seed, patients per part)
  WORKDIR/fold_<i>/                     an ordinary training run (checkpoints, config.json)
  WORKDIR/fold_<i>/oof_predictions.npz  its test and validation predictions (marks it done)
"""

from __future__ import annotations

import json
import os
import pathlib
from collections.abc import Callable, Mapping, Sequence
from typing import Any, NamedTuple

import ml_collections
import numpy as np

from input_pipeline import pipeline, splits, tfds_builder
from mcalc_jax.base import files, metrics, parallel
from mcalc_jax.model import inference

FOLDS_FILE = "folds.json"
PREDICTIONS_FILE = "oof_predictions.npz"
PARTS = ("test", "validation")

Predictions = dict[str, dict[str, np.ndarray]]  # part -> prob, label and the id fields


class Patches(NamedTuple):
  """A cohort's patches in memory (arrays keyed like the TFDS features, ids as str), each
  patient's label for stratifying folds, the millimetres a patch covers (0: native pixels), and
  patches that only ever train (`config.cv.train_also`: inserted or synthetic clusters)."""

  arrays: dict[str, np.ndarray]
  labels: dict[str, str]
  field_of_view_mm: float
  train_only: dict[str, np.ndarray] | None = None


def load_cohort(config: ml_collections.ConfigDict) -> Patches:
  """`config.dataset`'s patches, with those of `config.cv.train_also`'s datasets (comma-separated
  TFDS names) as training-only patches, all of one field of view."""
  cohort = load_patches(config.dataset, config.data_dir)
  extra = [load_patches(name, config.data_dir) for name in _names(config.cv.train_also)]
  for name, more in zip(_names(config.cv.train_also), extra, strict=True):
    if more.field_of_view_mm != cohort.field_of_view_mm:
      raise ValueError(
        f"{name} has patches of {more.field_of_view_mm:g} mm, {config.dataset} of "
        f"{cohort.field_of_view_mm:g} mm: training-only patches must match"
      )
  if not extra:
    return cohort
  joined = {k: np.concatenate([p.arrays[k] for p in extra]) for k in cohort.arrays}
  return cohort._replace(train_only=joined)


def _names(text: str) -> list[str]:
  return [name.strip() for name in text.split(",") if name.strip()]


def load_patches(dataset: str, data_dir: str | None) -> Patches:
  """Every patch of the TFDS dataset's stored splits, and each patient's label (from the
  dataset's metadata, else from the patches)."""
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
  return Patches(arrays, labels, tfds_builder.field_of_view_mm(builder))


def patient_labels(arrays: Mapping[str, np.ndarray]) -> dict[str, str]:
  """Patient -> worst calcification label of its patches (`splits.worst_labels`' rule)."""
  names = {(1, 1): "malignant", (1, 0): "benign"}
  return splits.worst_labels(
    (str(p), names.get((int(t1), int(t2)), "none"))
    for p, t1, t2 in zip(
      arrays["patient_id"], arrays["task1_label"], arrays["task2_label"], strict=True
    )
  )


def assign(
  workdir: pathlib.Path, dataset: str, labels: Mapping[str, str], k: int, seed: int
) -> list[dict[str, list[str]]]:
  """The patients of each fold's parts: written to folds.json, or read back from it on a rerun,
  which must use the same folds (no silent mixing)."""
  record = {
    "k": k,
    "seed": seed,
    "dataset": dataset,
    "labels": dict(sorted(labels.items())),
    "folds": splits.kfold_assignments(sorted(labels), labels, k, seed),
  }
  path = workdir / FOLDS_FILE
  if path.exists():
    if json.loads(path.read_text()) != record:
      raise ValueError(f"{path} holds other folds (k, seed or dataset changed): use a new workdir")
  elif parallel.is_writer():
    files.write_text(path, json.dumps(record, indent=2))
  return record["folds"]


def recorded(workdir: str | os.PathLike) -> tuple[int, int]:
  """(k, seed) of the folds a cross-validation's folds.json holds."""
  record = json.loads((pathlib.Path(workdir) / FOLDS_FILE).read_text())
  return int(record["k"]), int(record["seed"])


TRAINING_ONLY = ("mix", "pretrain")  # how training-only patches train (`config.cv.train_also_as`)


def fold_data(
  cohort: Patches,
  fold: Mapping[str, Sequence[str]],
  config: ml_collections.ConfigDict,
  arrays: Mapping[str, np.ndarray] | None = None,
  *,
  train_only: str = "mix",
) -> pipeline.ArrayPatchData:
  """The fold's train / validation / test patients' patches (of `arrays`, default the cohort's)
  as the config's three splits. The training-only patches, except those of the fold's validation
  and test patients (whose tissue the fold must not train on), join the train split ("mix"), or
  are all of it ("pretrain"), or stay out (""): a pretraining run, then its fine-tuning."""
  arrays = cohort.arrays if arrays is None else arrays
  names = {"train": config.train_split, "validation": config.eval_split, "test": config.test_split}
  parts = {}
  for part, split in names.items():
    keep = np.isin(arrays["patient_id"], list(fold[part]))
    parts[split] = {k: v[keep] for k, v in arrays.items()}
  if cohort.train_only is not None and train_only:
    held_out = [*fold["validation"], *fold["test"]]
    keep = ~np.isin(cohort.train_only["patient_id"], held_out)
    mine = {k: v[keep] for k, v in cohort.train_only.items()}
    train = parts[config.train_split]
    if train_only == "pretrain":
      train = {k: v[:0] for k, v in train.items()}
    parts[config.train_split] = {k: joined(v, mine[k]) for k, v in train.items()}
  data = pipeline.ArrayPatchData(parts, config, field_of_view_mm=cohort.field_of_view_mm)
  for part, split in names.items():  # a part without patches of the task cannot train or score
    if data.num_examples(split) == 0:
      raise ValueError(
        f"the fold's {part} part ({len(fold[part])} patients) has no task "
        f"{config.task} patches; use fewer folds"
      )
  return data


def joined(values: np.ndarray, more: np.ndarray) -> np.ndarray:
  """Two record arrays end to end (ids keep their full length, numbers the first's dtype)."""
  out = np.concatenate([values, more])
  return out if values.dtype.kind in "US" else out.astype(values.dtype)


def run_fold(
  config: ml_collections.ConfigDict,
  fold_dir: pathlib.Path,
  train: Callable[[], tuple[pathlib.Path, pipeline.ArrayPatchData]],
  done: bool,
) -> Predictions:
  """A fold's out-of-fold predictions: read back when `done`, else `train()` (which trains the
  fold and returns its final run and data) and predict its test and validation parts."""
  path = fold_dir / PREDICTIONS_FILE
  if done and path.exists():
    return load_predictions(path)
  run_dir, data = train()
  classifier = inference.load_classifier(run_dir, "best")
  preds = _as_saved(
    {
      "test": inference.predict(classifier, data.eval_batches(config.test_split)),
      "validation": inference.predict(classifier, data.eval_batches(config.eval_split)),
    }
  )
  if parallel.is_writer():
    _save_predictions(path, preds)
  return preds


def _as_saved(preds: Mapping[str, Mapping[str, np.ndarray]]) -> Predictions:
  """A fold's predictions as `load_predictions` reads them back (ids as str)."""
  return {
    part: {
      k: (np.asarray(v).astype(str) if k in pipeline.ID_FIELDS else np.asarray(v))
      for k, v in p.items()
    }
    for part, p in preds.items()
  }


def _save_predictions(path: pathlib.Path, preds: Predictions) -> None:
  """Writes atomically: the file's existence marks a finished fold."""
  flat = {f"{part}__{k}": v for part, p in preds.items() for k, v in p.items()}
  with files.atomic_write(path) as f:
    np.savez(f, **flat)


def load_predictions(path: str | os.PathLike) -> Predictions:
  """A fold's {'test': preds, 'validation': preds}, as `run_fold` saved them."""
  out: Predictions = {}
  with np.load(path) as f:
    for key in f.files:
      part, field = key.split("__", 1)
      out.setdefault(part, {})[field] = f[key]
  return out


def pool(per_fold: Sequence[Predictions]) -> Predictions:
  """Every fold's predictions of each part, concatenated."""
  fields = ("prob", "label", *pipeline.ID_FIELDS)
  return {
    part: {k: np.concatenate([p[part][k] for p in per_fold]) for k in fields} for part in PARTS
  }


def fold_metrics(preds: Predictions, policy: str) -> dict[str, Any]:
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


def spread(values: Sequence[float | None]) -> dict[str, Any]:
  """Mean and sample standard deviation over the folds where a metric is defined."""
  defined = np.array([v for v in values if v is not None], np.float64)
  return {
    "mean": float(defined.mean()) if defined.size else None,
    "std": float(defined.std(ddof=1)) if defined.size > 1 else None,
    "folds_defined": int(defined.size),
  }
