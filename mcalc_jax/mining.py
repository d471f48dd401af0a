"""Hard-negative mining, as CAD systems train for localisation: the model's own false alarms.

Random background patches are mostly easy (fat, smooth gland); what a sliding window gets wrong
is a few bright, busy regions per image. A round of mining scores whole training images with the
current model, takes each image's hottest tiles whose window touches no annotation of any
abnormality (the same exclusion the background sampler uses), and cuts them as background
patches exactly as the dataset builder cuts patches (the tile's millimetres, resampled to the
stored patch size). Training then continues on the enlarged set. Everything is a pure function
of the images and the model, so a round mines the same patches every time.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from input_pipeline import patches
from input_pipeline.mammogram import read_mammogram, spacing_options
from input_pipeline.manifest import Finding
from input_pipeline.pipeline import ID_FIELDS
from mcalc_jax import scoring, tiling


def hottest_negatives(
  scores: tiling.ImageScores, boxes: Sequence[tuple[float, float, float, float]], count: int
) -> list[tuple[int, int]]:
  """Grid cells of the `count` highest-scoring tiles that touch no exclusion box (ties: grid
  order), highest first."""
  grid, geometry = scores.task1, scores.geometry
  shape = (geometry.patch_size, geometry.patch_size)
  cells = [
    (float(grid[i, j]), i, j)
    for i, j in zip(*np.nonzero(~np.isnan(grid)), strict=True)
    if not any(
      patches.overlaps(b, int(geometry.tile_rows[i]), int(geometry.tile_cols[j]), shape)
      for b in boxes
    )
  ]
  cells.sort(key=lambda c: (-c[0], c[1], c[2]))
  return [(int(i), int(j)) for _, i, j in cells[:count]]


def mine_image(
  scorer: scoring.Scorer,
  image_id: str,
  findings: Sequence[Finding],
  count: int,
  size: int,
) -> dict[str, np.ndarray]:
  """Up to `count` hard-negative patches (`size` pixels) of one image, as dataset records."""
  path = findings[0].image_path
  mammogram = read_mammogram(path, spacing_options(findings[0].pixel_spacing_mm))
  scores = scorer.score(mammogram)
  geometry = scores.geometry
  shape = (geometry.patch_size, geometry.patch_size)
  boxes = patches.exclusion_boxes(mammogram, findings, shape)
  pixels = np.pad(
    mammogram.pixels, [(0, max(0, geometry.patch_size - n)) for n in mammogram.pixels.shape]
  )
  cut = []
  for i, j in hottest_negatives(scores, boxes, count):
    top, left = geometry.tile_rows[i], geometry.tile_cols[j]
    window = pixels[top : top + geometry.patch_size, left : left + geometry.patch_size]
    cut.append((patches.resample(window, size), f"{image_id}/mined/{i}_{j}"))
  n = len(cut)
  return {
    "image": np.stack([c[0] for c in cut])[..., None] if cut else np.zeros((0, size, size, 1)),
    "max_value": np.full(n, mammogram.max_value, np.int32),
    "task1_label": np.zeros(n, np.int32),
    "task2_label": np.full(n, -1, np.int32),
    "patient_id": np.full(n, findings[0].patient_id),
    "image_id": np.full(n, image_id),
    "finding_id": np.full(n, ""),
    "patch_id": np.array([c[1] for c in cut], dtype=str),
  }


def mine(
  scorer: scoring.Scorer,
  images: Sequence[tuple[str, Sequence[Finding]]],
  per_image: int,
  size: int,
) -> dict[str, np.ndarray]:
  """Hard negatives of every (image id, its findings) pair, concatenated in the given order."""
  parts = [mine_image(scorer, image_id, found, per_image, size) for image_id, found in images]
  return concatenate(parts, size)


def concatenate(parts: Sequence[dict[str, np.ndarray]], size: int) -> dict[str, np.ndarray]:
  """Record arrays of several parts as one (an empty set keeps its shapes)."""
  keys = ("image", "max_value", "task1_label", "task2_label", *ID_FIELDS)
  if not parts:
    return {
      k: np.zeros((0, size, size, 1), np.uint16) if k == "image" else np.zeros(0) for k in keys
    }
  return {k: np.concatenate([p[k] for p in parts]) for k in keys}
