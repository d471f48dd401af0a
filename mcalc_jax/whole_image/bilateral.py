"""Reading each breast against the other: the contralateral comparison.

Radiologists read a mammogram beside the same view of the other breast: what both breasts show
alike (vascular or diffuse benign calcification, the film's or the detector's artefacts, dense
tissue) is less suspicious than what one breast shows alone. Here an image's Task 1 logits are
lowered by `weight` times the highest Task 1 logit of its contralateral image (same patient,
same view, the other laterality). Within an image the order of the tiles is unchanged, so its
hottest tile and each cluster's rank stay; what moves is the comparison across images: the FROC's
thresholds and the image- and breast-level AUC. An image without exactly one contralateral
partner keeps its scores.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping

import numpy as np

from mcalc_jax.base import calibration
from mcalc_jax.whole_image.tiling import ImageScores

OTHER_SIDE = {"L": "R", "R": "L"}
# Set before measuring; 0.5-0.75 is the flat top of the MIAS sweep (docs/ablation.md).
DEFAULT_WEIGHT = 0.5


@dataclasses.dataclass(frozen=True)
class View:
  """Which image of a patient's examination one image is."""

  patient_id: str
  laterality: str  # "L" or "R"; anything else has no partner
  view: str  # "CC", "MLO", ...; "" pairs with "" (a cohort of one view, unstated)


def partners(views: Mapping[str, View]) -> dict[str, str]:
  """Each key's contralateral key, where both sides hold exactly one image of that view."""
  side: dict[tuple[str, str, str], list[str]] = {}
  for key, v in views.items():
    side.setdefault((v.patient_id, v.view, v.laterality), []).append(key)
  found = {}
  for (patient, view, laterality), keys in side.items():
    other = (
      side.get((patient, view, OTHER_SIDE[laterality]), []) if laterality in OTHER_SIDE else []
    )
    if len(keys) == 1 and len(other) == 1:
      found[keys[0]] = other[0]
  return found


def check_weight(weight: float) -> None:
  """Raises ValueError for a negative weight (it would raise what both breasts show)."""
  if weight < 0:
    raise ValueError(f"the bilateral weight must be >= 0, not {weight:g}")


def compare(
  grids: Mapping[str, ImageScores], pairs: Mapping[str, str], weight: float
) -> dict[str, ImageScores]:
  """Each grid's Task 1 probabilities with `weight` times its partner's peak logit taken off their
  logits (NaN stays NaN; unpaired, or a partner with no scored tile: unchanged)."""
  task1 = compare_probabilities({key: g.task1 for key, g in grids.items()}, pairs, weight)
  return {key: dataclasses.replace(g, task1=task1[key]) for key, g in grids.items()}


def compare_probabilities(
  probabilities: Mapping[str, np.ndarray], pairs: Mapping[str, str], weight: float
) -> dict[str, np.ndarray]:
  """`compare` for any of an image's probabilities (its tiles', its CAD marks'): each key's with
  `weight` times its partner's highest logit taken off (NaN stays NaN; unpaired, or a partner
  with no finite probability: unchanged)."""
  check_weight(weight)
  peak = {
    key: float(np.nanmax(calibration.logit(p)))
    for key, p in probabilities.items()
    if np.isfinite(p).any()
  }
  return {
    key: calibration.Platt(intercept=-weight * peak.get(pairs.get(key, ""), 0.0)).apply(p)
    for key, p in probabilities.items()
  }
