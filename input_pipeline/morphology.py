"""The white top-hat: one implementation for every stage that looks for specks.

A microcalcification is a small bright speck on a smoother background; the white top-hat (the
image minus its grey opening by a flat disk a little larger than the speck) keeps exactly such
specks. The same function serves numpy (the insertion's contrast measurements, the tile
reranker's features: `xp=numpy`, whatever the dtype) and jax.numpy (the networks' front end and
the classical floor, inside jit: `xp=jax.numpy`). Radii are in pixels; `pixels_of` turns the
millimetres a speck is measured in into a radius at an image's pixel spacing.
"""

from __future__ import annotations

import functools
from types import ModuleType
from typing import Any

import numpy as np

_UNKNOWN_SPACING_PIXELS = 2.0  # a radius where the pixel size is unknown (0)


def pixels_of(mm: float, pixel_spacing_mm: float) -> float:
  """`mm` in pixels of `pixel_spacing_mm`, at least one (two where the spacing is unknown)."""
  return max(1.0, mm / pixel_spacing_mm) if pixel_spacing_mm > 0 else _UNKNOWN_SPACING_PIXELS


@functools.cache
def disk_offsets(radius: float) -> tuple[tuple[int, int], ...]:
  """(dy, dx) of a flat disk structuring element of `radius` pixels (at least the centre)."""
  r = int(np.floor(radius))
  return tuple(
    (dy, dx) for dy in range(-r, r + 1) for dx in range(-r, r + 1) if dy * dy + dx * dx <= radius**2
  )


def _filter(images: Any, radius: float, reduce: Any, mode: str, xp: ModuleType) -> Any:
  """`reduce` (minimum or maximum) over the disk's shifts of every pixel of [N, H, W, C]."""
  offsets = disk_offsets(radius)
  r = max(max(abs(dy), abs(dx)) for dy, dx in offsets)
  padded = xp.pad(images, ((0, 0), (r, r), (r, r), (0, 0)), mode=mode)
  h, w = images.shape[1:3]
  out = None
  for dy, dx in offsets:
    shifted = padded[:, r + dy : r + dy + h, r + dx : r + dx + w]
    out = shifted if out is None else reduce(out, shifted)
  return out


def white_tophat(images: Any, radius: float, *, mode: str = "edge", xp: ModuleType = np) -> Any:
  """[N, H, W, C] images minus their grey opening (erosion, then dilation) by a disk of `radius`
  pixels. Borders: `mode` of `xp.pad` ('edge' repeats the edge pixel; 'symmetric' mirrors it, as
  scipy.ndimage's default)."""
  opened = _filter(_filter(images, radius, xp.minimum, mode, xp), radius, xp.maximum, mode, xp)
  return images - opened


def white_tophat_mm(pixels: np.ndarray, pixel_spacing_mm: float, radius_mm: float) -> np.ndarray:
  """The white top-hat of one 2-D image (numpy, its own dtype) by a disk of `radius_mm`, borders
  mirrored."""
  radius = pixels_of(radius_mm, pixel_spacing_mm)
  return white_tophat(pixels[None, :, :, None], radius, mode="symmetric")[0, :, :, 0]
