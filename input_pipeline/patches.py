"""The paper's patch extraction: ROIs centred on annotations, background from tissue elsewhere.

Pesapane et al. 2023 ("Training set creation") cut a 112x112 ROI around the centre of each
annotation, and background patches around random points whose mean intensity passes a threshold
and whose ROI overlaps no annotated region, as many as calcification patches. Here every number is
a field of `PatchSettings`, and:

* A cluster-level annotation (centre + radius, as in MIAS) gives `per_cluster` patches: the first
  at the centre, the others at centres drawn inside the cluster circle, no further than
  `half - radius` from the centre when the whole cluster fits in the window (at least
  `cluster_jitter * radius`, at most `radius`), so every patch holds the cluster's core.
  An annotation with an ROI mask draws its extra centres from the mask pixels. With
  `positive_offset='window'` the others are drawn so that the cluster's centre lies anywhere in
  the window but its outer `window_margin` (a fraction of the side), as a grid tile would hold
  it: training for localisation rather than for centred ROIs.
* Background centres are drawn inside the breast mask (or anywhere, without one), with the whole
  window inside the image; a window is kept when its mean intensity is at least
  `tissue_threshold * max_value`, at least `min_breast_fraction` of it lies in the breast, and it
  overlaps no annotation's exclusion box (the annotation's ROI, grown to its circle or mask). After
  `max_tries` misses the two tissue limits are multiplied by `relax_factor`, up to `relax_rounds`
  times; then `PatchSamplingError` says which test failed how often. Overlap is never relaxed.
* Edges: `edge='pad'` keeps an annotation window centred and fills what falls outside the image
  with 0 (the film/detector background); `edge='shift'` moves the window inside the image, and the
  recorded centre is the moved window's centre.
* `field_of_view_mm > 0` cuts a window of that many millimetres (through the pixel spacing) and
  resamples it (linear) to `size` pixels; `NATIVE_PIXELS` (0) copies `size` pixels, lossless, at
  native bit depth, whatever their size (the paper's protocol).
* Randomness comes from one generator per image, seeded by (seed, image id), so an image's patches
  do not depend on which other images are processed or in which order.

Centres are recorded in the ORIGINAL file's pixel coordinates (`Mammogram.to_original`).
"""

from __future__ import annotations

import dataclasses
import hashlib
from collections.abc import Mapping, Sequence

import jax
import numpy as np

from input_pipeline.mammogram import Mammogram
from input_pipeline.manifest import Finding

# The field of view that means "patches of native pixels, whatever their size": the one value,
# besides millimetres, that every stage's `field_of_view_mm` takes.
NATIVE_PIXELS = 0.0


@dataclasses.dataclass(frozen=True)
class PatchSettings:
  """Every number of the extraction (see the module docstring for what each one does)."""

  size: int = 112
  field_of_view_mm: float = 0.0  # NATIVE_PIXELS or millimetres
  per_cluster: int = 1
  cluster_jitter: float = 0.25
  positive_offset: str = "cluster"  # 'cluster': centres in the cluster; 'window': anywhere
  window_margin: float = 0.1
  positive_abnormalities: tuple[str, ...] = ("calcification",)
  excluded_notes: tuple[str, ...] = ("annotation_outside_breast",)
  background_ratio: float = 1.0
  tissue_threshold: float = 0.2
  min_breast_fraction: float = 0.75
  max_tries: int = 200
  relax_rounds: int = 8
  relax_factor: float = 0.8
  edge: str = "pad"
  seed: int = 0

  def __post_init__(self):
    if self.size < 2 or self.per_cluster < 1 or self.max_tries < 1 or self.relax_rounds < 0:
      raise ValueError(f"invalid patch settings: {self}")
    if self.edge not in ("pad", "shift"):
      raise ValueError(f"edge must be 'pad' or 'shift', not {self.edge!r}")
    if self.positive_offset not in ("cluster", "window") or not 0 <= self.window_margin < 0.5:
      raise ValueError(f"positive_offset 'cluster' or 'window', window_margin in [0, 0.5): {self}")

  @classmethod
  def from_config(cls, config: Mapping) -> PatchSettings:
    """Builds settings from a ConfigDict / dict, ignoring keys that are not fields."""
    names = {f.name for f in dataclasses.fields(cls)}
    values = {k: v for k, v in dict(config).items() if k in names}
    for key in ("positive_abnormalities", "excluded_notes"):
      if key in values:
        values[key] = tuple(values[key])
    return cls(**values)


