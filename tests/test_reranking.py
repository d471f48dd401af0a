"""mcalc_jax.whole_image.reranking: tile features, the balanced logistic regression, refitting out of fold."""

import dataclasses
import json

import numpy as np
import pytest
from sklearn.linear_model import LogisticRegression
from sklearn.preprocessing import StandardScaler

from mcalc_jax.whole_image import froc, reranking
from mcalc_jax.whole_image.tiling import ImageScores, TileGeometry


def scores_of(pixels: np.ndarray, tile: int, spacing_mm: float = 0.2) -> ImageScores:
  """Every `tile`-pixel grid cell scored 0.5, at `spacing_mm` per pixel."""
  rows, cols = np.arange(0, pixels.shape[0], tile), np.arange(0, pixels.shape[1], tile)
  geometry = TileGeometry(
    tile_rows=rows, tile_cols=cols, patch_size=tile, stride=tile, image_shape=pixels.shape,
    original_shape=pixels.shape, flipped=False, pixel_spacing_mm=spacing_mm,
  )  # fmt: skip
  grid = np.full((len(rows), len(cols)), 0.5, np.float32)
  return ImageScores(geometry, grid, None, 0.5, 0.0)


def test_tile_features_count_the_specks_of_each_tile():
  pixels = np.full((20, 40), 0.3)
  for row, col in [(3, 3), (10, 12), (15, 5), (8, 30)]:  # three specks left, one right
    pixels[row, col] = 0.5
  features = reranking.tile_features(pixels, scores_of(pixels, 20))  # disk: 0.4 mm = 2 px
  np.testing.assert_allclose(features[0, 0, :4], np.log1p(3))
  np.testing.assert_allclose(features[0, 1, :4], np.log1p(1))
  np.testing.assert_allclose(features[0, 0, 4:7], [0.2, 0.5, 0.3 + 3 * 0.2 / 400])


def test_relative_specks_read_film_and_its_four_times_brighter_twin_alike():
  """Fine structure four times as bright (FFDM against film) changes the absolute speck counts,
  not the relative ones: specks are counted against the image's own top-hat level."""
  rng = np.random.default_rng(0)
  film = 0.3 + 0.005 * rng.standard_normal((40, 40))  # grain
  for row, col in [(5, 5), (12, 14), (30, 8), (25, 30)]:
    film[row, col] += 0.01  # specks below 0.02 of the range on film
  brighter = 0.3 + 4 * (film - 0.3)
  names = (
    "specks_0.02",
    "relative_specks_1",
    "relative_specks_2",
    "relative_tophat_max",
    "relative_largest_speck_mm2",
    "relative_speck_line",
  )
  one, four = (reranking.tile_features(p, scores_of(p, 20), names) for p in (film, brighter))
  assert (four[..., 0] > one[..., 0]).any()  # above 0.02 of the range: more on the brighter
  np.testing.assert_allclose(four[..., 1:], one[..., 1:], rtol=1e-6)
  assert "relative_specks_1" not in reranking.DEFAULT_FEATURES  # measured, not the default


def test_the_logistic_regression_is_scikit_learns_balanced_one_and_survives_json():
  rng = np.random.default_rng(0)
  x = rng.normal(size=(300, 3))
  y = x[:, 0] + 0.5 * rng.normal(size=300) > 1.2  # imbalanced, not separable
  model = reranking.fit(x, y, reranking.DEFAULT_FEATURES[:3])
  z = StandardScaler().fit_transform(x)
  reference = LogisticRegression(class_weight="balanced").fit(z, y).decision_function(z)
  np.testing.assert_allclose(model.logits(x), reference, atol=5e-3)  # solvers stop at a tolerance
  shrunk = reranking.fit(x, y, reranking.DEFAULT_FEATURES[:3], c=0.1)  # stronger L2, as C=0.1
  reference = LogisticRegression(C=0.1, class_weight="balanced").fit(z, y).decision_function(z)
  np.testing.assert_allclose(shrunk.logits(x), reference, atol=5e-3)
  again = reranking.TileReranker.from_json(model.to_json())
  np.testing.assert_array_equal(again.logits(x), model.logits(x))
  assert again.threshold == 0.5  # mcalc-score's, until one is chosen out of fold
  chosen = dataclasses.replace(model, threshold=0.93)
  assert reranking.TileReranker.from_json(chosen.to_json()).threshold == 0.93
  saved_before = {k: v for k, v in json.loads(chosen.to_json()).items() if k != "threshold"}
  assert reranking.TileReranker.from_json(json.dumps(saved_before)).threshold == 0.5


def speckled_image(rng, key: str, patient: str, cluster_tile: int) -> tuple:
  """A 40x160 image of four 40-px tiles: a cluster of five specks in one tile, a lone bright
  speck in another (a distractor), noise elsewhere."""
  pixels = 0.3 + 0.005 * rng.normal(size=(40, 160))
  for _ in range(5):
    pixels[rng.integers(5, 35), cluster_tile * 40 + rng.integers(5, 35)] += 0.1
  lone = (cluster_tile + 2) % 4
  pixels[20, lone * 40 + 20] += 0.4
  cluster = froc.Cluster("c", "benign", 20.0, cluster_tile * 40 + 20.0, 10.0)
  image = froc.ScoredImage(key, patient, patient + "L", scores_of(pixels, 40), (cluster,))
  return image, pixels


