"""Synthetic screening mammograms written as real DICOM files plus an annotation manifest.

The demo and the tests need mammograms without private data or downloads, and they must travel
the same path as real data (DICOM -> `input_pipeline.mammogram` -> patches). So this module
writes Digital Mammography (for presentation) DICOM files and a manifest CSV, with the physics
that matters for microcalcification detection:

* breast outline with a skin line and the thickness fall-off of a compressed breast's edge;
* fibroglandular texture with the 1/f^beta power spectrum of mammographic backgrounds (beta ~ 3),
  whose glandular fraction follows the ACR density (A-D in the paper's 18/22/38/22 % proportions),
  organised along ducts that converge on the nipple;
* the fibrous, speck-sized structure of real mammograms, in mm: Cooper's ligaments and the septa
  around fat lobules (thin bright curves), blood vessels (tapering tubes), ducts and vessels seen
  end-on (dots);
* pectoral muscle on MLO views; CC and MLO of both breasts, chest wall on the left of the matrix
  for L and on the right for R, as stored by real units;
* the detector's blur, quantum (Poisson) noise at the dose the AEC sets (`quanta_per_mm2`), log
  transform, 12-bit values, 0.07-0.1 mm pixels;
* the unit's processing for presentation (`processing`): thickness equalisation, multiscale band
  gains (coarse contrast compressed, the finest detail and noise raised) and a tone curve, over
  the whole image, specks included. This is what makes real for-presentation FFDM grainy: the
  cohort's fine structure, white top-hat and noise power spectrum lie within 25 % of the NYU
  FFDM images' (docs/realism.md). 'none' writes the detected log image (half the detail);
* calcification clusters modelled in 3-D and projected into both views of the breast, so a cluster
  appears in CC and MLO at a consistent position. Benign morphologies (round, punctate, coarse) are
  uniform in size and brightness and scattered; malignant ones (fine pleomorphic, fine linear
  branching) vary in size and shape, or line up along a duct, in tight clusters.

`SyntheticOptions.difficulty` in [0, 1] (default 0.5) is the one knob of how hard the tasks are;
raising it monotonically lowers speck contrast (x2 at 0, x1 at 0.5, x0.5 at 1), shrinks specks
(x1.25, x1, x0.75) and makes more clusters amorphous, a morphology drawn for benign and malignant
clusters alike (0 %, 20 %, 40 %), which caps how separable Task 2 can be.

Planning (`sample_cohort`, cheap, no pixels) is separate from rendering (`render_image`), so the
cohort's statistics can be checked on thousands of patients. Every image has its own seed drawn
from the cohort seed: the same seed gives byte-identical files.
"""

from __future__ import annotations

import dataclasses
import math
import os
import typing

import numpy as np
import pydicom
import scipy.fft
import scipy.ndimage
import scipy.special
from pydicom.dataset import FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian, generate_uid

from input_pipeline.manifest import Finding, write_manifest

DENSITIES = ("A", "B", "C", "D")
DENSITY_PROBABILITIES = (0.18, 0.22, 0.38, 0.22)  # the paper's cohort
# Mean fibroglandular fraction of the breast for each ACR density category.
GLANDULAR_FRACTION = {"A": 0.12, "B": 0.32, "C": 0.55, "D": 0.78}
VIEWS = ("CC", "MLO")
LATERALITIES = ("L", "R")
BENIGN_MORPHOLOGIES = ("round", "punctate", "coarse")
MALIGNANT_MORPHOLOGIES = ("fine_pleomorphic", "fine_linear_branching")
AMBIGUOUS_MORPHOLOGY = "amorphous"

BITS_STORED = 12
MAX_VALUE = 2**BITS_STORED - 1
DIGITAL_MAMMOGRAPHY_FOR_PRESENTATION = "1.2.840.10008.5.1.4.1.1.1.2"

# Linear attenuation (1/mm, ~20 keV): fat, glandular, muscle, calcium.
_MU_FAT = 0.045
_MU_GLAND = 0.08
_MU_MUSCLE = 0.085
_MU_CALCIUM = 2.2
_MUSCLE_SHARE = 0.5  # of the compressed thickness the pectoral muscle fills (MLO)
_SKIN_ATTENUATION = 0.25  # extra attenuation of the skin seen tangentially at the outline
_SKIN_WIDTH_MM = 0.6
_DETECTOR_BLUR_PX = 0.6  # sigma of the detector's presampling point spread function
_MLO_ANGLE = math.radians(45.0)

# Tissue. The texture (unit sd) plus the envelope and the ducts is the level the gland's soft
# threshold turns into a glandular fraction.
_ENVELOPE_LEVEL = 1.0  # how strongly the gland gathers behind the nipple
_GLAND_SOFTNESS = 1.2  # width of the soft threshold (a projection rarely is all gland or fat)
# Curves around fat lobules (`_strands`): (sigma of the lobule field, curve width at half
# height), mm; lobules span about 4 sigma, `stretch` times longer towards the nipple.
_DUCT_SCALES = ((5.0, 1.5), (2.5, 0.7))  # ducts and their stroma, raising the level by:
_DUCT_LEVEL = 1.5
_DUCT_STRETCH = 3.0
_SEPTA_SCALES = ((4.0, 0.7), (2.0, 0.35))  # fibrous septa, Cooper's ligaments
_SEPTA_STRETCH = 1.5
_FAT_AROUND_GLAND = 0.5  # share of fat in what septa, vessels and ducts displace in gland
_END_ON_WIDTHS_MM = (0.4, 0.8, 1.4)  # ducts and vessels seen end-on
_END_ON_LENGTH_MM = (2.0, 8.0)  # how far they run along the beam
_VESSEL_WANDER = 0.05  # radians of a vessel's heading per sqrt(mm)

# The unit's processing. "none": log values as detected (`_GAIN`, `_OFFSET`); "presentation":
# multiscale bands, (Gaussian sigma in mm, gain) finest first, the coarse rest's gain, and a tone
# curve. Fitted to the NYU for-presentation images' noise power spectrum (docs/realism.md).
PROCESSINGS = ("presentation", "none")
_EQUALISATION = 0.9  # share of the edge's thickness fall-off the thickness equalisation restores
_GAIN = 700.0  # digital values per unit of log attenuation ("none")
_OFFSET = 60.0  # value of the unattenuated background ("none")
_PRESENTATION_BANDS = ((0.05, 2.0), (0.1, 1.4), (3.0, 1.0), (10.0, 0.7))
_PRESENTATION_BASE_GAIN = 0.5
_TONE_GAMMA = 1.5  # power of the tone curve over the breast's 0.5-99.9 %: contrast to dense tissue
_DISPLAY_LOW, _DISPLAY_HIGH = 300.0, 3900.0  # the tone curve's ends, digital values


