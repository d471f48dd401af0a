"""Simulated calcification clusters inserted into real mammograms, in millimetres.

Why: 18 annotated MIAS clusters are too few to train a detector on, and the synthetic cohort's
tissue is too smooth (docs/realism.md). Clusters drawn from the synthetic cohort's speck
morphologies and inserted into real tissue give positives whose background is real. Detectors
learn insertion artefacts unless blur and noise match the image (Van Camp et al., SPIE 2022),
while clusters inserted with the imaging chain's blur and the image's own noise were not told
apart from real ones by readers (2AFC, LAVI-USP, SPIE 2019). So everything here is physical:

* Geometry: specks are 3-D ellipsoids in mm (`synthetic.sample_specks`), cluster speck counts
  and extents from the literature (`ClusterShape`), projected into the view, rendered on a
  sub-pixel grid (sub-pixels of at most 25 um) at the image's own pixel spacing, blurred there by
  the imaging system's presampling PSF (a Gaussian of `psf_sigma_mm`) and averaged down to pixels,
  so a 0.5-mm speck covers the same millimetres at 0.1 and 0.2 mm pixels.
* Contrast is measured, not chosen: `measure_mias_speck_contrasts` takes the white top-hat peak
  (disk radius 0.4 mm, as the tile reranker's `white_tophat`) of every visible speck of the 18
  usable mini-MIAS clusters, as a fraction of the breast's 5-95 % intensity range, and
  `summarise_contrasts` fits a log-normal to them, truncated at each image's noise floor so that
  it also holds the faint specks the floor hides; the fit is stored below (`MIAS_*`). A cluster
  draws its level and its specks' contrasts from it, with at least `min_visible` (5, BI-RADS
  'grouped') above the floor, and gives the largest contrasts to its largest specks, each the
  peak the speck would show on 0.2-mm film (less the tissue's own top-hat,
  `TISSUE_TOPHAT_CORRECTION`). The calcium's attenuation per mm of path follows, and the speck is
  rendered in the image's own pixels and blur.
* Intensity domain: 'log' images (film optical density, for-presentation FFDM) hold values linear
  in log exposure, so calcium's attenuation adds `contrast x range` to the value; 'linear'
  (for-processing) images hold exposure, which calcium multiplies by exp(-mu t).
* Noise: the real image's own noise is kept. In the log domain the signal is added to it; the
  quantum noise behind a speck rises by exp(mu t / 2) (fewer quanta): a few per cent for a
  typical speck (mu t ~ 0.1), some 30 % for the brightest; this is neglected. In the linear
  domain scaling the exposure by T = exp(-mu t) scales its noise by T, while quanta scale it by
  sqrt(T), so zero-mean Gaussian noise of variance sigma^2 (T - T^2) is added, sigma the local
  noise measured around the clusters.
* Placement: inside the breast, at least `skin_margin_mm` from its outline, `finding_margin_mm`
  clear of every annotated finding's circle, away from the image edge and the chest-wall third
  (the pectoral muscle of MLO views), preferring brighter (glandular) and more varied tissue, as
  the MIAS clusters lie (median intensity rank 0.66 and local-sd rank 0.64 in their breast).

Other formats: contrasts are in units of the breast's range, which both film and FFDM hold
linearly in log exposure. No annotated real FFDM speck is available here, so FFDM contrast is the
film measurement times the format's gain of speck-sized detail (`detail_gain`: the 0.4-mm
top-hat of the breast at film's 0.2-mm pixels, over mini-MIAS's): for-presentation processing
sharpens fine detail, about 5x in the NYU images, and calcifications are assumed to be sharpened
alike. Pixel size and blur then make specks on 0.07-mm FFDM sharper than on 0.2-mm film.

Everything is deterministic from the seed: the same seed gives identical pixels and labels.
"""

from __future__ import annotations

import argparse
import csv
import dataclasses
import hashlib
import json
import logging
import math
import os
from collections.abc import Iterable, Sequence

import numpy as np
from PIL import Image
from scipy import ndimage, optimize, stats

from input_pipeline import breast, importers, mammogram, morphology, sources, synthetic
from input_pipeline.manifest import Finding, write_manifest

# ---------------------------------------------------------------------------------------------
# Options.

# Presampling PSF sigma (mm) per format; the pixel aperture is added by the sub-pixel render.
# A Gaussian whose MTF falls to 50 % at f50 has sigma = sqrt(ln 2 / (2 pi^2)) / f50 = 0.187 / f50.
# Film: screen-film systems reach 50 % near 4-5 lp/mm (sigma 0.04-0.05 mm); the digitiser's
# aperture and optics, the focal spot's penumbra and the film's grain widen it to about 0.1 mm;
# MIAS specks are 1-3 pixels wide. 0.1 and 0.13 mm inserted into MIAS were not told apart by the
# discriminator (docs/realism.md). FFDM: f50 of 3.5-7 lp/mm (CsI and a-Se detectors, presampled)
# gives 0.03-0.05 mm, plus the focal spot: 0.05 mm. Synthetic cohort: its own detector blur,
# 0.6 px at 0.085 mm.
FORMATS = {
  "film": ("log", 0.1),
  "ffdm": ("log", 0.05),  # for presentation
  "ffdm_raw": ("linear", 0.05),  # for processing
  "synthetic": ("log", 0.6 * 0.085),
}
DOMAINS = ("log", "linear")
REFERENCE_SPACING_MM = 0.2  # the pixels the contrasts were measured at (mini-MIAS)
SPECK_RADIUS_MM = 0.4  # white top-hat disk radius, as the tile reranker's
INSERTED_NOTE = "inserted"
_SUBPIXEL_MM = 0.025
TEXTURE_WINDOW_MM = 11.2  # the local standard deviation that placement prefers is taken over this


@dataclasses.dataclass(frozen=True)
class ClusterShape:
  """One morphology's share of the clusters, its speck count and its extent.

  A cluster is at least 3-5 specks within about 1 cm^2 (BI-RADS 5th ed.: 'grouped', at least 5
  within 1 cm; the CAD literature: at least 3 within 1 cm^2), specks 0.1-1 mm. `spread_mm` is the
  radius (mm) of the ellipsoid the speck centres fill; fine linear branching specks follow a duct
  (at least 4 casts within 2.2 mm), so its count and spread are (0, 0).
  """

  morphology: str
  weight: float
  count: tuple[int, int]
  spread_mm: tuple[float, float]


