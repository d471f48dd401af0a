"""Calcification marks, the way CAD reports them, and their evaluation by mark-level FROC.

An image's speck map (`mcalc_jax.whole_image.specks`) gives specks, `ClusterRule` groups them
(`mcalc_jax.whole_image.clusters`), and each cluster becomes one `Mark`: where it is in the
ORIGINAL image's pixels and the probability that it is a true calcification cluster (Task 1).
That probability comes from the cluster classifier: the tile reranker's class-balanced logistic
regression (`reranking.fit`) on the cluster's features, Platt-scaled on a validation part where
one is given, so that a 0.7 means about 70% of such marks are on a cluster.

Marks are judged as CAD is: `evaluate_marks` matches each image's marks to its annotated clusters
by `hits` and returns `froc.evaluate_results`' dict (mark FROC, image AUC from the top mark, ranks,
patient-bootstrap CIs). Per image, marks are taken from the highest score down: one that hits a
cluster not yet found finds it at its score, one that hits only found clusters is ignored, one
that hits none is a false mark.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import os
from collections.abc import Callable, Mapping, Sequence

import numpy as np
from scipy import special

from input_pipeline.mammogram import Mammogram
from mcalc_jax.base import calibration
from mcalc_jax.model import speck_detector
from mcalc_jax.whole_image import bilateral, clusters, froc, reranking
from mcalc_jax.whole_image.specks import (
  SPECK_RULE,
  SpeckMap,
  SpeckRule,
  find_specks,
  mammogram_speck_map,
  network_speck_map,
)
from mcalc_jax.whole_image.tiling import ImageScores

HIT_DISTANCE_MM = 5.0  # how near a point annotation (no radius) a mark's centre must lie
# What a mark is among its image's marks (`with_context`): a mark in an image full of marks, or
# fainter than the image's strongest, is less likely a cluster.
CONTEXT_FEATURES: dict[
  str, Callable[[Mapping[str, float], Sequence[Mapping[str, float]]], float]
] = {
  "marks_in_image": lambda mark, image: float(len(image)),
  "below_image_top": lambda mark, image: max(m["mean_value"] for m in image) - mark["mean_value"],
}
# What the tile path says (`with_tiles`, from the image's tile grids): its Task 1 probability
# where the mark is (what the tile network, or its reranker, saw around the cluster, beside what
# the specks alone say), and the image's highest (how suspicious the tile path finds the image).
TILE_FEATURES: dict[str, Callable[[ImageScores, float, float], float]] = {
  "tile_probability": lambda scores, row, col: tile_probability(scores, row, col),
  "image_tile_top": lambda scores, row, col: image_tile_top(scores),
}
FEATURES = (*clusters.FEATURES, *CONTEXT_FEATURES, *TILE_FEATURES)
DEFAULT_FEATURES = tuple(clusters.FEATURES)  # what a speck map alone gives


def hit_rule(hit_distance_mm: float = HIT_DISTANCE_MM) -> str:
  """The hit rule in words, as froc.json states it."""
  return (
    "a mark (one cluster of specks) hits an annotated cluster when the mark's centre (the mean of "
    "its specks' centres) lies inside the annotated circle (centre and radius), or, for a point "
    f"annotation without a radius, within {hit_distance_mm:g} mm of the point"
  )


HIT_RULE = hit_rule()


@dataclasses.dataclass(frozen=True)
class Mark:
  """One CAD mark: a cluster of specks, in the ORIGINAL image's pixels."""

  key: str  # the image's
  cluster_id: int  # the cluster's index among the image's marks
  row: float  # centre: the mean of the specks' centres
  col: float
  box: tuple[float, float, float, float]  # (top, left, bottom, right) of the specks' centres
  specks: int
  task1: float  # P(a true calcification cluster), calibrated; NaN without a classifier
  task2: float  # P(malignant); NaN: no Task 2 classifier yet
  features: Mapping[str, float]  # `clusters.describe` of the cluster


