"""A cross-validation's CAD marks: the operating point chosen by false marks per image, and the
marks of a small cohort classified out of fold, evaluated and saved for `mcalc-score`."""

from __future__ import annotations

import dataclasses
import json

import numpy as np
import pytest

from input_pipeline.mammogram import Mammogram
from mcalc_jax.configs import default
from mcalc_jax.experiments import marking
from mcalc_jax.model import speck_detector
from mcalc_jax.whole_image import froc, marks, reranking, specks
from mcalc_jax.whole_image.tiling import ImageScores, TileGeometry
from tests.test_speck_detector import breast_image, write_cohort

PIXEL_MM = 0.2
SIDE = 300  # pixels: a 60-mm image


def mark(row: float, col: float, p: float) -> marks.Mark:
  return marks.Mark("k", 0, row, col, (row, col, row, col), 3, p, np.nan, {})


def test_the_operating_point_allows_the_stated_false_marks_per_image():
  hit = froc.Cluster("c", "", 100, 100, 20)
  images = [
    marks.MarkedImage("a", "P1", "P1/L", (mark(100, 100, 0.8), mark(500, 500, 0.9)), (hit,), 0.1),
    marks.MarkedImage("b", "P2", "P2/L", (mark(0, 0, 0.5), mark(9, 9, 0.2)), (), 0.1),
    marks.MarkedImage("c", "P3", "P3/L", (mark(0, 0, 0.3),), (), 0.1),
  ]
  point = marking.operating_point(images, 0.5, marks.HIT_DISTANCE_MM)
  assert 0.5 < point.threshold < 0.50001  # one false mark (0.9) in three images at most
  found = marking.at_operating_point(images, point.threshold, marks.HIT_DISTANCE_MM)
  assert found["clusters_found"] == 1 and found["false_marks_per_normal_image"] == 0
  point = marking.operating_point(images, 1.0, marks.HIT_DISTANCE_MM)  # three of the four
  found = marking.at_operating_point(images, point.threshold, marks.HIT_DISTANCE_MM)
  assert point.threshold == pytest.approx(0.2) and found["clusters_found"] == 1
  assert found["false_marks_per_normal_image"] == 1.0  # 0.5 in b, 0.3 in c


class Drawn:
  """An input whose pixels are drawn here: a breast (a half disc) with bright specks."""

  def __init__(self, specks_at: list[tuple[int, int, float]], seed: int):
    rng = np.random.default_rng(seed)
    rows, cols = np.mgrid[:SIDE, :SIDE]
    breast = np.hypot(rows - SIDE / 2, cols) < 0.45 * SIDE
    pixels = np.where(breast, 1600 + 20 * rng.normal(size=breast.shape), 40)
    for row, col, height in specks_at:
      pixels[row - 1 : row + 1, col - 1 : col + 1] += height
    self.mammogram = Mammogram(
      pixels.astype(np.uint16), 4095, 12, (PIXEL_MM,) * 2, False, "L", "CC", False, breast.shape, ""
    )

  def read(self) -> tuple[Mammogram, object]:
    return self.mammogram, None


def cluster_at(row: int, col: int, height: float) -> list[tuple[int, int, float]]:
  """Four specks 2-3 mm apart around (row, col)."""
  return [(row + dr, col + dc, height) for dr, dc in ((0, 0), (0, 12), (12, 0), (12, 12))]


def cohort(n: int) -> tuple[list[froc.ScoredImage], dict[str, Drawn]]:
  """n patients, one image each: a true cluster (bright specks, annotated) and a false one
  (fainter specks); one tile over each half of the image, the true cluster's tile hotter."""
  geometry = TileGeometry(
    np.array([0]), np.array([0, 150]), 150, 150, (SIDE,) * 2, (SIDE,) * 2, False, PIXEL_MM
  )
  images, inputs = [], {}
  for k in range(n):
    true, false = (60, 20 + 5 * k), (200, 40)
    inputs[f"i{k}"] = Drawn(cluster_at(*true, 900) + cluster_at(*false, 300), k)
    scores = ImageScores(geometry, np.array([[0.9, 0.2]], np.float32), None, 0.5, 0.0)
    cluster = froc.Cluster("c", "malignant", true[0] + 6, true[1] + 6, 15)
    images.append(froc.ScoredImage(f"i{k}", f"p{k}", f"p{k}/L", scores, (cluster,)))
  return images, inputs