# Counts include specks too faint to see: about half show on 0.2-mm film (the contrast model's
# share above the MIAS floor), so these give the 2-40 visible specks of the MIAS clusters.
DEFAULT_SHAPES = (
  ClusterShape("round", 1.0, (8, 20), (2.0, 4.5)),
  ClusterShape("punctate", 1.0, (10, 30), (2.0, 4.5)),
  ClusterShape("coarse", 1.0, (4, 10), (2.0, 4.0)),
  ClusterShape("amorphous", 1.0, (10, 30), (2.0, 5.0)),
  ClusterShape("fine_pleomorphic", 1.0, (12, 40), (2.0, 5.0)),
  ClusterShape("fine_linear_branching", 1.0, (0, 0), (0.0, 0.0)),  # specks along a duct
)


@dataclasses.dataclass(frozen=True)
class InsertionOptions:
  """How clusters are drawn, placed and rendered; every length in mm.

  `domain` and `psf_sigma_mm` describe the image format (see `FORMATS` and `for_format`).
  Contrasts are fractions of the breast's 5-95 % intensity range as a speck would show them on
  0.2-mm film: log-normal (`MIAS_LOG_CONTRAST_MEAN`, `MIAS_LOG_CONTRAST_SD`), each cluster's
  level shifted by `MIAS_CLUSTER_LOG_SD`, at least `min_visible` specks above the MIAS floor,
  times `contrast_scale`, at most `max_contrast`.
  """

  shapes: tuple[ClusterShape, ...] = DEFAULT_SHAPES
  clusters_per_image: tuple[int, int] = (1, 2)
  amorphous_malignant_fraction: float = 0.5
  size_scale: float = 1.0
  domain: str = "log"
  psf_sigma_mm: float = FORMATS["film"][1]
  reference_psf_sigma_mm: float = FORMATS["film"][1]
  contrast_scale: float = 1.0
  contrast_log_mean: float | None = None  # None: the mini-MIAS measurement (MIAS_*)
  contrast_log_sd: float | None = None
  cluster_log_sd: float | None = None
  max_contrast: float = 0.5
  min_visible: int = 5
  skin_margin_mm: float = 8.0
  finding_margin_mm: float = 5.0
  edge_margin_mm: float = 5.0
  cluster_gap_mm: float = 5.0
  chest_wall_fraction: float = 0.3
  glandular_preference: float = 1.0
  texture_preference: float = 1.0
  max_intensity_rank: float = 0.97
  default_view: str = "MLO"

  def __post_init__(self):
    if self.domain not in DOMAINS:
      raise ValueError(f"domain must be one of {DOMAINS}, not {self.domain!r}")
    if self.psf_sigma_mm < 0 or self.reference_psf_sigma_mm < 0:
      raise ValueError("PSF sigmas must be >= 0 mm")
    lo, hi = self.clusters_per_image
    if not 0 <= lo <= hi:
      raise ValueError(f"clusters_per_image must be (low, high), 0 <= low <= high: {lo, hi}")
    known = set(synthetic.SPECK_SHAPES) | {"fine_linear_branching"}
    unknown = {s.morphology for s in self.shapes} - known
    if unknown or not self.shapes or sum(s.weight for s in self.shapes) <= 0:
      raise ValueError(f"shapes need positive weights and known morphologies; unknown {unknown}")

  @classmethod
  def for_format(cls, name: str, **overrides) -> InsertionOptions:
    """The options for one of `FORMATS` ('film', 'ffdm', 'ffdm_raw', 'synthetic')."""
    if name not in FORMATS:
      raise ValueError(f"unknown format {name!r}; choose one of {sorted(FORMATS)}")
    domain, psf = FORMATS[name]
    return cls(**{"domain": domain, "psf_sigma_mm": psf, **overrides})

  def contrast_model(self) -> tuple[float, float, float]:
    """(log mean, log sd, between-cluster log sd) in use."""
    return (
      MIAS_LOG_CONTRAST_MEAN if self.contrast_log_mean is None else self.contrast_log_mean,
      MIAS_LOG_CONTRAST_SD if self.contrast_log_sd is None else self.contrast_log_sd,
      MIAS_CLUSTER_LOG_SD if self.cluster_log_sd is None else self.cluster_log_sd,
    )


def label_of(morphology: str, rng: np.random.Generator, malignant_fraction: float) -> str:
  """Benign or malignant from the morphology, as the synthetic cohort labels it."""
  if morphology in synthetic.BENIGN_MORPHOLOGIES:
    return "benign"
  if morphology in synthetic.MALIGNANT_MORPHOLOGIES:
    return "malignant"
  return "malignant" if rng.random() < malignant_fraction else "benign"


# ---------------------------------------------------------------------------------------------
# Measured speck contrast of real film (mini-MIAS).

# Produced by `python -m input_pipeline.insertion measure --mias=../shared/data/mias`
# (`summarise_contrasts(measure_mias_speck_contrasts(...))`); tests/test_insertion.py recomputes
# them. 0.4-mm white top-hat peaks at 0.2 mm as fractions of the breast's 5-95 % range: a
# log-normal fitted to the specks above each image's floor (truncated maximum likelihood), so it
# also holds the fainter specks the floor hides; the spread of the clusters' mean log contrast;
# quantiles of the visible specks (above the floor).
MIAS_LOG_CONTRAST_MEAN = -2.8024  # median contrast exp(-2.80) = 0.061 of the breast's range
MIAS_LOG_CONTRAST_SD = 0.5165
MIAS_CLUSTER_LOG_SD = 0.207
MIAS_SPECK_CONTRAST_QUANTILES = (
  (10, 0.0625),
  (25, 0.0687),
  (50, 0.0852),
  (75, 0.1065),
  (90, 0.1441),
)
MIAS_SPECKS_MEASURED = 213  # visible specks of the 18 usable clusters
MIAS_FLOOR_CONTRAST = 0.0585  # the median floor: specks above it are visible
FLOOR_PERCENTILE = 99.9
# A speck's top-hat peak on real tissue is its own contrast plus the tissue's top-hat there, so
# the drawn contrasts are lowered by this factor: with it, inserted clusters measured as the real
# ones are (`measure_speck_contrasts`) give the MIAS log-normal back (docs/realism.md).
TISSUE_TOPHAT_CORRECTION = 0.85
_QUANTILES = (10, 25, 50, 75, 90)


@dataclasses.dataclass(frozen=True)
class ClusterContrast:
  """The visible specks of one cluster: top-hat peaks in pixel values, and the image's units."""

  finding_id: str
  peaks: tuple[float, ...]  # pixel values, brightest first
  breast_range: float  # 5-95 % of the breast's values
  floor: float  # the top-hat level specks are counted above (pixel values)

  @property
  def contrasts(self) -> tuple[float, ...]:
    return tuple(p / self.breast_range for p in self.peaks)


