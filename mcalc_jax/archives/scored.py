"""A scored archive read back, and whole-image evaluations written out: `mcalc-froc`, `mcalc-rerank`.

`mcalc-score` leaves one npz grid per image (`mcalc_jax.whole_image.heatmaps`); with the manifest
that was scored, `read_scored_folder` gives back the scored images with their findings (the
maths is `mcalc_jax.whole_image.froc`), and `write_froc` writes an evaluation as
  froc.json     the evaluation (`froc.evaluate`), JSON-safe
  froc.csv      the curve: threshold, sensitivity, false positives per image
  clusters.csv  one row per annotated cluster: where it was found and its rank
  images.csv    one row per image: its clusters and its score (the image AUC's), for ROC tools
  froc.png      the curve with the registry's operating points
and, where `mcalc-score --mark_classifier` left a marks.csv, the same five files of the CAD marks'
FROC (`mcalc_jax.whole_image.marks.evaluate_marks`) in froc_marks/ inside them, and the marks
and tiles read together (`mcalc_jax.whole_image.image_reading`) in image_reading/.
Every CSV is written by the csv module (an id with a comma or a newline stays one cell), and no
output carries the manifest's patient ids unless asked (`keep_identifiers`): each patient is
keyed by a salted hash. A folder's grids are checked as they are read (a damaged npz names its
file) and must share one tiling.
"""

from __future__ import annotations

import collections
import csv
import dataclasses
import hashlib
import io
import json
import math
import os
import pathlib
from collections.abc import Sequence

import numpy as np
import pydicom

from input_pipeline import manifest
from input_pipeline.errors import UserError
from input_pipeline.mammogram import Mammogram
from mcalc_jax.archives import discovery
from mcalc_jax.base import csvlog, files, plots
from mcalc_jax.whole_image import froc, heatmaps, image_reading, marks, reranking, tiling

CLUSTER_COLUMNS = ("image", "patient_id", "finding_id", "label", "found_at_score", "rank")
IMAGE_COLUMNS = ("image", "patient_id", "clusters", "score")
MARKS_FILE = "marks.csv"  # what `mcalc-score --mark_classifier` writes (marks.CSV_COLUMNS)
MARKS_FOLDER = "froc_marks"  # the marks' FROC, inside the tiles' FROC folder
READING_FOLDER = "image_reading"  # the marks and tiles read together (`image_reading`), beside it


class ScoredFolderError(UserError):
  """A scored folder that cannot be evaluated as one: no grids, mixed tilings, changed images."""


def write_froc(out_dir: str | os.PathLike, evaluation: dict, title: str = "") -> None:
  """froc.json, froc.csv (the curve), clusters.csv, images.csv (each image's score) and
  froc.png into `out_dir`."""
  out_dir = os.fspath(out_dir)
  os.makedirs(out_dir, exist_ok=True)
  _write_json(os.path.join(out_dir, "froc.json"), evaluation)
  curve = evaluation["curve"]
  rows = zip(curve["threshold"], curve["sensitivity"], curve["fp_per_image"], strict=True)
  _write_csv(os.path.join(out_dir, "froc.csv"), ("threshold", "sensitivity", "fp_per_image"), rows)
  clusters = ([c[k] for k in CLUSTER_COLUMNS] for c in evaluation["clusters"])
  _write_csv(os.path.join(out_dir, "clusters.csv"), CLUSTER_COLUMNS, clusters)
  _write_images(out_dir, evaluation)
  found = evaluation["metrics"]
  counts = evaluation["counts"]
  plots.plot_froc(
    os.path.join(out_dir, "froc.png"),
    np.array(curve["fp_per_image"]),
    np.array(curve["sensitivity"]),
    operating_points={rate: found[name] for rate, name in froc.fp_rates().items()},
    title=title or f"{counts['clusters']} clusters, {counts['images']} images",
  )


SUMMARISED = ("metrics", "ci", "counts")  # what a run's summary keeps of an evaluation


def summary(evaluation: dict) -> dict:
  """What a run's summary (cv_summary.json) keeps of an evaluation."""
  return {k: evaluation[k] for k in SUMMARISED}


def write_bilateral(
  out_dir: str | os.PathLike, evaluation: dict, weight: float, title: str
) -> dict:
  """The evaluation of images read against the other breast (`weight`) into `out_dir`_bilateral,
  beside the plain evaluation's `out_dir`; its summary, with the weight."""
  out_dir = pathlib.Path(out_dir)
  title = f"{title}, against the other breast (weight {weight:g})"
  write_froc(out_dir.with_name(out_dir.name + "_bilateral"), evaluation, title=title)
  return {"weight": weight, **summary(evaluation)}


def read_images(folder: str | os.PathLike) -> list[dict[str, str]]:
  """The images.csv rows of an evaluation folder `write_froc` wrote."""
  with open(os.path.join(folder, "images.csv"), newline="") as f:
    return list(csv.DictReader(f))


