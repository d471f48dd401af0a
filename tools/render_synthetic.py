"""Writes a contact sheet of a small synthetic cohort, for judging its realism by eye.

  python tools/render_synthetic.py --out=/tmp/synthetic_sheet.png --patients=4 --difficulty=0.5
  python tools/render_synthetic.py --out=/tmp/detected_sheet.png --processing=none

Top rows: every view of each patient (annotated clusters circled, red malignant, green benign),
read back from the DICOM files the way a viewer shows them. Bottom row: 112x112 crops around
cluster centres at native resolution, labelled with their morphology.
"""

from __future__ import annotations

import argparse
import os
import tempfile

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pydicom  # noqa: E402

from input_pipeline import manifest, synthetic  # noqa: E402

_CROP = 112


def _display_pixels(path: str) -> np.ndarray:
  """Pixels with dense tissue bright, whatever the photometric interpretation."""
  ds = pydicom.dcmread(path)
  pixels = ds.pixel_array.astype(np.float32)
  if ds.PhotometricInterpretation == "MONOCHROME1":
    pixels = (2**ds.BitsStored - 1) - pixels
  return pixels


def _window(pixels: np.ndarray) -> tuple[float, float]:
  breast = pixels[pixels > np.percentile(pixels, 30)]
  return float(np.percentile(breast, 1)), float(np.percentile(breast, 99.8))


def render_sheet(manifest_path: str, out_path: str, max_crops: int = 8) -> None:
  findings = manifest.read_manifest(manifest_path)
  images = sorted({f.image_path for f in findings})
  clusters = [f for f in findings if f.abnormality == "calcification"][:max_crops]
  cols = 8
  rows = -(-len(images) // cols) + (1 if clusters else 0)
  fig, axes = plt.subplots(rows, cols, figsize=(2.2 * cols, 2.9 * rows), squeeze=False)
  for ax in axes.flat:
    ax.axis("off")
  cache = {}
  for ax, path in zip(axes.flat, images, strict=False):
    pixels = cache.setdefault(path, _display_pixels(path))
    lo, hi = _window(pixels)
    ax.imshow(pixels, cmap="gray", vmin=lo, vmax=hi)
    first = next(f for f in findings if f.image_path == path)
    ax.set_title(f"{first.patient_id} {first.laterality}{first.view} {first.density}", fontsize=8)
    for f in findings:
      if f.image_path == path and f.abnormality == "calcification":
        color = "red" if f.label == "malignant" else "lime"
        ax.add_patch(plt.Circle((f.col, f.row), 1.5 * f.radius, fill=False, color=color, lw=0.8))
  for ax, f in zip(axes[-1], clusters, strict=False):
    pixels = cache[f.image_path]
    r, c = int(f.row) - _CROP // 2, int(f.col) - _CROP // 2
    crop = pixels[max(r, 0) : r + _CROP, max(c, 0) : c + _CROP]
    ax.imshow(crop, cmap="gray", vmin=np.percentile(crop, 1), vmax=crop.max())
    ax.set_title(f"{f.label[0].upper()} {f.subtype}", fontsize=8)
  fig.tight_layout()
  fig.savefig(out_path, dpi=110)


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--out", default="/tmp/synthetic_sheet.png")
  parser.add_argument("--patients", type=int, default=4)
  parser.add_argument("--seed", type=int, default=0)
  parser.add_argument("--difficulty", type=float, default=0.5)
  parser.add_argument(
    "--processing",
    choices=synthetic.PROCESSINGS,
    default="presentation",
    help="the unit's processing for presentation, or none (the detected log image)",
  )
  parser.add_argument("--cohort_dir", default="", help="keep the cohort here (default: a temp dir)")
  args = parser.parse_args()
  options = synthetic.SyntheticOptions(difficulty=args.difficulty, processing=args.processing)
  cohort_dir = args.cohort_dir or tempfile.mkdtemp(prefix="synthetic_")
  os.makedirs(cohort_dir, exist_ok=True)
  path = synthetic.generate_cohort(
    cohort_dir, num_patients=args.patients, seed=args.seed, options=options
  )
  render_sheet(path, args.out)
  print(f"cohort in {cohort_dir}, sheet in {args.out}")


if __name__ == "__main__":
  main()
