"""A cross-validation's CAD marks: every whole image's specks grouped into marks, each mark scored
by a cluster classifier that never saw its patient, judged by mark-level FROC.

  WORKDIR/marks/<rules>/<key>.json   an image's marks before classification, by the hash of the
                                  rules that made them (resumable cache)
  WORKDIR/fold_<i>/speck_detector/   with `config.marks.detector_cohort`, fold i's trained speck
                                  detector (`mcalc_jax.model.speck_detector`)
  WORKDIR/speck_detector/         with it, the detector for new images (every patient's crops)
  WORKDIR/eval/froc_marks/        the pooled mark FROC, out of fold
  WORKDIR/mark_classifier.json    fitted on every image, with the operating point chosen out of
                                  fold, naming the detector its marks need where there is one
                                  (`mcalc-score --mark_classifier`)

Fold k's classifier is fitted on the marks of its training patients, Platt-scaled on its
validation patients' and applied to its test patients'. The tile path's probability under a mark
(`marks.TILE_FEATURES`) comes from the out-of-fold tile grids (after the fold's reranker when the
CV reranks), so a training mark's tile feature is as unseen as a test mark's; the per-fold
rerankers were fitted on every other fold, so fold k's test labels reach its training marks'
tile feature at one remove (stacking's usual approximation). Its settings are the config's
`marks` group (configs/default.py).

Specks come from the classical speck map, or, given inserted cohorts (`detector_cohort`:
`input_pipeline.insertion`'s folders, clusters inserted into the cohorts' own images), from a
speck detector trained per fold on the specks inserted into its training patients' images, and
into every image of a patient outside the cross-validation (another cohort's backgrounds, such as
real FFDM), and run on its test patients'; with `detector_real_crops`, also on crops around its
training patients' annotated clusters, weakly labelled (`speck_labels.weakly_labelled`; else no
real cluster trains it). The classifier for new images is fitted on those out-of-fold marks and
paired with a detector trained on every crop.
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import json
import pathlib
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import ml_collections
import numpy as np
from absl import logging

from input_pipeline import speck_labels
from input_pipeline.mammogram import Mammogram
from mcalc_jax.archives import scored
from mcalc_jax.base import files, metrics
from mcalc_jax.model import speck_detector
from mcalc_jax.whole_image import clusters, froc, marks, reranking
from mcalc_jax.whole_image.specks import (
  SpeckMap,
  SpeckRule,
  mammogram_speck_map,
  network_speck_map,
)

MARKS_DIR = "marks"
DETECTOR_DIR = "speck_detector"
CLASSIFIER_FILE = "mark_classifier.json"
DIGITAL_CLASSIFIER_FILE = "mark_classifier_digital.json"
DIGITAL_DIR = "digital"
TILE_GRIDS = ("reranked", "network")  # the grids a mark's tile features may come from


@dataclasses.dataclass(frozen=True)
class Marking:
  """How marks are made, scored and reported (the config's `marks` group)."""

  speck_rule: SpeckRule = SpeckRule()
  cluster_rule: clusters.ClusterRule = clusters.ClusterRule()
  features: tuple[str, ...] = marks.FEATURES
  hit_distance_mm: float = marks.HIT_DISTANCE_MM
  false_marks_per_image: float = 0.5  # the operating point reports and the SR use
  # Inserted cohorts' folders, comma-separated: specks from a trained detector; "": classical.
  detector_cohort: str = ""
  detector_training: speck_detector.TrainOptions = speck_detector.TrainOptions()
  detector_negatives: int = 4  # crops per cohort image at random, and as many on bright spots
  detector: speck_detector.DetectorConfig = speck_detector.DetectorConfig()
  # Each detector's logits shifted so that this share of the breast lies above the threshold on
  # validation images without calcifications (`speck_detector.logit_shift`); 0: not shifted.
  detector_speck_fraction: float = 0.0
  # Crops around each annotated cluster of a fold's training patients, weakly labelled
  # (`speck_labels.weakly_labelled`), beside the cohorts' crops; 0: no real cluster trains it.
  detector_real_crops: int = 0
  # The cluster classifier's inverse L2 strength (class-balanced logistic regression): 0.1
  # against 1.0, 14.4 against 13.8 of MIAS's 18 clusters at 1 false mark (docs/results.md).
  classifier_c: float = 0.1
  # Which tile grids give the marks their tile features: "reranked" (after the tile reranker,
  # as `mcalc-score --reranker` writes them) or "network" (the network's own, no reranker).
  tiles: str = "reranked"

  def __post_init__(self):
    marks.check_features(self.features)
    if self.tiles not in TILE_GRIDS:
      raise ValueError(f"marks' tiles must be one of {TILE_GRIDS}, not {self.tiles!r}")
    if not self.false_marks_per_image > 0:
      raise ValueError(f"false_marks_per_image must be > 0, not {self.false_marks_per_image}")

  @classmethod
  def from_config(cls, config: ml_collections.ConfigDict) -> Marking | None:
    """The marking `config.marks` describes; None when off (or in a config saved before it)."""
    group = config.get("marks")
    if group is None or not group.enabled:
      return None
    cohort = group.get("detector_cohort", "")
    return cls(
      SpeckRule(threshold=group.detector_threshold if cohort else group.speck_threshold),
      clusters.ClusterRule(group.link_mm, group.min_specks, group.region_mm),
      tuple(filter(None, group.features.split(","))),
      group.hit_distance_mm,
      group.false_marks_per_image,
      cohort,
      speck_detector.TrainOptions(steps=group.get("detector_steps", cls.detector_training.steps)),
      group.get("detector_negatives", cls.detector_negatives),
      speck_detector.DetectorConfig(members=group.get("detector_members", 1)),
      group.get("detector_speck_fraction", 0.0),
      group.get("detector_real_crops", 0),
      group.get("classifier_c", 1.0),  # what a config saved before the key was fitted with
      group.get("tiles", cls.tiles),
    )

  @property
  def cohorts(self) -> tuple[str, ...]:
    """The inserted cohorts the speck detectors train on (none: the classical map)."""
    return tuple(filter(None, self.detector_cohort.split(",")))

  @property
  def cache(self) -> str:
    """The folder name of the marks these rules make: a hash of the rules."""
    rules = [
      dataclasses.asdict(self.speck_rule),
      dataclasses.asdict(self.cluster_rule),
      *(
        [
          self.detector_cohort,
          self.detector_negatives,
          self.detector_training.steps,
          dataclasses.asdict(self.detector),
          *([self.detector_speck_fraction] if self.detector_speck_fraction else []),
          *([{"real_crops": self.detector_real_crops}] if self.detector_real_crops else []),
        ]
        if self.detector_cohort
        else []
      ),
    ]
    return hashlib.sha256(json.dumps(rules, sort_keys=True).encode()).hexdigest()[:12]


def mark_folds(
  workdir: pathlib.Path,
  assignment: Sequence[Mapping[str, Sequence[str]]],
  marking: Marking,
  images: Sequence[froc.ScoredImage],
  inputs: Mapping[str, reranking.Readable],
  seed: int,
  resamples: int,
  bilateral_weight: float = 0.0,
) -> dict[str, Any]:
  """The marks of the tile-scored `images` (out-of-fold grids), classified fold by fold and
  evaluated pooled into WORKDIR/eval/froc_marks (with a bilateral weight, once more with each
  image's marks read against the other breast's, into froc_marks_bilateral); the classifier for
  new images saved. A fold whose training marks are all of one kind skips the marks, saying
  why."""
  maps: dict[str, SpeckMapOf] = {}
  if marking.detector_cohort:  # (the detector for new images is trained and saved here too)
    normals, clustered = _by_patient(images, inputs)
    per_fold, _ = detectors(workdir, marking, assignment, normals, clustered)
    for fold, detector in zip(assignment, per_fold, strict=True):
      maps |= dict.fromkeys(fold["test"], functools.partial(network_speck_map, detector))
  marked = [
    marked_image(
      workdir,
      marking,
      image,
      inputs[image.key],
      maps.get(image.patient_id, mammogram_speck_map),
    )
    for image in images
  ]
  out = []
  for k, fold in enumerate(assignment):
    part = {name: set(fold[name]) for name in ("train", "validation", "test")}

    def of(name: str, part=part) -> list[marks.MarkedImage]:
      return [im for im in marked if im.patient_id in part[name]]

    unlearnable = _one_kind(of("train"))
    if unlearnable:
      return {"skipped": f"fold {k}'s training images have {unlearnable}"}
    classifier = _fitted(marking, of("train"), of("validation"))
    out += [
      dataclasses.replace(im, marks=tuple(marks.classified(im.marks, classifier)))
      for im in of("test")
    ]
  title = f"marks ({len(marking.features)} features, out of fold)"
  out_dir = workdir / "eval" / "froc_marks"
  point, summary = _judged(out, marking, out_dir, title, seed, resamples)
  final = _final(marking, marked, point)
  if marking.detector_cohort:  # new images' specks: the detector trained on every crop
    final = dataclasses.replace(final, detector=DETECTOR_DIR)
  reranking.save(workdir / CLASSIFIER_FILE, final)
  if bilateral_weight:
    compared = marks.against_other_breast(out, froc.partners(images), bilateral_weight)
    evaluation = marks.evaluate_marks(
      compared, hit_distance_mm=marking.hit_distance_mm, resamples=resamples, seed=seed
    )
    summary["bilateral"] = scored.write_bilateral(out_dir, evaluation, bilateral_weight, title)
  return {"features": list(marking.features), **summary}


def mark_digital(
  workdir: pathlib.Path,
  marking: Marking,
  images: Sequence[froc.ScoredImage],
  inputs: Mapping[str, reranking.Readable],
  seed: int,
  resamples: int,
) -> dict[str, Any]:
  """WORKDIR/mark_classifier_digital.json: a cluster classifier for digital archives, fitted on
  the marks of `images` (a digital cohort's: clusters inserted into real FFDM, their tiles
  reranked out of background), with its operating point chosen out of background (each
  background image's marks classified by one fitted on the others'). On FFDM film's classifier
  reads other tile probabilities and speck contrasts, and misplaces its threshold
  (docs/results.md). Its specks come from the detector for new images, which trained on these
  images' crops (so these false marks are fewer than new FFDM's), or the classical map; the
  marks are cached in WORKDIR/digital/marks/, their FROC written to WORKDIR/digital/froc_marks."""
  speck_map = mammogram_speck_map
  if marking.detector_cohort:
    speck_map = functools.partial(network_speck_map, speck_detector.load(workdir / DETECTOR_DIR))
  folder = workdir / DIGITAL_DIR
  marked = [marked_image(folder, marking, im, inputs[im.key], speck_map) for im in images]
  out = []
  for background in sorted({im.patient_id for im in marked}):
    train = [im for im in marked if im.patient_id != background]
    unlearnable = _one_kind(train)
    if unlearnable:
      return {"skipped": f"the images without {background} have {unlearnable}"}
    classifier = _fitted(marking, train, train)
    out += [
      dataclasses.replace(im, marks=tuple(marks.classified(im.marks, classifier)))
      for im in marked
      if im.patient_id == background
    ]
  title = "marks of inserted clusters, out of background image"
  point, summary = _judged(out, marking, folder / "froc_marks", title, seed, resamples)
  final = _final(marking, marked, point)
  if marking.detector_cohort:
    final = dataclasses.replace(final, detector=DETECTOR_DIR)
  reranking.save(workdir / DIGITAL_CLASSIFIER_FILE, final)
  return summary


def _one_kind(images: Sequence[marks.MarkedImage]) -> str:
  """What no cluster classifier can be fitted on, in words ('': the images' marks are of both
  kinds, some on a cluster and some elsewhere)."""
  labels = np.concatenate([np.zeros(0, bool)] + [marks.labels(im) for im in images])
  if labels.all() or not labels.any():
    return (
      f"{labels.sum()} marks on a cluster and {(~labels).sum()} elsewhere: "
      "no cluster classifier can be fitted"
    )
  return ""


def _judged(
  images: Sequence[marks.MarkedImage],
  marking: Marking,
  out_dir: pathlib.Path,
  title: str,
  seed: int,
  resamples: int,
) -> tuple[marks.OperatingPoint, dict[str, Any]]:
  """The classified `images`' mark FROC into `out_dir`, with the operating point the marking's
  false marks per image give (and what is found there); the point and a summary."""
  evaluation = marks.evaluate_marks(
    images, hit_distance_mm=marking.hit_distance_mm, resamples=resamples, seed=seed
  )
  point = operating_point(images, marking.false_marks_per_image, marking.hit_distance_mm)
  at_point = at_operating_point(images, point.threshold, marking.hit_distance_mm)
  evaluation["operating_point"] = {**dataclasses.asdict(point), **at_point}
  scored.write_froc(out_dir, evaluation, title=title)
  return point, {**scored.summary(evaluation), "operating_point": evaluation["operating_point"]}


def fit_on(
  workdir: pathlib.Path,
  marking: Marking,
  images: Sequence[froc.ScoredImage],
  inputs: Mapping[str, reranking.Readable],
) -> marks.ClusterClassifier:
  """A classifier for new images fitted on the marks of `images` without folds (the demo's
  validation patients), its operating point chosen on those same marks: optimistic, where
  `mark_folds` chooses it out of fold."""
  marked = [marked_image(workdir, marking, image, inputs[image.key]) for image in images]
  classifier = _final(marking, marked, marks.OperatingPoint())
  scored = [
    dataclasses.replace(im, marks=tuple(marks.classified(im.marks, classifier))) for im in marked
  ]
  point = operating_point(scored, marking.false_marks_per_image, marking.hit_distance_mm)
  return dataclasses.replace(classifier, operating_point=point)


SpeckMapOf = Callable[[Mammogram], SpeckMap]


def detectors(
  workdir: pathlib.Path,
  marking: Marking,
  assignment: Sequence[Mapping[str, Sequence[str]]],
  normals: Mapping[str, Sequence[reranking.Readable]] | None = None,
  clustered: Mapping[str, Sequence[tuple[froc.ScoredImage, reranking.Readable]]] | None = None,
) -> tuple[list[speck_detector.SpeckDetector], speck_detector.SpeckDetector]:
  """Each fold's speck detector, and the one for new images, each trained unless a run with the
  same cohorts and training saved it. Fold k's trains on its training patients' crops and on
  those of every cohort patient outside the cross-validation (another cohort's backgrounds),
  and with `marking.detector_real_crops` on its training patients' annotated clusters in
  `clustered` (a patient's scored images with clusters, and their inputs), weakly labelled; the
  one for new images on every crop. With `marking.detector_speck_fraction`, each is calibrated on
  `normals` (a patient's images without calcifications): fold k's on its validation patients',
  the one for new images on everyone's."""
  cohorts = functools.cache(functools.partial(_cohort_crops, marking))
  real = functools.cache(functools.partial(_real_crops, marking, clustered or {}))
  in_cv = {p for fold in assignment for part in fold.values() for p in part}
  normals = normals or {}

  def of(patients: Sequence[str]) -> speck_labels.Crops:
    crops = cohorts()
    chosen = crops.of([*patients, *(set(crops.patients) - in_cv)])
    return _with(chosen, real(), patients)

  def everyone() -> speck_labels.Crops:
    return _with(cohorts(), real())

  def calibrated(folder: pathlib.Path, crops: Callable, patients: Sequence[str]):
    sources = [source for patient in patients for source in normals.get(patient, ())]
    return _calibrated(folder, _detector(folder, marking, crops), marking, sources)

  found = [
    calibrated(
      workdir / f"fold_{k}" / DETECTOR_DIR,
      functools.partial(of, fold["train"]),
      fold["validation"],
    )
    for k, fold in enumerate(assignment)
  ]
  return found, calibrated(workdir / DETECTOR_DIR, everyone, sorted(in_cv))


def _with(
  crops: speck_labels.Crops,
  real: speck_labels.Crops | None,
  patients: Sequence[str] | None = None,
) -> speck_labels.Crops:
  """`crops` and the real clusters' crops (of `patients`; None: all), where there are any."""
  if real is None:
    return crops
  return speck_labels.joined([crops, real if patients is None else real.of(patients)])


def _by_patient(
  images: Sequence[froc.ScoredImage], inputs: Mapping[str, reranking.Readable]
) -> tuple[
  dict[str, list[reranking.Readable]], dict[str, list[tuple[froc.ScoredImage, reranking.Readable]]]
]:
  """Each patient's images without an annotated cluster (what a detector is calibrated on), and
  with one (with their inputs: what weak labels come from)."""
  normals: dict[str, list[reranking.Readable]] = {}
  clustered: dict[str, list[tuple[froc.ScoredImage, reranking.Readable]]] = {}
  for image in images:
    if image.clusters:
      clustered.setdefault(image.patient_id, []).append((image, inputs[image.key]))
    else:
      normals.setdefault(image.patient_id, []).append(inputs[image.key])
  return normals, clustered


def _real_crops(
  marking: Marking, clustered: Mapping[str, Sequence[tuple[froc.ScoredImage, reranking.Readable]]]
) -> speck_labels.Crops | None:
  """Crops around every annotated cluster with an extent in `clustered`, weakly labelled (None
  without `marking.detector_real_crops`, or without such a cluster)."""
  if not marking.detector_real_crops:
    return None
  labelled = []
  for image, source in (item for found in clustered.values() for item in found):
    # (a point annotation says nothing of where specks lie)
    circles = [(c.row, c.col, c.radius) for c in image.clusters if c.radius > 0]
    if circles:
      read, _ = source.read()
      labelled.append(
        speck_labels.weakly_labelled(read, image.key, image.patient_id, np.array(circles))
      )
  if not labelled:
    return None
  return speck_labels.cluster_crops(labelled, per_cluster=marking.detector_real_crops)


def _cohort_crops(marking: Marking) -> speck_labels.Crops:
  """The training crops of every image of the marking's inserted cohorts."""
  return speck_labels.crops(
    [image for folder in marking.cohorts for image in speck_labels.read_cohort(folder)],
    random_per_image=marking.detector_negatives,
    bright_per_image=marking.detector_negatives,
  )


def _detector(
  folder: pathlib.Path, marking: Marking, crops: Callable[[], speck_labels.Crops]
) -> speck_detector.SpeckDetector:
  """A speck detector: trained on `crops()` unless a run with the same cohorts, training and
  architecture saved it."""
  meta = {
    "cohorts": list(marking.cohorts),
    "negatives": marking.detector_negatives,
    "training": dataclasses.asdict(marking.detector_training),
    "real_crops": marking.detector_real_crops,
  }
  if (folder / speck_detector.CONFIG_FILE).exists():
    saved = json.loads((folder / speck_detector.CONFIG_FILE).read_text())
    before = {"real_crops": 0}  # what a detector saved before the key was trained with
    if speck_detector.DetectorConfig(**saved["config"]) == marking.detector and all(
      saved["meta"].get(k, before.get(k)) == v for k, v in meta.items()
    ):
      return speck_detector.load(folder)
  training = crops()
  detector, _ = speck_detector.train(training, marking.detector, marking.detector_training)
  speck_detector.save(folder, detector, {**meta, "crops": len(training.labels)})
  return detector


def _calibrated(
  folder: pathlib.Path,
  detector: speck_detector.SpeckDetector,
  marking: Marking,
  sources: Sequence[reranking.Readable],
) -> speck_detector.SpeckDetector:
  """`detector` (saved in `folder`) with its logits shifted so that the marking's speck fraction
  of the breast of `sources` lies above its threshold (no shift without a fraction), saved so;
  a saved detector calibrated the same way is returned as it is."""
  wanted = (
    {
      "fraction": marking.detector_speck_fraction,
      "threshold": marking.speck_rule.threshold,
      "images": len(sources),
    }
    if marking.detector_speck_fraction
    else None
  )
  meta = json.loads((folder / speck_detector.CONFIG_FILE).read_text())["meta"]
  if meta.get("calibration") == wanted:
    return detector
  shift = 0.0
  if wanted:
    if not sources:
      raise ValueError(f"{folder}: no image without calcifications to calibrate the detector on")
    raw = speck_detector.calibrated(detector, 0.0)
    values = [network_speck_map(raw, source.read()[0]).values for source in sources]
    values = np.concatenate([v[v > 0] for v in values])
    shift = speck_detector.logit_shift(values, wanted["fraction"], wanted["threshold"])
    # what the raw map left above the threshold: how far apart detectors trained apart are
    meta["uncalibrated_fraction"] = float(np.mean(values > wanted["threshold"]))
    logging.info("%s: %.2e of the breast above %g, logit shifted by %+.3f", folder,
                 meta["uncalibrated_fraction"], wanted["threshold"], shift)  # fmt: skip
  else:
    meta.pop("uncalibrated_fraction", None)
  detector = speck_detector.calibrated(detector, shift)
  speck_detector.save(folder, detector, {**meta, "calibration": wanted})
  return detector


def marked_image(
  workdir: pathlib.Path,
  marking: Marking,
  image: froc.ScoredImage,
  source: reranking.Readable,
  speck_map: SpeckMapOf = mammogram_speck_map,
) -> marks.MarkedImage:
  """One image's marks (cached in WORKDIR/marks/<rules>/), with the tile path's probability
  under each."""
  folder = workdir / MARKS_DIR / marking.cache
  found = marks.with_tiles(
    _cached_marks(folder, marking, image.key, source, speck_map), image.scores
  )
  return marks.MarkedImage(
    image.key,
    image.patient_id,
    image.breast,
    tuple(found),
    image.clusters,
    image.scores.geometry.pixel_spacing_mm,
  )


def _cached_marks(
  folder: pathlib.Path,
  marking: Marking,
  key: str,
  source: reranking.Readable,
  speck_map: SpeckMapOf,
) -> list[marks.Mark]:
  """The image's unclassified marks, from the cache where these rules made them before."""
  path = folder / f"{key}.json"
  if path.exists():  # (a cache written before a context feature was added gets it here)
    return marks.with_context([marks.from_json(d) for d in json.loads(path.read_text())])
  mammogram, _ = source.read()
  found = marks.mark_image(
    speck_map(mammogram),
    key,
    speck_rule=marking.speck_rule,
    rule=marking.cluster_rule,
  )
  folder.mkdir(parents=True, exist_ok=True)
  files.write_text(path, json.dumps([marks.to_json(m) for m in found]))
  return found


def _fitted(
  marking: Marking, train: Sequence[marks.MarkedImage], validation: Sequence[marks.MarkedImage]
) -> marks.ClusterClassifier:
  classifier = marks.fit_classifier(
    train,
    validation,
    marking.features,
    c=marking.classifier_c,
    hit_distance_mm=marking.hit_distance_mm,
  )
  return dataclasses.replace(
    classifier, speck_rule=marking.speck_rule, cluster_rule=marking.cluster_rule
  )


def operating_point(
  images: Sequence[marks.MarkedImage], false_marks_per_image: float, hit_distance_mm: float
) -> marks.OperatingPoint:
  """The lowest Task 1 threshold with at most `false_marks_per_image` false marks per image
  among the (classified) marks of `images`."""
  results = [marks.evaluate_image(im, hit_distance_mm) for im in images]
  false = np.sort(np.concatenate([np.zeros(0), *(r.false_positives for r in results)]))[::-1]
  allowed = int(np.floor(false_marks_per_image * len(images)))
  threshold = 0.0 if allowed >= false.size else float(np.nextafter(false[allowed], np.inf))
  return marks.OperatingPoint(threshold, false_marks_per_image)


def at_operating_point(
  images: Sequence[marks.MarkedImage], threshold: float, hit_distance_mm: float
) -> dict[str, Any]:
  """Clusters found and false marks at `threshold`, with normal-approximation 95% intervals."""
  results = [marks.evaluate_image(im, hit_distance_mm) for im in images]
  found = [s >= threshold for r in results for s in r.cluster_scores]
  normal = [int(np.sum(r.false_positives >= threshold)) for r in results if not r.clusters]
  sensitivity = float(np.mean(found)) if found else float("nan")
  return {
    "clusters_found": int(np.sum(found)),
    "clusters": len(found),
    "sensitivity": sensitivity,
    "sensitivity_ci": metrics.wald_interval(sensitivity, len(found)).to_json(),
    "false_marks_per_normal_image": float(np.mean(normal)) if normal else float("nan"),
    "false_marks_per_normal_image_ci": list(_mean_interval(normal)),
    "normal_images": len(normal),
  }


def _mean_interval(counts: Sequence[int]) -> tuple[float, float]:
  """A mean count's normal-approximation 95% interval."""
  if len(counts) < 2:
    return float("nan"), float("nan")
  mean, half = np.mean(counts), metrics.Z_95 * np.std(counts, ddof=1) / np.sqrt(len(counts))
  return float(max(0.0, mean - half)), float(mean + half)


def _final(
  marking: Marking, marked: Sequence[marks.MarkedImage], point: marks.OperatingPoint
) -> marks.ClusterClassifier:
  """The classifier for new images: fitted on every image's marks and Platt-scaled on them (its
  probabilities then mean what the folds' do, so the out-of-fold operating point carries over)."""
  return dataclasses.replace(_fitted(marking, marked, marked), operating_point=point)
