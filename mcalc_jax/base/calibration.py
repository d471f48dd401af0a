"""Platt scaling: a model's probabilities mapped onto its validation part's frequencies.

Cross-validation pools the out-of-fold predictions of k models. Each was early-stopped at its own
step, so a 0.7 of one fold need not mean what a 0.7 of another means, and the pooled AUC then
ranks one fold's patches against another's on scales that differ (on mini-MIAS an AlexNet
without front end scored 0.79-0.98 per fold and 0.59 pooled). Fitting each fold's map on its own
validation part (never its test patients) puts every fold on one scale; the map is increasing,
so each fold's own ranking, and its AUC, are unchanged. Validation parts of a small cohort are
small, so the map is noisy too: `mcalc-cv --calibrate` is off by default (docs/ablation.md).
"""

from __future__ import annotations

import dataclasses

import numpy as np
from scipy import optimize

_EPS = 1e-7


def logit(prob: np.ndarray) -> np.ndarray:
  p = np.clip(np.asarray(prob, np.float64), _EPS, 1 - _EPS)
  return np.log(p) - np.log1p(-p)


@dataclasses.dataclass(frozen=True)
class Platt:
  """P(y=1) = sigmoid(slope * logit(p) + intercept); slope >= 0 keeps the ranking."""

  slope: float = 1.0
  intercept: float = 0.0

  def apply(self, prob: np.ndarray) -> np.ndarray:
    """The calibrated probabilities (NaN stays NaN), as float32 like the model's."""
    z = self.slope * logit(prob) + self.intercept
    out = 1.0 / (1.0 + np.exp(-z))
    return np.where(np.isnan(prob), np.nan, out).astype(np.float32)


def fit_platt(labels: np.ndarray, prob: np.ndarray) -> Platt:
  """Platt's fit (1999) on `labels` (0/1) and `prob`, with his smoothed targets.

  The targets (N+ + 1)/(N+ + 2) and 1/(N- + 2) keep the fit finite when the validation part is
  separated perfectly (as small ones often are). A part with one class keeps the identity map.
  """
  labels = np.asarray(labels).astype(bool)
  positives, negatives = int(labels.sum()), int((~labels).sum())
  if not positives or not negatives:
    return Platt()
  target = np.where(labels, (positives + 1) / (positives + 2), 1 / (negatives + 2))
  x = logit(prob)

  def loss(params: np.ndarray) -> tuple[float, np.ndarray]:
    z = params[0] * x + params[1]
    # cross-entropy of sigmoid(z) against the targets, and its gradient
    value = np.sum(np.logaddexp(0.0, z) - target * z)
    residual = 1.0 / (1.0 + np.exp(-z)) - target
    return float(value), np.array([np.sum(residual * x), np.sum(residual)])

  fit = optimize.minimize(
    loss, np.array([1.0, 0.0]), jac=True, method="L-BFGS-B", bounds=[(0.0, None), (None, None)]
  )
  return Platt(float(fit.x[0]), float(fit.x[1]))
