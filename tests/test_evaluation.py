"""Evaluation: the threshold comes from validation; the outputs let anyone recompute metrics."""

from __future__ import annotations

import csv
import json
import types

import ml_collections
import numpy as np
import pytest
from sklearn import metrics as skm

from mcalc_jax.base import metrics
from mcalc_jax.reports import evaluation


def synthetic_predictions(
  seed: int, *, patients: int = 20, per_patient: int = 6, shift: float = 0.0
) -> dict[str, np.ndarray]:
  """What inference.predict returns: probabilities, labels and the id fields, as numpy arrays."""
  rng = np.random.default_rng(seed)
  n = patients * per_patient
  label = rng.integers(0, 2, n)
  prob = np.clip(0.3 * label + 0.7 * rng.random(n) + shift, 0, 1).astype(np.float32)
  patient = np.repeat([f"P{seed}_{i:03d}" for i in range(patients)], per_patient)
  return {
    "prob": prob,
    "label": label.astype(np.int32),
    "patient_id": patient,
    "image_id": np.char.add(patient, "_CC"),
    "finding_id": np.array([f"f{i % 2}" for i in range(n)]),
    "patch_id": np.array([f"p{i:04d}" for i in range(n)]),
  }


def test_threshold_is_chosen_on_validation_and_applied_unchanged_to_test():
  val = synthetic_predictions(0)
  test = synthetic_predictions(1, shift=0.15)  # scores drift upwards on the test data
  result = evaluation.evaluate_predictions(val, test, threshold_policy="youden", resamples=200)
  val_threshold = metrics.choose_threshold(val["label"], val["prob"], metrics.ThresholdPolicy())
  test_threshold = metrics.choose_threshold(test["label"], test["prob"], metrics.ThresholdPolicy())
  assert result["threshold"]["value"] == val_threshold != test_threshold
  assert result["threshold"]["chosen_on"] == "validation"
  called = test["prob"] >= val_threshold
  assert result["confusion"]["fp"] == int(np.sum(called & (test["label"] == 0)))
  assert result["metrics"]["sensitivity"]["value"] == pytest.approx(
    skm.recall_score(test["label"], called)
  )
  assert result["counts"] == {
    "examples": 120,
    "positives": int(test["label"].sum()),
    "negatives": 120 - int(test["label"].sum()),
    "patients": 20,
    "images": 20,
  }


