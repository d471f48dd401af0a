"""Metrics agree with scikit-learn, CIs with hand computation, the bootstrap with intuition."""

from __future__ import annotations

import math

import numpy as np
import pytest
from sklearn import calibration as skcal
from sklearn import metrics as skm

from mcalc_jax.base import metrics


def _random_predictions(seed: int, n: int = 500, decimals: int = 2):
  """Labels and scores with signal; rounding gives the tied scores that quantised outputs have."""
  rng = np.random.default_rng(seed)
  labels = rng.integers(0, 2, n)
  scores = np.clip(np.round(0.25 * labels + 0.75 * rng.random(n), decimals), 0, 1)
  return labels, scores


@pytest.mark.parametrize("seed, decimals", [(0, 2), (1, 1), (2, 12)])
def test_auc_and_roc_curve_match_sklearn_with_and_without_ties(seed, decimals):
  labels, scores = _random_predictions(seed, decimals=decimals)
  expected = skm.roc_auc_score(labels, scores)
  assert metrics.roc_auc(labels, scores) == pytest.approx(expected, abs=1e-9)
  fpr, tpr, thresholds = metrics.roc_curve(labels, scores)
  sk_fpr, sk_tpr, sk_thresholds = skm.roc_curve(labels, scores, drop_intermediate=False)
  np.testing.assert_allclose(fpr, sk_fpr, atol=1e-9)
  np.testing.assert_allclose(tpr, sk_tpr, atol=1e-9)
  np.testing.assert_array_equal(thresholds, sk_thresholds)


@pytest.mark.parametrize("threshold", [0.3, 0.5, 0.71])
def test_confusion_metrics_match_sklearn(threshold):
  labels, scores = _random_predictions(3)
  called = (scores >= threshold).astype(int)
  confusion = metrics.confusion_matrix(labels, scores, threshold)
  np.testing.assert_array_equal(confusion.as_array(), skm.confusion_matrix(labels, called))
  values = {name: m.value for name, m in metrics.point_metrics(labels, scores, threshold).items()}
  expected = {
    "auc": skm.roc_auc_score(labels, scores),
    "accuracy": skm.accuracy_score(labels, called),
    "sensitivity": skm.recall_score(labels, called, pos_label=1),
    "specificity": skm.recall_score(labels, called, pos_label=0),
    "ppv": skm.precision_score(labels, called, pos_label=1),
    "npv": skm.precision_score(labels, called, pos_label=0),
  }
  for name in metrics.METRICS:
    assert values[name] == pytest.approx(expected[name], abs=1e-9), name


def test_wald_intervals_match_hand_computation():
  # 100 examples: 40 positive (30 found), 60 negative (54 cleared).
  labels = np.r_[np.ones(40, int), np.zeros(60, int)]
  scores = np.r_[np.ones(30), np.zeros(10), np.zeros(54), np.ones(6)]
  patients = np.arange(100)
  result = metrics.summarize(labels, scores, patients, 0.5, resamples=200)
  sensitivity = result["sensitivity"]
  assert sensitivity.value == 0.75 and sensitivity.denominator == 40
  # The paper's interval: n = the split's 100 examples, whatever the metric.
  half = 1.96 * math.sqrt(0.75 * 0.25 / 100)
  assert sensitivity.ci["paper"] == metrics.Interval(0.75 - half, 0.75 + half)
  # The same formula with the metric's own denominator, the 40 positives: wider.
  half = 1.96 * math.sqrt(0.75 * 0.25 / 40)
  assert sensitivity.ci["wald"] == metrics.Interval(0.75 - half, 0.75 + half)
  # PPV = 30 / 36 and its own n is the 36 examples called positive.
  ppv = result["ppv"]
  half = 1.96 * math.sqrt((30 / 36) * (6 / 36) / 36)
  assert ppv.value == pytest.approx(30 / 36)
  assert ppv.ci["wald"].low == pytest.approx(30 / 36 - half)
  assert ppv.ci["wald"].high == pytest.approx(30 / 36 + half)
  # AUC has no binomial denominator: only the paper's formula and the bootstrap apply.
  assert result["auc"].ci["wald"].reason.startswith("AUC has no binomial denominator")


def test_wald_interval_is_clipped_to_the_unit_interval():
  low = 0.99 - 1.96 * math.sqrt(0.99 * 0.01 / 10)
  assert metrics.wald_interval(0.99, 10) == metrics.Interval(low, 1.0)
  # At 0 or 1 the interval has no width (why the paper shows 0.98 (0.98-0.98)).
  assert metrics.wald_interval(1.0, 50) == metrics.Interval(1.0, 1.0)


def test_bootstrap_is_reproducible_with_its_seed():
  labels, scores = _random_predictions(4, n=300)
  patients = np.repeat(np.arange(60), 5)
  first = metrics.bootstrap_intervals(labels, scores, patients, 0.5, resamples=300, seed=7)
  again = metrics.bootstrap_intervals(labels, scores, patients, 0.5, resamples=300, seed=7)
  other = metrics.bootstrap_intervals(labels, scores, patients, 0.5, resamples=300, seed=8)
  assert first == again
  assert first != other