@dataclasses.dataclass(frozen=True)
class SyntheticOptions:
  """How a cohort looks: image geometry, task difficulty and the mix of findings."""

  image_size: tuple[int, int] = (1200, 900)  # (rows, columns)
  pixel_spacing_mm: float = 0.085
  difficulty: float = 0.5
  cluster_probability: float = 0.5  # per breast
  second_cluster_probability: float = 0.2  # of a breast with a cluster
  malignant_fraction: float = 0.5
  monochrome1_fraction: float = 0.1  # images stored inverted, to exercise readers
  beta: float = 3.0
  quanta_per_mm2: float = 4.0e5  # detected under the breast (the AEC's target), ~70 uGy
  septa_path_mm: float = 8.0  # fibrous septum seen edge-on (Cooper's ligaments); 0: none
  vessels: tuple[int, int] = (2, 5)  # blood vessels per view, (0, 0): none
  end_on_per_cm2: float = 3.0  # ducts and vessels seen end-on, per cm^2 of gland; 0: none
  processing: str = "presentation"  # or "none": the detected log image, not enhanced

  def __post_init__(self):
    if not 0.0 <= self.difficulty <= 1.0:
      raise ValueError(f"difficulty must lie in [0, 1], got {self.difficulty}")
    if self.processing not in PROCESSINGS:
      raise ValueError(f"processing must be one of {PROCESSINGS}, got {self.processing!r}")
    if self.pixel_spacing_mm <= 0 or min(self.image_size) < 32:
      raise ValueError(f"bad geometry {self.image_size} at {self.pixel_spacing_mm} mm")

  @property
  def contrast_scale(self) -> float:
    return 2.0 ** (1.0 - 2.0 * self.difficulty)

  @property
  def size_scale(self) -> float:
    return 1.25 - 0.5 * self.difficulty

  @property
  def ambiguous_fraction(self) -> float:
    return 0.4 * self.difficulty


@dataclasses.dataclass(frozen=True)
class Speck:
  """One calcification: an ellipsoid in mm, relative to its cluster's centre.

  Axes are (x: chest wall to nipple, y: medio-lateral, z: supero-inferior), so one speck
  projects into both views.
  """

  center_mm: tuple[float, float, float]
  axis: tuple[float, float, float]  # unit vector of the long axis
  length_mm: float
  width_mm: float
  density: float  # relative attenuation: calcium packing


@dataclasses.dataclass(frozen=True)
class Cluster:
  """A calcification cluster; `rho`/`phi` place it in the breast the same way in both views."""

  finding_id: str
  label: str
  morphology: str
  rho: float  # fraction of the way from the chest wall to the skin
  phi: float  # angular position in [-1, 1], 0 on the nipple line
  specks: tuple[Speck, ...]


@dataclasses.dataclass(frozen=True)
class BreastGeometry:
  """Outline and thickness of one view of a breast; lengths are fractions of the matrix."""

  center_row: float  # the chest-wall point the outline is drawn around (fraction of rows)
  depth: float  # semi-axis towards the nipple (fraction of columns)
  half_height: float  # semi-axis along the chest wall (fraction of rows)
  tilt: float  # radians, nipple direction below the horizontal
  wobble: tuple[tuple[float, float], ...]  # (amplitude, phase) of outline harmonics 2, 3, ...
  thickness_mm: float
  falloff_mm: float  # width of the edge where the compressed thickness falls to zero
  pectoral: tuple[float, float] | None  # (top-edge width, left-edge height) fractions; MLO only


@dataclasses.dataclass(frozen=True)
class ImageSpec:
  """Everything needed to render one mammogram, without its pixels."""

  patient_id: str
  laterality: str
  view: str
  density: str
  glandular_fraction: float
  beta: float
  geometry: BreastGeometry
  clusters: tuple[Cluster, ...]
  monochrome1: bool
  seed: int

  @property
  def image_id(self) -> str:
    return f"{self.patient_id}_{self.laterality}_{self.view}"


@dataclasses.dataclass(frozen=True)
class Annotation:
  """A cluster as it appears in one image, in the file's pixel coordinates."""

  cluster: Cluster
  col: float
  row: float
  radius: float


@dataclasses.dataclass(frozen=True)
class RenderedImage:
  """Pixels as stored in the file's orientation, dense tissue bright (MONOCHROME2 sense)."""

  pixels: np.ndarray
  annotations: tuple[Annotation, ...]
  breast_mask: np.ndarray


# ---------------------------------------------------------------------------------------------
# Planning: cohort, breasts, clusters.


def sample_cohort(
  num_patients: int, seed: int, options: SyntheticOptions | None = None
) -> list[ImageSpec]:
  """Plans a cohort: 4 images (L/R x CC/MLO) per patient, no pixels rendered."""
  options = options or SyntheticOptions()
  rng = np.random.default_rng(seed)
  specs = []
  for p in range(num_patients):
    patient_id = f"SYN{p + 1:04d}"
    density = DENSITIES[rng.choice(len(DENSITIES), p=DENSITY_PROBABILITIES)]
    monochrome1 = bool(rng.random() < options.monochrome1_fraction)  # a property of the unit
    for laterality in LATERALITIES:
      fraction = float(np.clip(GLANDULAR_FRACTION[density] + rng.normal(0, 0.04), 0.05, 0.92))
      thickness = float(rng.uniform(40, 65))
      geometries = {view: _sample_geometry(view, thickness, rng) for view in VIEWS}
      clusters = _sample_clusters(laterality, geometries, options, rng)
      for view in VIEWS:
        specs.append(
          ImageSpec(
            patient_id=patient_id,
            laterality=laterality,
            view=view,
            density=density,
            glandular_fraction=fraction,
            beta=float(options.beta + rng.normal(0, 0.1)),
            geometry=geometries[view],
            clusters=clusters,
            monochrome1=monochrome1,
            seed=int(rng.integers(2**63)),
          )
        )
  return specs


