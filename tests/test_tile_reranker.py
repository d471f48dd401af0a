"""tools.tile_reranker: speck counts per grid tile, and its logistic regression."""

import numpy as np
from sklearn.linear_model import LogisticRegression
from sklearn.preprocessing import StandardScaler

from mcalc_jax.tiling import TileGeometry
from tools import tile_reranker


def test_tile_features_count_the_specks_of_each_tile():
  pixels = np.full((20, 40), 0.3)
  for row, col in [(3, 3), (10, 12), (15, 5), (8, 30)]:  # three specks left, one right
    pixels[row, col] = 0.5
  geometry = TileGeometry(
    tile_rows=np.array([0]), tile_cols=np.array([0, 20]), patch_size=20, stride=20,
    image_shape=(20, 40), original_shape=(20, 40), flipped=False,
  )  # fmt: skip
  features = tile_reranker.tile_features(pixels, geometry, radius_px=2.0)
  np.testing.assert_allclose(features[0, 0][:4], np.log1p(3))
  np.testing.assert_allclose(features[0, 1][:4], np.log1p(1))
  np.testing.assert_allclose(features[0, 0][4:], [0.2, 0.5, 0.3 + 3 * 0.2 / 400])


def test_the_logistic_regression_is_scikit_learns_balanced_one():
  rng = np.random.default_rng(0)
  x = rng.normal(size=(300, 3))
  y = x[:, 0] + 0.5 * rng.normal(size=300) > 1.2  # imbalanced, not separable
  w, scale = tile_reranker.fit_logistic(x, y)
  z = StandardScaler().fit_transform(x)
  reference = LogisticRegression(class_weight="balanced").fit(z, y).decision_function(z)
  np.testing.assert_allclose(
    tile_reranker.decision(x, w, scale), reference, atol=5e-3
  )  # both solvers stop at a tolerance