# marks.csv (`mcalc-score --mark_classifier`): `mark` (KEY:CLUSTER_ID) keys the log; centre and
# box (of the specks' centres) in ORIGINAL pixels; task2 NaN until a Task 2 mark classifier
# exists; reported: 1 at or above the classifier's operating threshold.
CSV_COLUMNS = (
  "mark",
  "key",
  "cluster_id",
  "row",
  "col",
  "top",
  "left",
  "bottom",
  "right",
  "specks",
  "task1",
  "task2",
  "reported",
)
_BOX = ("top", "left", "bottom", "right")


def to_row(mark: Mark, threshold: float) -> list[object]:
  """The mark as a CSV_COLUMNS row (pixels to 0.1, probabilities to 1e-6), reported at or above
  `threshold`."""
  return [
    f"{mark.key}:{mark.cluster_id}",
    mark.key,
    mark.cluster_id,
    *(f"{v:.1f}" for v in (mark.row, mark.col, *mark.box)),
    mark.specks,
    f"{mark.task1:.6f}",
    f"{mark.task2:.6f}",
    int(mark.task1 >= threshold),
  ]


def from_row(row: Mapping[str, str]) -> Mark:
  """The mark of a marks.csv row (by column name), without its features."""
  return Mark(
    key=row["key"],
    cluster_id=int(row["cluster_id"]),
    row=float(row["row"]),
    col=float(row["col"]),
    box=tuple(float(row[k]) for k in _BOX),
    specks=int(row["specks"]),
    task1=float(row["task1"]),
    task2=float(row["task2"]),
    features={},
  )


def to_json(mark: Mark) -> dict:
  """The unclassified mark as JSON (the marks cache of `mcalc_jax.experiments.marking`)."""
  return {k: v for k, v in dataclasses.asdict(mark).items() if k not in ("task1", "task2")}


def from_json(d: Mapping) -> Mark:
  """The unclassified mark `to_json` wrote (a cache written with probabilities too reads)."""
  return Mark(**{**d, "box": tuple(d["box"]), "task1": np.nan, "task2": np.nan})


@dataclasses.dataclass(frozen=True)
class MarkedImage:
  """One image's marks with what is known about it (`froc.ScoredImage` for marks)."""

  key: str
  patient_id: str
  breast: str  # patient and laterality: the unit of the breast-level AUC
  marks: tuple[Mark, ...]
  clusters: tuple[froc.Cluster, ...]  # annotated, in ORIGINAL pixels
  pixel_mm: float  # the image's pixel side: point annotations' hit distance in pixels


def check_features(names: Sequence[str]) -> None:
  """Raises RerankerError naming the features `FEATURES` does not register."""
  unknown = sorted(set(names) - set(FEATURES))
  if unknown:
    raise reranking.RerankerError(
      f"unknown cluster features {unknown}; known: {', '.join(FEATURES)}"
    )


@dataclasses.dataclass(frozen=True)
class OperatingPoint:
  """Which marks are reported: Task 1 at or above `threshold`, chosen (out of fold) for about
  `false_marks_per_image` false marks per image."""

  threshold: float = 0.5
  false_marks_per_image: float = float("nan")  # what the threshold was chosen for; NaN: not chosen


@dataclasses.dataclass(frozen=True)
class ClusterClassifier:
  """Task 1 for a cluster: the balanced logistic regression on its features, then Platt; with
  the speck and cluster rules its marks were made by, and the operating point reports use."""

  model: reranking.TileReranker
  platt: calibration.Platt = calibration.Platt()
  speck_rule: SpeckRule = SPECK_RULE
  cluster_rule: clusters.ClusterRule = clusters.CLUSTER_RULE
  operating_point: OperatingPoint = OperatingPoint()
  # The trained speck detector's folder whose map its marks are made on (`speck_detector.save`;
  # relative to the classifier's JSON where saved); "": the classical map.
  detector: str = ""

  @property
  def needs_tiles(self) -> bool:
    """Whether its features include the tile path's (`with_tiles`)."""
    return any(name in TILE_FEATURES for name in self.model.features)

  def probabilities(self, features: Sequence[Mapping[str, float]]) -> np.ndarray:
    """float64 [n]: P(a true cluster) of each mark's `features`."""
    x = np.array([[f[name] for name in self.model.features] for f in features], np.float64)
    raw = special.expit(self.model.logits(x.reshape(len(features), -1)))
    return self.platt.apply(raw).astype(np.float64)

  def to_json(self) -> str:
    parts = ("platt", "speck_rule", "cluster_rule", "operating_point")
    d = {"logistic": json.loads(self.model.to_json())}
    d |= {k: dataclasses.asdict(getattr(self, k)) for k in parts}
    return json.dumps(d | ({"detector": self.detector} if self.detector else {}), indent=2)

  @classmethod
  def from_json(cls, text: str) -> ClusterClassifier:
    """The classifier `to_json` wrote; RerankerError says what is wrong otherwise."""
    try:
      d = json.loads(text)
      model = reranking.TileReranker.from_json(json.dumps(d["logistic"]), check_features)
      platt = calibration.Platt(float(d["platt"]["slope"]), float(d["platt"]["intercept"]))
      rules = {
        "speck_rule": SpeckRule(**d["speck_rule"]),
        "cluster_rule": clusters.ClusterRule(**d["cluster_rule"]),
        "operating_point": OperatingPoint(**d["operating_point"]),
        "detector": str(d.get("detector", "")),
      }
    except KeyError as e:
      raise reranking.RerankerError(f"not a cluster classifier's JSON: no {e.args[0]!r}") from e
    except (ValueError, TypeError) as e:
      raise reranking.RerankerError(f"not a cluster classifier's JSON ({e})") from e
    return cls(model, platt, **rules)


