"""Platt scaling puts k cross-validation models on one scale without changing their rankings."""

from __future__ import annotations

import numpy as np
from sklearn.metrics import roc_auc_score

from mcalc_jax.base import calibration


def fold(rng: np.random.Generator, shift: float, n: int = 200) -> tuple[np.ndarray, np.ndarray]:
  """Labels and probabilities of a fold whose model is as good as the others, on its own scale."""
  labels = rng.integers(0, 2, n)
  scores = rng.normal(labels * 1.5, 1.0) + shift
  return labels, 1 / (1 + np.exp(-scores))


def test_folds_on_different_scales_pool_better_once_each_is_fitted_on_its_validation_part():
  rng = np.random.default_rng(0)
  folds = [(fold(rng, shift), fold(rng, shift)) for shift in (-3.0, 3.0)]  # (validation, test)
  labels = np.concatenate([test[0] for _, test in folds])
  raw = np.concatenate([test[1] for _, test in folds])
  maps = [calibration.fit_platt(*validation) for validation, _ in folds]
  calibrated = np.concatenate([m.apply(test[1]) for m, (_, test) in zip(maps, folds, strict=True)])
  assert roc_auc_score(labels, calibrated) > roc_auc_score(labels, raw) + 0.05
  for m, (_, (y, p)) in zip(maps, folds, strict=True):  # each fold's own ranking is kept
    assert m.slope > 0
    assert roc_auc_score(y, m.apply(p)) == roc_auc_score(y, p)


def test_a_perfectly_separated_validation_part_gives_a_finite_map_and_nan_stays_nan():
  platt = calibration.fit_platt(np.array([0, 0, 1, 1]), np.array([0.1, 0.2, 0.8, 0.9]))
  assert np.isfinite(platt.slope) and np.isfinite(platt.intercept)
  out = platt.apply(np.array([0.5, np.nan, 0.99], np.float32))
  assert np.isnan(out[1]) and 0 < out[0] < out[2] < 1


def test_a_validation_part_with_one_class_keeps_the_probabilities():
  platt = calibration.fit_platt(np.zeros(5), np.linspace(0.1, 0.5, 5))
  p = np.array([0.2, 0.7], np.float32)
  np.testing.assert_allclose(platt.apply(p), p, rtol=1e-5)