def test_bootstrap_is_wider_when_the_same_examples_come_from_fewer_patients():
  labels, scores = _random_predictions(5, n=400)
  # Patches of one patient look alike: group examples of similar score into the same patient.
  by_score = np.argsort(scores, kind="stable")
  many, few = np.empty(400, int), np.empty(400, int)
  many[by_score] = np.arange(400) // 2  # 200 patients of 2 patches
  few[by_score] = np.arange(400) // 40  # 10 patients of 40 patches
  wide = metrics.bootstrap_intervals(labels, scores, few, 0.5, resamples=500, seed=0)
  narrow = metrics.bootstrap_intervals(labels, scores, many, 0.5, resamples=500, seed=0)
  for name in metrics.METRICS:
    assert wide[name].high - wide[name].low > narrow[name].high - narrow[name].low, name


def test_bootstrap_of_iid_patients_resembles_the_wald_interval():
  labels, scores = _random_predictions(6, n=1000)
  result = metrics.summarize(labels, scores, np.arange(1000), 0.5, resamples=1000, seed=0)
  accuracy = result["accuracy"]
  wald_width = accuracy.ci["wald"].high - accuracy.ci["wald"].low
  boot_width = accuracy.ci["bootstrap"].high - accuracy.ci["bootstrap"].low
  assert boot_width == pytest.approx(wald_width, rel=0.15)


def test_one_class_split_gives_reasons_with_counts_not_nan():
  labels = np.zeros(12, int)
  scores = np.linspace(0.1, 0.9, 12)
  result = metrics.summarize(labels, scores, np.arange(12) // 3, 0.5, split="test", resamples=100)
  assert result["auc"].value is None
  assert result["auc"].reason == (
    "AUC needs both classes; test: 12 examples (0 positive, 12 negative)"
  )
  assert result["sensitivity"].reason == (
    "no positive examples; test: 12 examples (0 positive, 12 negative)"
  )
  assert result["specificity"].value == 0.5  # defined: negatives exist
  assert result["npv"].value == 1.0
  for metric in result.values():
    assert metric.value is None or math.isfinite(metric.value)
    for interval in metric.ci.values():
      assert interval.reason or (math.isfinite(interval.low) and math.isfinite(interval.high))


def test_a_single_patient_cannot_be_bootstrapped():
  labels, scores = _random_predictions(7, n=20)
  result = metrics.bootstrap_intervals(labels, scores, np.zeros(20), 0.5, split="test")
  assert result["accuracy"].reason == "a patient bootstrap needs 2 or more patients; test has 1"


def test_threshold_policies():
  labels = np.array([0, 0, 0, 1, 0, 1, 1, 1])
  scores = np.array([0.1, 0.2, 0.3, 0.4, 0.6, 0.7, 0.8, 0.9])
  # Youden's J = sensitivity + specificity - 1 peaks at 0.7 (J = 0.75) and at 0.4 (J = 0.75):
  # the higher threshold wins the tie.
  assert metrics.choose_threshold(labels, scores, metrics.ThresholdPolicy.parse("youden")) == 0.7
  assert metrics.choose_threshold(labels, scores, metrics.ThresholdPolicy.parse("fixed:0.5")) == 0.5
  policy = metrics.ThresholdPolicy.parse("sensitivity:1.0")
  assert metrics.choose_threshold(labels, scores, policy) == 0.4
  assert str(policy) == "sensitivity:1"
  with pytest.raises(ValueError, match="expected 'youden', 'fixed:T' or 'sensitivity:S'"):
    metrics.ThresholdPolicy.parse("otsu")


def test_threshold_needs_both_classes_on_validation():
  with pytest.raises(metrics.UndefinedMetricError, match=r"validation: 5 examples \(5 positive"):
    metrics.choose_threshold(np.ones(5, int), np.linspace(0, 1, 5), metrics.ThresholdPolicy())


def test_reliability_bins_match_sklearn_and_ece_matches_hand_computation():
  labels, scores = _random_predictions(8, n=400, decimals=3)
  rel = metrics.reliability(labels, scores, n_bins=10)
  frac_pos, mean_prob = skcal.calibration_curve(labels, scores, n_bins=10, strategy="uniform")
  filled = rel.counts > 0
  np.testing.assert_allclose([p for p in rel.frac_pos if p is not None], frac_pos, atol=1e-9)
  np.testing.assert_allclose([p for p in rel.mean_prob if p is not None], mean_prob, atol=1e-9)
  expected = np.sum(rel.counts[filled] / 400 * np.abs(mean_prob - frac_pos))
  assert rel.ece == pytest.approx(expected, abs=1e-12)


def test_ece_of_a_tiny_example():
  # Bin (0.1, 0.2]: p = 0.2, 0.2 with labels 0, 1 -> |0.2 - 0.5| = 0.3 for 2 of 3 examples;
  # bin (0.9, 1]: p = 1 with label 1 -> 0.
  rel = metrics.reliability(np.array([0, 1, 1]), np.array([0.2, 0.2, 1.0]), n_bins=10)
  assert rel.ece == pytest.approx(2 / 3 * 0.3)
  assert rel.counts.tolist() == [0, 2, 0, 0, 0, 0, 0, 0, 0, 1]


def test_ppv_is_undefined_when_nothing_is_called_positive():
  labels, scores = np.array([0, 1, 0, 1]), np.array([0.1, 0.2, 0.3, 0.4])
  result = metrics.point_metrics(labels, scores, threshold=0.9, split="test")
  assert result["ppv"].reason == (
    "no example called positive at this threshold; test: 4 examples (2 positive, 2 negative)"
  )
  assert result["npv"].value == 0.5
