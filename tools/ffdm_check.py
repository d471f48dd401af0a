"""How a Task 1 run reads real full-field digital mammograms it never saw: the FFDM check.

  python -m tools.ffdm_check --run=RUN [--reranker=CV_RUN/reranker.json] [--out=ffdm.json]
      [--mark_classifier=CV_RUN/mark_classifier.json] [--speck_detector=CV_RUN/fold_0/speck_detector]

Scores the eight NYU FFDM images of ../shared/data/nyu-ffdm-png (16-bit PNG, no pixel spacing:
the reader's assumed 0.07 mm) with the run, tile by tile as `mcalc-score` does, and reports per
image the share of breast tiles at or above the operating threshold (the reranker's, chosen out
of fold; 0.5 without one) and above 0.9. For NYU exam 0
(`gmic_exam0/`, evaluation only: never trained or fitted on) it also reports, in each left view
(no known finding), the tiles at or above the threshold, and in each right view the rank of the
benign calcification cluster's tile (ties counted against it: 1 + the tiles scoring at least as
high). The cluster's position is our own annotation, by eye on the 12-bit images
(`EXAM0_CLUSTERS`), as no coordinates come with the data; it serves this evaluation only.

With a mark classifier (an `mcalc-cv` run's, on the classical map or on the trained speck
detector it names), the CAD marks too: per image the marks and those reported at the
classifier's operating point; in each left view the reported (false) marks, in each right view
whether a reported mark hits the cluster and the rank of the best mark on it. With a trained
speck detector (an `mcalc-cv` fold's, `config.marks.detector_cohort`), its marks too, without a
classifier: how many at `--detector_threshold`, the top mark's mean speck probability, and the
rank by that score of the best mark on exam 0's cluster.
"""

from __future__ import annotations

import argparse
import json
import os
import pathlib
from collections.abc import Callable

import numpy as np

from input_pipeline import sources
from input_pipeline.mammogram import read_mammogram
from mcalc_jax.model import inference, speck_detector
from mcalc_jax.whole_image import froc, marks, reranking, scoring, specks

THRESHOLD = 0.5  # mcalc-score's; a reranker carries its own, chosen out of fold
# (row, col, radius) in original pixels of exam 0's right-breast cluster, annotated by eye.
EXAM0_CLUSTERS = {
  "gmic_exam0/0_R-CC.png": (1440.0, 360.0, 45.0),
  "gmic_exam0/0_R-MLO.png": (1818.0, 452.0, 25.0),
}
IMAGES = (
  "breast_cancer_classifier/1_L_CC.png",
  "breast_cancer_classifier/1_R_CC.png",
  "breast_cancer_classifier/2_L_CC.png",
  "breast_cancer_classifier/2_R_CC.png",
  "gmic_exam0/0_L-CC.png",
  "gmic_exam0/0_L-MLO.png",
  "gmic_exam0/0_R-CC.png",
  "gmic_exam0/0_R-MLO.png",
)


def nyu_folder() -> pathlib.Path:
  """../shared/data/nyu-ffdm-png beside the checkout (or under $MCALC_SHARED_DATA)."""
  mias = sources.default_location("mias")
  if not mias:
    raise FileNotFoundError("../shared/data is absent: the FFDM check needs nyu-ffdm-png")
  return pathlib.Path(mias).parent / "nyu-ffdm-png"


def image_report(
  name: str, scores, reranker: reranking.TileReranker | None, pixels: np.ndarray
) -> tuple[dict, object]:
  """One image's shares of hot tiles and, for exam 0, its left-view count or cluster rank; and
  the (reranked) scores. Tiles are flagged from the reranker's threshold (0.5 without one)."""
  threshold = reranking.flagging_threshold(reranker, THRESHOLD)
  if reranker is not None:
    scores = reranking.rerank_image(pixels, scores, reranker)
  grid = scores.task1
  values = grid[~np.isnan(grid)]
  report = {
    "image": name,
    "breast_tiles": int(values.size),
    "share_at_threshold": float(np.mean(values >= threshold)) if values.size else None,
    "share_above_0.9": float(np.mean(values > 0.9)) if values.size else None,
  }
  if name.startswith("gmic_exam0/0_L"):
    report["tiles_at_threshold"] = int(np.sum(values >= threshold))
  if name in EXAM0_CLUSTERS:
    row, col, radius = EXAM0_CLUSTERS[name]
    cluster = froc.Cluster("exam0_right", "benign", row, col, radius)
    holding = [grid[i, j] for i, j in froc.tiles_holding(grid, scores.geometry, cluster)]
    best = max(holding) if holding else -np.inf
    report["cluster_rank"] = int(np.sum(values >= best)) if holding else None
  return report, scores


def marks_report(name: str, found: list[marks.Mark], classifier: marks.ClusterClassifier) -> dict:
  """One image's CAD marks: how many, how many reported, and exam 0's two targets."""
  shown = marks.reported(found, classifier)
  report = {"marks": len(found), "marks_reported": len(shown)}
  if name in EXAM0_CLUSTERS:
    best, rank = cluster_mark(name, found, marks.task1)
    report["cluster_marked"] = best >= classifier.operating_point.threshold
    report["cluster_mark_rank"] = rank
  return report