@dataclasses.dataclass(frozen=True)
class ContrastSummary:
  """What insertion draws from, and what the visible specks looked like."""

  log_mean: float  # of the untruncated log-normal
  log_sd: float
  cluster_log_sd: float  # sd of the clusters' mean log contrast
  quantiles: tuple[tuple[int, float], ...]  # of the visible specks
  specks: int  # visible specks measured
  clusters: int
  floor: float  # the median floor, fraction of the breast's range


def white_tophat(
  pixels: np.ndarray, spacing_mm: float, radius_mm: float = SPECK_RADIUS_MM
) -> np.ndarray:
  """The white top-hat of an image (float32) by a disk of `radius_mm` (`morphology`)."""
  return morphology.white_tophat_mm(np.asarray(pixels, np.float32), spacing_mm, radius_mm)


def breast_range(pixels: np.ndarray, mask: np.ndarray) -> tuple[float, float]:
  """The 5th and 95th percentiles of the breast's values: the unit every contrast is in."""
  lo, hi = np.percentile(pixels[mask], [5, 95])
  return float(lo), float(max(hi, lo + 1))


def measure_mias_speck_contrasts(mias_dir: str | os.PathLike) -> list[ClusterContrast]:
  """The specks of every usable mini-MIAS calcification cluster and their top-hat peaks."""
  return measure_speck_contrasts(importers.import_mias(mias_dir))


def measure_speck_contrasts(findings: Iterable[Finding]) -> list[ClusterContrast]:
  """The specks of every located calcification cluster of `findings` and their top-hat peaks.

  A speck is a connected region of the 0.4-mm white top-hat above the image's floor (the 99.9th
  percentile of the top-hat in the breast, 5 mm inside its outline and 5 mm clear of every
  annotation) whose brightest pixel lies inside the cluster's circle; its contrast is that peak,
  as a fraction of the breast's 5-95 % range. Inserted clusters (note `inserted`) count too, so
  inserted and real clusters are measured alike.
  """
  by_image: dict[str, list[Finding]] = {}
  for f in findings:
    by_image.setdefault(f.image_path, []).append(f)
  measured = []
  for path in sorted(by_image):
    clusters = [f for f in by_image[path] if _usable_cluster(f)]
    if clusters:
      measured.extend(_image_contrasts(path, by_image[path], clusters))
  return measured


def _usable_cluster(f: Finding) -> bool:
  located = f.row is not None and f.col is not None
  return f.abnormality == "calcification" and located and f.note in ("", INSERTED_NOTE)


def _image_contrasts(
  path: str, findings: Sequence[Finding], clusters: Sequence[Finding]
) -> list[ClusterContrast]:
  documented = next((f.pixel_spacing_mm for f in findings if f.pixel_spacing_mm), None)
  m = mammogram.read_mammogram(path, mammogram.spacing_options(documented))
  spacing = float(np.mean(m.pixel_spacing_mm))
  pixels = m.pixels.astype(np.float32)
  mask = breast.breast_mask(m.pixels)
  lo, hi = breast_range(pixels, mask)
  tophat = white_tophat(pixels, spacing)
  around = _inner(mask, 5.0 / spacing) & ~_discs(m, findings, pixels.shape, 5.0 / spacing)
  floor = float(np.percentile(tophat[around], FLOOR_PERCENTILE))
  labels, n = ndimage.label(tophat > floor)
  if n == 0:
    return [ClusterContrast(c.finding_id, (), hi - lo, floor) for c in clusters]
  index = np.arange(1, n + 1)
  peaks = np.asarray(ndimage.maximum(tophat, labels, index))
  where = np.asarray(ndimage.maximum_position(tophat, labels, index))
  out = []
  for c in clusters:
    row, col = m.from_original(c.row, c.col)
    inside = np.hypot(where[:, 0] - row, where[:, 1] - col) <= (c.radius or 0.0)
    brightest = np.sort(peaks[inside])[::-1]
    out.append(ClusterContrast(c.finding_id, tuple(map(float, brightest)), hi - lo, floor))
  return out


def summarise_contrasts(measured: Sequence[ClusterContrast]) -> ContrastSummary:
  """Fits the log-normal of speck contrast to the visible specks, truncated at each floor."""
  logs, floors, means = [], [], []
  for c in measured:
    values = np.log(c.contrasts)
    logs.extend(values)
    floors.extend([math.log(c.floor / c.breast_range)] * len(values))
    if values.size:
      means.append(float(values.mean()))
  x, f = np.asarray(logs), np.asarray(floors)

  def negative_log_likelihood(theta: np.ndarray) -> float:
    mu, sd = theta[0], math.exp(theta[1])
    return -float(np.sum(stats.norm.logpdf(x, mu, sd) - stats.norm.logsf(f, mu, sd)))

  start = np.array([x.mean(), math.log(x.std())])
  fit = optimize.minimize(
    negative_log_likelihood, start, method="Nelder-Mead", options={"xatol": 1e-6, "fatol": 1e-9}
  )
  quantiles = np.percentile(np.exp(x), _QUANTILES)
  return ContrastSummary(
    log_mean=round(float(fit.x[0]), 4),
    log_sd=round(math.exp(fit.x[1]), 4),
    cluster_log_sd=round(float(np.std(means)), 4),
    quantiles=tuple((q, round(float(v), 4)) for q, v in zip(_QUANTILES, quantiles, strict=True)),
    specks=int(x.size),
    clusters=len(measured),
    floor=round(float(np.median([c.floor / c.breast_range for c in measured])), 4),
  )


def _inner(mask: np.ndarray, distance_px: float) -> np.ndarray:
  """The part of `mask` at least `distance_px` from its outline."""
  return ndimage.distance_transform_edt(mask) >= distance_px


def _discs(
  m: mammogram.Mammogram, findings: Iterable[Finding], shape: tuple[int, int], margin_px: float
) -> np.ndarray:
  """Every located finding's circle grown by `margin_px`, in canonical pixels."""
  out = np.zeros(shape, bool)
  rows, cols = np.ogrid[: shape[0], : shape[1]]
  for f in findings:
    if f.row is None or f.col is None:
      continue
    row, col = m.from_original(f.row, f.col)
    out |= (rows - row) ** 2 + (cols - col) ** 2 <= ((f.radius or 0.0) + margin_px) ** 2
  return out


# ---------------------------------------------------------------------------------------------
# A format's gain of fine detail over mini-MIAS film.

