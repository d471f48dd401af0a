"""Per-pixel speck labels from an inserted cohort: what a dense speck detector trains on.

Why: mini-MIAS's 18 clusters have no speck outlines, while every speck that
`input_pipeline.insertion` puts into real tissue is known: its centre, its contrast (`specks.csv`)
and its pixels (`masks/<id>_ins<k>.png`, the speck's pixels at half its peak, in the ORIGINAL
orientation; `images/` are in the original orientation too, `specks.csv`'s and `manifest.csv`'s
coordinates are original pixels). Everything here is moved to the canonical form (chest wall
left, `read_mammogram`) and to the detector's grid of `PIXEL_MM` (pixel edges aligned).

About half of an inserted cluster's specks are fainter than anything visible on film (the
contrast model's share below the mini-MIAS floor). Calling them specks would teach the network to
fire on noise, calling them background would punish it for finding faint real specks, so their
pixels carry no weight; nor does a one-pixel ring around every speck (its edge is a matter of
blur), nor anything outside the breast less `EDGE_MARGIN_MM` (where speck maps are zero).

Crops (`crops`) are cut around every inserted cluster (jittered) and at random and at the
brightest top-hat spots of the breast elsewhere (hard negatives), each with `halo` pixels of
context around the labelled square, deterministic from the seed and the image's name.

Real clusters known only as circles (mini-MIAS) label specks weakly (`weakly_labelled`): the
spots that are hard negatives elsewhere, the brightest top-hat pixels of the breast, are specks
inside an annotated circle; the circle's other pixels are unknown (faint specks or tissue).
"""

from __future__ import annotations

import csv
import dataclasses
import json
import os
from collections.abc import Collection, Sequence
from typing import NamedTuple

import numpy as np
from scipy import ndimage, spatial

from input_pipeline import breast, insertion, mammogram, morphology

PIXEL_MM = 0.2  # the detector's grid: mini-MIAS film's pixels
EDGE_MARGIN_MM = 2.0  # as the classical speck map's: film edges and the skin line make specks
BRIGHT_QUANTILE = 0.998  # hard negatives are centred on top-hat pixels above this quantile
_SAME_GRID = 0.01  # a relative spacing difference below which an image is already on the grid
# Where a background documents no spacing (PNG), insertion read it at the reader's assumption.
_ASSUMED_SPACING_MM = mammogram.ReadOptions().default_spacing_mm[0]


@dataclasses.dataclass(frozen=True)
class CohortImage:
  """One image of an inserted cohort and its inserted labels, in ORIGINAL pixels."""

  path: str
  patient_id: str
  pixel_mm: float
  clusters: tuple[tuple[float, float, float], ...]  # (row, col, radius) of each inserted cluster
  masks: tuple[str, ...]  # each inserted cluster's speck mask
  specks: np.ndarray  # float64 [n, 3]: row, col, visible (1: above the mini-MIAS floor)


@dataclasses.dataclass(frozen=True)
class LabelledImage:
  """An image on the detector's grid, canonical: pixels, breast mask, labels and weights."""

  image: CohortImage
  pixels: np.ndarray  # float32 [h, w], fractions of the intensity range
  mask: np.ndarray  # bool [h, w]: the breast less `EDGE_MARGIN_MM`
  labels: np.ndarray  # float32 [h, w]: 1 on visible specks' pixels
  weights: np.ndarray  # float32 [h, w]: 0 where the loss ignores the pixel (module docstring)
  clusters: np.ndarray  # float64 [k, 3]: inserted clusters' row, col, radius on the grid
  specks: np.ndarray  # float64 [n, 3]: inserted specks' row, col on the grid, visible


class Crops(NamedTuple):
  """Training crops: `inputs` hold `halo` pixels of context around the labelled square."""

  inputs: np.ndarray  # float32 [n, size + 2 halo, size + 2 halo, 2]: pixels, breast mask
  labels: np.ndarray  # float32 [n, size, size]
  weights: np.ndarray  # float32 [n, size, size]
  patients: np.ndarray  # str [n]

  def of(self, patients: Collection[str]) -> Crops:
    """The crops of `patients`' images (a fold's training part)."""
    chosen = np.isin(self.patients, list(patients))
    return Crops(*(field[chosen] for field in self))


