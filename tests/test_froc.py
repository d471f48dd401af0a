"""Whole-image evaluation on hand-built grids whose hits, false positives and ranks are known."""

from __future__ import annotations

import csv
import dataclasses
import json

import numpy as np
import pytest

from input_pipeline.manifest import Finding
from mcalc_jax.archives import scored
from mcalc_jax.base import metrics
from mcalc_jax.whole_image import froc
from mcalc_jax.whole_image.tiling import ImageScores, TileGeometry

NAN = np.nan


def grid_image(values, *, stride: int = 100, flipped: bool = False) -> ImageScores:
  """Scores on a grid of 100-px tiles laid every `stride` px from the top-left corner."""
  values = np.asarray(values, np.float32)
  origins = [np.arange(n) * stride for n in values.shape]
  shape = tuple(int(o[-1]) + 100 for o in origins)
  geometry = TileGeometry(*origins, 100, stride, shape, shape, flipped, pixel_spacing_mm=0.1)
  return ImageScores(geometry, values, None, 0.5, 0.0)


def cluster(row: float, col: float, radius: float = 10.0, name: str = "c") -> froc.Cluster:
  return froc.Cluster(name, "malignant", row, col, radius)


@pytest.fixture
def two_images() -> list[froc.ScoredImage]:
  """P1: clusters in tile (1, 1) (scored 0.8, below a 0.9 false positive) and in an unscored
  tile; P2: a normal image."""
  with_clusters = grid_image([[0.1, 0.2, 0.9], [0.3, 0.8, 0.4], [NAN, 0.2, 0.1]])
  normal = grid_image([[0.5, 0.05], [0.05, 0.05]])
  clusters = (cluster(150, 150, name="found"), cluster(250, 50, name="unscored"))
  return [
    froc.ScoredImage("a", "P1", "P1/L", with_clusters, clusters),
    froc.ScoredImage("b", "P2", "P2/R", normal, ()),
  ]


def test_detections_false_positives_and_ranks_of_a_hand_built_case(two_images):
  a = froc.evaluate_image(two_images[0])
  assert a.cluster_scores == (pytest.approx(0.8), -np.inf)  # found at 0.8; never found
  assert a.cluster_ranks == (2, None)  # one region (0.9) outscores the found cluster
  np.testing.assert_allclose(sorted(a.false_positives), [0.1, 0.1, 0.2, 0.2, 0.3, 0.4, 0.9])


def test_froc_counts_false_positive_regions_per_image_over_every_image(two_images):
  results = [froc.evaluate_image(image) for image in two_images]
  thresholds, sensitivity, fp_rate = froc.froc_curve(results)
  np.testing.assert_allclose(thresholds, [0.9, 0.8, 0.5, 0.4, 0.3, 0.2, 0.1, 0.05], rtol=1e-6)
  np.testing.assert_allclose(sensitivity, [0, 0.5, 0.5, 0.5, 0.5, 0.5, 0.5, 0.5])
  np.testing.assert_allclose(fp_rate, [0.5, 0.5, 1.0, 1.5, 2.0, 3.0, 4.0, 5.5])
  summary = froc.summarize(results)
  assert summary["sensitivity_at_0.5_fp"] == 0.5 and summary["sensitivity_at_2_fp"] == 0.5
  # an operating threshold: the lowest with at most that many false positives per image
  evaluation = froc.evaluate(two_images, resamples=10)
  assert froc.threshold_at(evaluation, 0.5) == pytest.approx(0.8)
  assert froc.threshold_at(evaluation, 1.0) == pytest.approx(0.5)
  assert froc.threshold_at(evaluation, 0.4) == 1.0  # even 0.9 has more: nothing flagged
  assert summary["image_auc"] == 1.0 and summary["median_cluster_rank"] == np.inf


