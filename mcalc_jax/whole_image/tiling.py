"""Where tiles lie on a mammogram, and the grids of scores they get: numpy only.

The geometry of whole-image scoring without the devices (`mcalc_jax.whole_image.scoring` runs the
networks): tile origins, which tiles hold breast, the probability grids and how they map back
to pixels. Nothing here imports JAX, so the decode worker processes (`mcalc_jax.archives.decoding`)
prepare images cheaply.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import NamedTuple

import numpy as np

from input_pipeline import breast
from input_pipeline.mammogram import Mammogram, Orientation

# Breast fraction of a tile is measured on about this many samples per tile side.
_MASK_SAMPLES_PER_SIDE = 16


class Circle(NamedTuple):
  """A known finding (drawn on overlays), in ORIGINAL pixel coordinates."""

  row: float
  col: float
  radius: float


def tile_origins(length: int, patch_size: int, stride: int) -> np.ndarray:
  """Tile starts every `stride` pixels, plus one flush with the far edge if a strip is left."""
  if length <= patch_size:
    return np.zeros(1, np.int32)
  origins = np.arange(0, length - patch_size + 1, stride)
  if origins[-1] + patch_size < length:
    origins = np.append(origins, length - patch_size)
  return origins.astype(np.int32)


@dataclasses.dataclass(frozen=True)
class TileGeometry:
  """Where grid cell (i, j) lies: rows tile_rows[i]:+patch_size, cols tile_cols[j]:+patch_size.

  Coordinates are in the canonical `Mammogram.pixels` (chest wall left); `flipped` and
  `original_shape` map them back to the original file.
  """

  tile_rows: np.ndarray
  tile_cols: np.ndarray
  patch_size: int  # tile side in this image's pixels
  stride: int  # in this image's pixels
  image_shape: tuple[int, int]
  original_shape: tuple[int, int]
  flipped: bool
  pixel_spacing_mm: float = 0.0  # of this image (0: unknown)
  spacing_assumed: bool = False
  field_of_view_mm: float = 0.0  # tile side in mm the classifier was trained at (0: native)

  @property
  def grid_shape(self) -> tuple[int, int]:
    return len(self.tile_rows), len(self.tile_cols)

  @property
  def orientation(self) -> Orientation:
    """The canonical-to-original mapping of the image."""
    return Orientation(self.flipped, self.original_shape[1])

  def tile_center(self, i: int, j: int) -> tuple[float, float]:
    """Centre of tile (i, j) in ORIGINAL pixel coordinates (row, col)."""
    half = (self.patch_size - 1) / 2
    return float(self.tile_rows[i] + half), float(self.orientation.col(self.tile_cols[j] + half))


@dataclasses.dataclass(frozen=True)
class PreparedImage:
  """An image ready for the devices: pixels (padded to at least one tile) and its tiles."""

  pixels: np.ndarray
  max_value: int
  geometry: TileGeometry
  in_breast: np.ndarray  # bool [gh, gw]: the tiles to score

  @property
  def breast_tiles(self) -> np.ndarray:
    """Flat grid indices of the tiles to score."""
    return np.flatnonzero(self.in_breast)


@dataclasses.dataclass(frozen=True)
class ImageScores:
  """Probability grids of one image: NaN where a tile was not scored."""

  geometry: TileGeometry
  task1: np.ndarray  # float32 [gh, gw], P(calcification); NaN outside the breast
  task2: np.ndarray | None  # float32 [gh, gw], P(malignant); NaN below task1_threshold
  task1_threshold: float
  seconds: float  # this image's share (by tiles) of the wall time between two finished packs

  @property
  def tiles_scored(self) -> int:
    return int(np.count_nonzero(~np.isnan(self.task1)))

  @property
  def tiles_skipped(self) -> int:
    return self.task1.size - self.tiles_scored

  @property
  def tiles_task2(self) -> int:
    return 0 if self.task2 is None else int(np.count_nonzero(~np.isnan(self.task2)))

  def hottest(self) -> tuple[int, int] | None:
    """Grid index of the highest Task 1 probability (first in row-major order), None if none."""
    if self.tiles_scored == 0:
      return None
    flat = int(np.nanargmax(self.task1))
    i, j = np.unravel_index(flat, self.task1.shape)
    return int(i), int(j)


@dataclasses.dataclass(frozen=True)
class TilePlan:
  """How a scorer lays tiles on an image: picklable, so decode workers prepare images too.

  `field_of_view_mm` > 0 makes tiles that many millimetres at each image's spacing (the stride
  scaled alike); 0 keeps `patch_size` native pixels. Tiles with less breast than
  `min_breast_fraction` (measured with `breast_mask_fn`, a module-level function) are skipped.
  """

  patch_size: int
  stride: int
  field_of_view_mm: float
  min_breast_fraction: float
  breast_mask_fn: Callable[[np.ndarray], np.ndarray] = breast.breast_mask

  def tile_pixels(self, mammogram: Mammogram) -> tuple[int, int]:
    """(tile side, stride) in this image's pixels: the run's millimetres at its spacing."""
    if self.field_of_view_mm <= 0:
      return self.patch_size, self.stride
    tile = max(2, round(self.field_of_view_mm / float(np.mean(mammogram.pixel_spacing_mm))))
    return tile, max(1, min(tile, round(self.stride * tile / self.patch_size)))

  def prepare(self, mammogram: Mammogram) -> PreparedImage:
    """Host-side work for one image (tiles, breast fractions): numpy only, thread-safe."""
    tile, stride = self.tile_pixels(mammogram)
    pixels = _pad_to_tile(mammogram.pixels, tile)
    geometry = TileGeometry(
      tile_rows=tile_origins(mammogram.pixels.shape[0], tile, stride),
      tile_cols=tile_origins(mammogram.pixels.shape[1], tile, stride),
      patch_size=tile,
      stride=stride,
      image_shape=tuple(mammogram.pixels.shape),
      original_shape=tuple(mammogram.original_shape),
      flipped=mammogram.flipped,
      pixel_spacing_mm=float(np.mean(mammogram.pixel_spacing_mm)),
      spacing_assumed=mammogram.spacing_assumed,
      field_of_view_mm=self.field_of_view_mm,
    )
    if self.min_breast_fraction > 0:
      fractions = _breast_fractions(self.breast_mask_fn(pixels), geometry)
      in_breast = fractions >= self.min_breast_fraction
    else:
      in_breast = np.ones(geometry.grid_shape, bool)
    return PreparedImage(pixels, mammogram.max_value, geometry, in_breast)


def average_map(grid: np.ndarray, geometry: TileGeometry, scale: int = 1) -> np.ndarray:
  """Per-pixel mean of the scored tiles covering each pixel (NaN where none does), as in the
  nyukat heatmaps: canonical orientation, every `scale`-th row and column (overlays take a
  coarse one, DICOM results the full one).

  Computed on the bands between tile edges (a few thousand cells, not the image's millions of
  pixels), then read at the pixels asked for.
  """
  row_edges = _band_edges(geometry.tile_rows, geometry.patch_size, geometry.image_shape[0])
  col_edges = _band_edges(geometry.tile_cols, geometry.patch_size, geometry.image_shape[1])
  total = np.zeros((len(row_edges) - 1, len(col_edges) - 1))
  count = np.zeros_like(total)
  for i, j in zip(*np.nonzero(~np.isnan(grid)), strict=True):
    rows = _band_span(row_edges, geometry.tile_rows[i], geometry.patch_size)
    cols = _band_span(col_edges, geometry.tile_cols[j], geometry.patch_size)
    total[rows, cols] += grid[i, j]
    count[rows, cols] += 1
  with np.errstate(invalid="ignore", divide="ignore"):
    bands = np.where(count > 0, total / count, np.nan)
  rows = np.searchsorted(row_edges, np.arange(0, geometry.image_shape[0], scale), "right") - 1
  cols = np.searchsorted(col_edges, np.arange(0, geometry.image_shape[1], scale), "right") - 1
  return bands[np.ix_(rows, cols)].astype(np.float32)


def _band_edges(origins: np.ndarray, patch_size: int, length: int) -> np.ndarray:
  """Every tile start and end along one axis, clipped to the image, with 0 and its length."""
  edges = np.concatenate([[0, length], origins, origins + patch_size])
  return np.unique(edges.clip(0, length))


def _band_span(edges: np.ndarray, origin: int, patch_size: int) -> slice:
  """The bands a tile covers."""
  start, stop = np.searchsorted(edges, [origin, min(origin + patch_size, edges[-1])])
  return slice(int(start), int(stop))


def _breast_fractions(mask: np.ndarray, geometry: TileGeometry) -> np.ndarray:
  """Fraction of each tile inside the breast, from a summed-area table of a strided mask."""
  step = max(1, geometry.patch_size // _MASK_SAMPLES_PER_SIDE)
  sample = mask[::step, ::step]
  table = np.zeros((sample.shape[0] + 1, sample.shape[1] + 1), np.int64)
  table[1:, 1:] = sample.cumsum(0).cumsum(1)

  def bounds(origins: np.ndarray, length: int) -> tuple[np.ndarray, np.ndarray]:
    start = -(-origins // step)
    return start, np.maximum(np.minimum(-(-(origins + geometry.patch_size) // step), length), start)

  r0, r1 = bounds(geometry.tile_rows, sample.shape[0])
  c0, c1 = bounds(geometry.tile_cols, sample.shape[1])
  r0, r1, c0, c1 = r0[:, None], r1[:, None], c0[None, :], c1[None, :]
  inside = table[r1, c1] - table[r0, c1] - table[r1, c0] + table[r0, c0]
  return inside / np.maximum((r1 - r0) * (c1 - c0), 1)


def _pad_to_tile(pixels: np.ndarray, patch_size: int) -> np.ndarray:
  """Zero-pads an image smaller than one tile up to one tile (otherwise returns it as is)."""
  pad = [(0, max(0, patch_size - n)) for n in pixels.shape]
  pixels = np.ascontiguousarray(pixels, dtype=np.uint16)
  return np.pad(pixels, pad) if any(p for _, p in pad) else pixels
