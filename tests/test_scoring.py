"""Whole-mammogram scoring on synthetic images with a fake classifier that sees bright specks."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from input_pipeline.mammogram import Mammogram
from mcalc_jax.whole_image import scoring, tiling

PATCH = 112
MAX_VALUE = 4095
CLUSTERS = ((300, 420), (860, 260))  # (row, col) centres of the calcification-like clusters


@jax.jit
def speck_probabilities(images: jax.Array) -> jax.Array:
  """A fake Task 1 classifier: P(calcification) grows with the number of very bright pixels."""
  bright = jnp.sum(images > 0.8, axis=(1, 2, 3)).astype(jnp.float32)
  p = jnp.clip(bright / 40.0, 0.0, 1.0)
  return jnp.stack([1.0 - p, p], axis=-1)


def synthetic_mammogram(
  shape: tuple[int, int] = (1200, 900), clusters=CLUSTERS, seed: int = 0, flipped: bool = False
) -> Mammogram:
  """A 12-bit breast (half ellipse on the chest wall, left) with specks around `clusters`."""
  rng = np.random.default_rng(seed)
  rows, cols = np.mgrid[: shape[0], : shape[1]]
  centre = shape[0] / 2
  breast = ((rows - centre) / (0.45 * shape[0])) ** 2 + (cols / (0.85 * shape[1])) ** 2 < 1
  pixels = np.where(breast, rng.normal(1500, 150, shape), 0).clip(0, MAX_VALUE)
  for row, col in clusters:
    for dr, dc in rng.integers(-30, 30, size=(12, 2)):
      pixels[row + dr - 1 : row + dr + 2, col + dc - 1 : col + dc + 2] = 3900
  return Mammogram(
    pixels=pixels.astype(np.uint16),
    max_value=MAX_VALUE,
    bits_stored=12,
    pixel_spacing_mm=(0.1, 0.1),
    spacing_assumed=True,
    laterality="L",
    view="CC",
    flipped=flipped,
    original_shape=shape,
    path="synthetic",
  )


def tile_containing(geometry: tiling.TileGeometry, row: int, col: int) -> tuple[int, int]:
  """The grid cell whose tile starts last before (row, col) (the tile holding the point)."""
  i = np.searchsorted(geometry.tile_rows, row, side="right") - 1
  j = np.searchsorted(geometry.tile_cols, col, side="right") - 1
  return int(i), int(j)


def test_tile_origins_cover_the_image_with_the_last_tile_flush():
  np.testing.assert_array_equal(tiling.tile_origins(300, 112, 112), [0, 112, 188])
  np.testing.assert_array_equal(tiling.tile_origins(336, 112, 112), [0, 112, 224])
  np.testing.assert_array_equal(tiling.tile_origins(250, 112, 56), [0, 56, 112, 138])
  np.testing.assert_array_equal(tiling.tile_origins(80, 112, 112), [0])  # padded to one tile


@pytest.mark.parametrize("stride", [112, 56])
def test_hottest_tiles_are_the_calcification_clusters(stride):
  scorer = scoring.Scorer(speck_probabilities, patch_size=PATCH, stride=stride, batch_size=64)
  scores = scorer.score(synthetic_mammogram())

  hot = np.argwhere(scores.task1 >= 0.5)
  expected_hot = set()
  for row, col in CLUSTERS:  # every tile that holds part of a cluster may light up
    rows = np.flatnonzero(np.abs(scores.geometry.tile_rows + PATCH / 2 - row) < PATCH / 2 + 35)
    cols = np.flatnonzero(np.abs(scores.geometry.tile_cols + PATCH / 2 - col) < PATCH / 2 + 35)
    expected_hot.update((i, j) for i in rows for j in cols)
  assert {tuple(h) for h in hot} <= expected_hot
  for row, col in CLUSTERS:
    assert scores.task1[tile_containing(scores.geometry, row, col)] >= 0.5
  centre = scores.geometry.tile_center(*scores.hottest())
  assert min(np.hypot(centre[0] - r, centre[1] - c) for r, c in CLUSTERS) < PATCH


def test_tiles_outside_the_breast_are_skipped_and_counted():
  scores = scoring.Scorer(speck_probabilities, patch_size=PATCH).score(synthetic_mammogram())

  assert scores.tiles_scored + scores.tiles_skipped == scores.task1.size == 11 * 9
  assert 0 < scores.tiles_skipped < scores.task1.size
  assert np.isnan(scores.task1[0, -1])  # top-right corner: background
  assert not np.isnan(scores.task1[5, 0])  # chest wall, mid-height: breast


def test_small_images_share_batches_and_the_network_compiles_once():
  traces, calls = [], []

  @jax.jit
  def jitted(images):
    traces.append(images.shape)
    return speck_probabilities(images)

  def counting_probabilities(images):
    calls.append(1)
    return jitted(images)

  images = [
    synthetic_mammogram((h, w), clusters=[(h // 2, w // 3)], seed=h)
    for h, w in ((400, 300), (500, 350), (100, 90), (450, 500))
  ]
  scorer = scoring.Scorer(
    counting_probabilities, patch_size=PATCH, stride=56, batch_size=256, buffer_pixels=2**20
  )
  streamed = dict(scorer.score_stream((n, scorer.prepare(m)) for n, m in enumerate(images)))
  assert len(calls) == 1  # four images, one batch
  alone = [scorer.score(m) for m in images]

  assert traces == [(256, PATCH, PATCH, 1)]
  for n, scores in enumerate(alone):
    np.testing.assert_array_equal(streamed[n].task1, scores.task1)


@pytest.mark.parametrize("buffer_pixels", [150_000, 2**22])
def test_streams_give_the_same_scores_whatever_the_packing(buffer_pixels):
  """A small buffer gives one image per pack (and grows for the 500x350 one)."""
  images = [
    synthetic_mammogram((h, w), clusters=[(h // 2, w // 3)], seed=h)
    for h, w in ((400, 300), (500, 350), (450, 500))
  ]
  scorer = scoring.Scorer(
    speck_probabilities, patch_size=PATCH, batch_size=32, buffer_pixels=buffer_pixels
  )
  streamed = list(scorer.score_stream((n, scorer.prepare(m)) for n, m in enumerate(images)))

  assert [n for n, _ in streamed] == [0, 1, 2]
  for (_, scores), mammogram in zip(streamed, images, strict=True):
    np.testing.assert_array_equal(scores.task1, scorer.score(mammogram).task1)
    assert scores.seconds > 0


def test_task2_scores_only_the_tiles_above_the_task1_threshold():
  def malignancy(images):
    return jnp.tile(jnp.array([[0.3, 0.7]]), (images.shape[0], 1))

  scorer = scoring.Scorer(
    speck_probabilities, task2=malignancy, patch_size=PATCH, task1_threshold=0.5
  )
  scores = scorer.score(synthetic_mammogram())

  above = np.nan_to_num(scores.task1, nan=-1) >= 0.5
  assert 0 < scores.tiles_task2 == above.sum()
  np.testing.assert_allclose(scores.task2[above], 0.7)
  assert np.isnan(scores.task2[~above]).all()


def test_hottest_location_maps_back_to_the_original_orientation():
  mammogram = synthetic_mammogram(flipped=True)
  scores = scoring.Scorer(speck_probabilities, patch_size=PATCH).score(mammogram)

  row, col = scores.geometry.tile_center(*scores.hottest())
  canonical = mammogram.from_original(row, col)
  assert min(np.hypot(canonical[0] - r, canonical[1] - c) for r, c in CLUSTERS) < PATCH
  assert col > mammogram.original_shape[1] / 2  # the flipped original has its breast on the right


def test_no_implicit_transfers_between_host_and_device():
  """Only explicit ones: pixels once per pack, tile origins per batch, probabilities back."""
  scorer = scoring.Scorer(speck_probabilities, patch_size=PATCH)
  with jax.transfer_guard("disallow"):
    scores = scorer.score(synthetic_mammogram())

  assert scores.tiles_scored > 0


def test_average_map_averages_overlapping_tiles():
  geometry = tiling.TileGeometry(
    tile_rows=np.array([0, 2]),
    tile_cols=np.array([0]),
    patch_size=4,
    stride=2,
    image_shape=(6, 4),
    original_shape=(6, 4),
    flipped=False,
  )
  heat = tiling.average_map(np.array([[0.2], [0.6]], np.float32), geometry)

  np.testing.assert_allclose(heat[:, 0], [0.2, 0.2, 0.4, 0.4, 0.6, 0.6])
  only_first = tiling.average_map(np.array([[0.2], [np.nan]], np.float32), geometry)
  assert np.isnan(only_first[4:]).all()


def run_on_eight_devices(script: str) -> dict:
  """Runs `script` on eight fake CPU devices and returns the JSON it printed last.

  A subprocess, because the device count is fixed when JAX starts.
  """
  env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=8", JAX_PLATFORMS="cpu")
  root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
  out = subprocess.run(
    [sys.executable, "-c", textwrap.dedent(script)],
    env=env,
    cwd=root,
    capture_output=True,
    text=True,
    check=True,
  )
  return json.loads(out.stdout.strip().splitlines()[-1])


def test_batches_are_sharded_over_every_device():
  result = run_on_eight_devices("""
    import json, jax, numpy as np
    from mcalc_jax.whole_image import scoring
    from tests.test_scoring import synthetic_mammogram, speck_probabilities, PATCH
    seen = []
    def probabilities(images):
      seen.append(len(images.sharding.device_set))
      return speck_probabilities(images)
    scores = scoring.Scorer(probabilities, patch_size=PATCH, batch_size=60).score(
        synthetic_mammogram())
    print(json.dumps({"devices": jax.device_count(), "seen": sorted(set(seen)),
                      "grid": np.nan_to_num(scores.task1, nan=-1).tolist()}))
  """)
  single = scoring.Scorer(speck_probabilities, patch_size=PATCH).score(synthetic_mammogram())

  assert result["devices"] == 8 and result["seen"] == [8]
  np.testing.assert_allclose(result["grid"], np.nan_to_num(single.task1, nan=-1), atol=1e-6)


def test_a_classifier_replicated_on_every_device_scores_on_a_subset():
  """As in a multi-process run: the classifier spans all devices, a scorer only its own."""
  result = run_on_eight_devices("""
    import json, jax, numpy as np
    from flax import nnx
    from mcalc_jax.configs import default
    from mcalc_jax.base import parallel
    from mcalc_jax.model import inference, networks
    from mcalc_jax.whole_image import scoring
    from tests.test_scoring import synthetic_mammogram
    config = default.get_config()
    config.model, config.patch_size, config.preprocess.input_size = "resnet18", 112, 32
    config.field_of_view_mm = 0.0  # native pixels
    graphdef, params, batch_stats = nnx.split(
        networks.create_model(config, nnx.Rngs(0)), nnx.Param, nnx.BatchStat)
    mesh = parallel.make_mesh()
    variables = jax.device_put(
        {"params": params, "batch_stats": batch_stats}, parallel.replicated(mesh))
    classifier = inference.Classifier(config, graphdef, variables, mesh)
    image = synthetic_mammogram((500, 400))
    grids = [scoring.Scorer(classifier, devices=devices).score(image).task1
             for devices in (jax.devices(), jax.devices()[4:])]
    print(json.dumps([np.nan_to_num(g, nan=-1).tolist() for g in grids]))
  """)

  np.testing.assert_allclose(result[0], result[1], atol=1e-5)
  assert np.max(result[0]) > 0