# Produced by `python -m input_pipeline.insertion measure` (`mias_detail_level`), recomputed by
# tests/test_insertion.py: the median `detail_level` of the first 40 normal mini-MIAS images.
MIAS_DETAIL_LEVEL = 0.0382
MIAS_DETAIL_IMAGES = 40


def detail_level(m: mammogram.Mammogram) -> float:
  """The 99th percentile of the 0.4-mm top-hat at 0.2-mm pixels, 2 mm inside the breast, as a
  fraction of the breast's range: how strongly the format shows speck-sized detail.

  At film's pixel size the detector's noise is averaged away, so what remains is tissue detail
  as the format's processing renders it (for-presentation FFDM sharpens it several-fold).
  """
  spacing = float(np.mean(m.pixel_spacing_mm))
  mask = breast.breast_mask(m.pixels)
  low, high = breast_range(m.pixels, mask)
  pixels = (m.pixels.astype(np.float32) - low) / (high - low)
  factor = spacing / REFERENCE_SPACING_MM
  if not math.isclose(factor, 1.0, rel_tol=1e-3):
    if factor < 1:
      pixels = ndimage.gaussian_filter(pixels, 0.5 / factor)
    pixels = ndimage.zoom(pixels, factor, order=1)
    mask = ndimage.zoom(mask.astype(np.uint8), factor, order=0).astype(bool)
  inner = ndimage.distance_transform_edt(np.pad(mask, 1))[1:-1, 1:-1] >= 2.0 / REFERENCE_SPACING_MM
  tophat = white_tophat(pixels, REFERENCE_SPACING_MM)
  return float(np.percentile(tophat[inner], 99)) if inner.any() else float("nan")


def mias_detail_level(mias_dir: str | os.PathLike) -> float:
  """The median `detail_level` of the first `MIAS_DETAIL_IMAGES` normal mini-MIAS images."""
  normal = sorted(
    {f.image_path for f in importers.import_mias(mias_dir) if f.abnormality == "none"}
  )
  levels = [
    detail_level(mammogram.read_mammogram(p, mammogram.spacing_options(REFERENCE_SPACING_MM)))
    for p in normal[:MIAS_DETAIL_IMAGES]
  ]
  return round(float(np.median(levels)), 4)


def detail_gain(mammograms: Iterable[mammogram.Mammogram]) -> float:
  """A format's contrast scale: its images' median `detail_level` over mini-MIAS film's.

  FFDM has no annotated speck here, so its speck contrast is the film measurement scaled by the
  gain its processing gives speck-sized detail: the assumption is that calcifications and tissue
  detail of the same size are sharpened alike.
  """
  return float(np.nanmedian([detail_level(m) for m in mammograms])) / MIAS_DETAIL_LEVEL


# ---------------------------------------------------------------------------------------------
# Drawing and rendering clusters.


@dataclasses.dataclass(frozen=True)
class InsertedSpeck:
  """One inserted speck; centre in the ORIGINAL file's pixels."""

  cluster: int  # index into Inserted.clusters
  row: float
  col: float
  length_mm: float
  width_mm: float
  diameter_mm: float  # the longest extent of its projection
  contrast: float  # its own peak on 0.2-mm film (times contrast_scale), fraction of the range
  peak_value: float  # what it adds at its peak in this image, pixel values


@dataclasses.dataclass(frozen=True)
class InsertedCluster:
  """One inserted cluster; centre and enclosing radius in the ORIGINAL file's pixels."""

  finding_id: str
  row: float
  col: float
  radius: float
  morphology: str
  label: str
  specks: int


@dataclasses.dataclass(frozen=True)
class Inserted:
  """An image with clusters inserted: canonical pixels and every speck's and cluster's label.

  `cluster_map` is in the ORIGINAL orientation: 0 outside specks, k + 1 on cluster k's specks.
  `skipped` says why nothing (or fewer clusters than drawn) was inserted, '' otherwise.
  """

  pixels: np.ndarray
  clusters: tuple[InsertedCluster, ...]
  specks: tuple[InsertedSpeck, ...]
  cluster_map: np.ndarray
  flipped: bool
  skipped: str = ""

  @property
  def speck_mask(self) -> np.ndarray:
    """Speck pixels, original orientation."""
    return self.cluster_map > 0

  @property
  def original_pixels(self) -> np.ndarray:
    """The pixels in the original file's orientation."""
    return np.ascontiguousarray(self.pixels[:, ::-1]) if self.flipped else self.pixels


@dataclasses.dataclass(frozen=True)
class _Planned:
  """A speck of a drawn cluster: offset from the cluster centre (mm) and its calcium."""

  speck: synthetic.Speck
  offset_mm: tuple[float, float]  # (row, col)
  axis: tuple[float, float]  # projected long axis, (col, row)
  contrast: float
  attenuation: float  # fraction of the breast's range per mm of calcium path


def supersampling(spacing_mm: float) -> int:
  """Sub-pixels a side per pixel: sub-pixels of at most 25 um, at least 4."""
  return max(4, math.ceil(spacing_mm / _SUBPIXEL_MM - 1e-9))


def render_speck(
  row: float,
  col: float,
  axis: Sequence[float],
  speck: synthetic.Speck,
  spacing_mm: float,
  psf_sigma_mm: float,
) -> tuple[int, int, np.ndarray]:
  """A speck's calcium path (mm), blurred by the PSF on sub-pixels and averaged to pixels.

  Returns (r0, c0, stamp): the stamp's top-left pixel in the image and the stamp.
  """
  ss = supersampling(spacing_mm)
  r0, c0, path = synthetic.speck_path(row, col, np.asarray(axis), speck, spacing_mm, ss)
  if psf_sigma_mm > 0:
    pad = math.ceil(4 * psf_sigma_mm / spacing_mm)
    path = ndimage.gaussian_filter(
      np.pad(path, pad * ss), psf_sigma_mm * ss / spacing_mm, mode="constant"
    )
    r0, c0 = r0 - pad, c0 - pad
  n = path.shape[0] // ss
  return r0, c0, path.reshape(n, ss, n, ss).mean(axis=(1, 3))


