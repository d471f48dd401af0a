"""A contact sheet of a cross-validation's hottest false-positive tiles, and of its clusters' tiles.

  python -m tools.false_positives --run=runs/mias_cv/task1_specknet --out=runs/fp.png
      [--data_config=configs/data.py:source=mias] [--count=24] [--reranked]

Reads every fold's out-of-fold grids (`RUN/fold_*/images/*.npz`) and the cohort's findings,
takes the detections that hit no cluster (`mcalc_jax.whole_image.froc`'s rule), highest first, and writes
their tiles (each stretched to its own range, in the canonical orientation, shown at one size) as
rows of 8; below
them, one tile holding each annotated cluster. With --reranked, the grids are first rescored by
each fold's tile reranker (`RUN/fold_<i>/reranker.json`, as `mcalc-cv` wrote them), so the sheet
shows what the reranker still gets wrong. The sheet holds the cohort's pixels: keep it out of
the repository when the licence says so (MIAS).
"""

from __future__ import annotations

import argparse
import dataclasses
import glob
import os

import numpy as np
from PIL import Image

from input_pipeline import sources
from input_pipeline.mammogram import read_mammogram, spacing_options
from mcalc_jax.archives import discovery
from mcalc_jax.configs import data
from mcalc_jax.experiments import localization
from mcalc_jax.whole_image import froc, heatmaps, reranking

_COLUMNS = 8
_CELL = 168  # pixels per tile on the sheet (nearest-neighbour)


def scored_images(
  grid_paths: dict[str, str], data_config: str
) -> tuple[list[froc.ScoredImage], dict]:
  """The run's out-of-fold scored images (`grid_paths`: `grid_paths(RUN)`) with their findings,
  and the inputs by key."""
  config = data.get_config(data_config.split(":", 1)[1] if ":" in data_config else None)
  findings = sources.load_findings(config.source, config.location)
  base = os.path.commonpath([f.image_path for f in findings])
  inputs = {i.key: i for i in discovery.inputs_from_findings(findings, base)}
  grids = {key: heatmaps.read_scores(path) for key, path in grid_paths.items()}
  keys = {i.path: key for key, i in inputs.items()}
  return froc.scored_images(findings, keys, grids), inputs


def grid_paths(run: str) -> dict[str, str]:
  """Each out-of-fold grid's path (RUN/fold_<i>/images/KEY.npz), by image key."""
  paths = glob.glob(os.path.join(run, "fold_*", localization.IMAGES_DIR, "*.npz"))
  return {os.path.basename(path)[: -len(".npz")]: path for path in paths}


def reranked(
  grid_paths: dict[str, str], images: list[froc.ScoredImage], inputs: dict
) -> list[froc.ScoredImage]:
  """The images rescored by the reranker of the fold that scored them."""
  fold_dirs = {key: os.path.dirname(os.path.dirname(p)) for key, p in grid_paths.items()}
  models = {
    d: reranking.load(os.path.join(d, localization.RERANKER_FILE)) for d in set(fold_dirs.values())
  }
  out = []
  for image in images:
    mammogram, _ = inputs[image.key].read()
    model = models[fold_dirs[image.key]]
    scores = reranking.rerank_image(mammogram.pixels / mammogram.max_value, image.scores, model)
    out.append(dataclasses.replace(image, scores=scores))
  return out


def false_positive_tiles(images: list[froc.ScoredImage], count: int) -> list[tuple]:
  """(score, image, i, j) of the `count` hottest detections that hit no cluster."""
  found = []
  for image in images:
    geometry = image.scores.geometry
    for i, j, score in froc.detections(image.scores.task1, geometry):
      if not any(froc.hits(geometry, i, j, c) for c in image.clusters):
        found.append((score, image, i, j))
  return sorted(found, key=lambda f: (-f[0], f[1].key, f[2], f[3]))[:count]


def cluster_tiles(images: list[froc.ScoredImage]) -> list[tuple]:
  """(score, image, i, j): the best-scoring tile holding each cluster."""
  out = []
  for image in images:
    grid, geometry = image.scores.task1, image.scores.geometry
    for cluster in image.clusters:
      holding = [
        (float(grid[i, j]), image, i, j) for i, j in froc.tiles_holding(grid, geometry, cluster)
      ]
      if holding:
        out.append(max(holding, key=lambda h: h[0]))
  return out


def sheet(tiles: list[tuple], inputs: dict) -> np.ndarray:
  """The tiles' pixels, each stretched to 0-255, in rows of `_COLUMNS`."""
  cells = []
  for _, image, i, j in tiles:
    item = inputs[image.key]
    pixels = read_mammogram(item.path, spacing_options(item.pixel_spacing_mm)).pixels
    g = image.scores.geometry
    tile = pixels[g.tile_rows[i] : g.tile_rows[i] + g.patch_size, g.tile_cols[j] :][
      :, : g.patch_size
    ].astype(np.float64)
    tile = (tile - tile.min()) / max(np.ptp(tile), 1e-9) * 255
    cells.append(np.asarray(Image.fromarray(tile.astype(np.uint8)).resize((_CELL, _CELL), 0)))
  cells += [np.zeros_like(cells[0])] * (-len(cells) % _COLUMNS)
  rows = [np.hstack(cells[k : k + _COLUMNS]) for k in range(0, len(cells), _COLUMNS)]
  return np.vstack(rows).astype(np.uint8)


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--run", required=True)
  parser.add_argument("--out", required=True)
  parser.add_argument("--data_config", default="configs/data.py:source=mias")
  parser.add_argument("--count", type=int, default=24)
  parser.add_argument("--reranked", action="store_true", help="rescore by each fold's reranker")
  args = parser.parse_args()
  paths = grid_paths(args.run)
  images, inputs = scored_images(paths, args.data_config)
  if args.reranked:
    images = reranked(paths, images, inputs)
  false_positives = false_positive_tiles(images, args.count)
  clusters = cluster_tiles(images)
  gap = np.zeros((8, _COLUMNS * _CELL), np.uint8)
  Image.fromarray(np.vstack([sheet(false_positives, inputs), gap, sheet(clusters, inputs)])).save(
    args.out
  )
  print(f"{args.out}: {len(false_positives)} false positives (scores", end=" ")
  print(f"{false_positives[0][0]:.6f}-{false_positives[-1][0]:.6f}), {len(clusters)} clusters")


if __name__ == "__main__":
  main()
