"""Does a classifier trained on whole-image tiles, not on patches, localise better?

  python -m tools.tile_reranker --run=runs/mias_cv/task1_specknet [--with_network]
      [--data_config=configs/data.py:source=mias] [--out=RUN/eval/froc_reranked]

The networks and the floor learn from cluster-centred patches against random background
patches, then score every grid tile of a mammogram, most of which look like neither (film
labels, vessels, lone specks). This tool refits the decision on the scoring distribution itself:
for each fold of a finished `mcalc-cv` run with whole-image localisation, a class-balanced,
L2-regularised logistic regression on seven classical features of every scored tile (log 1 +
the number of connected white top-hat specks, disk of 0.4 mm, above 0.02 / 0.03 / 0.04 / 0.06
of the intensity range; the top-hat maximum; the tile's maximum and mean intensity), positives
the tiles that hit a cluster (`mcalc_jax.froc`'s rule), fitted on the tiles of the fold's
training patients (the other folds' images) and applied to its test patients' tiles. The FROC of
the refitted grids is written like the CV's (froc.json, froc.csv, clusters.csv, froc.png).
`--with_network` adds the run's out-of-fold logit as an eighth feature (stacking: the training
tiles' logits come from the other folds' models, which trained on this fold's patients).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os

import numpy as np
from scipy import ndimage, optimize

from input_pipeline.mammogram import read_mammogram, spacing_options
from mcalc_jax import froc
from tools.false_positives import scored_images

SPECK_RADIUS_MM = 0.4
THRESHOLDS = (0.02, 0.03, 0.04, 0.06)  # top-hat contrast, fraction of the intensity range


def tile_features(pixels: np.ndarray, geometry, radius_px: float) -> dict[tuple[int, int], list]:
  """Per scored-grid cell (i, j): the seven features of the module docstring."""
  r = int(np.floor(radius_px))
  yy, xx = np.mgrid[-r : r + 1, -r : r + 1]
  tophat = pixels - ndimage.grey_opening(pixels, footprint=yy**2 + xx**2 <= radius_px**2)
  size, out = geometry.patch_size, {}
  for i, top in enumerate(geometry.tile_rows):
    for j, left in enumerate(geometry.tile_cols):
      t, p = (
        tophat[top : top + size, left : left + size],
        pixels[top : top + size, left : left + size],
      )
      counts = [np.log1p(ndimage.label(t > thr)[1]) for thr in THRESHOLDS]
      out[i, j] = [*counts, float(t.max()), float(p.max()), float(p.mean())]
  return out


def fit_logistic(x: np.ndarray, y: np.ndarray, c: float = 1.0) -> tuple[np.ndarray, np.ndarray]:
  """Class-balanced L2 logistic regression on standardised `x` (as scikit-learn's with
  class_weight='balanced'): the vector [weights..., bias] and the standardisation (mean, std)."""
  mean, std = x.mean(0), x.std(0) + 1e-12
  z = np.column_stack([(x - mean) / std, np.ones(len(x))])
  weight = np.where(y, len(y) / (2 * max(y.sum(), 1)), len(y) / (2 * max((~y).sum(), 1)))
  sign = np.where(y, 1.0, -1.0)

  def loss(w: np.ndarray) -> tuple[float, np.ndarray]:
    margin = sign * (z @ w)
    value = 0.5 * w[:-1] @ w[:-1] + c * np.sum(weight * np.logaddexp(0, -margin))
    grad = -c * z.T @ (weight * sign * np.exp(-np.logaddexp(0, margin)))
    grad[:-1] += w[:-1]
    return value, grad

  w = optimize.minimize(loss, np.zeros(z.shape[1]), jac=True, method="L-BFGS-B").x
  return w, np.stack([mean, std])


def decision(x: np.ndarray, w: np.ndarray, scale: np.ndarray) -> np.ndarray:
  """The fitted model's logit for features `x`."""
  return ((x - scale[0]) / scale[1]) @ w[:-1] + w[-1]


def rerank(run: str, data_config: str, with_network: bool) -> list[froc.ScoredImage]:
  """The run's scored images with each fold's test grids replaced by the refitted logits."""
  images, inputs = scored_images(run, data_config)
  with open(os.path.join(run, "folds.json")) as f:
    fold_of = {p: k for k, part in enumerate(json.load(f)["folds"]) for p in part["test"]}
  rows = []  # (image index, i, j, fold, hit, features)
  for n, image in enumerate(images):
    item, g, grid = inputs[image.key], image.scores.geometry, image.scores.task1
    mammogram = read_mammogram(item.path, spacing_options(item.pixel_spacing_mm))
    pixels = mammogram.pixels.astype(np.float64) / mammogram.max_value
    features = tile_features(pixels, g, SPECK_RADIUS_MM / g.pixel_spacing_mm)
    hit = {t for c in image.clusters for t in froc.tiles_holding(grid, g, c)}
    for i, j in zip(*np.nonzero(~np.isnan(grid)), strict=True):
      extra = [_logit(grid[i, j])] if with_network else []
      rows.append((n, i, j, fold_of[image.patient_id], (i, j) in hit, features[i, j] + extra))
  fold, hit = np.array([r[3] for r in rows]), np.array([r[4] for r in rows])
  x, score = np.array([r[5] for r in rows]), np.zeros(len(rows))
  for k in np.unique(fold):
    w, scale = fit_logistic(x[fold != k], hit[fold != k])
    score[fold == k] = decision(x[fold == k], w, scale)
  grids = [np.full(image.scores.task1.shape, np.nan) for image in images]
  for (n, i, j, *_), s in zip(rows, score, strict=True):
    grids[n][i, j] = s
  return [
    dataclasses.replace(image, scores=dataclasses.replace(image.scores, task1=grid))
    for image, grid in zip(images, grids, strict=True)
  ]


def _logit(p: float) -> float:
  p = min(max(float(p), 1e-7), 1 - 1e-7)
  return float(np.log(p / (1 - p)))


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--run", required=True)
  parser.add_argument("--data_config", default="configs/data.py:source=mias")
  parser.add_argument("--with_network", action="store_true")
  parser.add_argument("--out", default="")
  args = parser.parse_args()
  evaluation = froc.evaluate(rerank(args.run, args.data_config, args.with_network))
  name = "froc_reranked" + ("_with_network" if args.with_network else "")
  out = args.out or os.path.join(args.run, "eval", name)
  froc.write_outputs(out, evaluation, title="tile-level logistic regression, refitted per fold")
  m, ci = evaluation["metrics"], evaluation["ci"]
  for key, value in m.items():
    low, high = ci[key].get("low"), ci[key].get("high")
    print(f"{key}: {value:.3f}" + (f" ({low:.2f}-{high:.2f})" if low is not None else ""))
  print(f"written to {out}")


if __name__ == "__main__":
  main()
