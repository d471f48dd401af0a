"""Evaluates a trained classifier the way the paper reports it, and the way it should have.

The operating threshold is chosen on the validation split and applied unchanged to the evaluated
split, so test metrics are not tuned on test. Every per-example prediction is saved with its ids,
so any metric can be recomputed offline. Layout of an evaluated run:

  WORKDIR/eval/<split>/predictions.csv     split, ids, label, prob, called (validation rows too)
  WORKDIR/eval/<split>/metrics.json        threshold, counts, metrics with three CIs, calibration
  WORKDIR/eval/<split>/roc.png             ROC curve with the operating point
  WORKDIR/eval/<split>/reliability.png     reliability diagram with the ECE
  WORKDIR/eval/<split>/confusion_matrix.png
"""

from __future__ import annotations

import csv
import json
import os
from collections.abc import Mapping

import ml_collections
import numpy as np

from input_pipeline import patch_data, pipeline
from input_pipeline.pipeline import ID_FIELDS
from mcalc_jax.base import files, metrics, parallel, plots
from mcalc_jax.model import inference

CSV_COLUMNS = ("split", *ID_FIELDS, "label", "prob", "called")
CLASS_NAMES = {1: ("background", "calcification"), 2: ("benign", "malignant")}
_GENERIC_CLASS_NAMES = ("negative", "positive")


def task_class_names(task: int) -> tuple[str, str]:
  """The (label 0, label 1) names of `task`, for plots."""
  return CLASS_NAMES.get(task, _GENERIC_CLASS_NAMES)


BOOTSTRAP_RESAMPLES = 1000


def check_predictions(preds: Mapping[str, np.ndarray], split: str) -> dict[str, np.ndarray]:
  """The predictions with ids as str; raises ValueError naming the split if they are unusable."""
  missing = [k for k in ("label", "prob", *ID_FIELDS) if k not in preds]
  if missing:
    raise ValueError(f"{split} predictions lack {missing}")
  lengths = {k: len(preds[k]) for k in ("label", "prob", *ID_FIELDS)}
  if len(set(lengths.values())) != 1:
    raise ValueError(f"{split} prediction arrays differ in length: {lengths}")
  if not lengths["label"]:
    raise ValueError(f"{split} split has no examples")
  labels = np.asarray(preds["label"])
  if not np.isin(labels, (0, 1)).all():
    raise ValueError(f"{split} labels must be 0 or 1, got values {np.unique(labels).tolist()}")
  out = {k: np.array([pipeline.as_text(v) for v in np.asarray(preds[k])]) for k in ID_FIELDS}
  out["label"] = labels.astype(np.int64)
  out["prob"] = np.asarray(preds["prob"], dtype=np.float64)
  return out


def _counts(preds: Mapping[str, np.ndarray]) -> dict[str, int]:
  positives = int(preds["label"].sum())
  return {
    "examples": int(preds["label"].size),
    "positives": positives,
    "negatives": int(preds["label"].size) - positives,
    "patients": int(np.unique(preds["patient_id"]).size),
    "images": int(np.unique(preds["image_id"]).size),
  }


def _calibration(preds: Mapping[str, np.ndarray], n_bins: int) -> dict:
  rel = metrics.reliability(preds["label"], preds["prob"], n_bins)
  bins = [
    {"low": float(low), "high": float(high), "count": int(count), "mean_prob": p, "frac_pos": f}
    for low, high, count, p, f in zip(
      rel.edges[:-1], rel.edges[1:], rel.counts, rel.mean_prob, rel.frac_pos, strict=True
    )
  ]
  return {"ece": rel.ece, "n_bins": n_bins, "bins": bins}


def evaluate_predictions(
  val_preds: Mapping[str, np.ndarray],
  test_preds: Mapping[str, np.ndarray],
  *,
  threshold_policy: metrics.ThresholdPolicy | str = "youden",
  seed: int = 0,
  resamples: int = BOOTSTRAP_RESAMPLES,
  n_bins: int = 10,
  val_split: str = "validation",
  test_split: str = "test",
) -> dict:
  """Chooses the threshold on `val_preds` and applies it to `test_preds`; gives metrics.json."""
  if isinstance(threshold_policy, str):
    threshold_policy = metrics.ThresholdPolicy.parse(threshold_policy)
  val = check_predictions(val_preds, val_split)
  test = check_predictions(test_preds, test_split)
  threshold = metrics.choose_threshold(val["label"], val["prob"], threshold_policy, split=val_split)
  summary = metrics.summarize(
    test["label"],
    test["prob"],
    test["patient_id"],
    threshold,
    resamples=resamples,
    seed=seed,
    split=test_split,
  )
  val_points = metrics.point_metrics(val["label"], val["prob"], threshold, split=val_split)
  confusion = metrics.confusion_matrix(test["label"], test["prob"], threshold)
  return {
    "split": test_split,
    "counts": _counts(test),
    "threshold": {
      "policy": str(threshold_policy),
      "value": threshold,
      "chosen_on": val_split,
      "chosen_on_counts": _counts(val),
    },
    "validation_metrics": {name: m.to_json() for name, m in val_points.items()},
    "confusion": {"tp": confusion.tp, "fp": confusion.fp, "tn": confusion.tn, "fn": confusion.fn},
    "metrics": {name: m.to_json() for name, m in summary.items()},
    "ci_methods": dict(metrics.CI_DESCRIPTIONS),
    "bootstrap": {"unit": "patient", "resamples": resamples, "seed": seed, "level": 0.95},
    "calibration": _calibration(test, n_bins),
  }