def _draw_cluster(
  options: InsertionOptions, view: str, rng: np.random.Generator
) -> tuple[str, str, list[_Planned]]:
  """Morphology, label and specks (geometry and contrast) of one cluster; no pixels."""
  weights = np.array([s.weight for s in options.shapes], float)
  shape = options.shapes[int(rng.choice(len(weights), p=weights / weights.sum()))]
  label = label_of(shape.morphology, rng, options.amorphous_malignant_fraction)
  spread = float(rng.uniform(*shape.spread_mm)) if shape.spread_mm[1] > 0 else None
  count = shape.count if shape.count[1] > 0 else None
  specks = synthetic.sample_specks(
    shape.morphology, options.size_scale, rng, count=count, spread_mm=spread
  )
  to_image = synthetic.projection(view)
  offsets = [to_image @ np.asarray(s.center_mm) for s in specks]
  axes = [to_image @ np.asarray(s.axis) for s in specks]
  # Each speck's peak on 0.2-mm film per unit attenuation, at a random sub-pixel phase.
  unit_peaks = np.array(
    [
      render_speck(
        *(10 + rng.random(2)), a, s, REFERENCE_SPACING_MM, options.reference_psf_sigma_mm
      )[2].max()
      for s, a in zip(specks, axes, strict=True)
    ]
  )
  drawn = _visible_contrasts(len(specks), options, rng)
  scale = TISSUE_TOPHAT_CORRECTION * options.contrast_scale
  targets = np.sort(np.minimum(drawn, options.max_contrast) * scale)
  ranks = np.argsort(np.argsort(unit_peaks))  # the largest speck gets the largest contrast
  planned = [
    _Planned(
      s,
      (float(o[1]), float(o[0])),
      (float(a[0]), float(a[1])),
      float(targets[r]),
      float(targets[r] / max(g, 1e-6)),
    )
    for s, o, a, g, r in zip(specks, offsets, axes, unit_peaks, ranks, strict=True)
  ]
  return shape.morphology, label, planned


def _visible_contrasts(n: int, options: InsertionOptions, rng: np.random.Generator) -> np.ndarray:
  """n speck contrasts of one cluster (as measured on film), at least `min_visible` above the
  MIAS floor: a cluster is what a reader would call one (redrawn up to 100 times)."""
  mean, sd, cluster_sd = options.contrast_model()
  within = math.sqrt(max(sd**2 - cluster_sd**2, 0.0))
  needed = min(options.min_visible, n)
  for _ in range(100):
    drawn = np.exp(mean + rng.normal(0.0, cluster_sd) + rng.normal(0.0, within, n))
    if np.count_nonzero(drawn >= MIAS_FLOOR_CONTRAST) >= needed:
      break
  return drawn


def _extent_mm(planned: Sequence[_Planned], psf_sigma_mm: float) -> float:
  """Radius (mm) around the cluster centre enclosing every speck and its blur."""
  return (
    max(math.hypot(*p.offset_mm) + max(p.speck.length_mm, p.speck.width_mm) / 2 for p in planned)
    + 2 * psf_sigma_mm
    + 0.2
  )


@dataclasses.dataclass(frozen=True)
class _Background:
  """What placement needs of an image, on a coarse grid of cells about 0.5 mm wide."""

  step: int  # image pixels per cell
  cell_mm: float
  skin_mm: np.ndarray  # distance of each cell to the breast's outline (0 outside)
  edge_mm: np.ndarray  # distance to the image's edge
  weight: np.ndarray  # placement preference, 0 where a cluster may not go
  low: float  # the breast's 5th and 95th percentile values
  high: float


def _background(m: mammogram.Mammogram, mask: np.ndarray, options: InsertionOptions) -> _Background:
  spacing = float(np.mean(m.pixel_spacing_mm))
  step = max(1, round(0.5 / spacing))
  cell = spacing * step
  coarse = mask[::step, ::step]
  pixels = m.pixels[::step, ::step].astype(np.float32)
  rows, cols = np.indices(coarse.shape)
  edge = np.minimum.reduce([rows, cols, coarse.shape[0] - 1 - rows, coarse.shape[1] - 1 - cols])
  intensity = _rank(ndimage.gaussian_filter(pixels, 2.0 / cell), coarse)
  window = max(3, round(TEXTURE_WINDOW_MM / cell) | 1)
  mean = ndimage.uniform_filter(pixels, window)
  texture = _rank(
    np.sqrt(np.maximum(ndimage.uniform_filter(pixels**2, window) - mean**2, 0)), coarse
  )
  weight = np.where(coarse & (intensity <= options.max_intensity_rank), 1.0, 0.0)
  weight *= intensity**options.glandular_preference * texture**options.texture_preference
  if coarse.any():  # clusters lie away from the chest wall (and the pectoral muscle)
    depth = np.nonzero(coarse.any(axis=0))[0].max() + 1
    weight[:, : int(options.chest_wall_fraction * depth)] = 0.0
  low, high = breast_range(m.pixels, mask)
  return _Background(
    step, cell, ndimage.distance_transform_edt(coarse) * cell, edge * cell, weight, low, high
  )


def _rank(values: np.ndarray, mask: np.ndarray) -> np.ndarray:
  """Each masked cell's rank among the masked cells, in (0, 1); 0 outside the mask."""
  rank = np.zeros(values.shape)
  order = np.argsort(values[mask], kind="stable")
  inside = np.empty(order.size)
  inside[order] = (np.arange(order.size) + 0.5) / max(order.size, 1)
  rank[mask] = inside
  return rank


def _place(
  bg: _Background,
  radius_mm: float,
  avoid: Sequence[tuple[float, float, float]],
  options: InsertionOptions,
  rng: np.random.Generator,
) -> tuple[float, float] | None:
  """A cluster centre (canonical pixels) whose whole extent keeps every margin, or None.

  `avoid` holds (row, col, radius_mm + margin_mm) circles, centres in canonical pixels.
  """
  slack = 1.5 * bg.cell_mm  # a centre moves within its cell
  ok = (bg.skin_mm >= options.skin_margin_mm + radius_mm + slack) & (
    bg.edge_mm >= options.edge_margin_mm + radius_mm + slack
  )
  rows, cols = np.indices(ok.shape) * bg.step
  spacing = bg.cell_mm / bg.step
  for row, col, reach_mm in avoid:
    ok &= np.hypot(rows - row, cols - col) * spacing >= reach_mm + radius_mm + slack
  weight = np.where(ok, bg.weight, 0.0).ravel()
  if weight.sum() <= 0:
    return None
  cell = int(rng.choice(weight.size, p=weight / weight.sum()))
  r, c = divmod(cell, ok.shape[1])
  jitter = rng.random(2) * bg.step
  return float(r * bg.step + jitter[0]), float(c * bg.step + jitter[1])