def cluster_mark(
  name: str, found: list[marks.Mark], score: Callable[[marks.Mark], float]
) -> tuple[float, int | None]:
  """The best `score` of a mark on exam 0's cluster in `name` (-inf: none) and its rank among
  the image's marks (None: no mark on it)."""
  row, col, radius = EXAM0_CLUSTERS[name]
  cluster = froc.Cluster("exam0_right", "benign", row, col, radius)
  on = [score(m) for m in found if marks.hits(m, cluster, 0.07, marks.HIT_DISTANCE_MM)]
  if not on:
    return -np.inf, None
  return max(on), 1 + sum(score(m) > max(on) for m in found)


def detector_report(name: str, found: list[marks.Mark]) -> dict:
  """One image's marks on a trained detector's map, scored by their mean speck probability."""
  score = _mean_probability
  report = {"detector_marks": len(found), "detector_top": max(map(score, found), default=0.0)}
  if name in EXAM0_CLUSTERS:
    report["detector_cluster_rank"] = cluster_mark(name, found, score)[1]
  return report


def _mean_probability(mark: marks.Mark) -> float:
  return mark.features["mean_value"]


def check(
  run: str,
  reranker_path: str = "",
  mark_classifier: str = "",
  detector_dir: str = "",
  detector_threshold: float = 0.85,
) -> dict:
  """The FFDM check of `run` (and a reranker, and CAD marks): per image, and exam 0's targets."""
  classifier = inference.load_classifier(run, "best")
  scorer = scoring.TileSettings().scorer(classifier)
  reranker = reranking.load(reranker_path) if reranker_path else None
  marker = marks.load(mark_classifier) if mark_classifier else None
  detector = speck_detector.load(detector_dir) if detector_dir else None
  rule = specks.SpeckRule(threshold=detector_threshold)
  folder = nyu_folder()
  images = []
  for name in IMAGES:
    mammogram = read_mammogram(folder / name)
    pixels = mammogram.pixels / mammogram.max_value
    report, scores = image_report(name, scorer.score(mammogram), reranker, pixels)
    if marker is not None:
      found = marks.mark_mammogram(mammogram, name, marker, scores)
      report |= marks_report(name, found, marker)
    if detector is not None:
      speck_map = specks.network_speck_map(detector, mammogram)
      report |= detector_report(name, marks.mark_image(speck_map, name, speck_rule=rule))
    images.append(report)
  left = [im["tiles_at_threshold"] for im in images if "tiles_at_threshold" in im]
  ranks = [im["cluster_rank"] for im in images if "cluster_rank" in im]
  found = {"mark_classifier": mark_classifier}
  if marker is not None:
    false = [im["marks_reported"] for im in images if "tiles_at_threshold" in im]
    marked = [im["cluster_marked"] for im in images if "cluster_marked" in im]
    found["marks_targets_met"] = {
      "left_views_at_most_1_false_mark": all(n <= 1 for n in false),
      "right_cluster_marked_in_both_views": all(marked),
    }
  return found | {
    "run": os.fspath(run),
    "reranker": reranker_path,
    "threshold": reranking.flagging_threshold(reranker, THRESHOLD),
    "images": images,
    "exam0_left_tiles_at_threshold": left,
    "exam0_right_cluster_ranks": ranks,
    "targets_met": {
      "left_views_at_most_1_tile": all(n <= 1 for n in left),
      "right_cluster_among_3_hottest": all(r is not None and r <= 3 for r in ranks),
    },
  }


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--run", required=True, help="a Task 1 training run (its workdir)")
  parser.add_argument("--reranker", default="", help="a tile reranker JSON to apply")
  parser.add_argument("--out", default="", help="write the report as JSON here too")
  parser.add_argument("--mark_classifier", default="", help="CAD marks by this classifier's JSON")
  parser.add_argument("--speck_detector", default="", help="a trained speck detector's folder")
  parser.add_argument("--detector_threshold", type=float, default=0.85)
  args = parser.parse_args()
  report = check(
    args.run, args.reranker, args.mark_classifier, args.speck_detector, args.detector_threshold
  )
  text = json.dumps(report, indent=2)
  if args.out:
    pathlib.Path(args.out).write_text(text)
  for image in report["images"]:
    shown = ("tiles_at_threshold", "cluster_rank", "marks_reported", "cluster_marked")
    shown += ("detector_marks", "detector_top", "detector_cluster_rank")
    extra = {k: v for k, v in image.items() if k in shown}
    print(
      f"{image['image']:38s} tiles {image['breast_tiles']:4d}  >= {report['threshold']:.3g}: "
      f"{image['share_at_threshold']:.2f}  > 0.9: {image['share_above_0.9']:.2f}  {extra or ''}"
    )
  print(json.dumps(report["targets_met"]), json.dumps(report.get("marks_targets_met", {})))


if __name__ == "__main__":
  main()
