"""Scoring outputs on disk: the probability grids (npz, lossless) and an overlay PNG for review.

Every file is written atomically (`mcalc_jax.base.files.atomic_write`), so a killed run leaves either
the old file, the new file or no file, never half of one. A grid read back is checked (a damaged
or foreign npz is a `ScoresFileError` naming the file), and an overlay's size is bounded
whatever the image's shape.

npz keys (one image):
  task1            float32 [gh, gw]  P(calcification) per tile; NaN where not scored (no breast)
  task2            float32 [gh, gw]  P(malignant) per tile; NaN where not scored (Task 1 below
                                     task1_threshold, or no Task 2 classifier: has_task2=False)
  has_task2        bool
  task1_threshold  float64
  tile_rows        int32 [gh]        top row of each grid row, canonical pixels
  tile_cols        int32 [gw]        left column of each grid column, canonical pixels
  patch_size       int64             tile (i, j) covers rows tile_rows[i]:+patch_size, cols
                                     tile_cols[j]:+patch_size (canonical; tiles of an image
  stride           int64             smaller than a tile reach into zero padding)
  image_shape      int64 [2]         canonical (rows, cols)
  original_shape   int64 [2]         the original file's (rows, cols)
  flipped          bool              canonical = original flipped left-right: original col =
                                     original_shape[1] - 1 - canonical col
  pixel_spacing_mm float64           the image's pixel size (0: unknown)
  spacing_assumed  bool              True when neither the file nor its source gave the spacing
  field_of_view_mm float64           tile side in mm the classifier was trained at (0: native)
"""

from __future__ import annotations

import math
import os
import zipfile
from collections.abc import Sequence

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.patches import Circle as CirclePatch
from matplotlib.patches import Rectangle

from input_pipeline.errors import UserError
from mcalc_jax.base.files import atomic_write
from mcalc_jax.whole_image.marks import Mark
from mcalc_jax.whole_image.tiling import Circle, ImageScores, TileGeometry, average_map

_DISPLAY_PIXELS = 1024  # longer side of the mammogram in the overlay
_PANEL_INCHES = 8.0  # longer side of a panel's image; at _DISPLAY_PIXELS / _PANEL_INCHES dpi
_MAX_STRETCH = 4  # a panel's sides within 1:4 of each other (a thinner image is stretched)
# Geometry keys that grids written before physical units lack, with the values they mean there.
_PHYSICAL_DEFAULTS = {"pixel_spacing_mm": 0.0, "spacing_assumed": False, "field_of_view_mm": 0.0}
_ALPHA = 0.45
_MARKS_DRAWN = 20  # the most probable reported marks drawn (labels of hundreds would hide it)
_MARK_MARGIN = 6  # display pixels between a mark's specks and its box


def write_scores(path: str | os.PathLike, scores: ImageScores) -> None:
  """Saves the grids and their geometry (see the module docstring for the keys)."""
  g = scores.geometry
  task2 = scores.task2 if scores.task2 is not None else np.full_like(scores.task1, np.nan)
  with atomic_write(path) as f:
    np.savez_compressed(
      f,
      task1=scores.task1,
      task2=task2,
      has_task2=scores.task2 is not None,
      task1_threshold=scores.task1_threshold,
      tile_rows=g.tile_rows,
      tile_cols=g.tile_cols,
      patch_size=g.patch_size,
      stride=g.stride,
      image_shape=g.image_shape,
      original_shape=g.original_shape,
      flipped=g.flipped,
      pixel_spacing_mm=g.pixel_spacing_mm,
      spacing_assumed=g.spacing_assumed,
      field_of_view_mm=g.field_of_view_mm,
    )


class ScoresFileError(UserError):
  """A score grid file that is damaged or not one `write_scores` wrote; names the file."""