def _sample_geometry(view: str, thickness_mm: float, rng: np.random.Generator) -> BreastGeometry:
  wobble = tuple((float(rng.uniform(0, 0.03)), float(rng.uniform(0, 2 * np.pi))) for _ in range(3))
  falloff = float(thickness_mm * rng.uniform(0.4, 0.55))
  if view == "CC":
    return BreastGeometry(
      center_row=rng.uniform(0.45, 0.55),
      depth=rng.uniform(0.62, 0.8),
      half_height=rng.uniform(0.36, 0.44),
      tilt=rng.normal(0, 0.05),
      wobble=wobble,
      thickness_mm=thickness_mm,
      falloff_mm=falloff,
      pectoral=None,
    )
  return BreastGeometry(
    center_row=rng.uniform(0.36, 0.44),
    depth=rng.uniform(0.7, 0.85),
    half_height=rng.uniform(0.47, 0.55),
    tilt=rng.uniform(0.1, 0.3),
    wobble=wobble,
    thickness_mm=thickness_mm,
    falloff_mm=falloff,
    pectoral=(rng.uniform(0.22, 0.35), rng.uniform(0.45, 0.7)),
  )


def _sample_clusters(
  laterality: str,
  geometries: dict[str, BreastGeometry],
  options: SyntheticOptions,
  rng: np.random.Generator,
) -> tuple[Cluster, ...]:
  if rng.random() >= options.cluster_probability:
    return ()
  count = 2 if rng.random() < options.second_cluster_probability else 1
  clusters = []
  for i in range(count):
    label = "malignant" if rng.random() < options.malignant_fraction else "benign"
    if rng.random() < options.ambiguous_fraction:
      morphology = AMBIGUOUS_MORPHOLOGY
    else:
      choices = MALIGNANT_MORPHOLOGIES if label == "malignant" else BENIGN_MORPHOLOGIES
      morphology = choices[rng.integers(len(choices))]
    specks = sample_specks(morphology, options.size_scale, rng)
    taken = [(c.rho, c.phi) for c in clusters]
    rho, phi = _sample_position(geometries, taken, options.image_size, rng)
    clusters.append(Cluster(f"{laterality}{i + 1}", label, morphology, rho, phi, specks))
  return tuple(clusters)


def _sample_position(
  geometries: dict[str, BreastGeometry],
  taken: list[tuple[float, float]],
  shape: tuple[int, int],
  rng: np.random.Generator,
) -> tuple[float, float]:
  """Draws a position inside the matrix in every view, clear of the muscle and other clusters."""
  for _ in range(1000):
    rho, phi = float(rng.uniform(0.3, 0.8)), float(rng.uniform(-0.65, 0.65))
    if any(abs(rho - r) + abs(phi - p) < 0.3 for r, p in taken):
      continue
    if all(_placeable(g, rho, phi, shape) for g in geometries.values()):
      return rho, phi
  raise ValueError(f"no room for a cluster in a {shape} matrix")


# Per morphology: (speck count range, cluster spread in mm, speck size in mm, size CV, aspect
# (width / length) range, calcium density, density CV); fine linear branching follows a duct.
SPECK_SHAPES = {
  "round": ((5, 12), 1.6, 0.45, 0.08, (0.85, 1.0), 1.0, 0.05),
  "punctate": ((6, 16), 1.8, 0.28, 0.08, (0.85, 1.0), 1.0, 0.05),
  "coarse": ((3, 6), 1.8, 0.8, 0.1, (0.6, 1.0), 1.1, 0.05),
  "fine_pleomorphic": ((10, 25), 1.0, 0.25, 0.5, (0.25, 1.0), 0.8, 0.3),
  "amorphous": ((8, 20), 1.2, 0.2, 0.2, (0.7, 1.0), 0.8, 0.15),
}


def sample_specks(
  morphology: str,
  size_scale: float,
  rng: np.random.Generator,
  *,
  count: tuple[int, int] | None = None,
  spread_mm: float | None = None,
) -> tuple[Speck, ...]:
  """Speck geometry for one morphology (sizes before `size_scale`, in mm).

  `count` and `spread_mm` replace the morphology's speck count range and cluster radius (the
  insertion of clusters into real mammograms sets its own); the ductal morphology keeps its duct.
  """
  if morphology == "fine_linear_branching":
    specks = _ductal_specks(rng)
  else:
    default_count, spread, size, size_cv, aspect, density, density_cv = SPECK_SHAPES[morphology]
    count = count or default_count
    spread = spread if spread_mm is None else spread_mm
    n = int(rng.integers(count[0], count[1] + 1))
    centres = _cluster_positions(n, spread, rng)
    sizes = size * np.exp(rng.normal(0, size_cv, n))
    specks = [
      Speck(
        tuple(c),
        _random_axis(rng),
        float(s),
        float(s * rng.uniform(*aspect)),
        float(density * np.exp(rng.normal(0, density_cv))),
      )
      for c, s in zip(centres, sizes, strict=True)
    ]
  return tuple(_scaled(s, size_scale) for s in specks)


def _cluster_positions(n: int, spread_mm: float, rng: np.random.Generator) -> np.ndarray:
  """Speck centres uniformly in a flattened ellipsoid of radius `spread_mm`, mean removed."""
  directions = rng.normal(size=(n, 3))
  directions /= np.linalg.norm(directions, axis=1, keepdims=True)
  radii = spread_mm * rng.random(n) ** (1 / 3)
  points = directions * radii[:, None] * np.array([1.0, 1.0, 0.7])
  return points - points.mean(axis=0)


def _ductal_specks(rng: np.random.Generator) -> list[Speck]:
  """Thin rods cast along a branching duct: fine linear branching calcifications."""
  specks = []
  branches = [(np.zeros(3), _random_axis_near(np.array([1.0, 0, 0]), 0.6, rng))]
  while branches:
    start, direction = branches.pop()
    position = start.copy()
    for _ in range(int(rng.integers(2, 5))):
      length = float(rng.uniform(0.2, 0.6))
      centre = position + direction * length / 2
      specks.append(
        Speck(
          tuple(centre),
          tuple(direction),
          length,
          float(rng.uniform(0.12, 0.22)),
          float(rng.uniform(0.8, 1.2)),
        )
      )
      position = position + direction * (length + rng.uniform(0.05, 0.3))
      if rng.random() < 0.3 and len(specks) < 10:
        branches.append((position.copy(), _random_axis_near(direction, 0.7, rng)))
  mean = np.mean([s.center_mm for s in specks], axis=0)
  kept = [
    dataclasses.replace(s, center_mm=tuple(np.subtract(s.center_mm, mean)))
    for s in specks
    if np.linalg.norm(np.subtract(s.center_mm, mean)) < 2.2
  ]
  return kept if len(kept) >= 4 else _ductal_specks(rng)  # a cluster has at least 4 specks