class PatchSamplingError(RuntimeError):
  """Background sampling found too few acceptable windows even with relaxed limits.

  `patches` holds the ones it did find, so a caller may keep them.
  """

  def __init__(self, message: str, patches: Sequence[Patch] = ()):
    super().__init__(message)
    self.patches = list(patches)


@dataclasses.dataclass(frozen=True)
class Patch:
  """One extracted patch; `image` is (size, size) uint16, centre in original pixels."""

  image: np.ndarray
  max_value: int
  task1_label: int  # 0 background, 1 calcification
  task2_label: int  # 0 benign, 1 malignant, -1 not applicable
  finding_id: str
  patch_id: str
  center_row: float
  center_col: float
  severity: str
  pixel_spacing_mm: float  # of the source image (mean of row and column spacing)
  spacing_assumed: bool


def is_positive(finding: Finding, settings: PatchSettings) -> bool:
  """Whether a finding gives calcification patches (has a position and a trusted annotation)."""
  return (
    finding.abnormality in settings.positive_abnormalities
    and finding.row is not None
    and finding.col is not None
    and finding.note not in settings.excluded_notes
  )


def num_positive_patches(findings: Sequence[Finding], settings: PatchSettings) -> int:
  """How many calcification patches `findings` give (before any image fails to read)."""
  return settings.per_cluster * sum(is_positive(f, settings) for f in findings)


def image_rng(seed: int, image_id: str, stream: int = 0) -> np.random.Generator:
  """The image's own generator: depends only on the seed, the id and the stream, never on order.

  Positive and background sampling use separate streams, so neither's draws shift the other's.
  """
  digest = hashlib.sha256(image_id.encode()).digest()
  return np.random.default_rng([seed, int.from_bytes(digest[:8], "little"), stream])


def window_pixels(mammogram: Mammogram, settings: PatchSettings) -> tuple[int, int]:
  """Window height and width in image pixels (differs from `size` only in millimetres)."""
  if settings.field_of_view_mm == NATIVE_PIXELS:
    return settings.size, settings.size
  return tuple(max(2, round(settings.field_of_view_mm / s)) for s in mammogram.pixel_spacing_mm)


def cut(
  pixels: np.ndarray, row: float, col: float, shape: tuple[int, int], edge: str
) -> tuple[np.ndarray, float, float]:
  """Cuts a `shape` window centred on (row, col); returns it and its actual centre."""
  (h, w), (rows, cols) = shape, pixels.shape
  top, left = int(round(row)) - h // 2, int(round(col)) - w // 2
  if edge == "shift":
    top, left = min(max(top, 0), max(rows - h, 0)), min(max(left, 0), max(cols - w, 0))
  out = np.zeros(shape, pixels.dtype)
  r0, c0 = max(top, 0), max(left, 0)
  r1, c1 = min(top + h, rows), min(left + w, cols)
  out[r0 - top : r1 - top, c0 - left : c1 - left] = pixels[r0:r1, c0:c1]
  return out, top + h // 2, left + w // 2


def resample(window: np.ndarray, size: int) -> np.ndarray:
  """Resamples a window to size x size, kept as uint16 at the same bit depth.

  The very resampling whole-mammogram scoring applies to a tile cut at the same millimetres
  (`jax.image.resize`, linear, antialiased when shrinking; `mcalc_jax.model.preprocess`), so a
  network sees training patches and scored tiles alike.
  """
  if window.shape == (size, size):
    return window
  out = np.asarray(jax.image.resize(window.astype(np.float32), (size, size), "linear"))
  return np.clip(np.rint(out), 0, np.iinfo(np.uint16).max).astype(np.uint16)


@dataclasses.dataclass(frozen=True)
class _Annotation:
  """A finding in `pixels` coordinates: centre, radius and optional ROI mask."""

  finding: Finding
  row: float
  col: float
  radius: float
  mask: np.ndarray | None