def read_scores(path: str | os.PathLike) -> ImageScores:
  """Loads what `write_scores` saved (`seconds` is not stored: 0), checked for consistency.

  Raises:
    ScoresFileError: not an npz, damaged, an array missing, or grids and geometry that disagree.
  """
  path = os.fspath(path)
  try:
    with open(path, "rb") as f:
      if f.read(4) != b"PK\x03\x04":  # else numpy would try it as a pickle, and say so
        raise ScoresFileError(f"{path}: not an npz file")
    with np.load(path) as z:
      scores = _scores(z)
  except KeyError as e:
    raise ScoresFileError(f"{path}: a damaged score grid: no {e.args[0]!r} array") from e
  except (ValueError, TypeError, EOFError, zipfile.BadZipFile, zipfile.LargeZipFile) as e:
    if isinstance(e, ScoresFileError):
      raise
    raise ScoresFileError(f"{path}: a damaged score grid ({type(e).__name__}: {e})") from e
  problem = _inconsistency(scores)
  if problem:
    raise ScoresFileError(f"{path}: a damaged score grid: {problem}")
  return scores


def _scores(z: np.lib.npyio.NpzFile) -> ImageScores:
  geometry = TileGeometry(
    tile_rows=z["tile_rows"],
    tile_cols=z["tile_cols"],
    patch_size=int(z["patch_size"]),
    stride=int(z["stride"]),
    image_shape=tuple(int(n) for n in z["image_shape"]),
    original_shape=tuple(int(n) for n in z["original_shape"]),
    flipped=bool(z["flipped"]),
    **{k: type(v)(z[k]) for k, v in _PHYSICAL_DEFAULTS.items() if k in z.files},
  )
  return ImageScores(
    geometry=geometry,
    task1=z["task1"],
    task2=z["task2"] if z["has_task2"] else None,
    task1_threshold=float(z["task1_threshold"]),
    seconds=0.0,
  )


def _inconsistency(scores: ImageScores) -> str:
  """What makes a grid and its geometry disagree ('' if nothing): what a damaged or edited
  file shows, and what would otherwise fail far from the file (or silently) in FROC or fitting."""
  g, grid = scores.geometry, scores.task1
  if grid.ndim != 2 or grid.dtype.kind != "f":
    return f"task1 is {grid.dtype} of shape {grid.shape}, not a grid of probabilities"
  if scores.task2 is not None and scores.task2.shape != grid.shape:
    return f"task2's shape {scores.task2.shape} differs from task1's {grid.shape}"
  if (len(g.image_shape), len(g.original_shape), g.tile_rows.ndim, g.tile_cols.ndim) != (
    2,
    2,
    1,
    1,
  ):
    return "the geometry's arrays have the wrong dimensions"
  if grid.shape != g.grid_shape:
    return f"a grid of shape {grid.shape} for {g.grid_shape} tiles"
  if min(g.patch_size, g.stride, *g.image_shape, *g.original_shape) < 1:
    return "a tile, stride or image side below one pixel"
  for origins, side in ((g.tile_rows, g.image_shape[0]), (g.tile_cols, g.image_shape[1])):
    if ((origins < 0) | (origins >= side)).any():
      return f"tiles outside the {g.image_shape} image"
  if (grid < 0).any() or (grid > 1).any():
    return "probabilities outside [0, 1]"
  return ""


