"""Whole-image evaluation, the way CAD is judged: cluster-level FROC, image and breast AUC, ranks.

From the probability grids of scored mammograms (`mcalc_jax.whole_image.heatmaps.read_scores`) and the
findings of a manifest:

* Detections are the tiles that no overlapping tile outscores (of equal ones, the first in
  row-major order), each at its score: every tile of a grid whose stride is the tile size, one
  per hot spot of an overlapping grid. A detection **hits** a calcification cluster when
  the cluster's centre lies inside the detection's tile (the window the classifier judged), or
  the tile's centre lies within the cluster's radius. Per image, detections are taken from the
  highest score down: one that hits a cluster not yet found is a true positive at its score
  (every cluster it hits counts as found there); one that hits only clusters already found is
  ignored (a second mark on the same lesion is not a false positive); one that hits none is a
  false-positive region.
* FROC: cluster sensitivity against mean false-positive regions per image (over every scored
  image, normal ones included), one point per score threshold; sensitivity at 0.5, 1 and 2 FP
  per image is the best sensitivity reached at no more than that rate.
* Image-level and breast-level AUC: an image's score is its maximum tile score, a breast's the
  maximum over its images; positive where a cluster is annotated.
* A cluster's rank: 1 + the number of the image's detections scoring above the best tile that
  holds the cluster (rank 1: the hottest region of the image is on it).
* 95% intervals from a seeded bootstrap resampling patients.

Clusters are the manifest's calcification findings with coordinates that patch extraction also
trusts (`input_pipeline.patches.is_positive`).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np

from input_pipeline import patches
from input_pipeline.manifest import Finding
from mcalc_jax.base import metrics
from mcalc_jax.whole_image import bilateral
from mcalc_jax.whole_image.tiling import ImageScores, TileGeometry

HIT_RULE = (
  "a detection (a tile no overlapping tile outscores) hits a cluster when the cluster's centre "
  "lies inside the detection's tile or the tile's centre lies within the cluster's radius"
)


@dataclasses.dataclass(frozen=True)
class Cluster:
  """An annotated calcification cluster, in the ORIGINAL image's pixels."""

  finding_id: str
  label: str
  row: float
  col: float
  radius: float


@dataclasses.dataclass(frozen=True)
class ScoredImage:
  """One scored mammogram with what is known about it."""

  key: str
  patient_id: str
  breast: str  # patient and laterality: the unit of the breast-level AUC
  scores: ImageScores
  clusters: tuple[Cluster, ...]
  laterality: str = ""  # as the manifest says: pairs an image with the other breast's
  view: str = ""


@dataclasses.dataclass(frozen=True)
class ImageResult:
  """What one image contributes: false-positive scores, and each cluster's outcome."""

  key: str
  patient_id: str
  breast: str
  max_score: float
  false_positives: np.ndarray  # scores of the false-positive detections
  cluster_scores: tuple[float, ...]  # per cluster: score of the detection that found it, or -inf
  cluster_ranks: tuple[int | None, ...]  # per cluster; None when no scored tile holds it
  clusters: tuple[Cluster, ...]


def clusters_of(findings: Sequence[Finding]) -> tuple[Cluster, ...]:
  """The image's trusted calcification clusters (as patch extraction takes them)."""
  settings = patches.PatchSettings()
  return tuple(
    Cluster(f.finding_id, f.label, f.row, f.col, f.radius or 0.0)
    for f in findings
    if patches.is_positive(f, settings)
  )


def detections(grid: np.ndarray, geometry: TileGeometry) -> list[tuple[int, int, float]]:
  """(i, j, score) of the tiles no overlapping tile outscores, highest first (NaN: not scored)."""
  values = np.where(np.isnan(grid), -np.inf, grid)
  size = geometry.patch_size
  row_overlap = np.abs(geometry.tile_rows[:, None] - geometry.tile_rows[None, :]) < size
  col_overlap = np.abs(geometry.tile_cols[:, None] - geometry.tile_cols[None, :]) < size
  found = []
  for i, j in zip(*np.nonzero(np.isfinite(values)), strict=True):
    rival = values[np.ix_(row_overlap[i], col_overlap[j])]
    earlier = values[np.ix_(row_overlap[i] & (np.arange(len(values)) < i), col_overlap[j])]
    same_row = values[i, col_overlap[j] & (np.arange(values.shape[1]) < j)]
    v = values[i, j]
    if v >= rival.max() and (earlier.size == 0 or v > earlier.max()) and not (same_row >= v).any():
      found.append((int(i), int(j), float(v)))
  return sorted(found, key=lambda d: -d[2])


