"""How real do inserted (or synthetic) calcifications and their backgrounds look? Statistics,
a side-by-side figure and a discriminator.

  python -m tools.realism stats --set mias=../shared/data/mias \
      --set nyu=../shared/data/nyu-ffdm-png/breast_cancer_classifier --spacing nyu=0.07 \
      --set inserted=/tmp/realism/inserted_mias --json /tmp/realism/realism.json
  python -m tools.realism figure --mias=../shared/data/mias \
      --inserted=/tmp/realism/inserted_mias --out /tmp/realism/realism_clusters.png
  python -m tools.realism discriminate --mias=../shared/data/mias \
      --inserted=/tmp/realism/inserted_mias --json /tmp/realism/discriminator.json

(inserted cohorts come from `python -m input_pipeline.insertion insert`.)

`stats` measures, inside the breast (2 mm clear of its outline and the image edge) and as
fractions of the breast's 5-95 % intensity range: (a) the standard deviation of structure finer
than 0.3 mm (the image minus its Gaussian blur of sigma 0.3 mm), (b) the 99.9th percentile of a
white top-hat by a disk of radius 0.6 mm, (c) the radially averaged noise power spectrum (NPS,
mm^-1) of that fine residual in 12.8-mm breast ROIs. A set
is a mini-MIAS folder (Info.txt), a manifest (or a folder holding manifest.csv) or a folder of
images (then give --spacing NAME=MM). `figure` puts real mini-MIAS clusters and inserted ones side
by side, 11.2-mm crops at 0.2-mm pixels: it shows real pixels, so keep it out of the repository
(mini-MIAS is research-use only). `discriminate` trains a patient-grouped, cross-validated
logistic regression on classical features of 11.2-mm patches to tell real mini-MIAS cluster
patches from inserted ones; an AUC near 0.5 means it cannot (docs/realism.md).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import os
from collections.abc import Sequence

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from scipy import ndimage  # noqa: E402

from input_pipeline import breast, importers, insertion, mammogram, sources  # noqa: E402
from input_pipeline.manifest import Finding  # noqa: E402

FINE_SIGMA_MM = 0.3
TOPHAT_MM = 0.6  # the disk's radius
ROI_MM = 12.8
NPS_BIN = 0.25  # mm^-1
NPS_REPORTED = (1.0, 2.0)  # mm^-1, below mini-MIAS's Nyquist frequency of 2.5
ROIS_PER_IMAGE = 16
PATCH_MM = 11.2
PATCH_SPACING_MM = 0.2  # the pixels patches are compared at (mini-MIAS's)
SHIFTS_MM = (-1.0, 0.0, 1.0)  # patch centres on a 3 x 3 grid around each cluster


# ---------------------------------------------------------------------------------------------
# Image sets.


@dataclasses.dataclass(frozen=True)
class Image:
  """One image of a set: where it is, its pixel size and its findings."""

  path: str
  spacing_mm: float | None
  findings: tuple[Finding, ...]


def load_set(location: str, spacing_mm: float | None = None) -> list[Image]:
  """The images of a mini-MIAS folder, a manifest (file or folder) or a folder of images."""
  if os.path.isfile(os.path.join(location, "Info.txt")):
    findings = importers.import_mias(location)
  elif location.endswith(".csv") or os.path.isfile(os.path.join(location, "manifest.csv")):
    findings = sources.read_manifest_at(location)
  else:
    findings = importers.import_folder(location, spacing_mm)
  by_image: dict[str, list[Finding]] = {}
  for f in findings:
    by_image.setdefault(f.image_path, []).append(f)
  return [
    Image(
      path,
      spacing_mm or next((f.pixel_spacing_mm for f in rows if f.pixel_spacing_mm), None),
      tuple(rows),
    )
    for path, rows in sorted(by_image.items())
  ]


def read(image: Image) -> mammogram.Mammogram:
  return mammogram.read_mammogram(image.path, mammogram.spacing_options(image.spacing_mm))


# ---------------------------------------------------------------------------------------------
# (a)-(c): statistics of one image.


def image_statistics(
  m: mammogram.Mammogram, tophat_mm: float = TOPHAT_MM, margin_mm: float = 2.0
) -> dict[str, object]:
  """Fine-structure sd, top-hat p99.9 and NPS of one image, in fractions of the breast range."""
  spacing = float(np.mean(m.pixel_spacing_mm))
  mask = breast.breast_mask(m.pixels)
  rows, cols = np.nonzero(mask.any(axis=1))[0], np.nonzero(mask.any(axis=0))[0]
  box = (slice(rows[0], rows[-1] + 1), slice(cols[0], cols[-1] + 1))
  pixels, mask = m.pixels[box].astype(np.float32), mask[box]
  lo, hi = insertion.breast_range(pixels, mask)
  pixels = (pixels - lo) / (hi - lo)
  residual = pixels - ndimage.gaussian_filter(pixels, FINE_SIGMA_MM / spacing)
  # Clear of the skin line and of the image's edge (the crop's edge is not the breast's).
  inner = ndimage.distance_transform_edt(np.pad(mask, 1))[1:-1, 1:-1] * spacing >= margin_mm
  tophat = insertion.white_tophat(pixels, spacing, tophat_mm)
  frequencies, nps = noise_power(residual, inner, spacing)
  return {
    "fine_sd": float(residual[inner].std()),
    "tophat_p99_9": float(np.percentile(tophat[inner], 99.9)),
    "nps_frequencies": frequencies.tolist(),
    "nps": nps.tolist(),
    "spacing_mm": spacing,
  }


def noise_power(
  residual: np.ndarray, inner: np.ndarray, spacing: float
) -> tuple[np.ndarray, np.ndarray]:
  """Radially averaged NPS (range^2 mm^2) of `residual` in square ROIs wholly inside `inner`.

  ROIs of `ROI_MM` on a grid, at most `ROIS_PER_IMAGE` evenly picked; bins of `NPS_BIN` mm^-1.
  """
  n = max(8, round(ROI_MM / spacing))
  starts = [
    (r, c)
    for r in range(0, residual.shape[0] - n + 1, n)
    for c in range(0, residual.shape[1] - n + 1, n)
    if inner[r : r + n, c : c + n].all()
  ]
  if not starts:
    return np.array([]), np.array([])
  picked = [
    starts[i] for i in np.linspace(0, len(starts) - 1, min(len(starts), ROIS_PER_IMAGE)).astype(int)
  ]
  power = np.zeros((n, n))
  for r, c in picked:
    roi = residual[r : r + n, c : c + n]
    power += np.abs(np.fft.fft2(roi - roi.mean())) ** 2
  power *= spacing**2 / (n * n * len(picked))
  f = np.fft.fftfreq(n, spacing)
  radius = np.hypot(f[:, None], f[None, :])
  bins = np.floor(radius / NPS_BIN).astype(int)
  nyquist_bins = int(np.floor(0.5 / spacing / NPS_BIN))
  keep = bins < nyquist_bins
  sums = np.bincount(bins[keep], power[keep], nyquist_bins)
  counts = np.bincount(bins[keep], minlength=nyquist_bins)
  centres = (np.arange(nyquist_bins) + 0.5) * NPS_BIN
  good = counts > 0
  return centres[good], sums[good] / counts[good]


def nps_at(stats: dict, frequency: float) -> float:
  f, p = np.asarray(stats["nps_frequencies"]), np.asarray(stats["nps"])
  if f.size == 0 or frequency > f.max():
    return float("nan")
  return float(np.interp(frequency, f, p))


def stats_table(sets: dict[str, list[Image]], margin_mm: float) -> dict[str, dict]:
  """Per set: every image's statistics and the set's median and range of each."""
  out = {}
  for name, images in sets.items():
    per_image = {}
    for image in images:
      per_image[image.path] = image_statistics(read(image), margin_mm=margin_mm)
    out[name] = {"images": per_image, "summary": _summary(list(per_image.values()))}
  return out


def _summary(stats: Sequence[dict]) -> dict[str, list[float]]:
  """(median, min, max) of each reported statistic."""
  columns = {
    "fine_sd": [s["fine_sd"] for s in stats],
    "tophat_p99_9": [s["tophat_p99_9"] for s in stats],
    **{f"nps_{f:g}": [nps_at(s, f) for s in stats] for f in NPS_REPORTED},
  }
  return {
    k: [float(np.nanmedian(v)), float(np.nanmin(v)), float(np.nanmax(v))]
    for k, v in columns.items()
  }


def print_stats(table: dict[str, dict]) -> None:
  names = ["fine_sd", "tophat_p99_9", *(f"nps_{f:g}" for f in NPS_REPORTED)]
  print("| set | images | " + " | ".join(names) + " |")
  print("|" + " --- |" * (2 + len(names)))
  for name, entry in table.items():
    cells = []
    for key in names:
      median, low, high = entry["summary"][key]
      fmt = ".2e" if key.startswith("nps") else ".3f"
      cells.append(f"{median:{fmt}} ({low:{fmt}}-{high:{fmt}})")
    print(f"| {name} | {len(entry['images'])} | " + " | ".join(cells) + " |")


# ---------------------------------------------------------------------------------------------
# (d), (e): cluster patches, real and inserted.


@dataclasses.dataclass(frozen=True)
class ClusterPatch:
  """An 11.2-mm patch at 0.2-mm pixels, in fractions of its breast's range, and its top-hat."""

  pixels: np.ndarray
  tophat: np.ndarray
  patient_id: str
  finding_id: str
  image: str
  inserted: bool


