"""Specks: the first layer of a CAD detector, found at the image's own pixels.

Clinical CAD finds single calcifications (specks) first and only then groups them into clusters
(`mcalc_jax.whole_image.clusters`). A speck is a connected region of a dense speck map above a
threshold, neither too small (noise) nor too large (vessels, labels, large benign calcifications).

A `SpeckMap` is any dense map laid on an image's canonical pixels (chest wall left), larger where
a speck is likelier: its values, its pixel size in mm, and the image's orientation and pixel size
to map back. `classical_speck_map` is the untrained baseline, at the pixels it is given (a mammogram's
are brought down to `MAP_PIXEL_MM` first where finer: `mammogram_speck_map`): the white top-hat by a disk of `TOPHAT_RADIUS_MM` divided by the top-hat's local
level (its 90th percentile around the pixel: a contrast-to-noise ratio robust to the specks
themselves), zero outside the breast. A network's dense probability map (at its own stride) drops
in as another `SpeckMap`; the speck threshold is then a probability.
"""

from __future__ import annotations

import dataclasses

import numpy as np
from scipy import ndimage

from input_pipeline import morphology, speck_labels
from input_pipeline.mammogram import Mammogram, Orientation
from mcalc_jax.model import speck_detector

TOPHAT_RADIUS_MM = 0.4  # the tile reranker's speck disk: keeps specks up to ~0.8 mm across
NOISE_WINDOW_MM = 6.0  # side of the blocks the local noise level is estimated in
NOISE_QUANTILE = 0.9  # the top-hat's local level: a high quantile of the breast's pixels
EDGE_MARGIN_MM = speck_labels.EDGE_MARGIN_MM  # left out inside the breast's outline
# The classical map's pixels: the 0.2-mm film its rules were chosen on (finer images are brought
# down to it; also about 2x faster than the tile scorer there, docs/performance.md).
MAP_PIXEL_MM = speck_labels.PIXEL_MM


@dataclasses.dataclass(frozen=True)
class SpeckMap:
  """A dense speck-likelihood map on an image's canonical pixels, and how to map it back.

  Map pixel (r, c) covers the image's canonical pixels around
  ((r + 0.5) * pixel_mm / image_pixel_mm - 0.5, likewise c): a map at the image's own pixels is
  the identity, a network's map at stride s has pixel_mm = s * image_pixel_mm."""

  values: np.ndarray  # float [h, w]
  pixel_mm: float  # side of one map pixel
  orientation: Orientation | None = None  # the image's canonical/original mapping; None: unflipped
  image_pixel_mm: float | None = None  # side of one image pixel; None: the map's own
  contrast: np.ndarray | None = None  # white top-hat on the map's grid (fraction of the range)

  def image_point(self, row: float, col: float) -> tuple[float, float]:
    """A map point in the image's canonical pixels."""
    scale = self.pixel_mm / (self.image_pixel_mm or self.pixel_mm)
    return (row + 0.5) * scale - 0.5, (col + 0.5) * scale - 0.5

  def to_original(self, row: float, col: float) -> tuple[float, float]:
    """A point of the image's canonical pixels in the original image's (flipped back where the
    image was)."""
    return row, col if self.orientation is None else self.orientation.col(col)


@dataclasses.dataclass(frozen=True)
class SpeckRule:
  """Which regions of a speck map are specks: above `threshold` (the map's units: the top-hat
  over its local level for the classical map, a probability for a network's), and of an area a
  microcalcification can have."""

  threshold: float = 3.5
  min_area_mm2: float = 0.02  # one 0.2-mm pixel; two of 0.1 mm: single-pixel noise is not a speck
  max_area_mm2: float = 1.0  # ~1.1 mm across: larger objects are vessels, labels, benign masses


# The default. On mini-MIAS's 216 films (0.2 mm) with `clusters.CLUSTER_RULE`, 14 of 18 clusters
# get a mark at 2.9 marks per normal image; a threshold of 3 gives 15 at 8.1, of 4 gives 8 at 1.4.
SPECK_RULE = SpeckRule()


@dataclasses.dataclass(frozen=True)
class Speck:
  """One speck: where it is (canonical image pixels, and mm from the canonical top-left corner)
  and what it looks like."""

  row: float
  col: float
  row_mm: float
  col_mm: float
  area_mm2: float
  peak: float  # the map's largest value in the speck
  mean: float  # the map's mean value over the speck
  contrast: float  # the top-hat's peak (fraction of the range); NaN where the map has none
  elongation: float  # 1 - minor / major axis of the region (0: round, towards 1: a line)


def classical_speck_map(
  pixels: np.ndarray,
  spacing_mm: float,
  *,
  orientation: Orientation | None = None,
  mask: np.ndarray | None = None,
  radius_mm: float = TOPHAT_RADIUS_MM,
  window_mm: float = NOISE_WINDOW_MM,
  margin_mm: float = EDGE_MARGIN_MM,
) -> SpeckMap:
  """The white top-hat of `pixels` (canonical, as fractions of the intensity range) over its
  `local_noise` level, at the image's own pixels; zero outside `mask` (default: the breast
  mask) and within `margin_mm` of its edge, where film edges and the skin line make specks."""
  pixels = np.asarray(pixels, np.float32)
  mask = speck_labels.inner_mask(pixels, spacing_mm, margin_mm, mask)
  tophat = morphology.white_tophat_mm(pixels, spacing_mm, radius_mm)
  block = max(2, round(window_mm / spacing_mm))
  cnr = np.where(mask, tophat / local_noise(tophat, mask, block), 0.0).astype(np.float32)
  return SpeckMap(cnr, spacing_mm, orientation, spacing_mm, np.where(mask, tophat, 0.0))


