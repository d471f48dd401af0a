"""Heatmap outputs: the npz round trip, its geometry, and the overlay PNG."""

from __future__ import annotations

import pickle

import jax.numpy as jnp
import numpy as np
import pytest
from PIL import Image

from mcalc_jax.whole_image import heatmaps, scoring, tiling
from tests.test_scoring import CLUSTERS, PATCH, speck_probabilities, synthetic_mammogram


def malignancy(images):
  """A fake Task 2 classifier: P(malignant) = 0.6 everywhere."""
  return jnp.tile(jnp.array([[0.4, 0.6]]), (images.shape[0], 1))


@pytest.fixture(scope="module")
def flipped_scores():
  """Scores of a mammogram whose original had the breast on the right (flipped to canonical)."""
  mammogram = synthetic_mammogram(flipped=True)
  scorer = scoring.Scorer(speck_probabilities, task2=malignancy, patch_size=PATCH, stride=56)
  return mammogram, scorer.score(mammogram)


def test_npz_round_trip_is_lossless(tmp_path, flipped_scores):
  _, scores = flipped_scores
  heatmaps.write_scores(tmp_path / "a.npz", scores)
  loaded = heatmaps.read_scores(tmp_path / "a.npz")

  np.testing.assert_array_equal(loaded.task1, scores.task1)
  np.testing.assert_array_equal(loaded.task2, scores.task2)
  np.testing.assert_array_equal(loaded.geometry.tile_rows, scores.geometry.tile_rows)
  np.testing.assert_array_equal(loaded.geometry.tile_cols, scores.geometry.tile_cols)
  assert loaded.geometry.flipped and loaded.geometry.stride == 56
  assert loaded.geometry.original_shape == scores.geometry.original_shape
  assert list(tmp_path.iterdir()) == [tmp_path / "a.npz"]  # no temporary file left


def test_npz_geometry_maps_the_hottest_tile_to_original_pixels(tmp_path, flipped_scores):
  """What a user of the npz alone does to find the hottest tile in the original image."""
  mammogram, scores = flipped_scores
  heatmaps.write_scores(tmp_path / "a.npz", scores)
  z = np.load(tmp_path / "a.npz")

  i, j = np.unravel_index(np.nanargmax(z["task1"]), z["task1"].shape)
  row = z["tile_rows"][i] + z["patch_size"] / 2
  col = z["tile_cols"][j] + z["patch_size"] / 2
  if z["flipped"]:
    col = z["original_shape"][1] - 1 - col
  original = np.fliplr(mammogram.pixels)  # the file as stored
  assert original[int(row) - 60 : int(row) + 60, int(col) - 60 : int(col) + 60].max() == 3900
  assert not z["has_task2"] or np.isnan(z["task2"][np.isnan(z["task1"])]).all()


def test_grids_without_task2_are_stored_as_absent(tmp_path):
  scores = scoring.Scorer(speck_probabilities, patch_size=PATCH).score(synthetic_mammogram())
  heatmaps.write_scores(tmp_path / "b.npz", scores)

  assert heatmaps.read_scores(tmp_path / "b.npz").task2 is None


def test_overlay_is_a_png_in_the_original_orientation(tmp_path, flipped_scores):
  mammogram, scores = flipped_scores
  row, col = mammogram.to_original(*CLUSTERS[0])
  heatmaps.write_overlay(
    tmp_path / "a.png",
    mammogram.pixels,
    scores,
    annotations=[tiling.Circle(row, col, 50)],
    title="synthetic",
  )

  with Image.open(tmp_path / "a.png") as png:
    width, height = png.size
    rgb = np.asarray(png.convert("RGB"), np.int32)
  assert 600 < height < 1100 and width > height  # two panels, task 1 and task 2
  assert (rgb[..., 0] - rgb[..., 2] > 100).any()  # red (hot) and blue (cold) both appear
  assert (rgb[..., 2] - rgb[..., 0] > 100).any()
  assert sorted(p.name for p in tmp_path.iterdir()) == ["a.png"]


def test_a_thin_image_gets_an_overlay_of_bounded_size_and_absurd_circles_are_skipped(tmp_path):
  strip = synthetic_mammogram((16, 4096), clusters=[])
  scores = scoring.Scorer(speck_probabilities, patch_size=PATCH, min_breast_fraction=0).score(strip)
  far_and_huge = [tiling.Circle(8, 100, 1e15), tiling.Circle(-1e12, 5, 10)]
  heatmaps.write_overlay(tmp_path / "thin.png", strip.pixels, scores, annotations=far_and_huge)

  with Image.open(tmp_path / "thin.png") as png:
    assert max(png.size) < 2500 and min(png.size) > 200  # not 500,000 x 1,000 pixels


def damaged(path, scores) -> dict:
  """Ways a score grid file is damaged or foreign, each written at `path` + its name."""
  heatmaps.write_scores(path, scores)
  whole = path.read_bytes()
  with np.load(path) as z:
    arrays = dict(z)
  return {
    "cut.npz": whole[: len(whole) // 2],
    "text.npz": b"not an npz at all",
    "pickle.npz": pickle.dumps(arrays),
    "no_task1.npz": {k: v for k, v in arrays.items() if k != "task1"},
    "shape.npz": arrays | {"tile_rows": arrays["tile_rows"][:-1]},
    "object.npz": arrays | {"task1": np.array([None], object)},
  }


@pytest.mark.parametrize("name", ["cut", "text", "pickle", "no_task1", "shape", "object"])
def test_a_damaged_score_grid_names_its_file(tmp_path, flipped_scores, name):
  content = damaged(tmp_path / "good.npz", flipped_scores[1])[f"{name}.npz"]
  path = tmp_path / f"{name}.npz"
  if isinstance(content, bytes):
    path.write_bytes(content)
  else:
    np.savez(path, **content)

  with pytest.raises(heatmaps.ScoresFileError, match=rf"^{path}: "):
    heatmaps.read_scores(path)