def _annotations(
  mammogram: Mammogram, findings: Sequence[Finding], masks: Mapping[str, np.ndarray]
) -> list[_Annotation]:
  out = []
  for f in findings:
    if f.row is None or f.col is None:
      continue
    row, col = mammogram.from_original(f.row, f.col)
    out.append(_Annotation(f, row, col, f.radius or 0.0, masks.get(f.finding_id)))
  return out


def _exclusion_box(a: _Annotation, shape: tuple[int, int]) -> tuple[float, float, float, float]:
  """(top, left, bottom, right) that no background window may touch."""
  h, w = shape
  top, left = a.row - max(h / 2, a.radius), a.col - max(w / 2, a.radius)
  bottom, right = a.row + max(h / 2, a.radius), a.col + max(w / 2, a.radius)
  if a.mask is not None and a.mask.any():
    rows, cols = np.nonzero(a.mask)
    top, left = min(top, rows.min()), min(left, cols.min())
    bottom, right = max(bottom, rows.max() + 1), max(right, cols.max() + 1)
  return top, left, bottom, right


def _cluster_centres(
  a: _Annotation, k: int, half: float, settings: PatchSettings, rng: np.random.Generator
) -> list[tuple[float, float]]:
  """The annotation centre, then k-1 centres inside the circle (or mask)."""
  centres = [(a.row, a.col)]
  if k == 1:
    return centres
  if settings.positive_offset == "window":
    reach = half * (1 - 2 * settings.window_margin)
    offsets = rng.uniform(-reach, reach, size=(k - 1, 2))
    return centres + [(a.row + dr, a.col + dc) for dr, dc in offsets]
  if a.mask is not None and a.mask.any():
    rows, cols = np.nonzero(a.mask)
    picks = rng.integers(len(rows), size=k - 1)
    return centres + [(float(rows[i]), float(cols[i])) for i in picks]
  reach = min(a.radius, max(half - a.radius, settings.cluster_jitter * a.radius))
  for _ in range(k - 1):
    angle, dist = rng.uniform(0, 2 * np.pi), reach * np.sqrt(rng.uniform())
    centres.append((a.row + dist * np.sin(angle), a.col + dist * np.cos(angle)))
  return centres


def _make_patch(
  mammogram: Mammogram,
  row: float,
  col: float,
  settings: PatchSettings,
  finding: Finding | None,
  patch_id: str,
) -> Patch:
  window, row, col = cut(
    mammogram.pixels, row, col, window_pixels(mammogram, settings), settings.edge
  )
  orig_row, orig_col = mammogram.to_original(row, col)
  if finding is None:
    labels, finding_id, severity = (0, -1), "", ""
  else:
    task2 = {"benign": 0, "malignant": 1}.get(finding.label, -1)
    labels, finding_id, severity = (1, task2), finding.finding_id, finding.label
  return Patch(
    resample(window, settings.size),
    mammogram.max_value,
    *labels,
    finding_id,
    patch_id,
    float(orig_row),
    float(orig_col),
    severity,
    float(np.mean(mammogram.pixel_spacing_mm)),
    mammogram.spacing_assumed,
  )


def positive_patches(
  mammogram: Mammogram,
  findings: Sequence[Finding],
  image_id: str,
  settings: PatchSettings,
  *,
  masks: Mapping[str, np.ndarray] | None = None,
) -> list[Patch]:
  """Calcification patches: `per_cluster` per positive finding of this image.

  `masks` maps a finding id to its ROI mask (bool, in `pixels` orientation), if it has one.
  """
  rng = image_rng(settings.seed, image_id)
  half = min(window_pixels(mammogram, settings)) / 2
  patches = []
  for a in _annotations(mammogram, findings, masks or {}):
    if not is_positive(a.finding, settings):
      continue
    for i, (row, col) in enumerate(_cluster_centres(a, settings.per_cluster, half, settings, rng)):
      patch_id = f"{image_id}/{a.finding.finding_id}/{i}"
      patches.append(_make_patch(mammogram, row, col, settings, a.finding, patch_id))
  return patches


