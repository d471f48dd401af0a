"""Hard-negative mining: the hottest tiles that touch no annotation, the same ones every time."""

from __future__ import annotations

import numpy as np
from PIL import Image

from input_pipeline import patches
from input_pipeline.mammogram import read_mammogram
from input_pipeline.manifest import Finding
from mcalc_jax.experiments import mining
from mcalc_jax.whole_image import scoring
from tests.test_scoring import CLUSTERS, PATCH, speck_probabilities, synthetic_mammogram

EXTRA_SPECKS = (600, 300)  # a third speck cluster nobody annotated: a false alarm to mine


def write_image(path) -> list[Finding]:
  """A 16-bit PNG with two annotated clusters, a mass and one unannotated cluster."""
  image = synthetic_mammogram(clusters=(*CLUSTERS, EXTRA_SPECKS))
  Image.fromarray(image.pixels.astype(np.uint16)).save(path)  # mode I;16
  calcifications = [
    Finding("P1", str(path), f"c{k}", "calcification", "benign", col=c, row=r, radius=40)
    for k, (r, c) in enumerate(CLUSTERS)
  ]
  mass = Finding("P1", str(path), "m", "mass", "malignant", col=150, row=1000, radius=60)
  return [*calcifications, mass]


def test_mined_tiles_are_the_hottest_that_touch_no_annotation(tmp_path):
  findings = write_image(tmp_path / "a.png")
  scorer = scoring.Scorer(speck_probabilities, patch_size=PATCH, stride=56)
  mined = mining.mine(scorer, [("a", findings)], per_image=3, size=PATCH)

  image = read_mammogram(findings[0].image_path)
  scores = scorer.score(image)
  boxes = patches.exclusion_boxes(image, findings, (PATCH, PATCH))
  cells = mining.hottest_negatives(scores, boxes, 3)
  assert len(cells) == 3 and mined["image"].shape == (3, PATCH, PATCH, 1)
  g = scores.geometry
  for i, j in cells:  # none touches an annotation
    assert not any(
      patches.overlaps(b, g.tile_rows[i], g.tile_cols[j], (PATCH, PATCH)) for b in boxes
    )
  # the hottest tile of all is on an annotated cluster; the unannotated one is mined first
  hot_i, hot_j = scores.hottest()
  assert any(
    patches.overlaps(b, g.tile_rows[hot_i], g.tile_cols[hot_j], (PATCH, PATCH)) for b in boxes
  )
  i, j = cells[0]
  assert abs(g.tile_rows[i] + PATCH / 2 - EXTRA_SPECKS[0]) < PATCH
  assert abs(g.tile_cols[j] + PATCH / 2 - EXTRA_SPECKS[1]) < PATCH
  np.testing.assert_array_equal(
    mined["image"][0, ..., 0],
    image.pixels[g.tile_rows[i] : g.tile_rows[i] + PATCH, g.tile_cols[j] : g.tile_cols[j] + PATCH],
  )
  assert set(mined["task1_label"]) == {0} and set(mined["task2_label"]) == {-1}
  assert list(mined["patch_id"]) == [f"a/mined/{i}_{j}" for i, j in cells]


def test_mining_is_deterministic(tmp_path):
  findings = write_image(tmp_path / "a.png")
  scorer = scoring.Scorer(speck_probabilities, patch_size=PATCH, stride=56)
  first = mining.mine(scorer, [("a", findings)], per_image=4, size=PATCH)
  again = mining.mine(scorer, [("a", findings)], per_image=4, size=PATCH)
  for key in first:
    np.testing.assert_array_equal(first[key], again[key])