def test_refitting_out_of_fold_ranks_clusters_above_lone_specks_without_seeing_the_fold():
  rng = np.random.default_rng(1)
  made = [speckled_image(rng, f"im{n}", f"p{n}", n % 4) for n in range(12)]
  images = [m[0] for m in made]
  features = {m[0].key: reranking.tile_features(m[1], m[0].scores) for m in made}
  fold_of = {f"p{n}": n % 3 for n in range(12)}
  reranked, models = reranking.refit_folds(images, features, fold_of, reranking.DEFAULT_FEATURES)
  assert sorted(models) == [0, 1, 2]
  for image in reranked:  # every cluster is its image's hottest tile
    assert image.scores.hottest() == (0, int(image.clusters[0].col) // 40)
  # fold 0's grids do not depend on fold 0's own annotations
  moved = [
    dataclasses.replace(im, clusters=()) if fold_of[im.patient_id] == 0 else im for im in images
  ]
  again, _ = reranking.refit_folds(moved, features, fold_of, reranking.DEFAULT_FEATURES)
  for a, b in zip(reranked, again, strict=True):
    if fold_of[a.patient_id] == 0:
      np.testing.assert_array_equal(a.scores.task1, b.scores.task1)
    else:  # the other folds lost a third of their positives
      assert not np.array_equal(a.scores.task1, b.scores.task1)


def test_shape_features_tell_a_line_of_specks_and_a_large_calcification_from_a_cluster():
  names = ("speck_line", "largest_speck_mm2", "bright_fraction")
  pixels = np.full((40, 120), 0.3)
  for k in range(5):
    pixels[5 + 7 * k, 20] = 0.5  # tile 0: specks in a line (a vessel)
  for row, col in [(5, 45), (30, 50), (12, 70), (25, 62), (18, 55)]:
    pixels[row, col] = 0.5  # tile 1: scattered specks (a cluster)
  pixels[10:13, 90:93] = 1.0  # tile 2: a saturated 3x3-px (0.6 mm) calcification
  features = reranking.tile_features(pixels, scores_of(pixels, 40), names)
  line, cluster, large = features[0, 0], features[0, 1], features[0, 2]
  np.testing.assert_allclose(line[0], 1.0)
  assert 0 < cluster[0] < 0.9 and large[0] == 0.0  # one speck: no line
  np.testing.assert_allclose(cluster[1], np.log1p(0.04))  # one pixel of 0.2 mm
  np.testing.assert_allclose(large[1], np.log1p(9 * 0.04))
  assert large[2] == 9 / 1600 and cluster[2] == 0.0


def test_a_straight_edge_across_the_tile_stands_out_from_a_curved_boundary_and_specks():
  pixels = np.full((40, 120), 0.3)
  pixels[:12, :40] = 0.6  # tile 0: a film border, straight across the tile
  rows, cols = np.mgrid[:40, 40:80]
  pixels[:, 40:80][np.hypot(rows - 45, cols - 40) < 30] = 0.6  # tile 1: a curved skin line
  for row, col in [(5, 85), (30, 90), (12, 110), (25, 102)]:
    pixels[row, col] = 0.5  # tile 2: a cluster of specks
  features = reranking.tile_features(pixels, scores_of(pixels, 40), ("straight_edge",))[0, :, 0]
  np.testing.assert_allclose(features[0], 0.3)  # the full step: bands of 0.4 mm = 2 px
  assert features[1] < 0.5 * features[0] and features[2] < 0.05 * features[0]


@pytest.mark.parametrize(
  "edit, message",
  [
    (lambda d: "{ not json", "not a tile reranker's JSON"),
    (lambda d: {k: v for k, v in d.items() if k != "weights"}, "no 'weights'"),
    (lambda d: d | {"weights": [float("nan"), 1.0]}, "not finite"),
    (lambda d: d | {"std": [1.0, 0.0]}, "std is not positive"),
    (lambda d: d | {"mean": [0.0]}, "one number for each of 2 features"),
    (lambda d: d | {"features": ["specks_0.03", "shoe_size"]}, "unknown tile features"),
    (lambda d: d | {"threshold": 1.5}, "threshold 1.5 is not a probability"),
  ],
)
def test_a_damaged_reranker_json_names_its_file_and_what_is_wrong(tmp_path, edit, message):
  model = reranking.TileReranker(
    ("specks_0.03", "tile_max"), np.ones(2), 0.0, np.zeros(2), np.ones(2), 11.2
  )
  edited = edit(json.loads(model.to_json()))
  path = tmp_path / "reranker.json"
  path.write_text(edited if isinstance(edited, str) else json.dumps(edited))

  with pytest.raises(reranking.RerankerError, match=rf"^{path}: .*{message}"):
    reranking.load(path)
