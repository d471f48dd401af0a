"""Does a trained dense speck detector find specks better than the classical map? The honest
measurement: the folds of a CV workdir, a detector per fold that never saw its test patients.

  python -m tools.speck_detector_cv --folds=CV/folds.json \
      --cohort=runs/tfds/inserted_mias_0 --output=runs/speck_detector_cv/cv.json

Fold k's detector (`mcalc_jax.model.speck_detector`) trains on crops of the inserted cohort
(`input_pipeline.speck_labels`) whose background patients are in fold k's train part. On every
mini-MIAS image of fold k's test patients (their clusters and their normals), marks
(`marks.mark_image`, the default cluster rule) are made from the classical map
(`specks.SPECK_RULE`) and from the network's probability map at fixed speck thresholds
(`--sweep`) and at the 'matched' one: the lowest of `THRESHOLDS` at which the network puts no more
marks than the classical map on fold k's VALIDATION patients' normal images (one false-mark rate
for both, chosen without the test patients). Real specks have no labels, so specks are also
counted on the inserted images of fold k's test patients (held-out insertions, backgrounds never
trained on): the visible inserted specks found (a speck centre within `MATCH_MM`), and the share
of the specks found near an inserted cluster that are inserted specks. Everything is pooled over
the folds, printed as a table and written as JSON to --output; each fold's detector is saved
beside it. The mark FROC ranks marks by a stated simple score (`SCORES`), no classifier.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import time
from collections.abc import Callable, Sequence

import numpy as np

from input_pipeline import importers, sources, speck_labels
from input_pipeline.mammogram import Mammogram, read_mammogram, spacing_options
from input_pipeline.manifest import Finding
from mcalc_jax.base import files
from mcalc_jax.model import speck_detector
from mcalc_jax.whole_image import froc, marks, specks

MATCH_MM = 0.6  # a found speck is an inserted one when their centres are this close
NEAR_MM = 1.0  # specks within an inserted cluster's circle grown by this are 'near' it
SCORES: dict[str, Callable[[marks.Mark], float]] = {
  "specks": lambda m: m.features["specks"],  # how many specks the mark holds
  "mean_peak": lambda m: m.features["mean_peak"],  # their mean peak: probability or CNR
}
FP_RATES = (0.5, 1.0, 2.0)
THRESHOLDS = (0.5, 0.6, 0.7, 0.8, 0.85, 0.9, 0.93, 0.95, 0.97, 0.98, 0.99)  # matched from these


@dataclasses.dataclass(frozen=True)
class MiasImage:
  """One mini-MIAS image of the CV's patients, with its trusted clusters."""

  key: str
  path: str
  patient_id: str
  laterality: str
  clusters: tuple[froc.Cluster, ...]


def mias_images(mias_dir: str, patients: set[str]) -> list[MiasImage]:
  """Every mini-MIAS image of `patients`, with the clusters patch extraction trusts."""
  by_image: dict[str, list[Finding]] = {}
  for f in importers.import_mias(mias_dir):
    by_image.setdefault(f.image_path, []).append(f)
  return [
    MiasImage(
      os.path.splitext(os.path.basename(path))[0],
      path,
      rows[0].patient_id,
      rows[0].laterality,
      froc.clusters_of(rows),
    )
    for path, rows in sorted(by_image.items())
    if rows[0].patient_id in patients
  ]


def read(path: str, pixel_mm: float) -> Mammogram:
  return read_mammogram(path, spacing_options(pixel_mm))


def marked(
  image: MiasImage, speck_map: specks.SpeckMap, rule: specks.SpeckRule
) -> marks.MarkedImage:
  """The image's marks from `speck_map` (default cluster rule), with its clusters."""
  found = marks.mark_image(speck_map, image.key, speck_rule=rule)
  breast = f"{image.patient_id}/{image.laterality}"
  return marks.MarkedImage(
    image.key, image.patient_id, breast, tuple(found), image.clusters, speck_map.image_pixel_mm
  )


def mark_summary(images: Sequence[marks.MarkedImage], resamples: int) -> dict:
  """Clusters with a mark on them, marks per normal image, and the mark FROC by each score."""
  clusters = [
    any(marks.hits(m, c, im.pixel_mm, marks.HIT_DISTANCE_MM) for m in im.marks)
    for im in images
    for c in im.clusters
  ]
  out = {
    "clusters_marked": int(np.sum(clusters)),
    "clusters": len(clusters),
    "marks_per_normal_image": float(np.mean([len(im.marks) for im in images if not im.clusters])),
    "normal_images": sum(not im.clusters for im in images),
  }
  for name, score in SCORES.items():
    evaluation = marks.evaluate_marks(images, score=score, resamples=resamples)
    out[f"froc_{name}"] = {k: evaluation[k] for k in ("metrics", "ci")}
  return out