def _forbidden(
  m: mammogram.Mammogram, findings: Iterable[Finding], margin_mm: float
) -> list[tuple[float, float, float]]:
  """Every located finding as an (row, col, reach_mm) circle to keep clear of."""
  spacing = float(np.mean(m.pixel_spacing_mm))
  out = []
  for f in findings:
    if f.row is None or f.col is None:
      continue
    row, col = m.from_original(f.row, f.col)
    out.append((row, col, (f.radius or 0.0) * spacing + margin_mm))
  return out


def _unlocated(findings: Iterable[Finding]) -> list[Finding]:
  """Abnormal findings without a position: nothing can be kept clear of them."""
  return [f for f in findings if f.abnormality != "none" and (f.row is None or f.col is None)]


def insert_clusters(
  m: mammogram.Mammogram,
  findings: Sequence[Finding] = (),
  seed: int | Sequence[int] = 0,
  options: InsertionOptions | None = None,
) -> Inserted:
  """Inserts clusters into one mammogram, clear of its `findings` (original pixel coordinates).

  Images with a finding that has no position get nothing inserted (`skipped` says why). The same
  seed, image and options give identical pixels and labels.
  """
  options = options or InsertionOptions()
  rng = np.random.default_rng(seed)
  empty = np.zeros(m.original_shape, np.int16)
  unlocated = _unlocated(findings)
  if unlocated:
    reason = f"{len(unlocated)} finding(s) without a position ({unlocated[0].abnormality})"
    return Inserted(m.pixels, (), (), empty, m.flipped, reason)
  spacing = float(np.mean(m.pixel_spacing_mm))
  mask = breast.breast_mask(m.pixels)
  if not mask.any():
    return Inserted(m.pixels, (), (), empty, m.flipped, "no breast found")
  bg = _background(m, mask, options)
  view = m.view if m.view in ("CC", "MLO") else options.default_view
  avoid = _forbidden(m, findings, options.finding_margin_mm)
  wanted = int(rng.integers(options.clusters_per_image[0], options.clusters_per_image[1] + 1))
  layer = np.zeros(m.pixels.shape, np.float32)  # attenuation, fractions of the breast's range
  cluster_map = np.zeros(m.pixels.shape, np.int16)
  clusters, specks = [], []
  for _ in range(wanted):
    morphology, label, planned = _draw_cluster(options, view, rng)
    radius_mm = _extent_mm(planned, options.psf_sigma_mm)
    centre = _place(bg, radius_mm, avoid, options, rng)
    if centre is None:
      break
    avoid.append((*centre, radius_mm + options.cluster_gap_mm))
    k = len(clusters)
    for p in planned:
      specks.append(_render_into(layer, cluster_map, k, centre, p, spacing, options))
    orig_row, orig_col = m.to_original(*centre)
    clusters.append(
      InsertedCluster(
        f"ins{k + 1}", orig_row, orig_col, radius_mm / spacing, morphology, label, len(planned)
      )
    )
  skipped = "" if len(clusters) == wanted else f"room for {len(clusters)} of {wanted} clusters"
  pixels, scale = _apply(m, layer, bg, options, rng)
  specks = [_in_original(m, s, scale, options.domain) for s in specks]
  if m.flipped:
    cluster_map = cluster_map[:, ::-1]
  return Inserted(
    pixels, tuple(clusters), tuple(specks), np.ascontiguousarray(cluster_map), m.flipped, skipped
  )


def _render_into(
  layer: np.ndarray,
  cluster_map: np.ndarray,
  k: int,
  centre: tuple[float, float],
  p: _Planned,
  spacing: float,
  options: InsertionOptions,
) -> InsertedSpeck:
  """Adds one speck to `layer`, marks its pixels at half its peak; canonical coordinates."""
  row, col = centre[0] + p.offset_mm[0] / spacing, centre[1] + p.offset_mm[1] / spacing
  r0, c0, stamp = render_speck(row, col, p.axis, p.speck, spacing, options.psf_sigma_mm)
  stamp = stamp * np.float32(p.attenuation)
  rs = slice(max(r0, 0), min(r0 + stamp.shape[0], layer.shape[0]))
  cs = slice(max(c0, 0), min(c0 + stamp.shape[1], layer.shape[1]))
  part = stamp[rs.start - r0 : rs.stop - r0, cs.start - c0 : cs.stop - c0]
  layer[rs, cs] += part
  cluster_map[rs, cs][part >= 0.5 * stamp.max()] = k + 1
  projected = max(p.speck.length_mm * math.hypot(*p.axis), p.speck.width_mm)
  return InsertedSpeck(
    k, row, col, p.speck.length_mm, p.speck.width_mm, projected, p.contrast, float(stamp.max())
  )


def _in_original(
  m: mammogram.Mammogram, s: InsertedSpeck, scale: float, domain: str
) -> InsertedSpeck:
  """The speck with its centre in original pixels and its peak in pixel values."""
  if domain == "log":
    peak = scale * s.peak_value
  else:  # the exposure at the speck, times the share the calcium absorbs
    r = min(max(round(s.row), 0), m.pixels.shape[0] - 1)
    c = min(max(round(s.col), 0), m.pixels.shape[1] - 1)
    peak = (m.max_value - float(m.pixels[r, c])) * -math.expm1(-scale * s.peak_value)
  row, col = m.to_original(s.row, s.col)
  return dataclasses.replace(s, row=row, col=col, peak_value=round(peak, 3))


def _apply(
  m: mammogram.Mammogram,
  layer: np.ndarray,
  bg: _Background,
  options: InsertionOptions,
  rng: np.random.Generator,
) -> tuple[np.ndarray, float]:
  """Adds the calcium in the image's intensity domain, rounds and clips to the value range.

  Returns the pixels and the breast's range in the domain's units (pixel values for 'log', log
  exposure for 'linear'), by which the layer (fractions of that range) is scaled.
  """
  pixels = m.pixels.astype(np.float64)
  touched = layer > 0
  if options.domain == "log":
    scale = bg.high - bg.low
    pixels[touched] += scale * layer[touched]
  else:
    # Exposure is what dense tissue lowers: canonical pixels are dense-bright.
    exposure = m.max_value - pixels
    low, high = m.max_value - bg.high, m.max_value - bg.low
    scale = math.log(max(high, 1.0) / max(low, 1.0))
    transmitted = np.exp(-scale * layer[touched].astype(np.float64))
    sigma = _local_noise(exposure, touched)
    quanta = rng.standard_normal(transmitted.size) * sigma * np.sqrt(transmitted - transmitted**2)
    exposure[touched] = exposure[touched] * transmitted + quanta
    pixels = m.max_value - exposure
  return np.clip(np.rint(pixels), 0, m.max_value).astype(np.uint16), scale


