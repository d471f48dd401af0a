"""Patch extraction: ROIs on annotations, background away from them, seeded, typed failures."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from input_pipeline import breast, patches
from input_pipeline.mammogram import Mammogram
from input_pipeline.manifest import Finding

SETTINGS = patches.PatchSettings(size=32, per_cluster=5, seed=3)


def make_mammogram(flipped: bool = False, shape=(200, 160), value: int = 2000) -> Mammogram:
  """A 12-bit image whose breast is a bright half-disc against the chest wall (left)."""
  rows, cols = np.mgrid[: shape[0], : shape[1]]
  inside = (rows - shape[0] / 2) ** 2 + cols**2 < (0.9 * shape[1]) ** 2
  noise = np.random.default_rng(0).integers(0, 200, shape)
  pixels = np.where(inside, value + noise, 5).astype(np.uint16)
  return Mammogram(
    pixels=pixels,
    max_value=4095,
    bits_stored=12,
    pixel_spacing_mm=(0.1, 0.1),
    spacing_assumed=False,
    laterality="R" if flipped else "L",
    view="CC",
    flipped=flipped,
    original_shape=shape,
    path="test.dcm",
  )


def calcification(finding_id: str, row: float, col: float, radius: float, label="malignant"):
  return Finding(
    patient_id="p1",
    image_path="test.dcm",
    finding_id=finding_id,
    abnormality="calcification",
    label=label,
    row=row,
    col=col,
    radius=radius,
  )


FINDINGS = (
  calcification("c1", 60, 50, 6),
  calcification("c2", 150, 40, 20, "benign"),
  Finding("p1", "test.dcm", "m1", "mass", "benign", row=100, col=100, radius=10),
)


@pytest.mark.parametrize("flipped", [False, True])
def test_calcification_patch_centres_lie_inside_their_annotation_circle(flipped):
  mg = make_mammogram(flipped)
  found = patches.positive_patches(mg, FINDINGS, "img", SETTINGS)
  by_id = {f.finding_id: f for f in FINDINGS}
  assert len(found) == 2 * SETTINGS.per_cluster  # the mass gives none
  for p in found:
    f = by_id[p.finding_id]
    assert np.hypot(p.center_row - f.row, p.center_col - f.col) <= f.radius + 1  # +1: rounding
    assert (p.task1_label, p.task2_label) == (1, {"benign": 0, "malignant": 1}[f.label])
    assert p.image.shape == (32, 32) and p.image.dtype == np.uint16
  first = next(p for p in found if p.patch_id == "img/c1/0")
  assert (first.center_row, first.center_col) == (60, 50)  # the first ROI is the paper's


def test_masked_annotation_draws_its_centres_from_the_mask():
  mg = make_mammogram()
  mask = np.zeros(mg.pixels.shape, bool)
  mask[100:104, 30:36] = True
  found = patches.positive_patches(mg, FINDINGS[:1], "img", SETTINGS, masks={"c1": mask})
  assert all(mask[int(p.center_row), int(p.center_col)] for p in found[1:])


def test_patch_pixels_are_the_original_pixels_at_the_recorded_centre():
  mg = make_mammogram(flipped=True)
  (p, *_) = patches.positive_patches(mg, FINDINGS[:1], "img", SETTINGS)
  row, col = mg.from_original(p.center_row, p.center_col)
  np.testing.assert_array_equal(
    p.image, mg.pixels[int(row) - 16 : int(row) + 16, int(col) - 16 : int(col) + 16]
  )


def test_background_patches_overlap_no_annotation_and_lie_on_tissue():
  mg = make_mammogram()
  found = patches.background_patches(
    mg, FINDINGS, "img", 20, SETTINGS, breast=breast.breast_mask(mg.pixels)
  )
  assert len(found) == 20
  for p in found:
    assert (p.task1_label, p.task2_label, p.finding_id) == (0, -1, "")
    assert p.image.mean() >= SETTINGS.tissue_threshold * mg.max_value
    for f in FINDINGS:  # window vs the annotation's ROI grown to its circle
      reach = 16 + max(16, f.radius)
      assert abs(p.center_row - f.row) >= reach or abs(p.center_col - f.col) >= reach


def test_same_seed_gives_identical_patches_and_another_seed_different_ones():
  def extract(settings, image_id="img"):
    mg = make_mammogram()
    return patches.positive_patches(mg, FINDINGS, image_id, settings) + patches.background_patches(
      mg, FINDINGS, image_id, 5, settings
    )

  def centres(found):
    return [(p.patch_id, p.center_row, p.center_col) for p in found]

  first, again = extract(SETTINGS), extract(SETTINGS)
  assert centres(first) == centres(again)
  assert all(np.array_equal(a.image, b.image) for a, b in zip(first, again, strict=True))
  assert centres(first) != centres(extract(dataclasses.replace(SETTINGS, seed=4)))


def test_unsampleable_image_fails_with_an_explanation_instead_of_looping():
  mg = make_mammogram(value=50)  # "tissue" far below the threshold
  settings = dataclasses.replace(SETTINGS, max_tries=20, relax_rounds=2, tissue_threshold=0.5)
  with pytest.raises(patches.PatchSamplingError, match="mean intensity below") as error:
    patches.background_patches(mg, FINDINGS, "img", 3, settings)
  assert error.value.patches == []


def test_pad_keeps_the_window_centred_and_shift_moves_it_inside():
  pixels = np.arange(100, dtype=np.uint16).reshape(10, 10) + 1
  padded, row, col = patches.cut(pixels, 1, 1, (6, 6), "pad")
  assert (row, col) == (1, 1) and padded[0, 0] == 0 and padded[2, 2] == pixels[0, 0]
  shifted, row, col = patches.cut(pixels, 1, 1, (6, 6), "shift")
  assert (row, col) == (3, 3)
  np.testing.assert_array_equal(shifted, pixels[:6, :6])


def test_size_in_millimetres_is_resampled_to_the_patch_size():
  mg = make_mammogram()  # 0.1 mm pixels: 6.4 mm is a 64-pixel window
  settings = dataclasses.replace(SETTINGS, field_of_view_mm=6.4)
  assert patches.window_pixels(mg, settings) == (64, 64)
  (p, *_) = patches.positive_patches(mg, FINDINGS[:1], "img", settings)
  assert p.image.shape == (32, 32) and p.image.dtype == np.uint16


def test_background_quota_spreads_the_total_evenly():
  quota = patches.background_quota([f"im{i}" for i in range(7)], 17, seed=0)
  assert sum(quota.values()) == 17 and set(quota.values()) == {2, 3}