def cluster_patches(
  images: Sequence[Image], shifts_mm: Sequence[float] = (0.0,), inserted: bool = False
) -> list[ClusterPatch]:
  """Patches centred on (and shifted around) every usable calcification cluster of `images`.

  `inserted` picks the inserted clusters (note `inserted`), else the real ones (no note).
  """
  note = insertion.INSERTED_NOTE if inserted else ""
  out = []
  for image in images:
    clusters = [
      f
      for f in image.findings
      if f.abnormality == "calcification" and f.row is not None and f.note == note
    ]
    if not clusters:
      continue
    m = read(image)
    spacing = float(np.mean(m.pixel_spacing_mm))
    lo, hi = insertion.breast_range(m.pixels, breast.breast_mask(m.pixels))
    scaled = _at_patch_spacing((m.pixels.astype(np.float32) - lo) / (hi - lo), spacing)
    tophat = insertion.white_tophat(scaled, PATCH_SPACING_MM)
    factor = spacing / PATCH_SPACING_MM
    for f in clusters:
      row, col = (v * factor for v in m.from_original(f.row, f.col))
      for dr in shifts_mm:
        for dc in shifts_mm:
          r = row + dr / PATCH_SPACING_MM
          c = col + dc / PATCH_SPACING_MM
          window = _window(scaled.shape, r, c)
          if window is None:
            continue
          out.append(
            ClusterPatch(
              scaled[window], tophat[window], f.patient_id, f.finding_id, image.path, inserted
            )
          )
  return out