def _local_noise(values: np.ndarray, region: np.ndarray) -> float:
  """The white-noise sigma around `region`: robust sd of the 1-px high-pass residual.

  For white noise the residual of a 1-px Gaussian keeps 0.761 of the variance.
  """
  rows, cols = np.nonzero(region)
  if rows.size == 0:
    return 0.0
  r0, r1 = max(rows.min() - 20, 0), rows.max() + 21
  c0, c1 = max(cols.min() - 20, 0), cols.max() + 21
  window = values[r0:r1, c0:c1]
  residual = window - ndimage.gaussian_filter(window, 1.0)
  mad = np.median(np.abs(residual - np.median(residual)))
  return float(1.4826 * mad / math.sqrt(0.761))


# ---------------------------------------------------------------------------------------------
# A cohort of inserted images on disk.

SPECK_COLUMNS = (
  "image_path",
  "finding_id",
  "row",
  "col",
  "diameter_mm",
  "length_mm",
  "width_mm",
  "contrast",
  "peak_value",
)
EVALUATION_ONLY = ("gmic_exam0",)  # folders never used as backgrounds (held for evaluation)


def background_images(findings: Iterable[Finding]) -> dict[str, list[Finding]]:
  """Findings per image of the images with no calcification finding (sorted by path).

  Raises:
    ValueError: an image lies in an evaluation-only folder (`EVALUATION_ONLY`).
  """
  by_image: dict[str, list[Finding]] = {}
  for f in findings:
    parts = os.path.normpath(f.image_path).split(os.sep)
    if any(name in parts for name in EVALUATION_ONLY):
      raise ValueError(f"{f.image_path} is held for evaluation and is never a background")
    by_image.setdefault(f.image_path, []).append(f)
  return {
    path: rows
    for path, rows in sorted(by_image.items())
    if not any(r.abnormality == "calcification" for r in rows)
  }


def image_ids(paths: Sequence[str]) -> dict[str, str]:
  """A file-name-safe id per image: its stem, or its path below the common folder if stems clash."""
  stems = [os.path.splitext(os.path.basename(p))[0] for p in paths]
  if len(set(stems)) == len(stems):
    return dict(zip(paths, stems, strict=True))
  root = os.path.commonpath([os.path.dirname(os.path.abspath(p)) for p in paths])
  ids = [os.path.splitext(os.path.relpath(os.path.abspath(p), root))[0] for p in paths]
  return {p: i.replace(os.sep, "__") for p, i in zip(paths, ids, strict=True)}


def image_seed(seed: int, image_id: str) -> list[int]:
  """The image's own seed: depends on the cohort seed and the image id, never on order."""
  digest = hashlib.sha256(image_id.encode()).digest()
  return [seed, int.from_bytes(digest[:8], "little")]


def insert_cohort(
  findings: Iterable[Finding],
  out_dir: str | os.PathLike,
  *,
  seed: int = 0,
  options: InsertionOptions | None = None,
  limit: int | None = None,
) -> str:
  """Inserts clusters into every background image; writes images, masks, manifest, specks.

  Writes under `out_dir`: `images/<id>.png` (lossless, original orientation, the source's values
  with 8-bit sources kept 8-bit), `masks/<id>_ins<k>.png` (cluster k's speck pixels, the row's
  `mask_path`), `manifest.csv` (one calcification row per inserted cluster, note `inserted`,
  plus the source's other findings), `specks.csv` (one row per speck) and `insertion.json`
  (seed and options). Each image's labels are kept in `labels/<id>.json` as it is written, so
  a rerun resumes; a rerun with other options or seed raises ValueError. Returns the manifest.
  """
  options = options or InsertionOptions()
  out_dir = os.fspath(out_dir)
  backgrounds = background_images(findings)
  paths = list(backgrounds)[:limit]
  ids = image_ids(paths) if paths else {}
  for folder in ("images", "masks", "labels"):
    os.makedirs(os.path.join(out_dir, folder), exist_ok=True)
  _check_settings(out_dir, seed, options)
  rows, specks = [], []
  for path in paths:
    record = _image_record(path, backgrounds[path], ids[path], out_dir, seed, options)
    rows.extend(Finding(**r) for r in record["findings"])
    specks.extend(record["specks"])
  manifest = os.path.join(out_dir, "manifest.csv")
  write_manifest(manifest, rows)
  _write_csv(os.path.join(out_dir, "specks.csv"), SPECK_COLUMNS, specks)
  return manifest


def _check_settings(out_dir: str, seed: int, options: InsertionOptions) -> None:
  """Records seed and options; a folder written with others is not resumed."""
  path = os.path.join(out_dir, "insertion.json")
  settings = json.loads(json.dumps({"seed": seed, "options": dataclasses.asdict(options)}))
  if os.path.isfile(path):
    with open(path) as f:
      if json.load(f) != settings:
        raise ValueError(f"{out_dir} holds an insertion with other seed or options")
    return
  _atomic_text(path, json.dumps(settings, indent=1))


def _image_record(
  path: str,
  findings: Sequence[Finding],
  image_id: str,
  out_dir: str,
  seed: int,
  options: InsertionOptions,
) -> dict:
  """One image's manifest rows and speck rows, written (or read back when already written)."""
  label_path = os.path.join(out_dir, "labels", f"{image_id}.json")
  if os.path.isfile(label_path):
    with open(label_path) as f:
      return json.load(f)
  spacing = next((f.pixel_spacing_mm for f in findings if f.pixel_spacing_mm), None)
  m = mammogram.read_mammogram(path, mammogram.spacing_options(spacing))
  if m.spacing_assumed:
    logging.warning("%s: pixel spacing unknown, %s mm assumed", path, m.pixel_spacing_mm)
  inserted = insert_clusters(m, findings, image_seed(seed, image_id), options)
  if inserted.skipped:
    logging.info("%s: %s", path, inserted.skipped)
  image_rel = os.path.join("images", f"{image_id}.png")
  _write_png(os.path.join(out_dir, image_rel), inserted.original_pixels, m.max_value)
  # The PNG records no spacing: keep the source's documented one, or the one its file records.
  known = None if m.spacing_assumed else round(float(np.mean(m.pixel_spacing_mm)), 6)
  template = dataclasses.replace(findings[0], pixel_spacing_mm=spacing or known)
  rows = [
    _kept(dataclasses.replace(f, pixel_spacing_mm=template.pixel_spacing_mm), image_rel)
    for f in findings
    if not (inserted.clusters and f.abnormality == "none")
  ]
  for k, c in enumerate(inserted.clusters):
    mask_rel = os.path.join("masks", f"{image_id}_{c.finding_id}.png")
    _write_png(os.path.join(out_dir, mask_rel), (inserted.cluster_map == k + 1) * 255, 255)
    rows.append(_cluster_row(template, c, image_rel, mask_rel, m))
  speck_rows = [_speck_row(s, inserted.clusters, image_rel) for s in inserted.specks]
  record = {"findings": [dataclasses.asdict(r) for r in rows], "specks": speck_rows}
  _atomic_text(label_path, json.dumps(record))
  return record


