"""Reading mammograms (DICOM, PNG, PGM) into one canonical, lossless form."""

from __future__ import annotations

import dataclasses

import numpy as np


@dataclasses.dataclass(frozen=True)
class Mammogram:
  """A mammogram at native bit depth, chest wall on the left, with the geometry to map back.

  `pixels` is 2-D uint16 with dense tissue bright; `flipped` says whether the stored
  pixels are the original flipped left-right, so coordinates map back to the original file.
  """

  pixels: np.ndarray
  max_value: int
  bits_stored: int
  pixel_spacing_mm: tuple[float, float]
  spacing_assumed: bool
  laterality: str
  view: str
  flipped: bool
  original_shape: tuple[int, int]
  path: str

  def from_original(self, row: float, col: float) -> tuple[float, float]:
    """Maps a point of the original file's pixel grid to `pixels`."""
    if self.flipped:
      col = self.original_shape[1] - 1 - col
    return row, col

  def to_original(self, row: float, col: float) -> tuple[float, float]:
    """Maps a point of `pixels` back to the original file's pixel grid."""
    return self.from_original(row, col)  # a left-right flip is its own inverse