def write_overlay(
  path: str | os.PathLike,
  pixels: np.ndarray,
  scores: ImageScores,
  *,
  annotations: Sequence[Circle] = (),
  title: str = "",
  marks: Sequence[Mark] = (),
) -> None:
  """Renders the mammogram in grey under its heatmaps (blue 0 to red 1), as in the paper's Fig. 3.

  One panel per task, in the ORIGINAL orientation, the mammogram's longer side at about 1024
  pixels; known findings are drawn as white circles, CAD `marks` (the reported ones: ORIGINAL
  pixels) as boxes around their specks labelled with their Task 1 probability, the
  `_MARKS_DRAWN` most probable of them. `pixels` are the canonical pixels scored.
  """
  g = scores.geometry
  scale = max(1, math.ceil(max(g.image_shape) / _DISPLAY_PIXELS))
  grey = g.orientation.array(pixels[: g.image_shape[0] : scale, : g.image_shape[1] : scale])
  panels = [("Task 1: P(calcification)", scores.task1)]
  if scores.task2 is not None:
    panels.append(("Task 2: P(malignant)", scores.task2))
  (width, height), aspect = _panel_inches(*g.image_shape)
  fig = Figure(figsize=(len(panels) * (width + 1.5), height))
  FigureCanvasAgg(fig)
  extent = (0, g.image_shape[1], g.image_shape[0], 0)  # original pixel coordinates on the axes
  vmax = float(np.percentile(grey, 99.5)) or 1.0  # burned-in labels are brighter than tissue
  shown = [c for c in annotations if _crosses(c, g.image_shape)]
  for n, (label, grid) in enumerate(panels):
    ax = fig.add_subplot(1, len(panels), n + 1)
    ax.imshow(grey, cmap="gray", vmin=float(grey.min()), vmax=vmax, extent=extent, aspect=aspect)
    heat = np.ma.masked_invalid(g.orientation.array(average_map(grid, g, scale)))
    image = ax.imshow(heat, cmap="jet", vmin=0, vmax=1, alpha=_ALPHA, extent=extent, aspect=aspect)
    fig.colorbar(image, ax=ax, fraction=0.046, pad=0.02, label=label)
    for c in shown:
      ax.add_patch(_circle(c))
    for mark in sorted(marks, key=lambda m: -m.task1)[:_MARKS_DRAWN]:
      _draw_mark(ax, mark, _MARK_MARGIN * scale)
    ax.set_title(_panel_title(title, grid), fontsize="small")
    ax.set_axis_off()
  fig.tight_layout()
  with atomic_write(path) as f:
    fig.savefig(f, format="png", dpi=_DISPLAY_PIXELS / _PANEL_INCHES)


def _panel_inches(rows: int, cols: int) -> tuple[tuple[float, float], str]:
  """(width, height) of a panel's image in inches, the longer side `_PANEL_INCHES`, and the
  imshow aspect: 'equal', or 'auto' where an image thinner than 1:`_MAX_STRETCH` is stretched
  (so no shape makes a figure of more than a few thousand pixels)."""
  longer = max(rows, cols)
  shorter = max(min(rows, cols), longer / _MAX_STRETCH)
  sides = (_PANEL_INCHES * shorter / longer, _PANEL_INCHES)
  aspect = "equal" if min(rows, cols) == shorter else "auto"
  return (sides if rows >= cols else sides[::-1]), aspect


def _crosses(c: Circle, shape: tuple[int, int]) -> bool:
  """Whether a circle's outline passes over the image (others would draw nothing, and Agg can
  take minutes to draw a circle millions of pixels across)."""
  rows, cols = shape
  nearest = math.hypot(c.row - min(max(c.row, 0), rows), c.col - min(max(c.col, 0), cols))
  farthest = math.hypot(max(abs(c.row), abs(c.row - rows)), max(abs(c.col), abs(c.col - cols)))
  return math.isfinite(c.radius) and nearest <= c.radius <= farthest


def _circle(c: Circle) -> CirclePatch:
  return CirclePatch((c.col, c.row), c.radius, fill=False, edgecolor="white", linewidth=1.5)


def _draw_mark(ax, mark: Mark, margin: float) -> None:
  """A box `margin` original pixels around the mark's specks (whose centres' box is in pixel
  centres: pixel c spans [c, c + 1) on the axes), its probability above it."""
  top, left, bottom, right = mark.box
  corner = (left + 0.5 - margin, top + 0.5 - margin)
  width, height = right - left + 2 * margin, bottom - top + 2 * margin
  ax.add_patch(Rectangle(corner, width, height, fill=False, edgecolor="magenta", linewidth=1.2))
  ax.text(*corner, f"{mark.task1:.2f}", color="magenta", fontsize="x-small", va="bottom")


def _panel_title(title: str, grid: np.ndarray) -> str:
  peak = "no tile scored" if np.isnan(grid).all() else f"max {np.nanmax(grid):.3f}"
  return f"{title}  ({peak})" if title else peak