def test_outputs_let_every_metric_be_recomputed_offline(tmp_path):
  val, test = synthetic_predictions(2), synthetic_predictions(3)
  policy = "sensitivity:0.9"
  result = evaluation.evaluate_predictions(val, test, threshold_policy=policy, resamples=200)
  evaluation.write_outputs(tmp_path, result, {"validation": val, "test": test})

  assert sorted(p.name for p in tmp_path.iterdir()) == [
    "confusion_matrix.png",
    "metrics.json",
    "predictions.csv",
    "reliability.png",
    "roc.png",
  ]
  for name in ("roc.png", "reliability.png", "confusion_matrix.png"):
    assert (tmp_path / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
  saved = json.loads((tmp_path / "metrics.json").read_text())
  assert saved == json.loads(json.dumps(result))

  with open(tmp_path / "predictions.csv", newline="") as f:
    rows = list(csv.DictReader(f))
  assert list(rows[0]) == list(evaluation.CSV_COLUMNS)
  assert rows[0]["patient_id"] == "P2_000" and rows[-1]["patch_id"] == "p0119"
  test_rows = [r for r in rows if r["split"] == "test"]
  labels = np.array([int(r["label"]) for r in test_rows])
  probs = np.array([float(r["prob"]) for r in test_rows])
  auc = saved["metrics"]["auc"]["value"]
  assert skm.roc_auc_score(labels, probs) == pytest.approx(auc, abs=1e-12)
  called = np.array([int(r["called"]) for r in test_rows])
  assert skm.accuracy_score(labels, called) == saved["metrics"]["accuracy"]["value"]
  val_rows = [r for r in rows if r["split"] == "validation"]
  threshold = metrics.choose_threshold(
    np.array([int(r["label"]) for r in val_rows]),
    np.array([float(r["prob"]) for r in val_rows]),
    metrics.ThresholdPolicy.parse(policy),
  )
  assert threshold == saved["threshold"]["value"]


def test_one_class_test_split_is_reported_with_its_counts(tmp_path):
  val = synthetic_predictions(4)
  test = synthetic_predictions(5, patients=4)
  test["label"][:] = 0
  result = evaluation.evaluate_predictions(val, test, resamples=100)
  reason = "test: 24 examples (0 positive, 24 negative)"
  assert result["metrics"]["auc"] == {
    "value": None,
    "denominator": None,
    "reason": f"AUC needs both classes; {reason}",
    "ci": dict.fromkeys(metrics.CI_METHODS, {"reason": f"AUC needs both classes; {reason}"}),
  }
  assert result["metrics"]["sensitivity"]["reason"] == f"no positive examples; {reason}"
  assert result["metrics"]["specificity"]["value"] is not None
  evaluation.write_outputs(tmp_path, result, {"validation": val, "test": test})
  json.loads((tmp_path / "metrics.json").read_text())  # strict JSON: no NaN anywhere
  assert (tmp_path / "roc.png").is_file()  # a figure that states the reason


def test_one_class_validation_split_cannot_choose_a_threshold_but_a_fixed_one_works():
  val, test = synthetic_predictions(6), synthetic_predictions(7)
  val["label"][:] = 1
  message = r"validation: 120 examples \(120 positive, 0 negative\)"
  with pytest.raises(metrics.UndefinedMetricError, match=message):
    evaluation.evaluate_predictions(val, test)
  result = evaluation.evaluate_predictions(val, test, threshold_policy="fixed:0.5", resamples=100)
  assert result["threshold"]["value"] == 0.5


def test_unusable_predictions_are_rejected_naming_the_split():
  val, test = synthetic_predictions(8), synthetic_predictions(9)
  test["label"][0] = -1  # task 2's "not applicable" must be filtered out before evaluation
  with pytest.raises(ValueError, match=r"test labels must be 0 or 1, got values \[-1, 0, 1\]"):
    evaluation.evaluate_predictions(val, test)
  del val["patch_id"]
  with pytest.raises(ValueError, match=r"validation predictions lack \['patch_id'\]"):
    evaluation.evaluate_predictions(val, test)


def test_evaluate_run_loads_predicts_and_writes_eval_split(tmp_path, monkeypatch):
  # Stand-ins for the trained classifier and the dataset: evaluate_run only wires them together.
  config = ml_collections.ConfigDict(
    dict(
      task=2,
      model="resnet18",
      dataset="mcalc_patches/mias",
      data_dir="",
      train_split="train",
      eval_split="validation",
      test_split="test",
    )
  )
  split_seeds = {"validation": 10, "test": 11, "train": 12}

  def predict(classifier, batches):
    preds = synthetic_predictions(split_seeds[batches])
    return {**preds, "patient_id": np.char.encode(preds["patient_id"])}  # TFDS gives bytes

  loaded = []

  def load(workdir, which):
    loaded.append((str(workdir), which))
    return types.SimpleNamespace(config=config)

  data = lambda cfg: types.SimpleNamespace(eval_batches=lambda split: split)  # noqa: E731
  monkeypatch.setattr(evaluation.inference, "load_classifier", load)
  monkeypatch.setattr(evaluation.inference, "predict", predict)
  monkeypatch.setattr(evaluation.patch_data, "create_data", data)

  result = evaluation.evaluate_run(tmp_path, "test", "latest", resamples=100)

  assert loaded == [(str(tmp_path), "latest")]
  assert result["run"] == {
    "workdir": str(tmp_path),
    "checkpoint": "latest",
    "task": 2,
    "network": "resnet18",
    "dataset": "mcalc_patches/mias",
  }
  out = tmp_path / "eval" / "test"
  assert json.loads((out / "metrics.json").read_text())["run"]["network"] == "resnet18"
  assert (out / "predictions.csv").read_text().splitlines()[1].startswith("validation,P10_000,")


def test_a_run_is_evaluated_on_another_dataset_over_all_its_splits(tmp_path, monkeypatch):
  """Transfer: a model trained on the synthetic cohort, scored on every real patch."""
  config = ml_collections.ConfigDict(
    dict(
      task=1,
      model="alexnet",
      dataset="mcalc_patches/synthetic_11p2mm",
      data_dir="syn",
      train_split="train",
      eval_split="validation",
      test_split="test",
    )
  )
  seeds = {"validation": 10, "test": 11, "train": 12}
  asked = []

  def data(cfg):
    asked.append((cfg.dataset, cfg.data_dir))
    return types.SimpleNamespace(eval_batches=lambda split: split)

  monkeypatch.setattr(
    evaluation.inference, "load_classifier", lambda *_: types.SimpleNamespace(config=config)
  )
  monkeypatch.setattr(evaluation.inference, "predict", lambda _, s: synthetic_predictions(seeds[s]))
  monkeypatch.setattr(evaluation.patch_data, "create_data", data)
  result = evaluation.evaluate_run(
    tmp_path, "all", dataset="mcalc_patches/mias_11p2mm", data_dir="real", resamples=20
  )

  assert asked == [("mcalc_patches/mias_11p2mm", "real")]
  train, test = synthetic_predictions(12), synthetic_predictions(11)
  assert result["counts"]["examples"] == len(train["label"]) + len(test["label"])
  assert result["run"]["trained_on"] == "mcalc_patches/synthetic_11p2mm"
  assert (tmp_path / "eval" / "mcalc_patches_mias_11p2mm_all" / "metrics.json").is_file()
