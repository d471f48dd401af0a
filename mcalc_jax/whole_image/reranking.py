"""Refitting the whole-image decision on whole-image tiles: the tile reranker.

The networks and the floor learn from cluster-centred patches against random background
patches, then score every grid tile of a mammogram, most of which look like neither (film
labels, vessels, lone specks). A tile reranker is a class-balanced, L2-regularised logistic
regression on classical features of the scored tiles themselves (`FEATURES`), positives the
tiles that hit a cluster (`mcalc_jax.whole_image.froc`'s rule): it learns the decision on the distribution
that is scored. Optionally the network's logit is one more feature (stacking). Numpy and scipy
only; features are taken on the canonical pixels at the tile's own millimetres (the speck disk
is 0.4 mm whatever the pixel size), so one fitted on film applies to FFDM tiles of the same
field of view.
"""

from __future__ import annotations

import dataclasses
import json
import os
from collections.abc import Callable, Mapping, Sequence
from typing import Any, Protocol

import numpy as np
from scipy import ndimage, optimize

from input_pipeline import morphology
from input_pipeline.errors import UserError
from input_pipeline.mammogram import Mammogram
from mcalc_jax.base import calibration, files
from mcalc_jax.whole_image import froc
from mcalc_jax.whole_image.tiling import ImageScores

SPECK_RADIUS_MM = 0.4
EDGE_BAND_MM = 0.4  # the width of the bands either side of a straight edge
NETWORK_FEATURE = "network_logit"


class RerankerError(UserError):
  """A reranker that cannot be used: a damaged or foreign JSON, unknown features, other tiles."""


class Readable(Protocol):
  """What the reranker needs of an input: its pixels read again (`archives.discovery.Input`)."""

  def read(self) -> tuple[Mammogram, object]: ...


@dataclasses.dataclass(frozen=True)
class TileView:
  """One tile: its pixels and white top-hat (both as fractions of the intensity range), and its
  image's fine-structure level (`LEVEL_QUANTILE` of the top-hat over the scored tiles; 1.0 where
  no `RELATIVE_FEATURES` are read)."""

  pixels: np.ndarray
  tophat: np.ndarray
  pixel_spacing_mm: float
  level: float = 1.0


# The top-hat quantile over an image's scored tiles that the relative features divide by: film
# and FFDM differ four-fold in how bright their fine structure is (docs/realism.md), so a speck
# "above 0.03 of the range" is rare on film and everywhere on FFDM; above a multiple of the
# image's own level it means the same on both.
LEVEL_QUANTILE = 0.99
_LEVEL_FLOOR = 1e-3  # a flat image's level: its relative features stay finite


Threshold = Callable[[TileView], float]  # a tile's speck threshold, a fraction of the range


def _absolute(threshold: float) -> Threshold:
  return lambda t: threshold


def _relative(multiple: float) -> Threshold:
  """`multiple` times the tile's image's fine-structure level (`TileView.level`)."""
  return lambda t: multiple * t.level


def _specks(above: Threshold) -> Callable[[TileView], float]:
  """log(1 + connected top-hat specks above the threshold): clusters have several."""
  return lambda t: float(np.log1p(ndimage.label(t.tophat > above(t))[1]))


def _largest_speck_mm2(above: Threshold) -> Callable[[TileView], float]:
  """log(1 + area of the largest top-hat speck above the threshold, mm^2): labels, vessels and
  large benign calcifications are bigger than a microcalcification."""

  def feature(t: TileView) -> float:
    labels, n = ndimage.label(t.tophat > above(t))
    area = np.bincount(labels.ravel())[1:].max() if n else 0
    return float(np.log1p(area * max(t.pixel_spacing_mm, 0.0) ** 2))

  return feature


def _speck_line(above: Threshold) -> Callable[[TileView], float]:
  """How collinear the specks above the threshold lie (1 - minor / major spread of their
  centres; 0 below three specks): vascular calcifications line up, clusters do not."""

  def feature(t: TileView) -> float:
    labels, n = ndimage.label(t.tophat > above(t))
    if n < 3:
      return 0.0
    return linearity(
      np.asarray(ndimage.center_of_mass(np.ones_like(labels), labels, range(1, n + 1)))
    )

  return feature


def linearity(points: np.ndarray) -> float:
  """1 - minor / major variance of [n, 2] `points` (0 below three): 1 on a line, 0 when round."""
  if len(points) < 3:
    return 0.0
  spread = np.linalg.eigvalsh(np.cov(np.asarray(points, np.float64).T))
  return float(1 - spread[0] / max(spread[1], 1e-12))