def hits(geometry: TileGeometry, i: int, j: int, cluster: Cluster) -> bool:
  """The hit rule (module docstring) for tile (i, j)."""
  row, col = cluster.row, geometry.orientation.col(cluster.col)
  top, left, size = geometry.tile_rows[i], geometry.tile_cols[j], geometry.patch_size
  if top <= row < top + size and left <= col < left + size:
    return True
  centre = (top + (size - 1) / 2, left + (size - 1) / 2)
  return bool(np.hypot(centre[0] - row, centre[1] - col) <= cluster.radius)


def tiles_holding(
  grid: np.ndarray, geometry: TileGeometry, cluster: Cluster
) -> list[tuple[int, int]]:
  """The scored tiles (grid cells) that hit `cluster`, in row-major order."""
  scored = zip(*np.nonzero(~np.isnan(grid)), strict=True)
  return [(int(i), int(j)) for i, j in scored if hits(geometry, i, j, cluster)]


def evaluate_image(image: ScoredImage) -> ImageResult:
  """Matches one image's detections to its clusters (module docstring)."""
  grid, geometry = image.scores.task1, image.scores.geometry
  found: dict[int, float] = {}
  false_positives = []
  marks = detections(grid, geometry)
  for i, j, score in marks:
    hit = [k for k, c in enumerate(image.clusters) if hits(geometry, i, j, c)]
    if not hit:
      false_positives.append(score)
    for k in hit:
      found.setdefault(k, score)
  ranks = []
  for cluster in image.clusters:
    holding = [grid[i, j] for i, j in tiles_holding(grid, geometry, cluster)]
    ranks.append(None if not holding else 1 + sum(int(s > max(holding)) for _, _, s in marks))
  scored = grid[~np.isnan(grid)]
  return ImageResult(
    key=image.key,
    patient_id=image.patient_id,
    breast=image.breast,
    max_score=float(scored.max()) if scored.size else 0.0,
    false_positives=np.asarray(false_positives, np.float64),
    cluster_scores=tuple(found.get(k, -np.inf) for k in range(len(image.clusters))),
    cluster_ranks=tuple(ranks),
    clusters=image.clusters,
  )