def load(path: str | os.PathLike) -> ClusterClassifier:
  """A saved classifier (`reranking.save` writes one), its detector's folder resolved beside it;
  RerankerError names the file, and a detector that is missing or does not load."""
  classifier = reranking.load(path, ClusterClassifier)
  if not classifier.detector:
    return classifier
  folder = os.path.join(os.path.dirname(os.path.abspath(path)), classifier.detector)
  try:
    _loaded_detector(folder)
  except (OSError, ValueError, KeyError) as e:
    raise reranking.RerankerError(f"{os.fspath(path)}: its speck detector {folder}: {e}") from e
  return dataclasses.replace(classifier, detector=folder)


def speck_map_of(mammogram: Mammogram, classifier: ClusterClassifier) -> SpeckMap:
  """The speck map the classifier's marks are made on: its detector's, or the classical one."""
  if not classifier.detector:
    return mammogram_speck_map(mammogram)
  return network_speck_map(_loaded_detector(classifier.detector), mammogram)


def _loaded_detector(folder: str) -> speck_detector.SpeckDetector:
  """The detector in `folder`, loaded once per process (and again when its parameters change)."""
  params = os.path.join(folder, speck_detector.PARAMS_FILE)
  return _detector(folder, os.stat(params).st_mtime_ns)


@functools.cache
def _detector(folder: str, modified_ns: int) -> speck_detector.SpeckDetector:
  del modified_ns  # the cache's key only
  return speck_detector.load(folder)


def mark_image(
  speck_map: SpeckMap,
  key: str,
  *,
  speck_rule: SpeckRule = SPECK_RULE,
  rule: clusters.ClusterRule = clusters.CLUSTER_RULE,
  classifier: ClusterClassifier | None = None,
) -> list[Mark]:
  """The marks of one image from its speck map: its specks' clusters, each with its features and
  (given a classifier) its Task 1 probability."""
  found = clusters.group(find_specks(speck_map, speck_rule), rule)
  marks = with_context([_mark(key, k, cluster, speck_map) for k, cluster in enumerate(found)])
  return marks if classifier is None else classified(marks, classifier)


def mark_mammogram(
  mammogram: Mammogram, key: str, classifier: ClusterClassifier, scores: ImageScores | None = None
) -> list[Mark]:
  """The classified marks of one mammogram (`read_mammogram`'s), made by the classifier's rules;
  `scores`, the image's tile grids, are needed when the classifier uses `TILE_FEATURES`."""
  found = mark_image(
    speck_map_of(mammogram, classifier),
    key,
    speck_rule=classifier.speck_rule,
    rule=classifier.cluster_rule,
  )
  if classifier.needs_tiles:
    if scores is None:
      raise ValueError("this cluster classifier needs the image's tile scores")
    found = with_tiles(found, scores)
  return classified(found, classifier)


def reported(marks: Sequence[Mark], classifier: ClusterClassifier) -> list[Mark]:
  """The marks at or above the classifier's operating point."""
  return [m for m in marks if m.task1 >= classifier.operating_point.threshold]