def test_a_cohorts_marks_are_classified_out_of_fold_and_the_classifier_is_saved(tmp_path):
  images, inputs = cohort(6)
  patients = [f"p{k}" for k in range(6)]
  assignment = [
    {
      "test": patients[i : i + 2],
      "validation": patients[(i + 2) % 6 : (i + 2) % 6 + 1],
      "train": [p for p in patients if p not in patients[i : i + 2]][1:],
    }
    for i in (0, 2, 4)
  ]
  setting = marking.Marking(features=("max_peak", "tile_probability"))
  result = marking.mark_folds(tmp_path, assignment, setting, images, inputs, seed=0, resamples=20)

  assert result["counts"]["clusters"] == 6 and result["counts"]["marks_per_image"] == 2
  assert result["metrics"]["sensitivity_at_0.5_fp"] == 1.0  # every true mark above every false
  assert result["operating_point"]["false_marks_per_image"] == 0.5
  froc_json = json.loads((tmp_path / "eval" / "froc_marks" / "froc.json").read_text())
  assert froc_json["counts"]["marks_per_normal_image"] == 0.0  # no image without a cluster
  saved = marks.load(tmp_path / marking.CLASSIFIER_FILE)
  assert saved.needs_tiles and saved.operating_point.threshold == pytest.approx(
    result["operating_point"]["threshold"]
  )
  found = marks.mark_mammogram(inputs["i0"].mammogram, "i0", saved, images[0].scores)
  assert [m.specks for m in marks.reported(found, saved)] == [4]  # the true cluster alone
  # the marks are cached by their rules: a second pass reads them back, identically, and with a
  # bilateral weight evaluates them once more against the other breast (here: none has one)
  again = marking.mark_folds(tmp_path, assignment, setting, images, inputs, 0, 20, 0.5)
  assert json.dumps({k: again[k] for k in result}) == json.dumps(result)
  assert again["bilateral"]["metrics"] == result["metrics"]
  assert (tmp_path / "eval" / "froc_marks_bilateral" / "froc.json").exists()


def test_a_digital_cohort_gives_its_own_classifier_chosen_out_of_background(tmp_path):
  """Clusters inserted into a few real FFDM backgrounds: each background's marks are classified
  by a classifier fitted on the other backgrounds', and the one saved for digital archives
  takes the operating point those out-of-background marks give."""
  images, inputs = cohort(4)  # (here drawn: four backgrounds, one insertion each)
  setting = marking.Marking(features=("max_peak", "tile_probability"))
  result = marking.mark_digital(tmp_path, setting, images, inputs, seed=0, resamples=20)

  assert result["counts"]["clusters"] == 4
  assert result["metrics"]["sensitivity_at_0.5_fp"] == 1.0  # every true mark above every false
  saved = marks.load(tmp_path / marking.DIGITAL_CLASSIFIER_FILE)
  assert saved.operating_point.threshold == pytest.approx(result["operating_point"]["threshold"])
  assert list((tmp_path / marking.DIGITAL_DIR / marking.MARKS_DIR).rglob("i0.json"))  # cached
  assert (tmp_path / marking.DIGITAL_DIR / "froc_marks" / "froc.json").exists()
  # a background whose removal leaves nothing to learn from says so
  alone = [images[0], *(dataclasses.replace(im, clusters=()) for im in images[1:])]
  skipped = marking.mark_digital(tmp_path / "b", setting, alone, inputs, seed=0, resamples=20)
  assert "no cluster classifier can be fitted" in skipped["skipped"]


