"""CAD marks: specks on hand-built maps grouped by the cluster rule at any pixel size, mark FROC on
a hand-built case, marks mapped back to a flipped original, and a real mini-MIAS smoke test."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from input_pipeline.importers import import_mias
from input_pipeline.mammogram import Mammogram, Orientation, read_mammogram, spacing_options
from mcalc_jax.base import calibration
from mcalc_jax.whole_image import clusters, froc, marks, reranking, specks
from tests.test_froc import grid_image

SPECK_MM = 0.4  # side of a hand-built speck


def speck_map(centres_mm: list[tuple[float, float]], pixel_mm: float) -> specks.SpeckMap:
  """A 60 x 60 mm map of zeros with a 0.4-mm square speck of value 10 at each (row, col) mm."""
  n = round(60 / pixel_mm)
  values = np.zeros((n, n), np.float32)
  side = round(SPECK_MM / pixel_mm)
  for row, col in centres_mm:
    top, left = round(row / pixel_mm - side / 2), round(col / pixel_mm - side / 2)
    values[top : top + side, left : left + side] = 10.0
  return specks.SpeckMap(values, pixel_mm)


def clusters_of(centres_mm, pixel_mm, rule=clusters.CLUSTER_RULE):
  return clusters.group(specks.find_specks(speck_map(centres_mm, pixel_mm)), rule)


@pytest.mark.parametrize("pixel_mm", [0.1, 0.2])
def test_three_specks_3_mm_apart_are_a_cluster_and_two_are_not(pixel_mm):
  (cluster,) = clusters_of([(20, 20), (20, 23), (23, 20)], pixel_mm)
  assert len(cluster.specks) == 3
  assert all(s.area_mm2 == pytest.approx(SPECK_MM**2) for s in cluster.specks)
  np.testing.assert_allclose(cluster.points_mm.mean(0), [21, 21], atol=pixel_mm / 2)
  assert clusters_of([(20, 20), (20, 23)], pixel_mm) == []


@pytest.mark.parametrize("pixel_mm", [0.1, 0.2])
def test_two_groups_3_cm_apart_are_two_clusters(pixel_mm):
  group = [(10, 10), (10, 13), (13, 10)]
  found = clusters_of(group + [(r + 30, c + 30) for r, c in group], pixel_mm)
  assert [len(c.specks) for c in found] == [3, 3]
  assert found[1].points_mm.mean(0) - found[0].points_mm.mean(0) == pytest.approx([30, 30], abs=0.1)


def test_linked_specks_spread_wider_than_one_square_centimetre_are_not_a_cluster():
  line = [(20, 5), (20, 11), (20, 17)]  # linked at 7 mm, but 12 mm end to end
  assert clusters_of(line, 0.2, clusters.ClusterRule(link_mm=7)) == []
  assert len(clusters_of(line, 0.2, clusters.ClusterRule(link_mm=7, region_mm=12))) == 1


def test_objects_larger_than_a_microcalcification_are_not_specks():
  values = np.zeros((100, 100), np.float32)
  values[10:20, 10:20] = 10.0  # 2 x 2 mm at 0.2 mm: a label's corner, a large benign calcification
  values[50, 50] = 10.0
  (speck,) = specks.find_specks(specks.SpeckMap(values, 0.2))
  assert (speck.row, speck.col, speck.row_mm, speck.col_mm) == pytest.approx((50, 50, 10.1, 10.1))


def test_cluster_features_describe_count_extent_and_a_line():
  (cluster,) = clusters_of([(20, 20), (20, 23), (20, 26)], 0.2)
  features = clusters.describe(cluster)
  assert list(features) == list(clusters.FEATURES)
  assert features["specks"] == 3 and features["extent_mm"] == pytest.approx(6)
  assert features["density_per_cm2"] == pytest.approx(3 / (1 * 6 / 100))  # 1 mm: the least side
  assert features["linearity"] == pytest.approx(1)
  assert features["max_peak"] == features["mean_value"] == 10 and features["std_peak"] == 0


def test_each_mark_knows_how_many_marks_its_image_holds_and_how_far_below_the_top_one_it_is():
  bright = [(20, 20), (20, 23), (23, 20)]
  faint = [(r, c + 30) for r, c in bright]  # 3 cm away: another cluster
  values = speck_map(bright + faint, 0.2)
  values.values[:, 150:] /= 2  # the faint cluster's specks at 5, the bright one's at 10
  first, second = marks.mark_image(values, "k")
  assert first.features["marks_in_image"] == second.features["marks_in_image"] == 2
  assert first.features["below_image_top"] == 0.0
  assert second.features["below_image_top"] == pytest.approx(5.0)


def test_each_mark_knows_the_tile_probability_under_it_and_the_images_hottest_tile():
  hot, cool = [(5, 5), (5, 8), (8, 5)], [(5, 35), (5, 38), (8, 35)]  # mm: one per tile
  found = marks.mark_image(speck_map(hot + cool, 0.2), "k")
  scores = grid_image([[0.9, 0.3, np.nan]], stride=150)  # 100-px tiles every 150 px
  first, second = marks.with_tiles(found, scores)  # (the map's pixels are the image's)
  assert first.features["tile_probability"] == pytest.approx(0.9)
  assert second.features["tile_probability"] == pytest.approx(0.3)
  assert first.features["image_tile_top"] == second.features["image_tile_top"] == pytest.approx(0.9)
  unscored = grid_image([[np.nan]])
  assert marks.with_tiles(found, unscored)[0].features["image_tile_top"] == 0.0


def test_a_marks_centre_and_box_map_back_to_the_original_pixels_of_a_flipped_image():
  rng = np.random.default_rng(0)
  original = 0.3 + 0.002 * rng.normal(size=(300, 400)).astype(np.float32)
  specks_at = [(100, 300), (100, 315), (115, 300)]  # original pixels, 0.2 mm: 3 mm apart
  for row, col in specks_at:
    original[row, col] += 0.1
  canonical = np.fliplr(original)  # what read_mammogram gives of a right-side breast
  speck_map = specks.classical_speck_map(
    canonical, 0.2, orientation=Orientation(True, 400), mask=np.ones(canonical.shape, bool)
  )
  (mark,) = marks.mark_image(speck_map, "im")
  assert (mark.row, mark.col) == pytest.approx(np.mean(specks_at, 0))
  assert mark.box == pytest.approx((100, 300, 115, 315))
  assert mark.specks == 3 and np.isnan(mark.task1) and np.isnan(mark.task2)


def test_a_fine_mammogram_is_marked_at_the_rules_millimetres_and_mapped_back_to_its_pixels():
  """A 0.1-mm right-breast image is brought down to 0.2 mm for its speck map; its mark's centre
  lands on its specks in the original 0.1-mm pixels."""
  rng = np.random.default_rng(0)
  original = 2000 + 8 * rng.normal(size=(600, 800))
  specks_at = [(200, 600), (200, 630), (230, 600)]  # original pixels, 3 mm apart
  for row, col in specks_at:
    original[row - 2 : row + 2, col - 2 : col + 2] += 400  # 0.4-mm specks
  pixels = np.fliplr(original).astype(np.uint16)
  mammogram = Mammogram(pixels, 4095, 12, (0.1, 0.1), False, "R", "CC", True, (600, 800), "")
  speck_map = specks.mammogram_speck_map(mammogram)
  assert speck_map.pixel_mm == pytest.approx(0.2) and speck_map.image_pixel_mm == 0.1
  found = marks.mark_image(speck_map, "im")
  (mark,) = [m for m in found if m.specks == 3]
  assert (mark.row, mark.col) == pytest.approx(np.mean(specks_at, 0) - 0.5, abs=1.0)


def mark(row: float, col: float, p: float) -> marks.Mark:
  return marks.Mark("k", 0, row, col, (row, col, row, col), 3, p, np.nan, {})


@pytest.fixture
def marked() -> list[marks.MarkedImage]:
  """A: a circle (r = 20 px) found at 0.8 (again at 0.7), a point annotation found at 0.4 by a
  mark 4 mm away, false marks at 0.9 and 0.3 (6 mm from the point); B: normal, false marks at 0.5
  and 0.2; C: a cluster and no mark. Pixels of 0.1 mm, point hits within 5 mm (50 px)."""
  circle = froc.Cluster("circle", "benign", 100, 100, 20)
  point = froc.Cluster("point", "", 300, 300, 0)
  a = (
    mark(500, 500, 0.9),
    mark(105, 100, 0.8),
    mark(110, 95, 0.7),
    mark(300, 340, 0.4),
    mark(300, 360, 0.3),
  )
  return [
    marks.MarkedImage("a", "P1", "P1/L", a, (circle, point), 0.1),
    marks.MarkedImage("b", "P2", "P2/L", (mark(0, 0, 0.5), mark(9, 9, 0.2)), (), 0.1),
    marks.MarkedImage("c", "P3", "P3/R", (), (froc.Cluster("missed", "", 50, 50, 10),), 0.1),
  ]


def test_mark_froc_of_a_hand_built_case(marked):
  a = marks.evaluate_image(marked[0])
  assert a.cluster_scores == (0.8, 0.4) and a.cluster_ranks == (2, 4)
  np.testing.assert_array_equal(a.false_positives, [0.9, 0.3])  # 0.7: a second mark, ignored
  assert marks.evaluate_image(marked[2]).cluster_ranks == (None,)
  out = marks.evaluate_marks(marked, resamples=20)
  curve = out["curve"]
  np.testing.assert_allclose(curve["threshold"], [0.9, 0.8, 0.5, 0.4, 0.3, 0.2])
  np.testing.assert_allclose(curve["sensitivity"], np.array([0, 1, 1, 2, 2, 2]) / 3)
  np.testing.assert_allclose(curve["fp_per_image"], np.array([1, 1, 2, 2, 3, 4]) / 3)
  assert out["metrics"]["sensitivity_at_0.5_fp"] == pytest.approx(1 / 3)
  assert out["metrics"]["sensitivity_at_1_fp"] == pytest.approx(2 / 3)
  assert out["metrics"]["image_auc"] == 0.5  # A (0.9) above B (0.5), C (no mark) below
  assert (
    out["counts"]["marks_per_normal_image"] == 2 and out["counts"]["false_positive_regions"] == 4
  )
  assert out["hit_rule"] == marks.HIT_RULE and "5 mm" in out["hit_rule"]


def test_a_point_annotation_is_hit_within_the_stated_distance(marked):
  result = marks.evaluate_image(marked[0], hit_distance_mm=6.0)  # now 0.3 is on the point too
  np.testing.assert_array_equal(result.false_positives, [0.9])
  assert result.cluster_scores == (0.8, 0.4)


def test_marks_without_a_classifier_are_judged_by_a_stated_score_only(marked):
  unscored = marks.MarkedImage("d", "P4", "P4/L", (mark(1, 1, np.nan),), (), 0.1)
  with pytest.raises(ValueError, match="fit a classifier, or pass score="):
    marks.evaluate_image(unscored)
  assert marks.evaluate_image(unscored, score=lambda m: m.specks).max_score == 3


def features_of(specks: float) -> dict[str, float]:
  return {name: 0.0 for name in clusters.FEATURES} | {"specks": specks}


def classifier_case(rng, n: int) -> list[marks.MarkedImage]:
  """Images with one true mark (about 8 specks, on the cluster) and two false ones (about 4)."""
  images = []
  for k in range(n):
    counts = [rng.normal(8, 1), rng.normal(4, 1), rng.normal(4, 1)]
    ms = tuple(
      marks.Mark(f"i{k}", j, 10 + 100 * j, 10, (0, 0, 0, 0), 3, np.nan, np.nan, features_of(c))
      for j, c in enumerate(counts)
    )
    cluster = froc.Cluster("c", "", 10, 10, 5)
    images.append(marks.MarkedImage(f"i{k}", f"p{k}", f"p{k}/L", ms, (cluster,), 0.2))
  return images


def test_marks_read_against_the_other_breast_drop_by_its_top_mark_and_keep_their_order(marked):
  a, b, c = marked
  pairs = {"a": "b", "b": "a"}  # c has no partner
  compared = {im.key: im for im in marks.against_other_breast([a, b, c], pairs, weight=1.0)}
  expected = calibration.Platt(intercept=-float(calibration.logit(0.5))).apply(
    np.array([m.task1 for m in a.marks])
  )
  np.testing.assert_allclose([m.task1 for m in compared["a"].marks], expected, rtol=1e-6)
  lowered = zip(compared["b"].marks, b.marks, strict=True)
  assert all(now.task1 < before.task1 for now, before in lowered)  # by a's top mark, 0.9
  assert compared["c"] == c  # no other breast, no mark: unchanged
  order = [m.row for m in sorted(compared["a"].marks, key=lambda m: -m.task1)]
  assert order == [m.row for m in sorted(a.marks, key=lambda m: -m.task1)]
  with pytest.raises(ValueError, match="bilateral weight"):
    marks.against_other_breast([a, b], pairs, weight=-1.0)


def test_the_cluster_classifier_ranks_true_marks_first_is_calibrated_and_survives_json(tmp_path):
  rng = np.random.default_rng(0)
  classifier = marks.fit_classifier(classifier_case(rng, 30), classifier_case(rng, 30))
  assert classifier.platt != calibration.Platt()
  test = [
    dataclasses.replace(im, marks=tuple(marks.classified(im.marks, classifier)))
    for im in classifier_case(rng, 10)
  ]
  assert all(im.marks[0].task1 == max(m.task1 for m in im.marks) for im in test)
  reranking.save(tmp_path / "classifier.json", classifier)
  again = marks.load(tmp_path / "classifier.json")
  features = [m.features for m in test[0].marks]
  np.testing.assert_allclose(again.probabilities(features), classifier.probabilities(features))
  tile_reranker = reranking.fit(np.eye(2), np.array([0, 1]), ["tile_max", "speck_line"])
  (tmp_path / "tile.json").write_text(tile_reranker.to_json())
  with pytest.raises(reranking.RerankerError, match="tile.json: not a cluster classifier's JSON"):
    marks.load(tmp_path / "tile.json")


@pytest.mark.parametrize("ref", ["mdb219", "mdb241"])
def test_the_classical_map_marks_a_real_mini_mias_cluster(mias_dir, ref):
  findings = [f for f in import_mias(mias_dir, check_breast=False) if ref in f.image_path]
  mammogram = read_mammogram(findings[0].image_path, spacing_options(findings[0].pixel_spacing_mm))
  (cluster,) = froc.clusters_of(findings)
  speck_map = specks.mammogram_speck_map(mammogram)
  assert len(specks.find_specks(speck_map)) > 3
  found = marks.mark_image(speck_map, ref)
  image = marks.MarkedImage(ref, "p", "p/L", tuple(found), (cluster,), 0.2)
  assert marks.labels(image).any(), f"no mark within the circle of {cluster}"