def _mark(key: str, cluster_id: int, cluster: clusters.SpeckCluster, speck_map: SpeckMap) -> Mark:
  """One cluster as a mark, its centre and box mapped back to the original image's pixels."""
  top, left, bottom, right = cluster.box
  row, col = speck_map.to_original(*cluster.centre)
  sides = sorted(speck_map.to_original(top, c)[1] for c in (left, right))
  return Mark(
    key=key,
    cluster_id=cluster_id,
    row=row,
    col=col,
    box=(top, sides[0], bottom, sides[1]),
    specks=len(cluster.specks),
    task1=np.nan,
    task2=np.nan,
    features=clusters.describe(cluster),
  )


def tile_probability(scores: ImageScores, row: float, col: float) -> float:
  """The highest Task 1 probability among the scored tiles holding the ORIGINAL pixel (row,
  col): those a point cluster there hits (`froc.tiles_holding`); 0 where none does."""
  point = froc.Cluster("mark", "", row, col, 0.0)
  held = [scores.task1[i, j] for i, j in froc.tiles_holding(scores.task1, scores.geometry, point)]
  return float(max(held)) if held else 0.0


def with_context(marks: Sequence[Mark]) -> list[Mark]:
  """One image's `marks` with their `CONTEXT_FEATURES`, from all of them."""
  image = [m.features for m in marks]
  return [
    dataclasses.replace(
      m, features={**m.features, **{k: f(m.features, image) for k, f in CONTEXT_FEATURES.items()}}
    )
    for m in marks
  ]


def image_tile_top(scores: ImageScores) -> float:
  """The image's highest Task 1 tile probability; 0 where no tile was scored."""
  return 0.0 if scores.tiles_scored == 0 else float(np.nanmax(scores.task1))


def with_tiles(marks: Sequence[Mark], scores: ImageScores) -> list[Mark]:
  """`marks` with their `TILE_FEATURES`, from the image's tile grids `scores`."""
  return [
    dataclasses.replace(
      m,
      features={**m.features, **{k: f(scores, m.row, m.col) for k, f in TILE_FEATURES.items()}},
    )
    for m in marks
  ]


def classified(marks: Sequence[Mark], classifier: ClusterClassifier) -> list[Mark]:
  """`marks` with the classifier's Task 1 probabilities."""
  if not marks:
    return []
  p = classifier.probabilities([m.features for m in marks])
  return [dataclasses.replace(m, task1=float(v)) for m, v in zip(marks, p, strict=True)]


def hits(mark: Mark, cluster: froc.Cluster, pixel_mm: float, hit_distance_mm: float) -> bool:
  """The hit rule (`hit_rule`): both in the original image's pixels of `pixel_mm`."""
  distance = float(np.hypot(mark.row - cluster.row, mark.col - cluster.col))
  if cluster.radius > 0:
    return distance <= cluster.radius
  return distance * pixel_mm <= hit_distance_mm


def clusters_hit(mark: Mark, image: MarkedImage, hit_distance_mm: float) -> list[int]:
  """The indices of the image's clusters that `mark` hits."""
  return [k for k, c in enumerate(image.clusters) if hits(mark, c, image.pixel_mm, hit_distance_mm)]


def labels(image: MarkedImage, hit_distance_mm: float = HIT_DISTANCE_MM) -> np.ndarray:
  """bool [marks]: the marks that hit one of the image's clusters (Task 1's positives)."""
  return np.array([bool(clusters_hit(m, image, hit_distance_mm)) for m in image.marks], bool)


def _examples(
  images: Sequence[MarkedImage], names: Sequence[str], hit_distance_mm: float
) -> tuple[np.ndarray, np.ndarray]:
  """(x [marks, features], y [marks]) of every mark of `images`."""
  x = [[m.features[n] for n in names] for image in images for m in image.marks]
  y = [labels(image, hit_distance_mm) for image in images]
  return np.array(x, np.float64).reshape(-1, len(names)), np.concatenate([np.zeros(0, bool), *y])