def _kept(f: Finding, image_rel: str) -> Finding:
  """A source finding moved to the inserted image (its own mask path made absolute)."""
  mask = os.path.abspath(f.mask_path) if f.mask_path else ""
  return dataclasses.replace(f, image_path=image_rel, mask_path=mask)


def _cluster_row(
  template: Finding, c: InsertedCluster, image_rel: str, mask_rel: str, m: mammogram.Mammogram
) -> Finding:
  return Finding(
    patient_id=template.patient_id,
    image_path=image_rel,
    finding_id=c.finding_id,
    abnormality="calcification",
    label=c.label,
    col=round(c.col, 2),
    row=round(c.row, 2),
    radius=round(c.radius, 2),
    mask_path=mask_rel,
    density=template.density,
    view=template.view or m.view,
    laterality=template.laterality or m.laterality,
    subtype=c.morphology,
    note=INSERTED_NOTE,
    pixel_spacing_mm=template.pixel_spacing_mm,
  )


def _speck_row(s: InsertedSpeck, clusters: Sequence[InsertedCluster], image_rel: str) -> dict:
  return {
    "image_path": image_rel,
    "finding_id": clusters[s.cluster].finding_id,
    "row": round(s.row, 2),
    "col": round(s.col, 2),
    "diameter_mm": round(s.diameter_mm, 4),
    "length_mm": round(s.length_mm, 4),
    "width_mm": round(s.width_mm, 4),
    "contrast": round(s.contrast, 4),
    "peak_value": s.peak_value,
  }


def _write_png(path: str, pixels: np.ndarray, max_value: int) -> None:
  """A lossless PNG: 8-bit for sources of 8 bits or fewer, else 16-bit; written atomically."""
  dtype = np.uint8 if max_value <= 255 else np.uint16
  image = Image.fromarray(np.ascontiguousarray(pixels, dtype=dtype))
  tmp = f"{path}.tmp"
  image.save(tmp, format="PNG")
  os.replace(tmp, path)


def _atomic_text(path: str, text: str) -> None:
  tmp = f"{path}.tmp"
  with open(tmp, "w") as f:
    f.write(text)
  os.replace(tmp, path)


def _write_csv(path: str, columns: Sequence[str], rows: Iterable[dict]) -> None:
  tmp = f"{path}.tmp"
  with open(tmp, "w", newline="") as f:
    writer = csv.DictWriter(f, fieldnames=columns)
    writer.writeheader()
    writer.writerows(rows)
  os.replace(tmp, path)


# ---------------------------------------------------------------------------------------------
# Command line.


def _source_findings(source: str, location: str, spacing_mm: float | None) -> list[Finding]:
  if source == "mias":
    return importers.import_mias(location)
  if source == "manifest":
    return sources.read_manifest_at(location)
  return importers.import_folder(location, spacing_mm)


def main(argv: Sequence[str] | None = None) -> None:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  commands = parser.add_subparsers(dest="command", required=True)
  measure = commands.add_parser("measure", help="measure the mini-MIAS speck contrasts")
  measure.add_argument("--mias", required=True, help="the mini-MIAS folder (Info.txt, images/)")
  insert = commands.add_parser("insert", help="insert clusters into background images")
  insert.add_argument("--source", choices=("mias", "manifest", "folder"), required=True)
  insert.add_argument("--location", required=True, help="MIAS folder, manifest or image folder")
  insert.add_argument("--out", required=True)
  insert.add_argument("--format", choices=sorted(FORMATS), default="film")
  insert.add_argument("--spacing_mm", type=float, help="pixel size of a --source=folder")
  insert.add_argument(
    "--contrast_scale",
    default="",
    help="a number, or 'auto': the backgrounds' detail_gain (default: 1 for film, else auto)",
  )
  insert.add_argument(
    "--clusters_per_image",
    type=_count_range,
    default="1,2",
    help="LOW,HIGH: each background draws this many clusters, uniformly (default 1,2)",
  )
  insert.add_argument("--seed", type=int, default=0)
  insert.add_argument("--limit", type=int, help="at most this many background images")
  args = parser.parse_args(argv)
  logging.basicConfig(level=logging.INFO, format="%(message)s")
  if args.command == "measure":
    summary = summarise_contrasts(measure_mias_speck_contrasts(args.mias))
    for key, value in dataclasses.asdict(summary).items():
      print(f"{key}: {value}")
    print(f"detail_level: {mias_detail_level(args.mias)}")
    return
  findings = _source_findings(args.source, args.location, args.spacing_mm)
  scale = args.contrast_scale or ("1" if args.format == "film" else "auto")
  if scale == "auto":
    scale = _cohort_gain(findings, args.limit)
    logging.info("contrast scale (the backgrounds' detail gain over MIAS film): %.2f", scale)
  options = InsertionOptions.for_format(
    args.format, contrast_scale=round(float(scale), 3), clusters_per_image=args.clusters_per_image
  )
  print(insert_cohort(findings, args.out, seed=args.seed, options=options, limit=args.limit))


def _count_range(text: str) -> tuple[int, int]:
  """'LOW,HIGH' as two whole numbers (argparse's type: a bad value is a one-line usage error)."""
  try:
    low, high = (int(n) for n in text.split(","))
  except ValueError:
    raise argparse.ArgumentTypeError(
      f"expected LOW,HIGH (two whole numbers), not {text!r}"
    ) from None
  return low, high


def _cohort_gain(findings: Sequence[Finding], limit: int | None, images: int = 8) -> float:
  """`detail_gain` of up to `images` backgrounds, evenly picked."""
  backgrounds = background_images(findings)
  paths = list(backgrounds)[:limit]
  picked = [paths[i] for i in np.linspace(0, len(paths) - 1, min(images, len(paths))).astype(int)]
  spacing = {
    p: next((f.pixel_spacing_mm for f in backgrounds[p] if f.pixel_spacing_mm), None)
    for p in picked
  }
  return detail_gain(
    mammogram.read_mammogram(p, mammogram.spacing_options(spacing[p])) for p in picked
  )


if __name__ == "__main__":
  main()
