"""A cross-validation's whole-image pass: each fold scores its test patients' mammograms, out of
fold; a tile reranker is refitted per fold; every result is read once more against the other
breast; each is evaluated pooled (`mcalc_jax.whole_image.froc`).

  WORKDIR/fold_<i>/images/               the fold's test images scored (mcalc_jax.archives layout)
  WORKDIR/fold_<i>/reranker.json         the fold's tile reranker, fitted on the other folds' images
  WORKDIR/reranker.json                  one fitted on every image (`mcalc-score --reranker`)
  WORKDIR/reranker_digital.json          with `whole_image.digital_cohort`: one for digital
                                         mammograms, fitted on clusters inserted into real FFDM
  WORKDIR/digital/images/                ... those images, scored by fold 0's model
  WORKDIR/mark_classifier_digital.json   ... and a cluster classifier for digital archives
  WORKDIR/eval/froc/                     the pooled whole-image evaluation: every image localised
                                         once, by the model that never saw its patient
  WORKDIR/eval/froc_reranked/            ... after the tile reranker
  WORKDIR/eval/froc*_bilateral/          ... each image read against the other breast's
  WORKDIR/eval/froc_marks/, marks/       CAD marks, classified out of fold (`marking`)
  WORKDIR/eval/image_reading/            each image read by its marks and tiles together

Its settings are the config's `whole_image` and `marks` groups (configs/default.py).
"""

from __future__ import annotations

import dataclasses
import os
import pathlib
from collections.abc import Mapping, Sequence
from typing import Any

import ml_collections

from input_pipeline import sources
from input_pipeline.manifest import Finding
from mcalc_jax.archives import archive, discovery, scored
from mcalc_jax.base import calibration
from mcalc_jax.experiments import marking
from mcalc_jax.model import inference
from mcalc_jax.whole_image import bilateral, froc, heatmaps, image_reading, reranking, scoring
from mcalc_jax.whole_image.tiling import ImageScores

IMAGES_DIR = "images"
RERANKER_FILE = "reranker.json"
DIGITAL_RERANKER_FILE = "reranker_digital.json"
RERANK_MODES = ("", "classical", "stacked")


@dataclasses.dataclass(frozen=True)
class WholeImagePass:
  """The cohort's findings (every image, absolute paths) and how its images are scored, reranked
  and read against the other breast."""

  findings: Sequence[Finding]
  tiles: scoring.TileSettings = scoring.TileSettings()
  overlays: bool = False
  rerank: str = "classical"  # "" none, "classical" tile features, "stacked" and the network's logit
  rerank_features: tuple[str, ...] = reranking.DEFAULT_FEATURES
  rerank_c: float = 1.0  # the reranker's inverse L2 strength
  # The saved rerankers' threshold: the out-of-fold FROC's at this many false positives per image.
  rerank_false_positives: float = 1.0
  bilateral_weight: float = bilateral.DEFAULT_WEIGHT  # 0: no bilateral reading
  marks: marking.Marking | None = None  # None: no CAD marks
  # Inserted cohorts of digital (FFDM) backgrounds, comma-separated: a reranker for digital images.
  digital_cohort: str = ""

  def __post_init__(self):
    if self.rerank not in RERANK_MODES:
      raise ValueError(f"rerank must be one of {RERANK_MODES}, not {self.rerank!r}")
    bilateral.check_weight(self.bilateral_weight)
    reranking.check_features(self.rerank_features)

  @classmethod
  def from_config(cls, config: ml_collections.ConfigDict) -> WholeImagePass | None:
    """The pass `config.whole_image` describes, its source's findings loaded; None without one."""
    group = config.whole_image
    if not group.source:
      return None
    return cls(
      sources.load_findings(group.source, group.location),
      tiles=scoring.TileSettings.from_config(group),
      overlays=group.overlays,
      rerank=group.rerank,
      rerank_features=tuple(filter(None, group.rerank_features.split(","))),
      rerank_c=group.get("rerank_c", cls.rerank_c),
      rerank_false_positives=group.get("rerank_false_positives", cls.rerank_false_positives),
      bilateral_weight=group.bilateral_weight,
      marks=marking.Marking.from_config(config),
      digital_cohort=group.get("digital_cohort", ""),
    )

  def scorer(self, run_dir: pathlib.Path) -> scoring.Scorer:
    """A whole-image scorer of the run's best model."""
    return self.tiles.scorer(inference.load_classifier(run_dir, "best"))

  @property
  def base(self) -> str:
    """The images' common folder: image keys are their paths relative to it."""
    paths = sorted({f.image_path for f in self.findings})
    return os.path.commonpath(paths) if len(paths) > 1 else os.path.dirname(paths[0])