def test_a_second_mark_on_a_found_cluster_is_not_a_false_positive():
  # Two tiles both hit the cluster: its centre is in (0, 1), and (0, 0)'s centre lies within its
  # 80-px radius. The lower mark is ignored, not counted against the model.
  image = froc.ScoredImage("a", "P", "P/L", grid_image([[0.6, 0.7]]), (cluster(50, 110, 80),))
  result = froc.evaluate_image(image)
  assert result.cluster_scores == (pytest.approx(0.7),) and result.false_positives.size == 0


def test_overlapping_tiles_give_one_detection_per_hot_spot():
  scores = grid_image([[0.1, 0.3, 0.1, 0.1], [0.2, 0.9, 0.4, 0.6], [0.1, 0.5, 0.1, 0.2]], stride=50)
  found = froc.detections(scores.task1, scores.geometry)
  assert [(i, j) for i, j, _ in found] == [(1, 1), (1, 3)]  # (1, 3) overlaps no better tile


def test_clusters_are_matched_in_the_original_orientation():
  # A flipped (right-breast) image: the cluster at original column 240 sits in canonical tile 0.
  scores = grid_image([[0.9, 0.1, 0.2]], flipped=True)
  result = froc.evaluate_image(froc.ScoredImage("a", "P", "P/R", scores, (cluster(50, 240),)))
  assert result.cluster_ranks == (1,) and result.cluster_scores == (pytest.approx(0.9),)


def test_evaluation_writes_json_csv_and_plot_with_bootstrap_intervals(two_images, tmp_path):
  evaluation = froc.evaluate(two_images, resamples=50)
  scored.write_froc(tmp_path, evaluation)
  saved = json.loads((tmp_path / "froc.json").read_text())
  assert saved["counts"] == {
    "images": 2,
    "images_with_clusters": 1,
    "clusters": 2,
    "patients": 2,
    "false_positive_regions": 11,
    "tiles_per_image": 6.0,  # 8 scored tiles and 4
  }
  assert saved["tile_mm"] == [10.0] and "hit_rule" in saved
  assert {"low", "high"} <= set(saved["ci"]["sensitivity_at_1_fp"])
  assert (tmp_path / "clusters.csv").read_text().splitlines()[1].startswith("a,P1,found,")
  assert (tmp_path / "froc.png").stat().st_size > 0


def test_images_csv_holds_the_scores_the_image_auc_ranks(two_images, tmp_path):
  evaluation = froc.evaluate(two_images, resamples=5)
  scored.write_froc(tmp_path, evaluation)
  with open(tmp_path / "images.csv", newline="") as f:
    rows = list(csv.DictReader(f))
  assert [(r["image"], r["patient_id"], r["clusters"]) for r in rows] == [
    ("a", "P1", "2"),
    ("b", "P2", "0"),
  ]
  positive = np.array([int(r["clusters"]) > 0 for r in rows], int)
  auc = metrics.roc_auc(positive, [float(r["score"]) for r in rows])
  assert auc == evaluation["metrics"]["image_auc"]


def test_only_trusted_calcification_findings_are_clusters():
  findings = [
    Finding("P", "x.png", "c1", "calcification", "benign", col=10, row=20, radius=5),
    Finding(
      "P", "x.png", "c2", "calcification", "benign", note="annotation_outside_breast", col=1, row=1
    ),
    Finding("P", "x.png", "m1", "mass", "malignant", col=30, row=40, radius=9),
  ]
  assert [c.finding_id for c in froc.clusters_of(findings)] == ["c1"]


def test_clusters_csv_keeps_ids_with_commas_quotes_and_newlines_whole(two_images, tmp_path):
  odd = 'left, upper "A"\nsecond line'
  first = two_images[0]
  clusters = (dataclasses.replace(first.clusters[0], finding_id=odd), first.clusters[1])
  images = [dataclasses.replace(first, clusters=clusters), two_images[1]]
  scored.write_froc(tmp_path, froc.evaluate(images, resamples=5))

  with open(tmp_path / "clusters.csv", newline="") as f:
    rows = list(csv.DictReader(f))
  assert [r["finding_id"] for r in rows] == [odd, "unscored"]