def mammogram_speck_map(mammogram: Mammogram, pixel_mm: float = MAP_PIXEL_MM) -> SpeckMap:
  """`classical_speck_map` of a mammogram read by `input_pipeline.mammogram.read_mammogram`, its
  pixels first brought down to `pixel_mm` where they are finer (linear), so that the map's noise
  level, and with it the rule's threshold, means what it meant on the film it was chosen on."""
  spacing = float(np.mean(mammogram.pixel_spacing_mm))
  pixels = mammogram.pixels / np.float32(mammogram.max_value)
  if spacing >= pixel_mm:
    return classical_speck_map(pixels, spacing, orientation=mammogram.orientation)
  coarse = ndimage.zoom(pixels, spacing / pixel_mm, order=1)
  grid_mm = spacing * pixels.shape[0] / coarse.shape[0]
  speck_map = classical_speck_map(coarse, grid_mm, orientation=mammogram.orientation)
  return dataclasses.replace(speck_map, image_pixel_mm=spacing)


def local_noise(tophat: np.ndarray, mask: np.ndarray, block: int) -> np.ndarray:
  """The top-hat's `NOISE_QUANTILE` in `block`-pixel squares of the breast, bilinearly
  interpolated to every pixel: specks are far fewer than 10% of the pixels, so this is the
  background's level, and unlike a median absolute deviation it is not zero on 8-bit film, where
  most of the top-hat is 0 or 1 grey level. Squares with little breast take the breast's own;
  a floor of 1e-6 keeps flat synthetic images finite."""
  h, w = tophat.shape
  gh, gw = -(-h // block), -(-w // block)
  padded = np.full((gh * block, gw * block), np.nan, np.float32)
  padded[:h, :w] = np.where(mask, tophat, np.nan)
  blocks = padded.reshape(gh, block, gw, block).transpose(0, 2, 1, 3).reshape(gh, gw, -1)
  enough = np.sum(~np.isnan(blocks), -1) >= blocks.shape[-1] / 4
  level = np.nanquantile(np.where(enough[..., None], blocks, 0.0), NOISE_QUANTILE, -1)
  whole = np.quantile(tophat[mask], NOISE_QUANTILE) if mask.any() else 0.0
  coarse = np.maximum(np.where(enough, level, whole), 1e-6)
  return ndimage.zoom(coarse, block, order=1, mode="nearest")[:h, :w]


def find_specks(speck_map: SpeckMap, rule: SpeckRule = SPECK_RULE) -> list[Speck]:
  """The specks of `speck_map`: connected regions (8-neighbours) above the rule's threshold whose
  area the rule admits, in the order scipy labels them (row-major by first pixel)."""
  labels, n = ndimage.label(speck_map.values > rule.threshold, structure=np.ones((3, 3)))
  pixel_area = speck_map.pixel_mm**2
  specks = []
  for index, region in enumerate(ndimage.find_objects(labels), start=1):
    inside = labels[region] == index
    area = inside.sum() * pixel_area
    if rule.min_area_mm2 <= area <= rule.max_area_mm2:
      specks.append(_speck(speck_map, region, inside, area))
  return specks


def _speck(
  speck_map: SpeckMap, region: tuple[slice, slice], inside: np.ndarray, area: float
) -> Speck:
  """One labelled region as a `Speck` (its centre weighted by the map's values)."""
  values = speck_map.values[region][inside]
  rows, cols = np.nonzero(inside)
  weights = values / values.sum()
  row = region[0].start + float(rows @ weights)
  col = region[1].start + float(cols @ weights)
  contrast = (
    np.nan if speck_map.contrast is None else float(speck_map.contrast[region][inside].max())
  )
  image_row, image_col = speck_map.image_point(row, col)
  return Speck(
    row=image_row,
    col=image_col,
    row_mm=(row + 0.5) * speck_map.pixel_mm,
    col_mm=(col + 0.5) * speck_map.pixel_mm,
    area_mm2=float(area),
    peak=float(values.max()),
    mean=float(values.mean()),
    contrast=contrast,
    elongation=_elongation(rows, cols),
  )


def _elongation(rows: np.ndarray, cols: np.ndarray) -> float:
  """1 - minor / major axis of a region's pixels (each pixel a unit square, so one pixel is
  round)."""
  cov = np.cov(np.vstack([rows, cols]), bias=True) + np.eye(2) / 12
  low, high = np.linalg.eigvalsh(cov)
  return float(1 - np.sqrt(low / high))


def network_speck_map(detector: speck_detector.SpeckDetector, mammogram: Mammogram) -> SpeckMap:
  """A trained detector's speck probability map of a mammogram (`read_mammogram`'s), on the
  detector's grid of `speck_detector.PIXEL_MM`, zero outside the breast and within
  `EDGE_MARGIN_MM` of its edge (the classical map's mask); its `SpeckRule` threshold is a
  probability."""
  spacing = float(np.mean(mammogram.pixel_spacing_mm))
  pixels = mammogram.pixels / np.float32(mammogram.max_value)
  mask = speck_labels.inner_mask(pixels, spacing, EDGE_MARGIN_MM)
  values = speck_detector.dense_map(detector, pixels, spacing, mask=mask)
  return SpeckMap(values, speck_detector.PIXEL_MM, mammogram.orientation, spacing)