def _at_patch_spacing(pixels: np.ndarray, spacing: float) -> np.ndarray:
  """Resampled (linear, Gaussian anti-aliasing when shrinking) to PATCH_SPACING_MM pixels."""
  factor = spacing / PATCH_SPACING_MM
  if math.isclose(factor, 1.0, rel_tol=1e-3):
    return pixels
  if factor < 1:
    pixels = ndimage.gaussian_filter(pixels, 0.5 / factor)
  return ndimage.zoom(pixels, factor, order=1)


def _window(shape: tuple[int, int], row: float, col: float) -> tuple[slice, slice] | None:
  n = round(PATCH_MM / PATCH_SPACING_MM)
  top, left = round(row) - n // 2, round(col) - n // 2
  if top < 0 or left < 0 or top + n > shape[0] or left + n > shape[1]:
    return None
  return slice(top, top + n), slice(left, left + n)


FEATURE_THRESHOLDS = (0.04, 0.06, 0.09, 0.13)  # top-hat, fractions of the breast range


def patch_features(p: ClusterPatch) -> dict[str, float]:
  """Classical features: top-hat speck counts, areas and peaks, local contrast, mean, sd."""
  area_mm2 = PATCH_SPACING_MM**2
  features = {}
  for t in FEATURE_THRESHOLDS:
    labels, n = ndimage.label(p.tophat > t)
    features[f"specks_{t:g}"] = math.log1p(n)
    features[f"area_{t:g}"] = math.log1p(np.count_nonzero(labels) * area_mm2)
    largest = np.bincount(labels.ravel())[1:].max() if n else 0
    features[f"largest_{t:g}"] = math.log1p(largest * area_mm2)
  features["tophat_max"] = float(p.tophat.max())
  features["tophat_p99"] = float(np.percentile(p.tophat, 99))
  features["tophat_p95"] = float(np.percentile(p.tophat, 95))
  fine = p.pixels - ndimage.gaussian_filter(p.pixels, FINE_SIGMA_MM / PATCH_SPACING_MM)
  features["fine_sd"] = float(fine.std())
  features["contrast"] = float(np.percentile(p.pixels, 95) - np.percentile(p.pixels, 5))
  features["mean"] = float(p.pixels.mean())
  features["sd"] = float(p.pixels.std())
  return features