def _reject_reason(
  mammogram: Mammogram,
  top: int,
  left: int,
  shape: tuple[int, int],
  breast: np.ndarray | None,
  boxes: Sequence[tuple],
  tissue: float,
  breast_fraction: float,
) -> str:
  """'' when the window at (top, left) is acceptable background, else the failed test."""
  if any(overlaps(box, top, left, shape) for box in boxes):
    return "overlaps an annotation"
  h, w = shape
  window = mammogram.pixels[top : top + h, left : left + w]
  if window.mean() < tissue * mammogram.max_value:
    return "mean intensity below the tissue threshold"
  if breast is not None and breast[top : top + h, left : left + w].mean() < breast_fraction:
    return "too little breast in the window"
  return ""


def exclusion_boxes(
  mammogram: Mammogram,
  findings: Sequence[Finding],
  shape: tuple[int, int],
  masks: Mapping[str, np.ndarray] | None = None,
) -> list[tuple[float, float, float, float]]:
  """(top, left, bottom, right), in `pixels` coordinates, of every annotation of any abnormality,
  grown to its circle or mask: what no background window of `shape` may touch."""
  return [_exclusion_box(a, shape) for a in _annotations(mammogram, findings, masks or {})]


def overlaps(
  box: tuple[float, float, float, float], top: int, left: int, shape: tuple[int, int]
) -> bool:
  """Whether the window of `shape` at (top, left) touches the exclusion `box`."""
  b_top, b_left, b_bottom, b_right = box
  return top < b_bottom and top + shape[0] > b_top and left < b_right and left + shape[1] > b_left


def _candidate_centres(
  breast: np.ndarray | None, shape: tuple[int, int], image_shape: tuple[int, int]
) -> np.ndarray:
  """Flat indices of centres whose whole window fits, inside the breast when known."""
  (h, w), (rows, cols) = shape, image_shape
  allowed = np.zeros(image_shape, bool)
  allowed[h // 2 : rows - (h - h // 2) + 1, w // 2 : cols - (w - w // 2) + 1] = True
  if breast is not None:
    allowed &= breast
  return np.flatnonzero(allowed)


def background_patches(
  mammogram: Mammogram,
  findings: Sequence[Finding],
  image_id: str,
  count: int,
  settings: PatchSettings,
  *,
  breast: np.ndarray | None = None,
  masks: Mapping[str, np.ndarray] | None = None,
) -> list[Patch]:
  """`count` background patches from tissue away from every annotation of any abnormality.

  Raises PatchSamplingError when even the most relaxed limits leave no acceptable window.
  """
  if count <= 0:
    return []
  rng = image_rng(settings.seed, image_id, stream=1)
  shape = window_pixels(mammogram, settings)
  boxes = exclusion_boxes(mammogram, findings, shape, masks)
  candidates = _candidate_centres(breast, shape, mammogram.pixels.shape)
  if not len(candidates):
    raise PatchSamplingError(f"{mammogram.path}: no {shape} window fits inside the breast", [])
  tissue, fraction = settings.tissue_threshold, settings.min_breast_fraction
  patches, misses = [], {}
  for _ in range(settings.relax_rounds + 1):
    for _ in range(settings.max_tries):
      row, col = np.unravel_index(candidates[rng.integers(len(candidates))], mammogram.pixels.shape)
      top, left = row - shape[0] // 2, col - shape[1] // 2
      reason = _reject_reason(mammogram, top, left, shape, breast, boxes, tissue, fraction)
      if reason:
        misses[reason] = misses.get(reason, 0) + 1
        continue
      patch_id = f"{image_id}/background/{len(patches)}"
      patches.append(_make_patch(mammogram, row, col, settings, None, patch_id))
      if len(patches) == count:
        return patches
    tissue, fraction = tissue * settings.relax_factor, fraction * settings.relax_factor
  raise PatchSamplingError(
    f"{mammogram.path}: {len(patches)} of {count} background patches after "
    f"{settings.relax_rounds} relaxations (tissue threshold down to {tissue:.3f}, breast "
    f"fraction down to {fraction:.3f}); rejections: {misses}",
    patches,
  )


def background_quota(image_ids: Sequence[str], total: int, seed: int) -> dict[str, int]:
  """Spreads `total` background patches over images as evenly as possible, seeded."""
  ids = sorted(image_ids)
  if not ids:
    return {}
  base, extra = divmod(total, len(ids))
  lucky = set(np.random.default_rng(seed).permutation(len(ids))[:extra].tolist())
  return {image_id: base + (i in lucky) for i, image_id in enumerate(ids)}