def speck_counts(found: Sequence[specks.Speck], image: speck_labels.LabelledImage) -> np.ndarray:
  """int [5]: visible inserted specks, those found; specks found near an inserted cluster, those
  that are inserted specks; specks found elsewhere (on the detector's grid: `image`'s)."""
  match = MATCH_MM / speck_labels.PIXEL_MM
  points = np.array([(s.row, s.col) for s in found], np.float64).reshape(-1, 2)
  if image.image.pixel_mm != speck_labels.PIXEL_MM:
    points = np.array([speck_labels.grid_point(r, c, image.image.pixel_mm) for r, c in points])
  truth = image.specks
  distance = np.hypot(*(points[:, None, :] - truth[None, :, :2]).transpose(2, 0, 1))
  visible = truth[:, 2] > 0
  found_visible = int(np.sum((distance <= match).any(0) & visible)) if len(points) else 0
  reach = image.clusters[:, 2] + NEAR_MM / speck_labels.PIXEL_MM
  near = (
    np.hypot(*(points[:, None, :] - image.clusters[None, :, :2]).transpose(2, 0, 1)) <= reach
  ).any(1)
  true = (distance <= match).any(1) if truth.size else np.zeros(len(points), bool)
  return np.array(
    [visible.sum(), found_visible, near.sum(), np.sum(near & true), np.sum(~near)], np.int64
  )


def speck_summary(counts: np.ndarray, images: int) -> dict:
  """Recall and precision from summed `speck_counts`."""
  visible, found, near, true, other = (int(v) for v in counts)
  return {
    "visible_specks": visible,
    "recall_visible": found / visible if visible else float("nan"),
    "specks_near_clusters": near,
    "precision_near_clusters": true / near if near else float("nan"),
    "other_specks_per_image": other / images if images else float("nan"),
    "images": images,
  }


def run_fold(
  fold: dict[str, list[str]],
  cohort: Sequence[speck_labels.CohortImage],
  crops: speck_labels.Crops,
  mias: Sequence[MiasImage],
  args: argparse.Namespace,
  folder: str,
) -> dict:
  """One fold: train on its train patients' crops; choose the network's matched threshold on its
  validation patients' normal images; mark its test patients' images (both maps); count specks
  on its test patients' inserted images."""
  train, validation, test = (set(fold[part]) for part in ("train", "validation", "test"))
  start = time.time()
  config = speck_detector.DetectorConfig(width=args.width, seed=args.seed)
  options = speck_detector.TrainOptions(steps=args.steps, batch=args.batch)
  part = crops.of(train)
  detector, losses = speck_detector.train(part, config, options)
  trained_s = time.time() - start
  matched = matched_threshold(detector, [im for im in mias if im.patient_id in validation])
  meta = {"train_patients": sorted(train), "crops": len(part.labels), "matched": matched}
  speck_detector.save(folder, detector, meta)
  rules = {"classical": specks.SPECK_RULE, **network_rules(args.sweep, matched)}
  out: dict[str, list[marks.MarkedImage]] = {name: [] for name in rules}
  for image in [im for im in mias if im.patient_id in test]:
    for name, speck_map in both_maps(detector, read(image.path, speck_labels.PIXEL_MM)).items():
      for rule_name in [n for n in rules if n.split("@")[0] == name]:
        out[rule_name].append(marked(image, speck_map, rules[rule_name]))
  counts = {name: np.zeros(5, np.int64) for name in rules}
  inserted = [im for im in cohort if im.patient_id in test and im.clusters]
  for image in inserted:
    labelled = speck_labels.labelled(image)
    for name, speck_map in both_maps(detector, read(image.path, image.pixel_mm)).items():
      for rule_name in [n for n in rules if n.split("@")[0] == name]:
        counts[rule_name] += speck_counts(specks.find_specks(speck_map, rules[rule_name]), labelled)
  return {
    "marked": out,
    "specks": counts,
    "matched_threshold": matched,
    "inserted_images": len(inserted),
    "train_crops": len(part.labels),
    "loss_first_last": [float(np.mean(losses[:20])), float(np.mean(losses[-20:]))],
    "train_s": trained_s,
    "total_s": time.time() - start,
  }


def network_rules(sweep: Sequence[float], matched: float) -> dict[str, specks.SpeckRule]:
  """The network's speck rules by name: the fixed thresholds and the matched one."""
  rules = {f"network@{t:g}": specks.SpeckRule(threshold=t) for t in sorted(sweep)}
  return rules | {"network@matched": specks.SpeckRule(threshold=matched)}


def both_maps(detector: speck_detector.SpeckDetector, mammogram: Mammogram) -> dict:
  """The classical and the network speck map of one mammogram."""
  return {
    "classical": specks.mammogram_speck_map(mammogram),
    "network": specks.network_speck_map(detector, mammogram),
  }