def _step(profile: np.ndarray, band: int) -> float:
  """The largest difference between the means of two adjacent `band`-long runs of `profile`."""
  sums = np.concatenate([[0.0], np.cumsum(profile)])
  k = np.arange(band, len(profile) - band + 1)
  if k.size == 0:
    return 0.0
  return float(np.abs(2 * sums[k] - sums[k - band] - sums[k + band]).max() / band)


def _straight_edge(t: TileView) -> float:
  """The strongest step between bands of whole rows (or whole columns): film borders, labels and
  collimator edges run straight across a tile, while tissue boundaries curve and average out."""
  band = round(morphology.pixels_of(EDGE_BAND_MM, t.pixel_spacing_mm))
  return max(_step(t.pixels.mean(1), band), _step(t.pixels.mean(0), band))


# Every tile feature a reranker may use, by name (the registry a config's `features` picks from).
FEATURES: dict[str, Callable[[TileView], float]] = {
  "specks_0.02": _specks(_absolute(0.02)),
  "specks_0.03": _specks(_absolute(0.03)),
  "specks_0.04": _specks(_absolute(0.04)),
  "specks_0.06": _specks(_absolute(0.06)),
  "tophat_max": lambda t: float(t.tophat.max()),
  "tile_max": lambda t: float(t.pixels.max()),
  "tile_mean": lambda t: float(t.pixels.mean()),
  "largest_speck_mm2": _largest_speck_mm2(_absolute(0.03)),
  "speck_line": _speck_line(_absolute(0.03)),
  "bright_fraction": lambda t: float(np.mean(t.pixels >= 0.95)),
  "straight_edge": _straight_edge,
  "relative_specks_1": _specks(_relative(1.0)),
  "relative_specks_2": _specks(_relative(2.0)),
  "relative_specks_3": _specks(_relative(3.0)),
  "relative_tophat_max": lambda t: float(t.tophat.max() / t.level),
  "relative_largest_speck_mm2": _largest_speck_mm2(_relative(2.0)),
  "relative_speck_line": _speck_line(_relative(2.0)),
}
# The ones that read the image's fine-structure level (docs/results.md: not the default).
RELATIVE_FEATURES = tuple(name for name in FEATURES if name.startswith("relative_"))
# The absolute ones: each shape one helped in both MIAS CVs.
DEFAULT_FEATURES = tuple(name for name in FEATURES if name not in RELATIVE_FEATURES)


def check_features(names: Sequence[str]) -> None:
  """Raises ValueError naming the features that are neither registered nor the network's."""
  unknown = sorted(set(names) - set(FEATURES) - {NETWORK_FEATURE})
  if unknown:
    raise RerankerError(f"unknown tile features {unknown}; known: {', '.join(FEATURES)}")


def white_tophat(pixels: np.ndarray, pixel_spacing_mm: float) -> np.ndarray:
  """The white top-hat by a disk of `SPECK_RADIUS_MM` (at least one pixel)."""
  return morphology.white_tophat_mm(pixels, pixel_spacing_mm, SPECK_RADIUS_MM)


def tile_features(
  pixels: np.ndarray, scores: ImageScores, names: Sequence[str] = DEFAULT_FEATURES
) -> np.ndarray:
  """float64 [gh, gw, len(names)]: the named features of every scored tile (NaN where not
  scored); `NETWORK_FEATURE` is the network's logit from `scores`.

  `pixels` are the image's canonical pixels as fractions of its intensity range."""
  geometry, grid = scores.geometry, scores.task1
  spacing = geometry.pixel_spacing_mm
  tophat = white_tophat(pixels, spacing)
  logits = calibration.logit(grid)
  size = geometry.patch_size
  scored = list(zip(*np.nonzero(~np.isnan(grid)), strict=True))
  rows, cols = geometry.tile_rows, geometry.tile_cols
  windows = [np.s_[rows[i] : rows[i] + size, cols[j] : cols[j] + size] for i, j in scored]
  relative = any(name in RELATIVE_FEATURES for name in names)  # else the level is not read
  level = fine_structure_level([tophat[w] for w in windows]) if relative else 1.0
  out = np.full((*grid.shape, len(names)), np.nan)
  for (i, j), window in zip(scored, windows, strict=True):
    view = TileView(pixels[window], tophat[window], spacing, level)
    out[i, j] = [logits[i, j] if n == NETWORK_FEATURE else FEATURES[n](view) for n in names]
  return out