def _random_axis(rng: np.random.Generator) -> tuple[float, float, float]:
  v = rng.normal(size=3)
  return tuple(v / np.linalg.norm(v))


def _random_axis_near(direction: np.ndarray, spread: float, rng: np.random.Generator) -> np.ndarray:
  v = direction + spread * rng.normal(size=3)
  return v / np.linalg.norm(v)


def _scaled(speck: Speck, scale: float) -> Speck:
  """Applies the difficulty's size scale, keeping specks within 0.1-1 mm."""
  return dataclasses.replace(
    speck,
    length_mm=float(np.clip(speck.length_mm * scale, 0.1, 1.0)),
    width_mm=float(np.clip(speck.width_mm * scale, 0.1, 1.0)),
  )


# ---------------------------------------------------------------------------------------------
# Geometry of one view, in canonical orientation (chest wall on the left).


def _outline_radius(g: BreastGeometry, theta: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
  """Distance (pixels) from the chest-wall centre to the skin along direction `theta`."""
  a, b = g.half_height * shape[0], g.depth * shape[1]
  radius = 1.0 / np.sqrt((np.cos(theta - g.tilt) / b) ** 2 + (np.sin(theta - g.tilt) / a) ** 2)
  wobble = sum(amp * np.cos((k + 2) * theta + ph) for k, (amp, ph) in enumerate(g.wobble))
  return radius * (1.0 + wobble)


def _polar_to_pixel(
  g: BreastGeometry, rho: float, phi: float, shape: tuple[int, int]
) -> tuple[float, float]:
  """(row, col) of a point given as a fraction `rho` of the way to the skin at angle `phi`."""
  theta = g.tilt + phi * (np.pi / 2 - abs(g.tilt))
  distance = rho * float(_outline_radius(g, np.asarray(theta), shape))
  return g.center_row * shape[0] + distance * np.sin(theta), distance * np.cos(theta)


def _pectoral_level(
  g: BreastGeometry, row: np.ndarray, col: np.ndarray, shape: tuple[int, int]
) -> np.ndarray:
  """Positive inside the pectoral muscle (a slightly convex triangle at the top-left corner)."""
  width, height = g.pectoral[0] * shape[1], g.pectoral[1] * shape[0]
  return 1.0 - (np.maximum(col, 0) / width) ** 1.3 - (np.maximum(row, 0) / height) ** 1.3


def _placeable(g: BreastGeometry, rho: float, phi: float, shape: tuple[int, int]) -> bool:
  """Whether a cluster at (rho, phi) lies well inside the matrix and outside the muscle."""
  row, col = _polar_to_pixel(g, rho, phi, shape)
  margin = 0.08 * min(shape)
  if not (margin < row < shape[0] - margin and margin < col < shape[1] - margin):
    return False
  return g.pectoral is None or _pectoral_level(g, np.asarray(row), np.asarray(col), shape) < -0.3


# ---------------------------------------------------------------------------------------------
# Rendering.


def power_law_noise(
  shape: tuple[int, int], beta: float, rng: np.random.Generator, corner_frequency: float = 0.0
) -> np.ndarray:
  """Gaussian noise with power spectrum 1/(f^2 + f0^2)^(beta/2), zero mean, unit variance.

  `corner_frequency` f0 (cycles/pixel) flattens the spectrum at scales larger than the
  fibroglandular structures, as measured spectra do.
  """
  white = rng.standard_normal(shape, dtype=np.float32)
  fy = np.fft.fftfreq(shape[0]).astype(np.float32)[:, None]
  fx = np.fft.rfftfreq(shape[1]).astype(np.float32)[None, :]
  f2 = fy**2 + fx**2 + np.float32(corner_frequency**2)
  f2[0, 0] = np.inf  # no mean
  field = scipy.fft.irfft2(scipy.fft.rfft2(white) * f2 ** np.float32(-beta / 4), s=shape)
  return (field / field.std()).astype(np.float32)


class BreastShape(typing.NamedTuple):
  """Per pixel of one view (chest wall on the left): where the breast is and how thick."""

  rho: np.ndarray  # fraction of the way from the chest-wall centre to the skin
  mask: np.ndarray
  edge_mm: np.ndarray  # distance inside the outline
  thickness: np.ndarray  # fraction of the compressed thickness


def render_image(spec: ImageSpec, options: SyntheticOptions | None = None) -> RenderedImage:
  """Renders one mammogram: attenuation map -> detector blur and quanta -> log -> the unit's
  processing -> 12-bit values."""
  options = options or SyntheticOptions()
  shape, spacing = options.image_size, options.pixel_spacing_mm
  g = spec.geometry
  rng = np.random.default_rng(spec.seed)
  breast = _breast_shape(g, shape, spacing)
  attenuation = _tissue_attenuation(spec, options, breast, rng)
  calcium, annotations = _calcification_layer(spec, options)
  log_image = _expose(attenuation + calcium, breast.mask, spacing, options.quanta_per_mm2, rng)
  # The unit's thickness equalisation restores most of the edge's fall-off.
  log_image += _EQUALISATION * g.thickness_mm * _MU_FAT * (1.0 - breast.thickness) * breast.mask
  if options.processing == "presentation":
    pixels = _for_presentation(log_image, breast.mask, spacing)
  else:
    pixels = _to_values(_OFFSET + _GAIN * log_image)
  mask = breast.mask
  if spec.laterality == "R":  # stored with the chest wall on the right
    pixels, mask = pixels[:, ::-1].copy(), mask[:, ::-1].copy()
    annotations = tuple(dataclasses.replace(a, col=shape[1] - 1 - a.col) for a in annotations)
  return RenderedImage(pixels, annotations, mask)


def _breast_shape(g: BreastGeometry, shape: tuple[int, int], spacing: float) -> BreastShape:
  rows = np.arange(shape[0], dtype=np.float32)[:, None]
  cols = np.arange(shape[1], dtype=np.float32)[None, :]
  dy = rows - np.float32(g.center_row * shape[0])
  outline = _outline_radius(g, np.arctan2(dy, cols), shape).astype(np.float32)
  rho = np.sqrt(dy**2 + cols**2) / outline
  mask = rho < 1.0
  edge_mm = np.maximum(1.0 - rho, 0.0) * outline * np.float32(spacing)
  # A compressed breast's edge is roughly a half-cylinder of the compressed thickness.
  inward = np.clip(edge_mm / np.float32(g.falloff_mm), 0.0, 1.0)
  thickness = np.where(mask, np.sqrt(1.0 - (1.0 - inward) ** 2), 0.0).astype(np.float32)
  return BreastShape(rho, mask, edge_mm, thickness)


def _tissue_attenuation(
  spec: ImageSpec, options: SyntheticOptions, breast: BreastShape, rng: np.random.Generator
) -> np.ndarray:
  """Attenuation (log units) of fat, gland with its ducts, septa, vessels, muscle and skin."""
  shape, spacing = options.image_size, options.pixel_spacing_mm
  g = spec.geometry
  field = power_law_noise(shape, spec.beta, rng, corner_frequency=spacing / 30.0)
  frame = _nipple_frame(g, shape)
  level = field + _DUCT_LEVEL * _strands(frame, _DUCT_SCALES, _DUCT_STRETCH, spacing, rng)
  gland = _glandular_map(level, breast, spec.glandular_fraction)
  attenuation = g.thickness_mm * breast.thickness * (_MU_FAT + (_MU_GLAND - _MU_FAT) * gland)
  # Septa, vessels and ducts border fat lobules: what they displace is fat, all of it in fatty
  # tissue and `_FAT_AROUND_GLAND` of it in glandular tissue.
  fibrous = options.septa_path_mm * _strands(frame, _SEPTA_SCALES, _SEPTA_STRETCH, spacing, rng)
  fibrous += _vessel_path(g, shape, spacing, options.vessels, rng)
  fibrous += _end_on_path(gland * breast.mask, spacing, options.end_on_per_cm2, rng)
  fat_around = 1.0 - (1.0 - _FAT_AROUND_GLAND) * gland
  attenuation += (_MU_GLAND - _MU_FAT) * fat_around * breast.thickness * fibrous
  if g.pectoral is not None:
    attenuation += _muscle_attenuation(g, shape, spacing, field) * breast.mask
  attenuation += breast.mask * _SKIN_ATTENUATION * np.exp(-breast.edge_mm / _SKIN_WIDTH_MM)
  return attenuation.astype(np.float32)


def _muscle_attenuation(
  g: BreastGeometry, shape: tuple[int, int], spacing: float, field: np.ndarray
) -> np.ndarray:
  """The pectoral muscle's attenuation over the fat it displaces: a wedge seen obliquely, its
  path growing from its edge into the corner; the rest of the column is breast."""
  rows = np.arange(shape[0], dtype=np.float32)[:, None]
  cols = np.arange(shape[1], dtype=np.float32)[None, :]
  level = _pectoral_level(g, rows, cols, shape)
  muscle = scipy.special.expit(level * (min(shape) * spacing / 1.5))
  muscle_mm = g.thickness_mm * _MUSCLE_SHARE * (0.7 + 0.3 * np.clip(level, 0, 1) + 0.05 * field)
  return (_MU_MUSCLE - _MU_FAT) * muscle * muscle_mm


def _glandular_map(level: np.ndarray, breast: BreastShape, fraction: float) -> np.ndarray:
  """Fibroglandular fraction per pixel: texture, concentrated behind the nipple, `fraction` mean.

  Glandular tissue sits in a cone behind the nipple, with fat under the skin and in front of
  the chest wall; a soft threshold keeps the texture's spectrum while setting the density.
  """
  envelope = np.exp(-(((breast.rho - 0.45) / 0.35) ** 2)) * (1.0 - np.exp(-breast.edge_mm / 4.0))
  level = level + _ENVELOPE_LEVEL * envelope
  inside = level[breast.mask]
  threshold = np.quantile(inside[:: max(1, inside.size // 50_000)], 1.0 - fraction)
  return scipy.special.expit((level - threshold) / _GLAND_SOFTNESS).astype(np.float32)


def _strands(
  frame: NippleFrame,
  scales: tuple[tuple[float, float], ...],
  stretch: float,
  spacing: float,
  rng: np.random.Generator,
) -> np.ndarray:
  """Thin curves along the lines towards the nipple: 1 on a curve's axis, 0 away from it.

  Fibrous septa (Cooper's ligaments) and ducts with their stroma wrap fat lobules elongated
  towards the nipple: sheets and tubes that show as curves where they run along the beam and fade
  where they turn away. So the curves are the zero contours of smooth random fields stretched
  along those lines (`_radial_field`), one per (sigma_mm, width_mm) of `scales`, `width_mm` wide
  at half height, and fade where they turn across the lines (a lobule's rounded end); a pixel's
  distance to a contour is the field over its gradient.
  """
  total = np.zeros(frame.along.shape, np.float32)
  largest = max(sigma_mm for sigma_mm, _ in scales)
  showing = scipy.special.expit(3.0 * _radial_field(frame, 2 * largest / spacing, stretch, rng))
  for sigma_mm, width_mm in scales:
    field = _radial_field(frame, sigma_mm / spacing, stretch, rng)
    grad_row, grad_col = np.gradient(field)
    slope = np.hypot(grad_row, grad_col)
    slope = np.sqrt(slope**2 + (0.3 * slope.mean()) ** 2)  # no blobs where the field is flat
    aligned = 1.0 - ((grad_row * frame.unit_row + grad_col * frame.unit_col) / slope) ** 2
    distance_mm = field / slope * np.float32(spacing)
    profile = np.exp(-4.0 * np.log(2.0) * (distance_mm / width_mm) ** 2)
    total += showing * aligned**2 * profile
  return total


class NippleFrame(typing.NamedTuple):
  """Per pixel: distance from a point a quarter of the depth beyond the nipple, the arc (at half
  the depth) across the lines through that point, both in pixels, and the unit vector along them.
  Ducts and ligaments run along these lines and converge towards the nipple (not onto a point)."""

  along: np.ndarray
  across: np.ndarray
  unit_row: np.ndarray
  unit_col: np.ndarray


def _nipple_frame(g: BreastGeometry, shape: tuple[int, int]) -> NippleFrame:
  row, col = _polar_to_pixel(g, 1.25, 0.0, shape)
  dr = np.arange(shape[0], dtype=np.float32)[:, None] - np.float32(row)
  dc = np.arange(shape[1], dtype=np.float32)[None, :] - np.float32(col)
  behind = (np.arctan2(dr, dc) - g.tilt) % (2 * np.pi) - np.pi  # 0: towards the chest wall
  behind = np.clip(behind, -np.pi / 2, np.pi / 2)  # the breast lies wholly behind the point
  distance = np.maximum(np.hypot(dr, dc), 1.0)
  reach = 0.5 * g.depth * shape[1]
  return NippleFrame(distance, (behind * reach).astype(np.float32), dr / distance, dc / distance)


def _radial_field(
  frame: NippleFrame, sigma: float, stretch: float, rng: np.random.Generator
) -> np.ndarray:
  """A unit-variance smooth random field (`_smooth_field`) laid along the frame's lines."""
  along, across = frame.along, frame.across
  step = max(1.0, sigma / 16.0)  # the field is smooth: a coarse grid is interpolated
  half = float(np.abs(across).max())
  size = (int(along.max() / step) + 2, int(2 * half / step) + 2)
  field = _smooth_field(size, sigma / step, stretch, rng)
  coords = np.stack([along / step, (across + half) / step])
  return scipy.ndimage.map_coordinates(field, coords, order=1, mode="nearest")


def _smooth_field(
  shape: tuple[int, int], sigma: float, stretch: float, rng: np.random.Generator
) -> np.ndarray:
  """Unit-variance white noise blurred by a Gaussian of `sigma` pixels across the columns and
  `stretch` times that along them, without structure larger than 4 sigma."""
  white = rng.standard_normal(shape, dtype=np.float32)
  fy = np.fft.fftfreq(shape[0]).astype(np.float32)[:, None]
  fx = np.fft.rfftfreq(shape[1]).astype(np.float32)[None, :]
  blur = np.exp(-2 * np.pi**2 * sigma**2 * (stretch**2 * fy**2 + fx**2))
  blur *= 1.0 - np.exp(-2 * np.pi**2 * (4 * sigma) ** 2 * (fx**2 + fy**2))
  field = scipy.fft.irfft2(scipy.fft.rfft2(white) * blur.astype(np.float32), s=shape)
  return (field / field.std()).astype(np.float32)


def _end_on_path(
  gland: np.ndarray, spacing: float, per_cm2: float, rng: np.random.Generator
) -> np.ndarray:
  """Path (mm) through ducts and vessels running along the beam: dots 0.4-1.4 mm wide.

  A tube across the beam projects a line; one along it for a few mm projects a dot as wide as
  the tube and as bright as that length of tissue: speck-sized structure as bright as faint
  calcifications. Dots lie where the gland is, `per_cm2` per cm^2 of glandular tissue.
  """
  total = np.zeros(gland.shape, np.float32)
  weights = gland.ravel().astype(np.float64)
  count = rng.poisson(per_cm2 * (spacing / 10.0) ** 2 * weights.sum())
  where = rng.choice(weights.size, count, p=weights / weights.sum())
  widths = rng.integers(0, len(_END_ON_WIDTHS_MM), count)
  lengths = rng.uniform(*_END_ON_LENGTH_MM, count)
  for i, width_mm in enumerate(_END_ON_WIDTHS_MM):
    sigma = width_mm / spacing / 2.355  # from the width at half height
    dots = np.zeros(gland.size, np.float32)
    np.add.at(dots, where[widths == i], lengths[widths == i] * 2 * np.pi * sigma**2)
    dots = dots.reshape(gland.shape)
    total += scipy.ndimage.gaussian_filter(dots, sigma)
  return total


def _vessel_path(
  g: BreastGeometry,
  shape: tuple[int, int],
  spacing: float,
  count: tuple[int, int],
  rng: np.random.Generator,
) -> np.ndarray:
  """Path (mm) through blood vessels: tubes 1-3 mm wide from the chest wall towards the nipple.

  Each follows a smooth random walk from the chest wall, heading near the nipple direction, over
  part of the breast's depth and tapers as it goes; a tube of radius r holds a path of
  2 sqrt(r^2 - d^2) at distance d from its axis.
  """
  axis = np.zeros(shape, bool)
  radius = np.zeros(shape, np.float32)
  for _ in range(int(rng.integers(count[0], count[1] + 1))):
    step = 0.5  # pixels
    steps = int(rng.uniform(0.4, 0.9) * g.depth * shape[1] / step)
    wander = rng.normal(0.0, _VESSEL_WANDER * math.sqrt(step * spacing), steps)
    heading = g.tilt + rng.normal(0.0, 0.3) + np.cumsum(wander)
    row = (g.center_row + rng.uniform(-0.8, 0.8) * g.half_height) * shape[0]
    rows = np.rint(row + np.cumsum(step * np.sin(heading))).astype(int)
    cols = np.rint(np.cumsum(step * np.cos(heading))).astype(int)
    inside = (rows >= 0) & (rows < shape[0]) & (cols >= 0) & (cols < shape[1])
    taper = rng.uniform(0.5, 1.5) * (1.0 - 0.6 * np.linspace(0.0, 1.0, steps))
    axis[rows[inside], cols[inside]] = True
    radius[rows[inside], cols[inside]] = taper[inside]
  if not axis.any():
    return np.zeros(shape, np.float32)
  distance, (near_rows, near_cols) = scipy.ndimage.distance_transform_edt(
    ~axis, return_indices=True
  )
  r = radius[near_rows, near_cols]
  return (2.0 * np.sqrt(np.clip(r**2 - (distance * spacing) ** 2, 0.0, None))).astype(np.float32)


def _calcification_layer(
  spec: ImageSpec, options: SyntheticOptions
) -> tuple[np.ndarray, tuple[Annotation, ...]]:
  """Calcium attenuation of every speck projected into this view, and the cluster annotations."""
  shape, spacing = options.image_size, options.pixel_spacing_mm
  layer = np.zeros(shape, np.float32)
  annotations = []
  to_image = projection(spec.view)
  for cluster in spec.clusters:
    row, col = _polar_to_pixel(spec.geometry, cluster.rho, cluster.phi, shape)
    extent_mm = 0.0
    for speck in cluster.specks:
      dcol, drow = to_image @ np.asarray(speck.center_mm)
      axis = to_image @ np.asarray(speck.axis)
      attenuation = _MU_CALCIUM * options.contrast_scale * speck.density
      _add_speck(
        layer, row + drow / spacing, col + dcol / spacing, axis, speck, spacing, attenuation
      )
      extent_mm = max(extent_mm, math.hypot(dcol, drow) + speck.length_mm / 2)
    annotations.append(Annotation(cluster, float(col), float(row), (extent_mm + 0.3) / spacing))
  return layer, tuple(annotations)


def projection(view: str) -> np.ndarray:
  """Maps (x, y, z) mm in the breast to (column, row) mm in the image of `view`."""
  if view == "CC":
    return np.array([[1.0, 0.0, 0.0], [0.0, 1.0, 0.0]])
  return np.array([[1.0, 0.0, 0.0], [0.0, math.sin(_MLO_ANGLE), math.cos(_MLO_ANGLE)]])


def speck_path(
  row: float, col: float, axis: np.ndarray, speck: Speck, spacing: float, supersample: int = 4
) -> tuple[int, int, np.ndarray]:
  """A speck's projected calcium path (mm through an ellipsoid) on a sub-pixel grid.

  Returns (r0, c0, path_mm): the grid covers pixels r0.. and c0.. of the image, `supersample`
  sub-pixels a side per pixel, so a caller can blur before averaging down to pixels.
  `axis` is the long axis projected into the image, (column, row).
  """
  half_length = max(speck.length_mm * float(np.hypot(*axis)), speck.width_mm) / 2 / spacing
  half_width = speck.width_mm / 2 / spacing
  margin = int(math.ceil(half_length)) + 3
  r0, c0 = int(math.floor(row)) - margin, int(math.floor(col)) - margin
  n = 2 * margin + 1
  sub = (np.arange(n * supersample) + 0.5) / supersample
  v = (r0 + sub - row)[:, None]  # offsets in pixels from the speck's centre
  u = (c0 + sub - col)[None, :]
  angle = math.atan2(axis[1], axis[0])
  along = u * math.cos(angle) + v * math.sin(angle)
  across = -u * math.sin(angle) + v * math.cos(angle)
  inside = 1.0 - (along / half_length) ** 2 - (across / half_width) ** 2
  return r0, c0, speck.width_mm * np.sqrt(np.clip(inside, 0.0, None))


def _add_speck(
  layer: np.ndarray,
  row: float,
  col: float,
  axis: np.ndarray,
  speck: Speck,
  spacing: float,
  attenuation: float,
  supersample: int = 4,
) -> None:
  """Adds a speck's projected calcium path (an ellipsoid), anti-aliased (the detector blurs it
  with everything else)."""
  r0, c0, path_mm = speck_path(row, col, axis, speck, spacing, supersample)
  n = path_mm.shape[0] // supersample
  stamp = path_mm.reshape(n, supersample, n, supersample).mean(axis=(1, 3)) * attenuation
  rs, cs = (
    slice(max(r0, 0), min(r0 + n, layer.shape[0])),
    slice(max(c0, 0), min(c0 + n, layer.shape[1])),
  )
  layer[rs, cs] += stamp[rs.start - r0 : rs.stop - r0, cs.start - c0 : cs.stop - c0]


def _expose(
  attenuation: np.ndarray,
  mask: np.ndarray,
  spacing: float,
  quanta_per_mm2: float,
  rng: np.random.Generator,
) -> np.ndarray:
  """The detected log image: detector blur, Poisson quanta, log(unattenuated / detected).

  The AEC sets the exposure so that the breast's median pixel receives `quanta_per_mm2`; the
  blur acts on the x-ray fluence, and the quantum noise after it is white (a direct detector).
  """
  transmission = scipy.ndimage.gaussian_filter(np.exp(-attenuation), _DETECTOR_BLUR_PX)
  target = quanta_per_mm2 * spacing**2
  unattenuated = np.float32(target / np.median(transmission[mask]))
  counts = np.maximum(rng.poisson(unattenuated * transmission), 1).astype(np.float32)
  return np.log(unattenuated / counts)


def _to_values(values: np.ndarray) -> np.ndarray:
  return np.clip(np.rint(values), 0, MAX_VALUE).astype(np.uint16)


def _for_presentation(log_image: np.ndarray, mask: np.ndarray, spacing: float) -> np.ndarray:
  """The unit's processing for presentation: multiscale detail enhancement, then a tone curve.

  The breast's log image splits into bands between Gaussian blurs of `_PRESENTATION_BANDS`' scales
  (taken inside the breast only, so the skin edge does not bleed into them); each band is scaled
  by its gain, the coarse rest by `_PRESENTATION_BASE_GAIN` (thickness and density compressed,
  0.2-3 mm detail raised): what makes real for-presentation FFDM grainy. Specks go through the
  same processing as the tissue around them. A sigmoid tone curve then maps the breast's 0.5-99.5
  % range into the display values; the background goes black.
  """
  processed = np.zeros_like(log_image)
  previous = log_image
  for sigma_mm, gain in _PRESENTATION_BANDS:
    smooth = _blur_inside(log_image, mask, sigma_mm / spacing)
    processed += gain * (previous - smooth)
    previous = smooth
  processed += _PRESENTATION_BASE_GAIN * previous
  lo, hi = np.percentile(processed[mask], [0.5, 99.9])
  tone = np.clip((processed - lo) / (hi - lo), 0.0, 1.0) ** _TONE_GAMMA
  values = np.where(mask, _DISPLAY_LOW + (_DISPLAY_HIGH - _DISPLAY_LOW) * tone, 0.0)
  return _to_values(values)


def _blur_inside(image: np.ndarray, mask: np.ndarray, sigma: float) -> np.ndarray:
  """Gaussian blur (sigma in pixels) of `image` over `mask` only (normalised convolution).

  Wide blurs run on a block-averaged copy and are interpolated back: the same result at a
  fraction of the cost.
  """
  step = max(1, int(sigma // 4))
  weights = mask.astype(np.float32)
  if step == 1:
    num = scipy.ndimage.gaussian_filter(image * weights, sigma)
    den = scipy.ndimage.gaussian_filter(weights, sigma)
  else:
    num = _coarse_blur(image * weights, step, sigma)
    den = _coarse_blur(weights, step, sigma)
  return np.where(mask, num / np.maximum(den, 1e-6), image).astype(np.float32)


def _coarse_blur(image: np.ndarray, step: int, sigma: float) -> np.ndarray:
  """`image` blurred by `sigma` pixels via a copy block-averaged by `step` (edges padded)."""
  rows, cols = (-(-n // step) * step for n in image.shape)
  padded = np.pad(image, ((0, rows - image.shape[0]), (0, cols - image.shape[1])), mode="edge")
  blocks = padded.reshape(rows // step, step, cols // step, step).mean(axis=(1, 3))
  blurred = scipy.ndimage.gaussian_filter(blocks, sigma / step)
  return (
    _upsample(image.shape[0], blurred.shape[0], step)
    @ blurred
    @ _upsample(image.shape[1], blurred.shape[1], step).T
  )


def _upsample(size: int, blocks: int, step: int) -> np.ndarray:
  """The (size, blocks) matrix of linear interpolation from block centres to pixels."""
  position = np.clip((np.arange(size) + 0.5) / step - 0.5, 0, blocks - 1)
  low = (
    np.minimum(np.floor(position).astype(int), blocks - 2) if blocks > 1 else np.zeros(size, int)
  )
  weight = np.zeros((size, blocks), np.float32)
  upper = np.clip(position - low, 0.0, 1.0)
  weight[np.arange(size), low] = 1.0 - upper
  if blocks > 1:
    weight[np.arange(size), low + 1] = upper
  return weight


# ---------------------------------------------------------------------------------------------
# Files.


def generate_cohort(
  out_dir: str | os.PathLike,
  *,
  num_patients: int,
  seed: int = 0,
  options: SyntheticOptions | None = None,
) -> str:
  """Writes DICOM files (`<patient>/<patient>_<L|R>_<CC|MLO>.dcm`) and `manifest.csv`.

  Returns the manifest's path. Calcification rows carry the cluster centre and radius in the
  file's pixel coordinates; images without clusters get one `abnormality='none'` row.
  """
  options = options or SyntheticOptions()
  out_dir = os.fspath(out_dir)
  findings = []
  for spec in sample_cohort(num_patients, seed, options):
    relative = os.path.join(spec.patient_id, f"{spec.image_id}.dcm")
    os.makedirs(os.path.join(out_dir, spec.patient_id), exist_ok=True)
    image = render_image(spec, options)
    write_dicom(os.path.join(out_dir, relative), image.pixels, spec, options, seed)
    findings.extend(_findings(spec, image, relative))
  manifest = os.path.join(out_dir, "manifest.csv")
  write_manifest(manifest, findings)
  return manifest


def _findings(spec: ImageSpec, image: RenderedImage, relative_path: str) -> list[Finding]:
  common = dict(
    patient_id=spec.patient_id,
    image_path=relative_path,
    density=spec.density,
    view=spec.view,
    laterality=spec.laterality,
  )
  if not image.annotations:
    return [Finding(**common)]
  return [
    Finding(
      **common,
      finding_id=a.cluster.finding_id,
      abnormality="calcification",
      label=a.cluster.label,
      col=round(a.col, 2),
      row=round(a.row, 2),
      radius=round(a.radius, 2),
      subtype=a.cluster.morphology,
    )
    for a in image.annotations
  ]


def write_dicom(
  path: str, pixels: np.ndarray, spec: ImageSpec, options: SyntheticOptions, cohort_seed: int
) -> None:
  """Writes a Digital Mammography X-Ray (for presentation) file; UIDs derive from the seeds."""

  def uid(*parts: object) -> str:
    return generate_uid(entropy_srcs=["mcalc_jax synthetic", str(cohort_seed), *map(str, parts)])

  meta = FileMetaDataset()
  meta.MediaStorageSOPClassUID = DIGITAL_MAMMOGRAPHY_FOR_PRESENTATION
  meta.MediaStorageSOPInstanceUID = uid(spec.image_id)
  meta.TransferSyntaxUID = ExplicitVRLittleEndian
  ds = pydicom.Dataset()
  ds.file_meta = meta
  ds.SOPClassUID = meta.MediaStorageSOPClassUID
  ds.SOPInstanceUID = meta.MediaStorageSOPInstanceUID
  ds.StudyInstanceUID = uid(spec.patient_id)
  ds.SeriesInstanceUID = uid(spec.patient_id, spec.laterality, spec.view)
  ds.StudyDate = ds.SeriesDate = ds.ContentDate = "20240101"
  ds.Modality = "MG"
  ds.Manufacturer = "mcalc_jax synthetic"
  ds.PatientID = spec.patient_id
  ds.PatientSex = "F"
  ds.BodyPartExamined = "BREAST"
  ds.PresentationIntentType = "FOR PRESENTATION"
  ds.ImageType = ["DERIVED", "PRIMARY"]
  ds.Laterality = ds.ImageLaterality = spec.laterality
  ds.ViewPosition = spec.view
  # Row direction towards the nipple (A) for L, away from it (P) for R.
  ds.PatientOrientation = [
    "A" if spec.laterality == "L" else "P",
    "F" if spec.view == "MLO" else ("R" if spec.laterality == "L" else "L"),
  ]
  ds.ImageComments = f"synthetic; ACR density {spec.density}; difficulty {options.difficulty:g}"
  ds.BurnedInAnnotation = "NO"
  ds.BreastImplantPresent = "NO"
  spacing = f"{options.pixel_spacing_mm:.4f}"
  ds.PixelSpacing = ds.ImagerPixelSpacing = [spacing, spacing]
  ds.Rows, ds.Columns = pixels.shape
  ds.SamplesPerPixel = 1
  ds.PhotometricInterpretation = "MONOCHROME1" if spec.monochrome1 else "MONOCHROME2"
  ds.BitsAllocated, ds.BitsStored, ds.HighBit = 16, BITS_STORED, BITS_STORED - 1
  ds.PixelRepresentation = 0
  stored = MAX_VALUE - pixels if spec.monochrome1 else pixels
  ds.PixelData = np.ascontiguousarray(stored, dtype="<u2").tobytes()
  ds.save_as(path, enforce_file_format=True)