def write_image_reading(out_dir: str | os.PathLike, evaluation: dict) -> None:
  """An image reading (`image_reading.evaluate`) as image_reading.json and images.csv."""
  out_dir = os.fspath(out_dir)
  os.makedirs(out_dir, exist_ok=True)
  _write_json(os.path.join(out_dir, "image_reading.json"), evaluation)
  _write_images(out_dir, evaluation)


def _write_json(path: str, evaluation: dict) -> None:
  files.write_text(path, json.dumps(_finite(evaluation), indent=2, allow_nan=False))


def _write_images(out_dir: str, evaluation: dict) -> None:
  rows = ([im[k] for k in IMAGE_COLUMNS] for im in evaluation["images"])
  _write_csv(os.path.join(out_dir, "images.csv"), IMAGE_COLUMNS, rows)


def _write_csv(path: str, header: Sequence[str], rows) -> None:
  """A CSV written atomically by the csv module (ids with commas or newlines stay one cell)."""
  text = io.StringIO()
  writer = csv.writer(text, lineterminator="\n")
  writer.writerow(header)
  writer.writerows(rows)
  files.write_text(path, text.getvalue())


def _finite(value):
  """JSON-safe: an infinite median rank (most clusters never reached) becomes null."""
  if isinstance(value, dict):
    return {k: _finite(v) for k, v in value.items()}
  if isinstance(value, list):
    return [_finite(v) for v in value]
  return None if isinstance(value, float) and not np.isfinite(value) else value


@dataclasses.dataclass(frozen=True)
class ScoredInput:
  """An input whose pixels are read again (for reranker features), checked against its grid."""

  input: discovery.Input
  grid_path: str
  shape: tuple[int, int]

  def read(self, with_header: bool = False) -> tuple[Mammogram, pydicom.Dataset | None]:
    mammogram, header = self.input.read(with_header)
    if mammogram.pixels.shape != self.shape:
      raise ScoredFolderError(
        f"{self.grid_path}: scored on a {self.shape} image, but {self.input.path} now reads as "
        f"{mammogram.pixels.shape}: score it again"
      )
    return mammogram, header


def read_scored_folder(
  scores_dir: str | os.PathLike, manifest_path: str | os.PathLike
) -> tuple[list[froc.ScoredImage], dict[str, ScoredInput]]:
  """The manifest's images that `mcalc-score` scored into `scores_dir`, with their findings, and
  each one's input (by score key) to read its pixels again.

  Raises:
    ScoredFolderError: no grid of the manifest's images, or grids of different tilings.
    heatmaps.ScoresFileError: a damaged grid (naming its file).
  """
  findings = manifest.read_manifest(manifest_path)
  inputs = discovery.inputs_from_findings(findings, os.path.dirname(os.path.abspath(manifest_path)))
  grids, readers = {}, {}
  for item in inputs:
    path = os.path.join(scores_dir, f"{item.key}.npz")
    if os.path.exists(path):
      grids[item.key] = heatmaps.read_scores(path)
      readers[item.key] = ScoredInput(item, path, grids[item.key].geometry.image_shape)
  if not grids:
    raise ScoredFolderError(f"{scores_dir}: no score grids of the manifest's images")
  tilings = sorted({_tiling(scores.geometry) for scores in grids.values()})
  if len(tilings) > 1:
    raise ScoredFolderError(
      f"{scores_dir}: grids of different tilings ({'; '.join(tilings)}) cannot be evaluated "
      "together: score each setting into its own --output"
    )
  images = froc.scored_images(findings, {i.path: i.key for i in inputs}, grids)
  return images, readers


def _tiling(geometry: tiling.TileGeometry) -> str:
  """How an image was tiled, in words that tell two settings apart (tiles of one field of view
  differ in pixels from image to image, as the pixel size does)."""
  if geometry.field_of_view_mm > 0:
    return f"{geometry.field_of_view_mm:g}-mm tiles"
  return f"{geometry.patch_size}-pixel tiles every {geometry.stride} pixels"


def pseudonymised(evaluation: dict, manifest_path: str | os.PathLike) -> dict:
  """The evaluation with each patient id replaced by a salted hash. The salt is the manifest's
  own hash: one manifest always gives the same pseudonyms, which cannot be reversed without it
  (and it holds the ids anyway)."""
  salt = hashlib.sha256(pathlib.Path(manifest_path).read_bytes()).digest()

  def pseudonym(patient_id: str) -> str:
    digest = hashlib.blake2b(patient_id.encode(), key=salt, digest_size=8).hexdigest()
    return f"patient-{digest}"

  return evaluation | {
    part: [row | {"patient_id": pseudonym(row["patient_id"])} for row in evaluation[part]]
    for part in ("clusters", "images")
  }