def fine_structure_level(tophats: Sequence[np.ndarray]) -> float:
  """`LEVEL_QUANTILE` of the scored tiles' top-hat (at least `_LEVEL_FLOOR`)."""
  if not tophats:
    return 1.0
  values = np.concatenate([np.ravel(t) for t in tophats])
  return max(float(np.quantile(values, LEVEL_QUANTILE)), _LEVEL_FLOOR)


def image_features(
  images: Sequence[froc.ScoredImage],
  inputs: Mapping[str, Readable],
  names: Sequence[str] = DEFAULT_FEATURES,
) -> dict[str, np.ndarray]:
  """Each scored image's `tile_features` (by key), its pixels read again from `inputs`."""
  features = {}
  for image in images:
    mammogram, _ = inputs[image.key].read()
    features[image.key] = tile_features(mammogram.pixels / mammogram.max_value, image.scores, names)
  return features


def tile_labels(image: froc.ScoredImage) -> np.ndarray:
  """bool [gh, gw]: the scored tiles that hit one of the image's clusters."""
  grid = image.scores.task1
  labels = np.zeros(grid.shape, bool)
  for cluster in image.clusters:
    for i, j in froc.tiles_holding(grid, image.scores.geometry, cluster):
      labels[i, j] = True
  return labels


@dataclasses.dataclass(frozen=True)
class TileReranker:
  """A fitted reranker: logit = standardised features . weights + bias."""

  features: tuple[str, ...]
  weights: np.ndarray
  bias: float
  mean: np.ndarray
  std: np.ndarray
  field_of_view_mm: float = 0.0  # the tiles' side it was fitted on (0: native pixels)
  # The probability from which a tile is flagged: chosen out of fold by false positives per image
  # (`localization`), or 0.5, mcalc-score's, where it was not.
  threshold: float = 0.5

  def logits(self, x: np.ndarray) -> np.ndarray:
    return ((x - self.mean) / self.std) @ self.weights + self.bias

  def check_field_of_view(self, field_of_view_mm: float, name: str = "the reranker") -> None:
    """Raises RerankerError unless tiles of `field_of_view_mm` are the ones it was fitted on."""
    if not np.isclose(field_of_view_mm, self.field_of_view_mm):
      raise RerankerError(
        f"{name} was fitted on {self.field_of_view_mm:g}-mm tiles, these are "
        f"{field_of_view_mm:g}-mm tiles (0: native pixels)"
      )

  def to_json(self) -> str:
    return json.dumps(
      {
        "features": list(self.features),
        "weights": self.weights.tolist(),
        "bias": self.bias,
        "mean": self.mean.tolist(),
        "std": self.std.tolist(),
        "field_of_view_mm": self.field_of_view_mm,
        "threshold": self.threshold,
        "speck_radius_mm": SPECK_RADIUS_MM,
      },
      indent=2,
    )

  @classmethod
  def from_json(
    cls, text: str, check_names: Callable[[Sequence[str]], None] = check_features
  ) -> TileReranker:
    """The reranker `to_json` wrote, checked (its feature names by `check_names`: another
    registry's for a model fitted on other features); RerankerError says what is wrong otherwise."""
    try:
      d = json.loads(text)
      array = {k: np.asarray(d[k], np.float64) for k in ("weights", "mean", "std")}
      model = cls(
        tuple(str(name) for name in d["features"]),
        bias=float(d["bias"]),
        field_of_view_mm=float(d.get("field_of_view_mm", 0.0)),
        threshold=float(d.get("threshold", cls.threshold)),
        **array,
      )
    except KeyError as e:
      raise RerankerError(f"not a tile reranker's JSON: no {e.args[0]!r}") from e
    except (ValueError, TypeError, AttributeError) as e:  # JSONDecodeError is a ValueError
      raise RerankerError(f"not a tile reranker's JSON ({type(e).__name__}: {e})") from e
    check_names(model.features)
    model.check()
    return model

  def check(self) -> None:
    """Raises RerankerError unless every number is usable: one finite weight, mean and positive
    scale per feature, a finite bias, a field of view of 0 (native pixels) or more and a
    threshold in [0, 1]."""
    n = len(self.features)
    arrays = (self.weights, self.mean, self.std)
    if any(a.shape != (n,) for a in arrays):
      raise RerankerError(f"weights, mean and std must hold one number for each of {n} features")
    if not all(np.isfinite(a).all() for a in arrays) or not np.isfinite(self.bias):
      raise RerankerError("a weight, mean, std or the bias is not finite")
    if (self.std <= 0).any():
      raise RerankerError("a feature's std is not positive")
    if not (np.isfinite(self.field_of_view_mm) and self.field_of_view_mm >= 0):
      raise RerankerError(f"field_of_view_mm {self.field_of_view_mm} is not 0 or more")
    if not 0 <= self.threshold <= 1:
      raise RerankerError(f"threshold {self.threshold} is not a probability")