def fit_classifier(
  train: Sequence[MarkedImage],
  validation: Sequence[MarkedImage] = (),
  features: Sequence[str] = DEFAULT_FEATURES,
  *,
  c: float = 1.0,
  hit_distance_mm: float = HIT_DISTANCE_MM,
) -> ClusterClassifier:
  """A cluster classifier fitted on the marks of `train` (positives: those that hit a cluster);
  Platt-calibrated on the marks of `validation` when it has both kinds, else uncalibrated."""
  check_features(features)
  x, y = _examples(train, features, hit_distance_mm)
  if not len(y):
    raise ValueError("no marks to fit a cluster classifier on")
  model = ClusterClassifier(reranking.fit(x, y, features, c))
  xv, yv = _examples(validation, features, hit_distance_mm)
  if not len(yv):
    return model
  prob = special.expit(model.model.logits(xv))
  return dataclasses.replace(model, platt=calibration.fit_platt(yv, prob))


def task1(mark: Mark) -> float:
  """A mark's Task 1 probability: the score marks are judged by unless told otherwise."""
  return mark.task1


def evaluate_image(
  image: MarkedImage,
  hit_distance_mm: float = HIT_DISTANCE_MM,
  score: Callable[[Mark], float] = task1,
) -> froc.ImageResult:
  """One image's marks matched to its clusters (module docstring); a cluster's rank is 1 + the
  number of marks scoring above the best mark on it (None: no mark hits it)."""
  scored = sorted(((score(m), m) for m in image.marks), key=lambda sm: -sm[0])
  if any(not (np.isfinite(s) and s >= 0) for s, _ in scored):
    raise ValueError(
      f"{image.key}: a mark's score is not a finite number >= 0 (a probability or a "
      "count: fit a classifier, or pass score=)"
    )
  found: dict[int, float] = {}
  false_marks = []
  for s, mark in scored:
    hit = clusters_hit(mark, image, hit_distance_mm)
    if not hit:
      false_marks.append(s)
    for k in hit:
      found.setdefault(k, s)
  above = np.array([s for s, _ in scored])
  return froc.ImageResult(
    key=image.key,
    patient_id=image.patient_id,
    breast=image.breast,
    max_score=float(above[0]) if above.size else 0.0,  # no mark: below every image with one
    false_positives=np.asarray(false_marks, np.float64),
    cluster_scores=tuple(found.get(k, -np.inf) for k in range(len(image.clusters))),
    cluster_ranks=tuple(
      1 + int(np.sum(above > found[k])) if k in found else None for k in range(len(image.clusters))
    ),
    clusters=image.clusters,
  )


def against_other_breast(
  images: Sequence[MarkedImage], pairs: Mapping[str, str], weight: float
) -> list[MarkedImage]:
  """`images` with each one's marks read against its contralateral image's (`pairs`, by key):
  `weight` times the partner's top mark's logit taken off their Task 1 logits, as the tile path
  does (`mcalc_jax.whole_image.bilateral`). An image's own order of marks is kept."""
  task1 = {im.key: np.array([m.task1 for m in im.marks], np.float64) for im in images}
  shifted = bilateral.compare_probabilities(task1, pairs, weight)
  return [
    dataclasses.replace(
      im,
      marks=tuple(
        dataclasses.replace(m, task1=float(p))
        for m, p in zip(im.marks, shifted[im.key], strict=True)
      ),
    )
    for im in images
  ]


def evaluate_marks(
  images: Sequence[MarkedImage],
  *,
  hit_distance_mm: float = HIT_DISTANCE_MM,
  score: Callable[[Mark], float] = task1,
  resamples: int = 1000,
  seed: int = 0,
) -> dict:
  """Mark-level FROC of `images` (froc.json's content, `froc.evaluate_results`), with the marks
  per image and per normal image (no annotated cluster) among its counts."""
  normal = [len(im.marks) for im in images if not im.clusters]
  return froc.evaluate_results(
    [evaluate_image(image, hit_distance_mm, score) for image in images],
    hit_rule(hit_distance_mm),
    resamples=resamples,
    seed=seed,
    counts={
      "marks_per_image": float(np.mean([len(im.marks) for im in images])) if images else 0.0,
      "marks_per_normal_image": float(np.mean(normal)) if normal else 0.0,
    },
    described={"hit_distance_mm": hit_distance_mm},
  )