def localize_folds(
  workdir: pathlib.Path,
  assignment: Sequence[Mapping[str, Sequence[str]]],
  whole: WholeImagePass,
  run_dirs: Sequence[pathlib.Path],
  seed: int,
  resamples: int,
  maps: Sequence[calibration.Platt] | None = None,
) -> dict[str, Any]:
  """Scores each fold's test images with its final model (`run_dirs`, resumable), evaluates them
  pooled, each fold's Task 1 grids mapped by its calibration (`maps`, one per fold)."""
  grids: dict[str, ImageScores] = {}
  inputs = discovery.inputs_from_findings(whole.findings, whole.base)
  patient = {f.image_path: f.patient_id for f in whole.findings}
  for i, fold in enumerate(assignment):
    test = set(fold["test"])
    mine = [item for item in inputs if patient[item.path] in test]
    out = workdir / f"fold_{i}" / IMAGES_DIR
    archive.score_archive(whole.scorer(run_dirs[i]), mine, os.fspath(out), overlays=whole.overlays)
    grids |= {key: _calibrated_grid(scores, maps, i) for key, scores in _grids(out, mine).items()}
  keys = {item.path: item.key for item in inputs}
  images = froc.scored_images(whole.findings, keys, grids)
  result, _ = _evaluated(images, workdir / "eval" / "froc", whole, seed, resamples)
  by_key = {item.key: item for item in inputs}
  read_by = {"network": images}  # the scored images by the tile reading that gave their grids
  if whole.rerank:
    result["reranked"], read_by["reranked"] = rerank_folds(
      workdir, assignment, whole, images, by_key, seed, resamples
    )
    if whole.digital_cohort:
      result["reranked"]["digital"], *digital = rerank_digital(
        workdir, whole, run_dirs[0], seed, resamples
      )
  if whole.marks:  # on the grids `mcalc-score` writes (one image alone: no other breast)
    tiled = read_by.get(whole.marks.tiles, images)  # (no reranker: the network's are all there are)
    result["marks"] = marking.mark_folds(
      workdir, assignment, whole.marks, tiled, by_key, seed, resamples, whole.bilateral_weight
    )
    if "skipped" not in result["marks"]:
      result["image_reading"] = read_together(workdir / "eval", whole, seed, resamples)
    if whole.rerank and whole.digital_cohort and whole.marks.tiles == "reranked":
      result["marks"]["digital"] = marking.mark_digital(
        workdir, whole.marks, *digital, seed, resamples
      )
  return result


def read_together(
  eval_dir: pathlib.Path, whole: WholeImagePass, seed: int, resamples: int
) -> dict[str, Any]:
  """Each image read by its marks and its tiles together (`image_reading`), the tiles as the
  pass's last reading left them (reranked, against the other breast), into EVAL/image_reading."""
  tiles = "froc" + "_reranked" * bool(whole.rerank) + "_bilateral" * bool(whole.bilateral_weight)
  evaluation = image_reading.evaluate(
    scored.read_images(eval_dir / tiles),
    scored.read_images(eval_dir / "froc_marks"),
    resamples=resamples,
    seed=seed,
  )
  scored.write_image_reading(eval_dir / "image_reading", evaluation)
  return {"tiles": tiles, **{k: evaluation[k] for k in ("reading", "counts", "metrics", "ci")}}


def rerank_folds(
  workdir: pathlib.Path,
  assignment: Sequence[Mapping[str, Sequence[str]]],
  whole: WholeImagePass,
  images: Sequence[froc.ScoredImage],
  inputs: Mapping[str, discovery.Input],
  seed: int,
  resamples: int,
) -> tuple[dict[str, Any], list[froc.ScoredImage]]:
  """Each fold's tile reranker, fitted on the out-of-fold grids of the other folds' images
  (WORKDIR/fold_<i>/reranker.json), applied to its own test images; their pooled evaluation goes
  to WORKDIR/eval/froc_reranked, and the reranked images are returned beside it. Stacked, the training tiles' logits come from the other folds'
  models, as a test tile's comes from its own fold's. WORKDIR/reranker.json, fitted on every
  image, is the one `mcalc-score --reranker` applies to new images."""
  names = _rerank_names(whole)
  features = reranking.image_features(images, inputs, names)
  fold_of = {p: k for k, fold in enumerate(assignment) for p in fold["test"]}
  reranked, models = reranking.refit_folds(images, features, fold_of, names, whole.rerank_c)
  title = f"tile reranker ({whole.rerank}), refitted per fold"
  out = workdir / "eval" / "froc_reranked"
  result, evaluation = _evaluated(reranked, out, whole, seed, resamples, title)
  threshold = froc.threshold_at(evaluation, whole.rerank_false_positives)
  for k, model in models.items():
    reranking.save(
      workdir / f"fold_{k}" / RERANKER_FILE, dataclasses.replace(model, threshold=threshold)
    )
  final = reranking.fit_images(images, features, names, whole.rerank_c)
  reranking.save(workdir / RERANKER_FILE, dataclasses.replace(final, threshold=threshold))
  summary = {"mode": whole.rerank, "features": list(names), "threshold": threshold}
  return summary | result, reranked