def froc_curve(results: Sequence[ImageResult]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
  """(thresholds, sensitivity, false positives per image), thresholds descending."""
  found = np.sort(np.array([s for r in results for s in r.cluster_scores], np.float64))
  fps = np.sort(np.concatenate([r.false_positives for r in results] + [np.zeros(0)]))
  thresholds = np.unique(np.concatenate([found[np.isfinite(found)], fps]))[::-1]

  def at_or_above(values: np.ndarray) -> np.ndarray:
    return values.size - np.searchsorted(values, thresholds, side="left")

  sensitivity = at_or_above(found) / max(1, found.size)
  fp_rate = at_or_above(fps) / max(1, len(results))
  return thresholds, sensitivity, fp_rate


def sensitivity_at(sensitivity: np.ndarray, fp_rate: np.ndarray, rate: float) -> float:
  """The best sensitivity reached with at most `rate` false positives per image."""
  allowed = sensitivity[fp_rate <= rate]
  return float(allowed.max()) if allowed.size else 0.0


def threshold_at(evaluation: Mapping[str, Any], rate: float) -> float:
  """The lowest threshold of an evaluation's FROC curve (`evaluate`'s) with at most `rate` false
  positives per image (1.0, nothing flagged, where even its highest has more)."""
  curve = evaluation["curve"]
  allowed = np.asarray(curve["threshold"])[np.asarray(curve["fp_per_image"]) <= rate]
  return float(allowed.min()) if allowed.size else 1.0


def _level_auc(results: Sequence[ImageResult], unit: str) -> float | None:
  """Image- (unit 'key') or breast-level ('breast') AUC of the maximum score; None if undefined."""
  score: dict[str, float] = {}
  positive: dict[str, bool] = {}
  for r in results:
    name = getattr(r, unit)
    score[name] = max(score.get(name, -np.inf), r.max_score)
    positive[name] = positive.get(name, False) or bool(r.clusters)
  names = sorted(score)
  try:
    return metrics.roc_auc(np.array([positive[n] for n in names], int), [score[n] for n in names])
  except metrics.UndefinedMetricError:
    return None


def _median_rank(results: Sequence[ImageResult]) -> float | None:
  ranks = [np.inf if k is None else k for r in results for k in r.cluster_ranks]
  return float(np.median(ranks)) if ranks else None


@dataclasses.dataclass(frozen=True)
class WholeImageMetric:
  """One whole-image metric: its report column, how it is printed, and how it is computed from
  the image results and their FROC curve (thresholds, sensitivity, false positives per image)."""

  column: str
  compute: Callable[[Sequence[ImageResult], tuple[np.ndarray, ...]], float | None]
  digits: int | None = None  # None: the report's; ranks print with one
  fp_rate: float | None = None  # a sensitivity at this many false positives per image


def sensitivity_name(rate: float) -> str:
  """The registry name of the cluster sensitivity at `rate` false positives per image."""
  return f"sensitivity_at_{rate:g}_fp"


def _sensitivity(rate: float, column: str) -> WholeImageMetric:
  return WholeImageMetric(
    column, lambda _, curve: sensitivity_at(curve[1], curve[2], rate), fp_rate=rate
  )


# Every whole-image metric, in report order: froc.json, cv_summary.json, the report's columns and
# the demo read this registry (as `mcalc_jax.base.metrics.REGISTRY` for patches).
METRICS: dict[str, WholeImageMetric] = {
  sensitivity_name(0.5): _sensitivity(0.5, "Clusters found at 0.5 FP/image"),
  sensitivity_name(1.0): _sensitivity(1.0, "at 1 FP/image"),
  sensitivity_name(2.0): _sensitivity(2.0, "at 2 FP/image"),
  "image_auc": WholeImageMetric("Image AUC", lambda results, _: _level_auc(results, "key")),
  "breast_auc": WholeImageMetric("Breast AUC", lambda results, _: _level_auc(results, "breast")),
  "median_cluster_rank": WholeImageMetric(
    "Median cluster rank", lambda results, _: _median_rank(results), digits=1
  ),
}


def fp_rates() -> dict[float, str]:
  """The registry's operating points: false positives per image -> metric name."""
  return {m.fp_rate: name for name, m in METRICS.items() if m.fp_rate is not None}


def summarize(results: Sequence[ImageResult]) -> dict[str, float | None]:
  """Every registered whole-image metric of a set of image results."""
  curve = froc_curve(results)
  return {name: metric.compute(results, curve) for name, metric in METRICS.items()}


def bootstrap(
  results: Sequence[ImageResult], resamples: int = 1000, seed: int = 0
) -> dict[str, dict[str, float] | dict[str, str]]:
  """95% percentile intervals of `summarize`'s metrics, resampling patients with replacement."""
  by_patient: dict[str, list[ImageResult]] = {}
  for r in results:
    by_patient.setdefault(r.patient_id, []).append(r)
  patients = sorted(by_patient)
  rng = np.random.default_rng(seed)
  draws: dict[str, list[float]] = {}
  for _ in range(resamples):
    sample = []
    for n, p in enumerate(rng.integers(0, len(patients), len(patients))):
      sample += [_drawn(r, n) for r in by_patient[patients[p]]]
    for name, value in summarize(sample).items():
      if value is not None and np.isfinite(value):
        draws.setdefault(name, []).append(value)
  out = {}
  for name in summarize(results):
    values = draws.get(name, [])
    if len(values) < resamples / 2:
      out[name] = {"reason": f"undefined in {resamples - len(values)} of {resamples} resamples"}
    else:
      low, high = np.quantile(values, [0.025, 0.975])
      out[name] = {"low": float(low), "high": float(high)}
  return out


def _drawn(result: ImageResult, draw: int) -> ImageResult:
  """A result renamed for its `draw`-th appearance in a resample (a patient drawn twice counts
  as two patients)."""
  return dataclasses.replace(result, key=f"{draw}/{result.key}", breast=f"{draw}/{result.breast}")


def evaluate(images: Sequence[ScoredImage], *, resamples: int = 1000, seed: int = 0) -> dict:
  """The tiles' whole-image evaluation (froc.json's content) and the per-image results."""
  geometry = [image.scores.geometry for image in images]
  return evaluate_results(
    [evaluate_image(image) for image in images],
    HIT_RULE,
    resamples=resamples,
    seed=seed,
    # ranks and FP counts depend on how many tiles an image has (its size, the tile's mm)
    counts={
      "tiles_per_image": float(np.mean([i.scores.tiles_scored for i in images])) if images else 0
    },
    described={"tile_mm": sorted({round(g.patch_size * g.pixel_spacing_mm, 2) for g in geometry})},
  )


def evaluate_results(
  results: Sequence[ImageResult],
  hit_rule: str,
  *,
  resamples: int = 1000,
  seed: int = 0,
  counts: Mapping[str, Any] | None = None,
  described: Mapping[str, Any] | None = None,
) -> dict:
  """The evaluation of matched image results, whatever made the detections (tiles, marks):
  counts, the registry's metrics with patient-bootstrap CIs, the FROC curve and each cluster's
  outcome. `counts` and `described` add what the detector knows about itself."""
  thresholds, sensitivity, fp_rate = froc_curve(results)
  return {
    "hit_rule": hit_rule,
    "counts": {
      "images": len(results),
      "images_with_clusters": sum(bool(r.clusters) for r in results),
      "clusters": sum(len(r.clusters) for r in results),
      "patients": len({r.patient_id for r in results}),
      "false_positive_regions": int(sum(r.false_positives.size for r in results)),
      **(counts or {}),
    },
    **(described or {}),
    "metrics": summarize(results),
    "ci": bootstrap(results, resamples, seed),
    "bootstrap": {"unit": "patient", "resamples": resamples, "seed": seed, "level": 0.95},
    "curve": {
      "threshold": thresholds.tolist(),
      "sensitivity": sensitivity.tolist(),
      "fp_per_image": fp_rate.tolist(),
    },
    "clusters": [
      {
        "image": r.key,
        "patient_id": r.patient_id,
        "finding_id": c.finding_id,
        "label": c.label,
        "found_at_score": None if not np.isfinite(s) else s,
        "rank": rank,
      }
      for r in results
      for c, s, rank in zip(r.clusters, r.cluster_scores, r.cluster_ranks, strict=True)
    ],
    # each image's score (its hottest detection), what the image AUC ranks: for ROC tools
    "images": [
      {
        "image": r.key,
        "patient_id": r.patient_id,
        "clusters": len(r.clusters),
        "score": r.max_score,
      }
      for r in results
    ],
  }


def scored_images(
  findings: Sequence[Finding], keys: Mapping[str, str], grids: Mapping[str, ImageScores]
) -> list[ScoredImage]:
  """The scored images among `findings`' images: `keys` maps image paths to score keys, `grids`
  score keys to their grids (images without a grid are left out)."""
  by_image: dict[str, list[Finding]] = {}
  for f in findings:
    by_image.setdefault(f.image_path, []).append(f)
  images = []
  for path, found in sorted(by_image.items()):
    key = keys.get(path)
    if key not in grids:
      continue
    first = found[0]
    breast = f"{first.patient_id}/{first.laterality or path}"
    images.append(
      ScoredImage(
        key, first.patient_id, breast, grids[key], clusters_of(found), first.laterality, first.view
      )
    )
  return images


def against_other_breast(images: Sequence[ScoredImage], weight: float) -> list[ScoredImage]:
  """`images` with each one's Task 1 grid read against its contralateral image's
  (`mcalc_jax.whole_image.bilateral`: `weight` times the partner's peak logit taken off)."""
  grids = bilateral.compare({im.key: im.scores for im in images}, partners(images), weight)
  return [dataclasses.replace(im, scores=grids[im.key]) for im in images]


def partners(images: Sequence[ScoredImage]) -> dict[str, str]:
  """Each image's contralateral image's key, where it has exactly one (`bilateral.partners`)."""
  views = {im.key: bilateral.View(im.patient_id, im.laterality, im.view) for im in images}
  return bilateral.partners(views)
