"""Patient-grouped splits and folds: disjoint, stratified, seeded."""

from __future__ import annotations

import collections

import pytest

from input_pipeline import splits
from input_pipeline.manifest import Finding

# 60 patients: 10 malignant, 10 benign, 40 without calcification.
LABELS = {f"p{i:02d}": "malignant" if i < 10 else "benign" if i < 20 else "none" for i in range(60)}


def test_patient_label_is_the_worst_calcification_label():
  findings = [
    Finding("a", "a1.dcm", "1", "calcification", "benign"),
    Finding("a", "a2.dcm", "2", "calcification", "malignant"),
    Finding("b", "b1.dcm", "1", "mass", "malignant"),  # not a calcification
    Finding("c", "c1.dcm"),
  ]
  assert splits.patient_labels(findings) == {"a": "malignant", "b": "none", "c": "none"}


def test_split_is_by_patient_stratified_and_seeded():
  assignment = splits.split_patients(LABELS, (0.7, 0.2, 0.1), seed=0)
  assert set(assignment) == set(LABELS)  # each patient in exactly one split
  per_split = collections.Counter(assignment.values())
  assert per_split == {"train": 42, "validation": 12, "test": 6}
  for label in ("malignant", "benign"):
    counts = collections.Counter(s for p, s in assignment.items() if LABELS[p] == label)
    assert counts == {"train": 7, "validation": 2, "test": 1}
  assert assignment == splits.split_patients(LABELS, (0.7, 0.2, 0.1), seed=0)
  assert assignment != splits.split_patients(LABELS, (0.7, 0.2, 0.1), seed=1)


def test_kfold_predicts_every_patient_once_by_a_model_that_never_saw_it():
  folds = splits.kfold_assignments(list(LABELS), LABELS, k=5, seed=0)
  tested = [p for fold in folds for p in fold["test"]]
  assert sorted(tested) == sorted(LABELS)
  for fold in folds:
    train, validation, test = (set(fold[s]) for s in ("train", "validation", "test"))
    assert not (train & test or validation & test or train & validation)
    assert train | validation | test == set(LABELS)
    assert sum(LABELS[p] == "malignant" for p in test) == 2  # stratified: 10 over 5 folds
    assert sum(LABELS[p] == "malignant" for p in validation) >= 1
  assert folds == splits.kfold_assignments(list(LABELS), list(LABELS.values()), k=5, seed=0)


def test_kfold_rejects_more_folds_than_patients():
  with pytest.raises(ValueError, match="k=4"):
    splits.kfold_assignments(["a", "b", "c"], ["none"] * 3, k=4)


def test_kfold_keeps_both_classes_in_every_validation_part_of_a_small_cohort():
  labels = {f"p{i}": ("malignant" if i < 3 else "benign") for i in range(12)}
  for fold in splits.kfold_assignments(list(labels), labels, k=3, seed=3):
    assert {labels[p] for p in fold["validation"]} == {"benign", "malignant"}
    assert not set(fold["validation"]) & set(fold["train"])