def discriminate(
  real: Sequence[ClusterPatch], inserted: Sequence[ClusterPatch], folds: int = 5, seed: int = 0
) -> dict[str, object]:
  """Patient-grouped cross-validated logistic regression, real (0) vs inserted (1).

  Returns its out-of-fold AUC with a 95 % bootstrap CI over patients, and each feature's own
  AUC (0.5: no difference; far from 0.5 in either direction: that feature tells them apart).
  """
  from sklearn.linear_model import LogisticRegression
  from sklearn.metrics import roc_auc_score
  from sklearn.model_selection import GroupKFold
  from sklearn.pipeline import make_pipeline
  from sklearn.preprocessing import StandardScaler

  patches = list(real) + list(inserted)
  table = [patch_features(p) for p in patches]
  names = list(table[0])
  x = np.array([[t[k] for k in names] for t in table])
  y = np.array([p.inserted for p in patches], int)
  groups = np.array([p.patient_id for p in patches])
  scores = np.zeros(len(y))
  for train, test in GroupKFold(n_splits=folds).split(x, y, groups):
    model = make_pipeline(
      StandardScaler(), LogisticRegression(C=1.0, class_weight="balanced", max_iter=2000)
    )
    model.fit(x[train], y[train])
    scores[test] = model.predict_proba(x[test])[:, 1]
  auc = float(roc_auc_score(y, scores))
  low, high = _bootstrap(y, scores, groups, seed)
  return {
    "auc": auc,
    "ci95": [low, high],
    "real_patches": int((y == 0).sum()),
    "inserted_patches": int(y.sum()),
    "real_clusters": len({(p.image, p.finding_id) for p in real}),
    "inserted_clusters": len({(p.image, p.finding_id) for p in inserted}),
    "patients": len(set(groups)),
    "feature_auc": {k: float(roc_auc_score(y, x[:, i])) for i, k in enumerate(names)},
  }


def _bootstrap(
  y: np.ndarray, scores: np.ndarray, groups: np.ndarray, seed: int, rounds: int = 2000
) -> tuple[float, float]:
  """95 % percentile interval of the AUC over patients drawn with replacement."""
  from sklearn.metrics import roc_auc_score

  rng = np.random.default_rng(seed)
  patients = np.unique(groups)
  members = {g: np.flatnonzero(groups == g) for g in patients}
  aucs = []
  for _ in range(rounds):
    drawn = np.concatenate([members[g] for g in rng.choice(patients, len(patients))])
    if len(np.unique(y[drawn])) == 2:
      aucs.append(roc_auc_score(y[drawn], scores[drawn]))
  low, high = np.percentile(aucs, [2.5, 97.5])
  return float(low), float(high)


