"""Do synthetic specks look like real ones? Two patch datasets side by side, at one pixel size.

  python -m tools.compare_specks --real=mcalc_patches/mias_11p2mm --real_dir=runs/tfds \
      --synthetic=mcalc_patches/synthetic_11p2mm --synthetic_dir=runs/demo/tfds \
      --out=runs/specks.png [--pixels=56]

Both datasets' patches (built at the same millimetres, e.g. `field_of_view_mm=11.2`) are
resampled to `--pixels` (56 of 11.2 mm: 0.2-mm pixels, film's), as intensities of their bit
depth. Printed per dataset and label, median (interquartile range): the white top-hat maximum at
0.4 mm (a speck's contrast), the pixels whose top-hat exceeds 8/255 (how many and how large the
specks are) and the median local standard deviation (texture and noise). The figure shows six
calcification and six background patches of each: it holds real pixels, so keep it out of the
repository when the real dataset's licence says so (mini-MIAS: research use only).
"""

from __future__ import annotations

import argparse

import jax
import jax.numpy as jnp
import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from mcalc_jax.experiments import folds
from mcalc_jax.model import morphology  # noqa: E402

_SPECK_MM = 0.4
_COUNT_THRESHOLD = 8 / 255
_SHOWN = 6
_COLUMNS = ("top-hat max (0.4 mm)", "pixels > 8/255", "median local std")


def patches(dataset: str, data_dir: str, pixels: int) -> tuple[np.ndarray, np.ndarray, float]:
  """[N, pixels, pixels, 1] intensities in [0, 1], Task 1 labels, and the patch's millimetres."""
  arrays, _, fov_mm = folds.load_patches(dataset, data_dir)
  images = arrays["image"].astype(np.float32) / arrays["max_value"][:, None, None, None]
  shape = (len(images), pixels, pixels, 1)
  return (
    np.asarray(jax.image.resize(jnp.asarray(images), shape, "linear")),
    arrays["task1_label"],
    fov_mm,
  )


def speck_statistics(images: np.ndarray, pixel_mm: float) -> dict[str, np.ndarray]:
  """Per patch: top-hat maximum, pixels above the count threshold, median local std."""
  tophat = np.asarray(morphology.white_tophat(jnp.asarray(images), _SPECK_MM / pixel_mm))
  local = np.asarray(morphology.local_std(jnp.asarray(images), 5))
  values = (
    tophat.max(axis=(1, 2, 3)),
    (tophat > _COUNT_THRESHOLD).sum(axis=(1, 2, 3)).astype(np.float64),
    np.median(local, axis=(1, 2, 3)),
  )
  return dict(zip(_COLUMNS, values, strict=True))


def _summary(values: np.ndarray) -> str:
  q1, median, q3 = np.percentile(values, [25, 50, 75])
  return f"{median:.3f} ({q1:.3f}-{q3:.3f})"


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  for name in ("real", "synthetic"):
    parser.add_argument(f"--{name}", required=True, help="TFDS dataset name/config")
    parser.add_argument(f"--{name}_dir", required=True, help="its TFDS data_dir")
  parser.add_argument("--pixels", type=int, default=56)
  parser.add_argument("--out", default="specks.png")
  args = parser.parse_args()

  figure, axes = plt.subplots(4, _SHOWN, figsize=(2 * _SHOWN, 8.6))
  print("| dataset | patches | " + " | ".join(_COLUMNS) + " |")
  print("|" + " --- |" * (2 + len(_COLUMNS)))
  for row, name in enumerate(("real", "synthetic")):
    images, labels, fov_mm = patches(getattr(args, name), getattr(args, f"{name}_dir"), args.pixels)
    stats = speck_statistics(images, fov_mm / args.pixels)
    for label, kind in ((1, "calcification"), (0, "background")):
      chosen = labels == label
      cells = " | ".join(_summary(stats[c][chosen]) for c in _COLUMNS)
      print(f"| {getattr(args, name)} | {int(chosen.sum())} {kind} | {cells} |")
      for i, index in enumerate(np.flatnonzero(chosen)[:_SHOWN]):
        ax = axes[2 * row + (1 - label), i]
        ax.imshow(images[index, :, :, 0], cmap="gray", vmin=0, vmax=1)
        ax.set_axis_off()
        ax.set_title(f"{name} {kind[:5]} {stats[_COLUMNS[0]][index]:.2f}", fontsize=8)
  figure.suptitle(f"{args.pixels} px of {fov_mm:g} mm; titles: top-hat max at {_SPECK_MM} mm")
  figure.tight_layout()
  figure.savefig(args.out, dpi=100)
  print(f"figure: {args.out}")


if __name__ == "__main__":
  main()