def test_marks_are_skipped_with_a_reason_when_a_fold_has_nothing_to_learn_from(tmp_path):
  images, inputs = cohort(4)
  images = [dataclasses.replace(im, clusters=()) for im in images]  # no cluster annotated
  patients = [f"p{k}" for k in range(4)]
  assignment = [{"test": patients[:2], "validation": [], "train": patients[2:]}]
  result = marking.mark_folds(tmp_path, assignment, marking.Marking(), images, inputs, 0, 20)
  assert "no cluster classifier can be fitted" in result["skipped"]


def test_an_unknown_feature_is_refused():
  with pytest.raises(reranking.RerankerError, match="unknown cluster features"):
    marking.Marking(features=("specks", "colour"))
  with pytest.raises(ValueError, match="marks' tiles must be one of"):
    marking.Marking(tiles="calibrated")


def test_a_trained_speck_map_takes_its_own_threshold_and_cache():
  config = default.get_config("task=1,model=specknet")
  classical = marking.Marking.from_config(config)
  config.marks.detector_cohort = "runs/cohorts/inserted_mias_0"
  trained = marking.Marking.from_config(config)
  assert classical.speck_rule.threshold == config.marks.speck_threshold
  assert trained.speck_rule.threshold == config.marks.detector_threshold  # a probability
  assert trained.cache != classical.cache  # their marks never mix
  config.marks.detector_negatives, config.marks.detector_steps = 8, 100
  retrained = marking.Marking.from_config(config)
  assert (retrained.detector_negatives, retrained.detector_training.steps) == (8, 100)
  assert retrained.cache != trained.cache  # another detector, other marks
  config.marks.detector_members = 3
  ensemble = marking.Marking.from_config(config)
  assert ensemble.detector.members == 3 and ensemble.cache != retrained.cache
  config.marks.classifier_c = 0.1
  assert marking.Marking.from_config(config).classifier_c == 0.1
  config.marks.tiles = "network"  # tile features from the network's grids, not the reranker's
  assert marking.Marking.from_config(config).tiles == "network"
  config.marks.detector_speck_fraction = 1e-3
  shifted = marking.Marking.from_config(config)
  assert shifted.detector_speck_fraction == 1e-3 and shifted.cache != ensemble.cache
  config.marks.detector_real_crops = 16  # crops around each real cluster, weakly labelled
  weak = marking.Marking.from_config(config)
  assert weak.detector_real_crops == 16 and weak.cache != shifted.cache
  config.marks.enabled = False
  assert marking.Marking.from_config(config) is None


def tiny_detector_marking(tmp_path, patients=("p0", "p1", "p2")) -> marking.Marking:
  """Marks by detectors trained two steps on one inserted cluster per patient's cohort."""
  cohorts = []
  for patient in patients:
    folder = tmp_path / "cohorts" / patient
    write_cohort(folder, breast_image((120, 100)), [(60, 70, 0.1), (64, 76, 0.1)], patient)
    cohorts.append(str(folder))
  return marking.Marking(
    detector_cohort=",".join(cohorts),
    detector_training=speck_detector.TrainOptions(steps=2, batch=2),
    detector_negatives=1,
  )


def test_fold_detectors_learn_from_their_training_patients_and_every_patient_outside_the_cv(
  tmp_path,
):
  # "ffdm": another cohort's background, in no fold
  setting = tiny_detector_marking(tmp_path, ("p0", "p1", "p2", "ffdm"))
  cohorts = list(setting.cohorts)
  assignment = [
    {"train": ["p0", "p1"], "validation": [], "test": ["p2"]},
    {"train": ["p1", "p2"], "validation": [], "test": ["p0"]},
  ]
  per_fold, _ = marking.detectors(tmp_path / "run", setting, assignment)  # and one for new images
  assert len(per_fold) == 2

  def meta(folder: str) -> dict:
    path = tmp_path / "run" / folder / marking.DETECTOR_DIR / speck_detector.CONFIG_FILE
    return json.loads(path.read_text())["meta"]

  per_image = 4 + 1 + 1  # the cluster's 4 jittered crops, one at random, one on a bright spot
  crops = [meta(folder)["crops"] for folder in ("fold_0", "fold_1", ".")]
  assert crops == [3 * per_image, 3 * per_image, 4 * per_image]  # "ffdm" trains every fold
  assert meta("fold_0")["cohorts"] == cohorts