def read_cohort(folder: str | os.PathLike) -> list[CohortImage]:
  """Every image of an inserted cohort (`insertion.insert_cohort`'s folder), with and without
  inserted clusters, sorted by path."""
  folder = os.fspath(folder)
  with open(os.path.join(folder, "insertion.json")) as f:
    scale = json.load(f)["options"]["contrast_scale"]
  floor = insertion.MIAS_FLOOR_CONTRAST * insertion.TISSUE_TOPHAT_CORRECTION * scale
  rows = _csv(os.path.join(folder, "manifest.csv"))
  specks: dict[str, list[tuple[float, float, float]]] = {}
  for s in _csv(os.path.join(folder, "specks.csv")):
    visible = float(float(s["contrast"]) >= floor)
    specks.setdefault(s["image_path"], []).append((float(s["row"]), float(s["col"]), visible))
  images = []
  for path in sorted({r["image_path"] for r in rows}):
    mine = [r for r in rows if r["image_path"] == path]
    inserted = [r for r in mine if r["note"] == insertion.INSERTED_NOTE]
    images.append(
      CohortImage(
        os.path.join(folder, path),
        mine[0]["patient_id"],
        float(mine[0]["pixel_spacing_mm"] or _ASSUMED_SPACING_MM),
        tuple((float(r["row"]), float(r["col"]), float(r["radius"])) for r in inserted),
        tuple(os.path.join(folder, r["mask_path"]) for r in inserted),
        np.array(specks.get(path, []), np.float64).reshape(-1, 3),
      )
    )
  return images


def _csv(path: str) -> list[dict[str, str]]:
  with open(path, newline="") as f:
    return list(csv.DictReader(f))


def to_grid(values: np.ndarray, pixel_mm: float, *, order: int = 1) -> np.ndarray:
  """A 2-D array at `pixel_mm` on the grid of `PIXEL_MM`, pixel edges aligned (map pixel r
  covers image pixels [r, r + 1) * PIXEL_MM / pixel_mm); finer images are blurred first by about
  one grid pixel's aperture. Unchanged where the image is already on the grid."""
  factor = pixel_mm / PIXEL_MM
  if abs(factor - 1) <= _SAME_GRID:
    return values
  if order and factor < 1:
    values = ndimage.gaussian_filter(values, 0.3 / factor)
  return ndimage.zoom(values, factor, order=order, mode="nearest", grid_mode=True)


def grid_point(row: float, col: float, pixel_mm: float) -> tuple[float, float]:
  """A point of an image's pixels (pixel centres) on the grid of `PIXEL_MM`."""
  factor = pixel_mm / PIXEL_MM
  return (row + 0.5) * factor - 0.5, (col + 0.5) * factor - 0.5


def inner_mask(
  pixels: np.ndarray,
  pixel_mm: float,
  margin_mm: float = EDGE_MARGIN_MM,
  mask: np.ndarray | None = None,
) -> np.ndarray:
  """`mask` (default: the breast mask of `pixels`) less a band of `margin_mm` inside its outline,
  where film edges and the skin line make specks (the classical speck map's rule too)."""
  mask = breast.breast_mask(pixels) if mask is None else mask
  margin = round(margin_mm / pixel_mm)
  return ndimage.minimum_filter(mask, 2 * margin + 1, mode="constant") if margin else mask