def matched_threshold(
  detector: speck_detector.SpeckDetector, validation: Sequence[MiasImage]
) -> float:
  """The lowest of `THRESHOLDS` at which the network puts no more marks on the validation
  patients' normal images than the classical map does (the highest if none does): the two maps
  then compare at one false-mark rate, chosen without the test patients."""
  normals = [im for im in validation if not im.clusters]
  maps = [both_maps(detector, read(im.path, speck_labels.PIXEL_MM)) for im in normals]

  def count(name: str, rule: specks.SpeckRule) -> int:
    return sum(len(marks.mark_image(m[name], "", speck_rule=rule)) for m in maps)

  classical = count("classical", specks.SPECK_RULE)
  for t in THRESHOLDS:
    if count("network", specks.SpeckRule(threshold=t)) <= classical:
      return t
  return THRESHOLDS[-1]


def table(results: dict) -> str:
  """The pooled comparison as a Markdown table."""
  head = (
    "| map | clusters marked | marks / normal image | FROC (specks) @0.5/1/2 FP | "
    "FROC (mean peak) @0.5/1/2 FP | speck recall (visible) | speck precision (near) | "
    "other specks / image |"
  )
  lines = [head, "|" + " --- |" * 8]
  for name, summary in results["marks"].items():
    s = results["specks"][name]
    cells = [
      name,
      f"{summary['clusters_marked']} of {summary['clusters']}",
      f"{summary['marks_per_normal_image']:.2f}",
      *(
        "/".join(
          f"{summary[f'froc_{score}']['metrics'][froc.sensitivity_name(r)]:.2f}" for r in FP_RATES
        )
        for score in SCORES
      ),
      f"{s['recall_visible']:.2f}",
      f"{s['precision_near_clusters']:.2f}",
      f"{s['other_specks_per_image']:.1f}",
    ]
    lines.append("| " + " | ".join(cells) + " |")
  return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> None:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--folds", required=True, help="a CV workdir's folds.json")
  parser.add_argument("--cohort", required=True, help="an inserted cohort's folder (MIAS)")
  parser.add_argument("--mias", default=sources.default_location("mias"))
  parser.add_argument("--output", required=True, help="JSON; fold detectors go beside it")
  parser.add_argument("--only_folds", default="", help="comma-separated fold indices (all: '')")
  parser.add_argument("--sweep", type=float, nargs="*", default=[0.5, 0.7, 0.9])
  parser.add_argument("--steps", type=int, default=400)
  parser.add_argument("--batch", type=int, default=32)
  parser.add_argument("--width", type=int, default=16)
  parser.add_argument("--seed", type=int, default=0)
  parser.add_argument("--resamples", type=int, default=200)
  args = parser.parse_args(argv)
  start = time.time()
  with open(args.folds) as f:
    assignment = json.load(f)["folds"]
  chosen = [int(k) for k in args.only_folds.split(",") if k] or range(len(assignment))
  patients = {p for k in chosen for part in ("test", "validation") for p in assignment[k][part]}
  mias = mias_images(args.mias, patients)
  cohort = speck_labels.read_cohort(args.cohort)
  crops = speck_labels.crops(cohort, halo=speck_detector.HALO, seed=args.seed)
  print(f"{len(crops.labels)} crops of {len(cohort)} cohort images ({time.time() - start:.0f} s)")
  base = os.path.splitext(args.output)[0]
  folds = []
  for k in chosen:
    folds.append(run_fold(assignment[k], cohort, crops, mias, args, f"{base}_fold_{k}"))
    print(f"fold {k}: {json.dumps({n: v for n, v in folds[-1].items() if n.endswith('_s')})}")
  pooled = {name: [im for f in folds for im in f["marked"][name]] for name in folds[0]["marked"]}
  results = {
    "marks": {name: mark_summary(images, args.resamples) for name, images in pooled.items()},
    "specks": {
      name: speck_summary(
        sum(f["specks"][name] for f in folds), sum(f["inserted_images"] for f in folds)
      )
      for name in pooled
    },
    "folds": [
      {k: v for k, v in f.items() if k not in ("marked", "specks")} | {"fold": k}
      for k, f in zip(chosen, folds, strict=True)
    ],
    "settings": vars(args)
    | {"match_mm": MATCH_MM, "near_mm": NEAR_MM, "halo": speck_detector.HALO},
    "run_s": time.time() - start,
  }
  print(table(results))
  print(f"run time {results['run_s']:.0f} s")
  os.makedirs(os.path.dirname(os.path.abspath(args.output)), exist_ok=True)
  files.write_text(args.output, json.dumps(results, indent=2))


if __name__ == "__main__":
  main()