def write_predictions(
  path: str | os.PathLike, preds_by_split: Mapping[str, dict], threshold: float
) -> None:
  """One CSV row per example: enough to recompute every metric and the threshold offline."""
  with files.atomic_write(path, "w", newline="") as f:
    writer = csv.writer(f)
    writer.writerow(CSV_COLUMNS)
    for split, preds in preds_by_split.items():
      for i in range(preds["label"].size):
        prob = float(preds["prob"][i])
        ids = [preds[k][i] for k in ID_FIELDS]
        writer.writerow([split, *ids, int(preds["label"][i]), repr(prob), int(prob >= threshold)])


def _write_plots(out_dir: str, evaluation: dict, test: dict, class_names: tuple[str, str]) -> None:
  title = f"{evaluation['split']} ({evaluation['counts']['examples']} examples)"
  threshold = evaluation["threshold"]["value"]
  try:
    fpr, tpr, _ = metrics.roc_curve(test["label"], test["prob"], split=evaluation["split"])
  except metrics.UndefinedMetricError as e:
    plots.plot_unavailable(os.path.join(out_dir, "roc.png"), reason=str(e), title=title)
  else:
    m = evaluation["metrics"]
    plots.plot_roc(
      os.path.join(out_dir, "roc.png"),
      fpr,
      tpr,
      auc=m["auc"]["value"],
      threshold=threshold,
      operating_point=(1 - m["specificity"]["value"], m["sensitivity"]["value"]),
      title=title,
    )
  cal = evaluation["calibration"]
  plots.plot_reliability(
    os.path.join(out_dir, "reliability.png"),
    np.array([b["low"] for b in cal["bins"]] + [cal["bins"][-1]["high"]]),
    np.array([b["count"] for b in cal["bins"]]),
    [b["mean_prob"] for b in cal["bins"]],
    [b["frac_pos"] for b in cal["bins"]],
    ece=cal["ece"],
    title=title,
  )
  c = evaluation["confusion"]
  matrix = np.array([[c["tn"], c["fp"]], [c["fn"], c["tp"]]])
  plots.plot_confusion(
    os.path.join(out_dir, "confusion_matrix.png"),
    matrix,
    class_names=class_names,
    title=f"{title}, threshold {threshold:.3f}",
  )


def write_outputs(
  out_dir: str | os.PathLike,
  evaluation: dict,
  preds_by_split: Mapping[str, Mapping],
  class_names: tuple[str, str] = _GENERIC_CLASS_NAMES,
) -> None:
  """Writes predictions.csv, metrics.json and the plots of `evaluation` into `out_dir`."""
  out_dir = os.fspath(out_dir)
  os.makedirs(out_dir, exist_ok=True)
  checked = {split: check_predictions(p, split) for split, p in preds_by_split.items()}
  write_predictions(
    os.path.join(out_dir, "predictions.csv"), checked, evaluation["threshold"]["value"]
  )
  files.write_text(
    os.path.join(out_dir, "metrics.json"), json.dumps(evaluation, indent=2, allow_nan=False)
  )
  _write_plots(out_dir, evaluation, checked[evaluation["split"]], class_names)


def evaluate_run(
  workdir: str | os.PathLike,
  split: str = "test",
  checkpoint: str = "best",
  *,
  threshold_policy: str = "youden",
  seed: int = 0,
  resamples: int = BOOTSTRAP_RESAMPLES,
  dataset: str = "",
  data_dir: str = "",
) -> dict:
  """Loads the run's classifier, predicts validation and `split`, writes WORKDIR/eval/<split>/.

  `dataset` (and `data_dir`) evaluate the run on another TFDS dataset than its own (a model
  trained on the synthetic cohort, scored on real patches: WORKDIR/eval/<name>_<split>/);
  `split='all'` pools every stored split but validation, the threshold still chosen on it.
  With several processes, each predicts its share, every process gets the metrics of all rows
  and process 0 alone writes the files.
  """
  workdir = os.fspath(workdir)
  classifier = inference.load_classifier(workdir, checkpoint)
  config = ml_collections.ConfigDict(classifier.config.to_dict())
  config.dataset, config.data_dir = dataset or config.dataset, data_dir or config.data_dir
  data = patch_data.create_data(config)  # the run's own data source (TFDS or noise), or another
  val_split = config.eval_split
  evaluated = (config.train_split, config.test_split) if split == "all" else (split,)
  splits = dict.fromkeys((val_split, *evaluated))  # one pass per split, validation included
  preds = {s: inference.predict(classifier, data.eval_batches(s)) for s in splits}
  if split == "all":
    preds["all"] = {k: np.concatenate([preds[s][k] for s in evaluated]) for k in preds[val_split]}
  evaluation = evaluate_predictions(
    preds[val_split],
    preds[split],
    threshold_policy=threshold_policy,
    seed=seed,
    resamples=resamples,
    val_split=val_split,
    test_split=split,
  )
  evaluation["run"] = {
    "workdir": workdir,
    "checkpoint": checkpoint,
    "task": int(config.task),
    "network": str(config.model),
    "dataset": str(config.dataset),
  }
  folder = f"{dataset.replace('/', '_')}_{split}" if dataset else split
  if dataset:
    evaluation["run"]["trained_on"] = str(classifier.config.dataset)
  if not parallel.is_writer():
    return evaluation
  write_outputs(
    os.path.join(workdir, "eval", folder),
    evaluation,
    {s: preds[s] for s in dict.fromkeys((val_split, split))},
    task_class_names(int(config.task)),
  )
  return evaluation