def test_real_clusters_weakly_train_only_the_folds_that_hold_their_patients_for_training(tmp_path):
  setting = dataclasses.replace(tiny_detector_marking(tmp_path), detector_real_crops=2)
  images, inputs = cohort(3)  # p0, p1, p2: one annotated cluster each
  clustered = {image.patient_id: [(image, inputs[image.key])] for image in images}
  assignment = [
    {"train": ["p0", "p1"], "validation": [], "test": ["p2"]},
    {"train": ["p1", "p2"], "validation": [], "test": ["p0"]},
  ]

  def crops(setting: marking.Marking) -> list[int]:
    marking.detectors(tmp_path / "run", setting, assignment, clustered=clustered)
    folders = [tmp_path / "run" / f / marking.DETECTOR_DIR for f in ("fold_0", "fold_1", ".")]
    return [
      json.loads((f / speck_detector.CONFIG_FILE).read_text())["meta"]["crops"] for f in folders
    ]

  per_image = 4 + 1 + 1  # each cohort image's crops (as above)
  assert crops(setting) == [2 * per_image + 2 * 2, 2 * per_image + 2 * 2, 3 * per_image + 3 * 2]
  unweighted = dataclasses.replace(setting, detector_real_crops=0)  # retrained, not reused
  assert crops(unweighted) == [2 * per_image, 2 * per_image, 3 * per_image]
  assert unweighted.cache != setting.cache


def test_each_detector_is_calibrated_on_its_validation_patients_images_without_calcifications(
  tmp_path, monkeypatch
):
  setting = dataclasses.replace(
    tiny_detector_marking(tmp_path),
    speck_rule=specks.SpeckRule(threshold=0.85),  # a probability
    detector_speck_fraction=0.01,
  )
  assignment = [
    {"train": ["p0"], "validation": ["p1"], "test": ["p2"]},
    {"train": ["p1"], "validation": ["p2"], "test": ["p0"]},
  ]
  normals = {p: [Drawn([], seed=k)] for k, p in enumerate(("p0", "p1", "p2"))}
  per_fold, final = marking.detectors(tmp_path / "run", setting, assignment, normals)
  threshold = setting.speck_rule.threshold
  for detector, fold in zip(per_fold, assignment, strict=True):
    (validation,) = normals[fold["validation"][0]]
    values = specks.network_speck_map(detector, validation.mammogram).values
    assert np.mean(values[values > 0] > threshold) == pytest.approx(0.01, abs=0.002)
  saved = json.loads(
    (tmp_path / "run" / marking.DETECTOR_DIR / speck_detector.CONFIG_FILE).read_text()
  )
  assert saved["meta"]["calibration"]["images"] == 3  # the one for new images: everyone's
  raw = speck_detector.calibrated(final, 0.0)  # what the raw map left above the threshold
  values = np.concatenate(
    [specks.network_speck_map(raw, d.mammogram).values for (d,) in normals.values()]
  )
  assert saved["meta"]["uncalibrated_fraction"] == np.mean(values[values > 0] > threshold)
  assert saved["logit_shift"] == final.logit_shift != 0

  def fail(*_):
    raise AssertionError("a saved calibration is computed again")

  monkeypatch.setattr(marking, "network_speck_map", fail)
  again, _ = marking.detectors(tmp_path / "run", setting, assignment, normals)
  assert [d.logit_shift for d in again] == [d.logit_shift for d in per_fold]
  unshifted = dataclasses.replace(setting, detector_speck_fraction=0.0)  # the same detectors
  assert [d.logit_shift for d in marking.detectors(tmp_path / "run", unshifted, assignment)[0]] == [
    0.0,
    0.0,
  ]