def rerank_digital(
  workdir: pathlib.Path, whole: WholeImagePass, run_dir: pathlib.Path, seed: int, resamples: int
) -> tuple[dict[str, Any], list[froc.ScoredImage], dict[str, discovery.Input]]:
  """WORKDIR/reranker_digital.json: the pass's reranker fitted on the images of
  `whole.digital_cohort` (clusters inserted into real FFDM, `input_pipeline.insertion`), scored by
  `run_dir`'s model into WORKDIR/digital/images (resumable). Film's reranker, fitted on MIAS,
  reads FFDM's bright fine structure as specks and flags most of the breast (docs/results.md);
  `mcalc-score --reranker` applies this one to digital archives. Also returned: the cohort's
  images reranked out of background (each background image's tiles by a reranker fitted on the
  others': its FROC, of inserted clusters, goes to WORKDIR/digital/froc_reranked) and their inputs."""
  folders = tuple(filter(None, whole.digital_cohort.split(",")))
  findings = [f for d in folders for f in sources.read_manifest_at(d)]
  base = os.path.commonpath([os.path.abspath(d) for d in folders])
  inputs = discovery.inputs_from_findings(findings, base)
  out = workdir / marking.DIGITAL_DIR / IMAGES_DIR
  archive.score_archive(whole.scorer(run_dir), inputs, os.fspath(out), overlays=False)
  grids = _grids(out, inputs)
  images = froc.scored_images(findings, {item.path: item.key for item in inputs}, grids)
  names = _rerank_names(whole)
  by_key = {item.key: item for item in inputs}
  features = reranking.image_features(images, by_key, names)
  # (a background's patient id is the same in every cohort inserted into it)
  background = {p: k for k, p in enumerate(sorted({image.patient_id for image in images}))}
  reranked, _ = reranking.refit_folds(images, features, background, names, whole.rerank_c)
  evaluation = froc.evaluate(reranked, resamples=resamples, seed=seed)
  threshold = froc.threshold_at(evaluation, whole.rerank_false_positives)
  model = reranking.fit_images(images, features, names, whole.rerank_c)
  reranking.save(workdir / DIGITAL_RERANKER_FILE, dataclasses.replace(model, threshold=threshold))
  title = "tile reranker on inserted clusters, out of background image"
  scored.write_froc(workdir / marking.DIGITAL_DIR / "froc_reranked", evaluation, title=title)
  summary = {"cohorts": list(folders), "threshold": threshold, **scored.summary(evaluation)}
  return summary, reranked, by_key


def _rerank_names(whole: WholeImagePass) -> tuple[str, ...]:
  """The reranker's features: the pass's, and stacked the network's logit."""
  stacked = (reranking.NETWORK_FEATURE,) if whole.rerank == "stacked" else ()
  return (*whole.rerank_features, *stacked)


def _evaluated(
  images: Sequence[froc.ScoredImage],
  out_dir: pathlib.Path,
  whole: WholeImagePass,
  seed: int,
  resamples: int,
  title: str = "",
) -> tuple[dict[str, Any], dict[str, Any]]:
  """The pooled whole-image evaluation of `images` into `out_dir`, and with a bilateral weight
  once more, each image read against the other breast's, into `out_dir`_bilateral: its summary,
  and the plain evaluation itself."""
  evaluation = froc.evaluate(images, resamples=resamples, seed=seed)
  scored.write_froc(out_dir, evaluation, title=title)
  result = scored.summary(evaluation)
  weight = whole.bilateral_weight
  if weight:
    compared = froc.against_other_breast(images, weight)
    result["bilateral"] = scored.write_bilateral(
      out_dir, froc.evaluate(compared, resamples=resamples, seed=seed), weight, title or "network"
    )
  return result, evaluation


def _grids(out: pathlib.Path, inputs: Sequence[discovery.Input]) -> dict[str, ImageScores]:
  """The grids `archive.score_archive` wrote into `out` for `inputs` (by key; failed ones left out)."""
  return {
    item.key: heatmaps.read_scores(out / f"{item.key}.npz")
    for item in inputs
    if (out / f"{item.key}.npz").exists()
  }


def _calibrated_grid(
  scores: ImageScores, maps: Sequence[calibration.Platt] | None, fold: int
) -> ImageScores:
  return dataclasses.replace(scores, task1=maps[fold].apply(scores.task1)) if maps else scores
