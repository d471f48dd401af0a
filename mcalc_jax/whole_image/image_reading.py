"""An image's suspicion read from both of its readers, the CAD marks and the tile path.

An image's score is the sum of two logits: its top mark's probability (a mark-free image counts
as `P_FLOOR`) and its hottest tile's after the tile reranker and the other breast's reading,
that is, the product of their odds. Nothing is fitted. Each reader misses images the other
catches: the marks see clusters at full resolution but do not compare breasts, and the tiles
do the reverse (docs/results.md measures both, and the two together).

Both inputs are evaluations' per-image rows (`froc.evaluate_results`' "images", images.csv);
the result has the same rows with the combined score, and the image AUC with a patient
bootstrap interval.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np
from scipy import special

from mcalc_jax.base import metrics

P_FLOOR = 1e-6  # probabilities are kept this far from 0 and 1 before their logits are taken
READING = (
  "an image's score is logit(its top mark's probability, 0 without a mark) + logit(its hottest "
  f"tile's probability), each kept within [{P_FLOOR:g}, 1 - {P_FLOOR:g}]; nothing is fitted"
)


def combined(tiles: Sequence[Mapping], marks: Sequence[Mapping]) -> list[dict]:
  """The rows of the images both evaluations read (in the tiles' order), each scored by
  `READING`."""
  top_mark = {row["image"]: float(row["score"]) for row in marks}
  return [
    {**row, "score": _logit(float(row["score"])) + _logit(top_mark[row["image"]])}
    for row in tiles
    if row["image"] in top_mark
  ]


def _logit(p: float) -> float:
  return float(special.logit(np.clip(p, P_FLOOR, 1 - P_FLOOR)))


def evaluate(
  tiles: Sequence[Mapping], marks: Sequence[Mapping], *, resamples: int = 1000, seed: int = 0
) -> dict:
  """The combined reading's image AUC, its 95% patient-bootstrap interval, and its rows."""
  rows = combined(tiles, marks)
  labels = np.array([int(row["clusters"]) > 0 for row in rows], int)
  scores = np.array([row["score"] for row in rows], np.float64)
  patients = np.array([row["patient_id"] for row in rows])
  try:
    auc = metrics.roc_auc(labels, scores, split="images read by both")
  except metrics.UndefinedMetricError:
    auc = None
  interval = metrics.bootstrap_intervals(
    labels, scores, patients, 0.0, resamples=resamples, seed=seed, split="images read by both"
  )["auc"]
  return {
    "reading": READING,
    "counts": {
      "images": len(rows),
      "images_with_clusters": int(labels.sum()),
      "clusters": sum(int(row["clusters"]) for row in rows),
      "patients": len(set(patients)),
    },
    "metrics": {"image_auc": auc},
    "ci": {"image_auc": interval.to_json()},
    "images": rows,
  }