def labelled(image: CohortImage, margin_mm: float = EDGE_MARGIN_MM) -> LabelledImage:
  """One cohort image on the detector's grid, canonical, with its labels and weights."""
  m = mammogram.read_mammogram(image.path, mammogram.spacing_options(image.pixel_mm))
  pixels, mask = _grid_pixels_and_mask(m, image.pixel_mm, margin_mm)
  specks_mask = np.zeros(m.pixels.shape, bool)
  for path in image.masks:
    specks_mask |= mammogram.read_mask(path, like=m)
  on_grid = to_grid(specks_mask.astype(np.float32), image.pixel_mm) >= 0.25
  specks = _canonical_points(m, image.specks)
  visible = _visible_pixels(on_grid, specks)
  ring = ndimage.binary_dilation(on_grid, np.ones((3, 3), bool)) & ~visible
  weights = (mask & ~ring).astype(np.float32)
  clusters = _grid_circles(m, image.clusters, image.pixel_mm)
  return LabelledImage(image, pixels, mask, visible.astype(np.float32), weights, clusters, specks)


def _grid_pixels_and_mask(
  m: mammogram.Mammogram, pixel_mm: float, margin_mm: float
) -> tuple[np.ndarray, np.ndarray]:
  """A mammogram's pixels (fractions of the range) and its breast less `margin_mm`, on the grid."""
  pixels = to_grid(m.pixels / np.float32(m.max_value), pixel_mm).astype(np.float32)
  inner = inner_mask(m.pixels, pixel_mm, margin_mm).astype(np.uint8)
  return pixels, to_grid(inner, pixel_mm, order=0) > 0


def _grid_circles(m: mammogram.Mammogram, circles, pixel_mm: float) -> np.ndarray:
  """[k, 3] circles (row, col, radius) of original pixels as circles on the canonical grid."""
  out = _canonical_points(m, np.array(circles, np.float64).reshape(-1, 3))
  out[:, 2] *= pixel_mm / PIXEL_MM
  return out


def _canonical_points(m: mammogram.Mammogram, points: np.ndarray) -> np.ndarray:
  """[n, 3] (row, col, extra) of original pixels as (row, col, extra) on the canonical grid."""
  out = points.copy()
  for k, (row, col, _) in enumerate(points):
    out[k, :2] = grid_point(*m.from_original(row, col), float(np.mean(m.pixel_spacing_mm)))
  return out


def _visible_pixels(specks_mask: np.ndarray, specks: np.ndarray) -> np.ndarray:
  """The speck pixels whose nearest inserted speck centre is a visible speck's."""
  rows, cols = np.nonzero(specks_mask)
  if not rows.size or not len(specks):
    return np.zeros_like(specks_mask)
  _, nearest = spatial.cKDTree(specks[:, :2]).query(np.column_stack([rows, cols]))
  out = np.zeros_like(specks_mask)
  out[rows, cols] = specks[nearest, 2] > 0
  return out


def crops(
  images: Sequence[CohortImage],
  *,
  patients: Collection[str] | None = None,
  size: int = 48,
  halo: int = 24,
  per_cluster: int = 4,
  random_per_image: int = 4,
  bright_per_image: int = 4,
  seed: int = 0,
) -> Crops:
  """Crops of the images of `patients` (None: all): `per_cluster` around each inserted cluster,
  centres jittered by up to a quarter crop, `random_per_image` centred anywhere in the breast and
  `bright_per_image` on its brightest top-hat spots."""
  parts = [
    _image_crops(labelled(im), size, halo, (per_cluster, random_per_image, bright_per_image), seed)
    for im in images
    if patients is None or im.patient_id in patients
  ]
  if not parts:
    raise ValueError("no cohort image of the given patients")
  return joined(parts)


def joined(parts: Sequence[Crops]) -> Crops:
  """One set of crops from several (at least one)."""
  return Crops(*(np.concatenate(field) for field in zip(*parts, strict=True)))