def figure(
  real: Sequence[ClusterPatch], inserted: Sequence[ClusterPatch], path: str, columns: int = 9
) -> None:
  """Real clusters (top rows) and inserted ones (bottom rows), each crop stretched alike."""
  rows_each = max(1, math.ceil(min(len(real), 2 * columns) / columns))
  fig, axes = plt.subplots(2 * rows_each, columns, figsize=(1.6 * columns, 3.4 * rows_each))
  axes = np.atleast_2d(axes)
  for half, patches in enumerate((real, inserted)):
    for i in range(rows_each * columns):
      ax = axes[half * rows_each + i // columns, i % columns]
      ax.axis("off")
      if i >= len(patches):
        continue
      p = patches[i]
      ax.imshow(p.pixels, cmap="gray", vmin=np.percentile(p.pixels, 1), vmax=p.pixels.max())
      kind = "inserted" if p.inserted else "real"
      ax.set_title(f"{kind} {os.path.basename(p.image)[:10]}", fontsize=6)
  fig.suptitle(f"{PATCH_MM:g}-mm crops at {PATCH_SPACING_MM:g}-mm pixels: real (top), inserted")
  fig.tight_layout()
  fig.savefig(path, dpi=110)
  plt.close(fig)


def _pick(patches: Sequence[ClusterPatch], n: int) -> list[ClusterPatch]:
  """The first patch of each cluster, at most n, spread over the list."""
  firsts = {}
  for p in patches:
    firsts.setdefault((p.image, p.finding_id), p)
  chosen = list(firsts.values())
  return [chosen[i] for i in np.linspace(0, len(chosen) - 1, min(n, len(chosen))).astype(int)]


# ---------------------------------------------------------------------------------------------
# Command line.


def _named(values: Sequence[str], what: str) -> dict[str, str]:
  out = {}
  for v in values or ():
    name, sep, rest = v.partition("=")
    if not sep:
      raise SystemExit(f"{what} must be NAME=VALUE, got {v!r}")
    out[name] = rest
  return out


def main(argv: Sequence[str] | None = None) -> None:
  parser = argparse.ArgumentParser(
    description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter
  )
  commands = parser.add_subparsers(dest="command", required=True)
  stats = commands.add_parser("stats", help="(a)-(c): fine structure, top-hat, NPS per set")
  stats.add_argument("--set", action="append", required=True, help="NAME=FOLDER or manifest")
  stats.add_argument("--spacing", action="append", help="NAME=MM for a folder of images")
  stats.add_argument("--margin_mm", type=float, default=2.0, help="skip the skin and edge band")
  stats.add_argument("--json", help="write every image's statistics here")
  for name, text in (
    ("figure", "(d): real and inserted MIAS clusters side by side (PNG)"),
    ("discriminate", "(e): AUC of a classifier telling real from inserted cluster patches"),
  ):
    sub = commands.add_parser(name, help=text)
    sub.add_argument("--mias", required=True, help="the mini-MIAS folder (real clusters)")
    sub.add_argument("--inserted", required=True, help="an inserted cohort (manifest folder)")
    sub.add_argument("--out" if name == "figure" else "--json", required=name == "figure")
  args = parser.parse_args(argv)
  if args.command == "stats":
    spacings = {k: float(v) for k, v in _named(args.spacing, "--spacing").items()}
    sets = {k: load_set(v, spacings.get(k)) for k, v in _named(args.set, "--set").items()}
    table = stats_table(sets, args.margin_mm)
    print_stats(table)
    _write_json(args.json, table)
    return
  shifts = SHIFTS_MM if args.command == "discriminate" else (0.0,)
  real = cluster_patches(load_set(args.mias), shifts)
  inserted = cluster_patches(load_set(args.inserted), shifts, inserted=True)
  if args.command == "figure":
    figure(_pick(real, 18), _pick(inserted, 18), args.out)
    print(args.out)
    return
  result = discriminate(real, inserted)
  print(f"AUC {result['auc']:.3f} (95 % CI {result['ci95'][0]:.3f}-{result['ci95'][1]:.3f})")
  print(f"{result['real_clusters']} real and {result['inserted_clusters']} inserted clusters")
  for name, value in sorted(result["feature_auc"].items(), key=lambda kv: -abs(kv[1] - 0.5)):
    print(f"  {name:14s} {value:.3f}")
  _write_json(args.json, result)


def _write_json(path: str | None, value: object) -> None:
  if path:
    with open(path, "w") as f:
      json.dump(value, f, indent=1)


if __name__ == "__main__":
  main()
