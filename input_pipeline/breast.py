"""Breast mask: which pixels are breast tissue, and on which side of the image the breast lies.

Used to infer laterality, to keep background patches inside the breast and to skip empty
regions when scoring whole mammograms. The mask is computed on a strided copy whose longer side
is about `max_side` pixels (a full-field mammogram is ~12 Mpixel; the outline needs far fewer),
then scaled back up by nearest neighbour.
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage

# 0.1 leaves out the faint skin-line fall-off of scanned film (where mini-MIAS mdb214's circle
# lies) and costs 3-4% of the breast area of a CBIS-DDSM film compared with 0.05.
DEFAULT_THRESHOLD_FRACTION = 0.1
DEFAULT_MAX_SIDE = 512


def breast_mask(
  pixels: np.ndarray,
  *,
  threshold_fraction: float = DEFAULT_THRESHOLD_FRACTION,
  max_side: int = DEFAULT_MAX_SIDE,
) -> np.ndarray:
  """Returns a bool mask, the shape of `pixels`, of the largest bright region with holes filled.

  Args:
    pixels: 2-D image, dense tissue bright (any integer or float dtype).
    threshold_fraction: tissue is brighter than background + this fraction of the range between
      the background level and the 99.5th percentile (labels and markers are far brighter than
      tissue, hence a percentile, not the maximum).
    max_side: the longer side of the copy the mask is computed on.
  """
  small, step = _coarse_mask(pixels, threshold_fraction, max_side)
  if step == 1:
    return small
  full = np.repeat(np.repeat(small, step, axis=0), step, axis=1)
  return full[: pixels.shape[0], : pixels.shape[1]]


def breast_side(
  pixels: np.ndarray,
  *,
  threshold_fraction: float = DEFAULT_THRESHOLD_FRACTION,
  max_side: int = DEFAULT_MAX_SIDE,
) -> str:
  """Returns 'left' or 'right', the half of the image holding more breast, or '' if no breast."""
  small, _ = _coarse_mask(pixels, threshold_fraction, max_side)
  columns = np.nonzero(small)[1]
  if columns.size == 0:
    return ""
  centre = (small.shape[1] - 1) / 2
  left, right = np.count_nonzero(columns < centre), np.count_nonzero(columns > centre)
  if left == right:
    return ""
  return "left" if left > right else "right"


def _coarse_mask(
  pixels: np.ndarray, threshold_fraction: float, max_side: int
) -> tuple[np.ndarray, int]:
  """The mask of a strided copy of `pixels`, and the stride."""
  if pixels.ndim != 2:
    raise ValueError(f"breast mask needs a 2-D image, got shape {pixels.shape}")
  step = max(1, -(-max(pixels.shape) // max_side))
  small = pixels[::step, ::step]
  if small.size == 0:
    return np.zeros(small.shape, bool), step
  small = ndimage.uniform_filter(small.astype(np.float32), size=3)  # noise and dead pixels
  background = float(small.min())
  top = float(np.percentile(small, 99.5))
  if top <= background:
    return np.zeros(small.shape, bool), step
  tissue = small > background + threshold_fraction * (top - background)
  return _largest_component(tissue), step


def _largest_component(mask: np.ndarray) -> np.ndarray:
  labels, count = ndimage.label(mask)
  if count == 0:
    return mask
  sizes = np.bincount(labels.ravel())
  sizes[0] = 0
  return _fill_holes(labels == np.argmax(sizes))


def _fill_holes(mask: np.ndarray) -> np.ndarray:
  """Background regions that touch no border are holes (5x faster than binary_fill_holes)."""
  background, count = ndimage.label(~mask)
  keep = np.ones(count + 1, bool)
  border = np.concatenate([background[0], background[-1], background[:, 0], background[:, -1]])
  keep[border] = False
  keep[0] = True
  return keep[background]