def weakly_labelled(
  m: mammogram.Mammogram,
  name: str,
  patient_id: str,
  circles: np.ndarray,
  margin_mm: float = EDGE_MARGIN_MM,
) -> LabelledImage:
  """A real mammogram (`read_mammogram`'s) whose clusters are known as circles only, `circles`
  [k, 3] (row, col, radius in ORIGINAL pixels), on the detector's grid, canonical, weakly
  labelled (module docstring): inside a circle a pixel whose top-hat reaches the breast's
  `BRIGHT_QUANTILE` is a speck, the circle's other pixels carry no weight, and the breast outside
  every circle is background. `name` seeds its crops."""
  spacing = float(np.mean(m.pixel_spacing_mm))
  pixels, mask = _grid_pixels_and_mask(m, spacing, margin_mm)
  on_grid = _grid_circles(m, circles, spacing)
  rows, cols = np.ogrid[: pixels.shape[0], : pixels.shape[1]]
  inside = np.zeros(pixels.shape, bool)
  for row, col, radius in on_grid:
    inside |= (rows - row) ** 2 + (cols - col) ** 2 <= radius**2
  specks = inside & _bright_spots(pixels, mask)
  ring = ndimage.binary_dilation(specks, np.ones((3, 3), bool)) & ~specks
  weights = mask & ~ring & (~inside | specks)
  image = CohortImage(name, patient_id, spacing, tuple(map(tuple, circles)), (), np.zeros((0, 3)))
  return LabelledImage(
    image,
    pixels,
    mask,
    specks.astype(np.float32),
    weights.astype(np.float32),
    on_grid,
    image.specks,
  )


def cluster_crops(
  images: Sequence[LabelledImage],
  *,
  per_cluster: int,
  size: int = 48,
  halo: int = 24,
  seed: int = 0,
) -> Crops:
  """`per_cluster` crops around each of the images' clusters (centres jittered as `crops`'s), no
  others: what weakly labelled real clusters add to a cohort's crops."""
  return joined([_image_crops(image, size, halo, (per_cluster, 0, 0), seed) for image in images])


def _image_crops(
  image: LabelledImage, size: int, halo: int, counts: tuple[int, int, int], seed: int
) -> Crops:
  """One labelled image's crops (`crops`)."""
  rng = np.random.default_rng(insertion.image_seed(seed, os.path.basename(image.image.path)))
  per_cluster, random_count, bright_count = counts
  jitter = rng.uniform(-size / 4, size / 4, (len(image.clusters) * per_cluster, 2))
  centres = [np.repeat(image.clusters[:, :2], per_cluster, 0) + jitter]
  inside = np.argwhere(image.mask)
  if inside.size:
    centres.append(inside[rng.integers(len(inside), size=random_count)])
  if inside.size and bright_count:
    bright = np.argwhere(_bright_spots(image.pixels, image.mask))
    centres.append(bright[rng.integers(len(bright), size=bright_count)])
  corners = np.round(np.concatenate(centres) - size / 2).astype(int)
  return _cut(image, corners, size, halo)


def _bright_spots(pixels: np.ndarray, mask: np.ndarray) -> np.ndarray:
  """bool: the mask's pixels whose top-hat reaches its `BRIGHT_QUANTILE` (none if it is empty)."""
  if not mask.any():
    return np.zeros_like(mask)
  tophat = morphology.white_tophat_mm(pixels, PIXEL_MM, insertion.SPECK_RADIUS_MM)
  return mask & (tophat >= np.quantile(tophat[mask], BRIGHT_QUANTILE))


def _cut(image: LabelledImage, corners: np.ndarray, size: int, halo: int) -> Crops:
  """Crops whose labelled squares start at `corners` (row, col), borders repeating the image's
  edge (as the detector's whole-image pass pads it) and unlabelled beyond it."""
  pad = size + halo
  stacked = np.stack([image.pixels, image.mask.astype(np.float32)], -1)
  inputs = np.pad(stacked, ((pad, pad), (pad, pad), (0, 0)), mode="edge")
  labels = np.pad(image.labels, pad)
  weights = np.pad(image.weights, pad)
  h, w = image.pixels.shape
  corners = np.clip(corners, -size, (h, w)) + pad
  return Crops(
    np.stack([inputs[r - halo : r + size + halo, c - halo : c + size + halo] for r, c in corners]),
    np.stack([labels[r : r + size, c : c + size] for r, c in corners]),
    np.stack([weights[r : r + size, c : c + size] for r, c in corners]),
    np.full(len(corners), image.image.patient_id),
  )
