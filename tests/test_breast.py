"""Breast mask and breast side, on drawn images and the real mammograms."""

from __future__ import annotations

import time

import numpy as np
import pytest
from scipy import ndimage

from input_pipeline.breast import breast_mask, breast_side
from input_pipeline.mammogram import ReadOptions, read_mammogram


def drawn_breast(shape=(400, 300), side="left") -> tuple[np.ndarray, np.ndarray]:
  """A half-disc breast with a dark duct inside, a bright label apart from it, film noise."""
  rows, cols = np.mgrid[: shape[0], : shape[1]]
  breast = (rows - shape[0] / 2) ** 2 + cols**2 < (0.7 * shape[1]) ** 2
  pixels = np.where(breast, 3000, 0) + np.random.default_rng(0).integers(0, 60, shape)
  pixels[190:210, 50:70] = 0  # a dark region inside the breast is still breast
  pixels[10:30, 250:290] = 4095  # a burned-in view label
  if side == "right":
    pixels, breast = pixels[:, ::-1], breast[:, ::-1]
  return pixels.astype(np.uint16), breast


def test_mask_is_the_breast_without_labels_and_with_holes_filled():
  pixels, breast = drawn_breast()
  mask = breast_mask(pixels)

  assert mask.shape == pixels.shape and mask.dtype == bool
  assert np.mean(mask == breast) > 0.98
  assert mask[200, 60] and not mask[20, 270]


@pytest.mark.parametrize("shape", [(1000, 777), (37, 29), (1, 2)])
def test_mask_has_the_image_shape_whatever_the_stride(shape):
  pixels, _ = drawn_breast(shape)

  assert breast_mask(pixels).shape == shape


def test_side_follows_the_breast():
  left, _ = drawn_breast(side="left")
  right, _ = drawn_breast(side="right")

  assert (breast_side(left), breast_side(right)) == ("left", "right")


@pytest.mark.parametrize("pixels", [np.zeros((50, 40), np.uint16), np.full((50, 40), 9)])
def test_blank_images_have_no_breast(pixels):
  assert not breast_mask(pixels).any() and breast_side(pixels) == ""


def test_holes_are_filled_like_scipy():
  rng = np.random.default_rng(1)
  for _ in range(20):
    blobs = ndimage.uniform_filter(rng.random((80, 60)), 5) > 0.5
    mask = breast_mask(blobs.astype(np.uint8) * 200, max_side=80)
    labels, _ = ndimage.label(mask)
    assert labels.max() <= 1
    np.testing.assert_array_equal(mask, ndimage.binary_fill_holes(mask))


def test_full_field_mask_is_fast():
  pixels = np.random.default_rng(0).integers(0, 4096, (4000, 3000)).astype(np.uint16)
  breast_mask(pixels)  # warm-up

  start = time.perf_counter()
  breast_mask(pixels)
  assert time.perf_counter() - start < 0.5


def test_real_breasts_lie_on_their_laterality_side(cbis_dir, nyu_dir):
  # README facts: left-breast files hold the breast on the left half of the matrix, right on
  # the right; the laterality comes from the tag or the file name, not from the mask.
  paths = sorted(cbis_dir.glob("*.dcm")) + sorted(nyu_dir.glob("*/*.png"))
  for path in paths:
    m = read_mammogram(path, ReadOptions(canonical=False))
    assert breast_side(m.pixels) == {"L": "left", "R": "right"}[m.laterality], path.name
    assert 0.1 < breast_mask(m.pixels).mean() < 0.9, path.name
