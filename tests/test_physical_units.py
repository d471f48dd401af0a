"""Physical units: tiles and patches cover the same millimetres on film and on FFDM."""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from input_pipeline import patches
from input_pipeline.mammogram import Mammogram
from mcalc_jax.base import parallel
from mcalc_jax.configs import default
from mcalc_jax.model import inference, networks
from mcalc_jax.whole_image import scoring
from tests.test_scoring import CLUSTERS, synthetic_mammogram

FOV_MM = 11.2  # the run's field of view: 112 px at 0.1 mm, 56 px at 0.2 mm


def twin_at_double_spacing(image: Mammogram) -> Mammogram:
  """The same breast at 0.2 mm: every 2x2 block averaged (as a coarser detector would see it)."""
  h, w = (n // 2 for n in image.pixels.shape)
  pixels = image.pixels[: 2 * h, : 2 * w].reshape(h, 2, w, 2).mean(axis=(1, 3))
  return dataclasses.replace(
    image,
    pixels=np.rint(pixels).astype(np.uint16),
    pixel_spacing_mm=(0.2, 0.2),
    original_shape=(h, w),
  )


@jax.jit
def bright_fraction(images: jax.Array) -> jax.Array:
  """A fake classifier that sees any tile size: P(class 1) = fraction of bright pixels x 20."""
  p = jnp.clip(jnp.mean(images > 0.8, axis=(1, 2, 3)) * 20, 0, 1)
  return jnp.stack([1 - p, p], axis=-1)


def test_a_100_um_image_and_its_200_um_twin_are_tiled_in_the_same_millimetres():
  fine = synthetic_mammogram((1200, 900))  # 0.1 mm
  coarse = twin_at_double_spacing(fine)
  scorer = scoring.Scorer(bright_fraction, patch_size=112, field_of_view_mm=FOV_MM, stride=56)
  grids = {name: scorer.score(image) for name, image in (("fine", fine), ("coarse", coarse))}

  g_fine, g_coarse = grids["fine"].geometry, grids["coarse"].geometry
  assert (g_fine.patch_size, g_coarse.patch_size) == (112, 56)  # both 11.2 mm
  assert (g_fine.stride, g_coarse.stride) == (56, 28)  # both 5.6 mm
  np.testing.assert_allclose(g_fine.tile_rows * 0.1, g_coarse.tile_rows * 0.2)
  np.testing.assert_allclose(g_fine.tile_cols * 0.1, g_coarse.tile_cols * 0.2)
  assert grids["fine"].task1.shape == grids["coarse"].task1.shape
  assert grids["fine"].hottest() == grids["coarse"].hottest()
  row, col = g_fine.tile_center(*grids["fine"].hottest())
  assert min(np.hypot(row - r, col - c) for r, c in CLUSTERS) * 0.1 < FOV_MM


def test_native_pixel_runs_tile_at_their_patch_size_whatever_the_spacing():
  coarse = twin_at_double_spacing(synthetic_mammogram((1200, 900)))
  scores = scoring.Scorer(bright_fraction, patch_size=112).score(coarse)
  assert scores.geometry.patch_size == 112 and scores.geometry.field_of_view_mm == 0


def _film_trained_classifier() -> inference.Classifier:
  """A (random-weight) ResNet18 run trained on 11.2-mm patches stored at 0.2 mm (56 px)."""
  config = default.get_config("model=resnet18")
  config.patch_size, config.preprocess.input_size, config.field_of_view_mm = 56, 56, FOV_MM
  model = networks.create_model(config, nnx.Rngs(0))
  graphdef, params, batch_stats = nnx.split(model, nnx.Param, nnx.BatchStat)
  mesh = parallel.make_mesh()
  variables = jax.device_put(
    {"params": params, "batch_stats": batch_stats}, parallel.replicated(mesh)
  )
  return inference.Classifier(config, graphdef, variables, mesh)


def test_a_run_trained_on_film_scores_ffdm_at_its_millimetres():
  classifier = _film_trained_classifier()
  image = synthetic_mammogram((700, 500))  # 0.1 mm: an 11.2 mm tile is 112 px here
  scores = scoring.Scorer(classifier, min_breast_fraction=0).score(image)

  assert scores.geometry.patch_size == 112 and scores.geometry.field_of_view_mm == FOV_MM
  # Each tile's score is what the classifier gives the patch the dataset builder would have
  # cut there: the 112-px window resampled to the run's 56 px.
  for i, j in [(0, 0), (2, 3), (5, 4)]:
    top, left = scores.geometry.tile_rows[i], scores.geometry.tile_cols[j]
    window = image.pixels[top : top + 112, left : left + 112]
    patch = patches.resample(window, 56).astype(np.float32) / image.max_value
    expected = classifier.probabilities(patch[None, ..., None])[0, 1]
    assert scores.task1[i, j] == pytest.approx(expected, abs=2e-3)  # uint16 rounding of the patch