def fit(
  x: np.ndarray,
  y: np.ndarray,
  features: Sequence[str],
  c: float = 1.0,
  field_of_view_mm: float = 0.0,
) -> TileReranker:
  """Class-balanced L2 logistic regression on standardised `x` (as scikit-learn's with
  class_weight='balanced' and C=`c`): the tiles' rare positives weigh as much as the rest."""
  y = np.asarray(y, bool)
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
  return TileReranker(tuple(features), w[:-1], float(w[-1]), mean, std, field_of_view_mm)


def rescored(scores: ImageScores, features: np.ndarray, model: TileReranker) -> ImageScores:
  """The image's Task 1 grid replaced by the reranker's probability (NaN stays NaN)."""
  logits = model.logits(features.reshape(-1, features.shape[-1])).reshape(scores.task1.shape)
  grid = np.where(np.isnan(scores.task1), np.nan, 1 / (1 + np.exp(-logits)))
  return dataclasses.replace(scores, task1=grid.astype(np.float32))


def flagging_threshold(model: TileReranker | None, unreranked: float) -> float:
  """The probability from which a tile is flagged: the reranker's operating threshold, else
  `unreranked` (the scorer's)."""
  return model.threshold if model is not None else unreranked


def rerank_image(pixels: np.ndarray, scores: ImageScores, model: TileReranker) -> ImageScores:
  """One scored image reranked (`pixels`: canonical, as fractions of the intensity range); its
  tiles must cover the millimetres the reranker was fitted on."""
  model.check_field_of_view(scores.geometry.field_of_view_mm)
  return rescored(scores, tile_features(pixels, scores, model.features), model)


def fit_images(
  images: Sequence[froc.ScoredImage],
  features: Mapping[str, np.ndarray],
  names: Sequence[str],
  c: float = 1.0,
) -> TileReranker:
  """A reranker fitted (inverse L2 strength `c`) on every scored tile of `images` (`features`:
  their `tile_features`)."""
  x = np.concatenate([features[im.key][~np.isnan(im.scores.task1)] for im in images])
  y = np.concatenate([tile_labels(im)[~np.isnan(im.scores.task1)] for im in images])
  return fit(x, y, names, c, field_of_view_mm=images[0].scores.geometry.field_of_view_mm)


def refit_folds(
  images: Sequence[froc.ScoredImage],
  features: Mapping[str, np.ndarray],
  fold_of: Mapping[str, int],
  names: Sequence[str],
  c: float = 1.0,
) -> tuple[list[froc.ScoredImage], dict[int, TileReranker]]:
  """Per fold, a reranker fitted on the tiles of the other folds' patients' images and applied to
  the fold's own: every image reranked once, by a model fitted without its patient.

  `features` holds each image's `tile_features` (by key), `fold_of` each patient's test fold."""
  fold = {im.key: fold_of[im.patient_id] for im in images}
  models, out = {}, {}
  for k in sorted(set(fold.values())):
    models[k] = fit_images([im for im in images if fold[im.key] != k], features, names, c)
    for im in images:
      if fold[im.key] == k:
        out[im.key] = dataclasses.replace(
          im, scores=rescored(im.scores, features[im.key], models[k])
        )
  return [out[im.key] for im in images], models


def save(path: str | os.PathLike, model: Any) -> None:
  """Writes a fitted model (a `TileReranker`, or anything with `to_json`) atomically."""
  files.write_text(path, model.to_json())


def load(path: str | os.PathLike, kind: Any = None) -> Any:
  """A saved `kind` (default `TileReranker`; anything with `from_json`); RerankerError names
  the file and what is wrong with it."""
  try:
    with open(path, encoding="utf-8") as f:
      return (kind or TileReranker).from_json(f.read())
  except (RerankerError, UnicodeDecodeError) as e:
    raise RerankerError(f"{os.fspath(path)}: {e}") from e
