"""Hard-negative mining, as CAD systems train for localisation: the model's own false alarms.

Random background patches are mostly easy (fat, smooth gland); what a sliding window gets wrong
is a few bright, busy regions per image. A round of mining scores whole training images with the
current model, takes each image's hottest tiles whose window touches no annotation of any
abnormality (the same exclusion the background sampler uses), and cuts them as background
patches exactly as the dataset builder cuts patches (the tile's millimetres, resampled to the
stored patch size). Training then continues on the enlarged set. Everything is a pure function
of the images and the model, so a round mines the same patches every time.

In cross-validation (`train_rounds`) each round of a fold mines its training patients' images
and trains on from the previous round's best checkpoint:
  WORKDIR/fold_<i>/mined_<r>.npz   round r's hard negatives (mined once, read back on a rerun)
  WORKDIR/fold_<i>/round_<r>/      round r's training run
"""

from __future__ import annotations

import os
import pathlib
from collections.abc import Callable, Mapping, Sequence

import ml_collections
import numpy as np

from input_pipeline import patches, pipeline, tfds_builder
from input_pipeline.mammogram import read_mammogram, spacing_options
from input_pipeline.manifest import Finding
from input_pipeline.pipeline import ID_FIELDS
from mcalc_jax.base import files
from mcalc_jax.experiments import folds
from mcalc_jax.model import train
from mcalc_jax.whole_image import scoring, tiling


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


def round_dir(fold_dir: pathlib.Path, round_: int) -> pathlib.Path:
  """Where a fold's mining round trains (round 0: the fold's own run)."""
  return fold_dir if round_ == 0 else fold_dir / f"round_{round_}"


def train_rounds(
  config: ml_collections.ConfigDict,
  fold_dir: pathlib.Path,
  fold: Mapping[str, Sequence[str]],
  cohort: folds.Patches,
  findings: Sequence[Finding],
  scorer_of: Callable[[pathlib.Path], scoring.Scorer],
) -> tuple[pathlib.Path, pipeline.ArrayPatchData]:
  """The fold's `config.cv.mining_rounds` rounds after its first training: each mines hard
  negatives from the fold's training images with the previous round's model (`scorer_of` its run
  folder) and goes on training from its best checkpoint. Returns the last round's run and data."""
  mixed = "" if config.cv.train_also_as == "pretrain" else "mix"  # as the fold's own training
  data = folds.fold_data(cohort, fold, config, train_only=mixed)
  size = cohort.arrays["image"].shape[1]
  for r in range(1, config.cv.mining_rounds + 1):
    found = _mined(fold_dir, r, fold, findings, scorer_of, config.cv.mining_per_image, size)
    data = folds.fold_data(cohort, fold, config, _with(cohort.arrays, found), train_only=mixed)
    tuned = ml_collections.ConfigDict(config.to_dict())
    tuned.init_from = os.fspath(round_dir(fold_dir, r - 1))
    train.train_and_evaluate(tuned, round_dir(fold_dir, r), data=data)
  return round_dir(fold_dir, config.cv.mining_rounds), data


def _mined(
  fold_dir: pathlib.Path,
  round_: int,
  fold: Mapping[str, Sequence[str]],
  findings: Sequence[Finding],
  scorer_of: Callable[[pathlib.Path], scoring.Scorer],
  per_image: int,
  size: int,
) -> dict[str, np.ndarray]:
  """Every hard negative mined up to `round_` from the fold's training images (each round's
  mined once, saved in fold_<i>/mined_<r>.npz, read back on a rerun)."""
  rounds = []
  for r in range(1, round_ + 1):
    path = fold_dir / f"mined_{r}.npz"
    if not path.exists():
      train_patients = set(fold["train"])
      images = [
        (im.image_id, im.findings)
        for im in tfds_builder.group_images(findings)
        if im.patient_id in train_patients
      ]
      found = mine(scorer_of(round_dir(fold_dir, r - 1)), images, per_image, size)
      with files.atomic_write(path) as f:
        np.savez(f, **found)
    with np.load(path) as saved:
      rounds.append({k: saved[k] for k in saved.files})
  return concatenate(rounds, size)


def _with(
  arrays: Mapping[str, np.ndarray], mined: Mapping[str, np.ndarray]
) -> dict[str, np.ndarray]:
  """The cohort's patch arrays with the mined ones appended."""
  return {key: folds.joined(values, np.asarray(mined[key])) for key, values in arrays.items()}