def evaluate_scored_folder(
  scores_dir: str | os.PathLike,
  manifest_path: str | os.PathLike,
  output: str | os.PathLike | None = None,
  *,
  resamples: int = 1000,
  seed: int = 0,
  bilateral_weight: float = 0.0,
  keep_identifiers: bool = False,
) -> dict:
  """The `mcalc-froc` job: a folder `mcalc-score` wrote from a manifest, against its findings;
  with `bilateral_weight`, each image read against the other breast's
  (`froc.against_other_breast`). Where the folder holds a marks.csv, its CAD marks too, each
  image alone (`marks.evaluate_marks`; every mark counts, the reported ones and the rest).

  Writes froc.json, froc.csv, clusters.csv, images.csv and froc.png into `output` (default SCORES_DIR/froc),
  the marks' into OUTPUT/froc_marks and both read together (`image_reading`) into
  OUTPUT/image_reading, patients keyed by a salted hash (`pseudonymised`) unless
  `keep_identifiers`; returns what it wrote, the marks' under "marks", the reading's under
  "image_reading".
  """
  output = os.fspath(output or os.path.join(scores_dir, "froc"))
  with_marks = os.path.exists(os.path.join(scores_dir, MARKS_FILE))
  inside = (MARKS_FOLDER, READING_FOLDER) if with_marks else ()
  for folder in (output, *(os.path.join(output, name) for name in inside)):
    os.makedirs(folder, exist_ok=True)
    files.check_writable(os.path.join(folder, "images.csv"))  # before the bootstrap, not after
  images, _ = read_scored_folder(scores_dir, manifest_path)
  compared = froc.against_other_breast(images, bilateral_weight) if bilateral_weight else images
  evaluation = froc.evaluate(compared, resamples=resamples, seed=seed)
  evaluation["bilateral_weight"] = bilateral_weight
  evaluation = _written(output, evaluation, manifest_path, keep_identifiers)
  if with_marks:
    marked = marked_images(scores_dir, images)
    found = marks.evaluate_marks(marked, resamples=resamples, seed=seed)
    title = f"CAD marks: {found['counts']['clusters']} clusters, {len(marked)} images"
    folder = os.path.join(output, MARKS_FOLDER)
    evaluation["marks"] = _written(folder, found, manifest_path, keep_identifiers, title)
    read = image_reading.evaluate(
      evaluation["images"], evaluation["marks"]["images"], resamples=resamples, seed=seed
    )
    write_image_reading(os.path.join(output, READING_FOLDER), read)
    evaluation["image_reading"] = read
  return evaluation


def _written(
  output: str, evaluation: dict, manifest_path: str | os.PathLike, keep: bool, title: str = ""
) -> dict:
  """`evaluation` (pseudonymised unless `keep`), as written into `output`."""
  if not keep:
    evaluation = pseudonymised(evaluation, manifest_path)
  write_froc(output, evaluation, title)
  return evaluation


def read_marks(path: str | os.PathLike) -> dict[str, list[marks.Mark]]:
  """Each image's marks (by score key) from an `mcalc-score` marks.csv, without features."""
  header, rows, _ = csvlog.read_log(os.fspath(path))
  found: dict[str, list[marks.Mark]] = collections.defaultdict(list)
  for values in rows:
    row = dict(zip(header or (), values, strict=True))
    found[row["key"]].append(marks.from_row(row))
  return found


def marked_images(
  scores_dir: str | os.PathLike, images: Sequence[froc.ScoredImage]
) -> list[marks.MarkedImage]:
  """The scored `images` with their marks from SCORES_DIR/marks.csv: those with a row in
  scores.csv (every one of which was marked, however many marks it got)."""
  found = read_marks(os.path.join(scores_dir, MARKS_FILE))
  _, rows, _ = csvlog.read_log(os.path.join(scores_dir, "scores.csv"))
  done = {row[0] for row in rows}
  return [
    marks.MarkedImage(
      key=image.key,
      patient_id=image.patient_id,
      breast=image.breast,
      marks=tuple(found.get(image.key, ())),
      clusters=image.clusters,
      # unknown (grids written before pixel sizes were): no mark hits a point annotation
      pixel_mm=image.scores.geometry.pixel_spacing_mm or math.nan,
    )
    for image in images
    if image.key in done
  ]


def fit_scored_folder(
  scores_dir: str | os.PathLike,
  manifest_path: str | os.PathLike,
  names: Sequence[str] = reranking.DEFAULT_FEATURES,
) -> reranking.TileReranker:
  """The `mcalc-rerank` job: a reranker fitted on every tile `mcalc-score` scored into
  `scores_dir` from the manifest (positives: the tiles that hit its clusters). With
  `reranking.NETWORK_FEATURE` the images must be ones the network never trained on, or its
  logits are optimistic."""
  reranking.check_features(names)
  images, inputs = read_scored_folder(scores_dir, manifest_path)
  if not any(image.clusters for image in images):
    raise ScoredFolderError(
      f"{manifest_path}: no scored image has a calcification cluster to fit on"
    )
  return reranking.fit_images(images, reranking.image_features(images, inputs, names), names)
