"""The whole system on a synthetic screening cohort, in one call (the `mcalc-demo` job).

Generates synthetic DICOM mammograms with a findings manifest, builds the TFDS patch dataset,
trains Task 1 (calcification vs background) and Task 2 (benign vs malignant), evaluates both on
the test split, writes the Table-2-style report, fits the tile reranker on the whole mammograms
of the training and validation patients, and scores a few test mammograms into heatmaps with the
archive-scoring job users run on their archives, by the network alone and reranked with CAD marks
(their cluster classifier fitted on the validation patients' mammograms). Every stage
calls its own job's library code, so the demo exercises the product, not a copy of it.
"""

from __future__ import annotations

import csv
import dataclasses
import os
import pathlib
import time

from input_pipeline import manifest, prepare, sources
from mcalc_jax.archives import archive, scored
from mcalc_jax.configs import data as configs_data
from mcalc_jax.configs import default as configs_default
from mcalc_jax.experiments import marking
from mcalc_jax.model import train
from mcalc_jax.reports import evaluation, report
from mcalc_jax.whole_image import froc, reranking


def _stage(message: str) -> None:
  print(f"\n== {message}", flush=True)


def build_dataset(workdir: str, patients: int, difficulty: float, seed: int):
  """Generates the cohort and builds its TFDS patch dataset; returns the builder."""
  fov = configs_default.FIELD_OF_VIEW_MM  # patches in the default recipe's millimetres
  data = configs_data.get_config(f"source=synthetic,field_of_view_mm={fov}")
  data.location = os.path.join(workdir, "cohort")
  data.synthetic.num_patients = patients
  data.synthetic.difficulty = difficulty
  data.synthetic.seed = seed
  builder = prepare.prepare(data, os.path.join(workdir, "tfds"))
  print(prepare.counts_table(builder), flush=True)
  return builder


def train_task(task: int, workdir: str, builder, epochs: int, model: str, seed: int) -> str:
  """Trains and evaluates one task; returns its run directory."""
  config = configs_default.get_config(f"task={task},model={model}")
  config.dataset = f"{builder.name}/{builder.builder_config.name}"
  config.data_dir = os.path.join(workdir, "tfds")
  config.num_epochs = epochs
  config.seed = seed
  run_dir = os.path.join(workdir, f"task{task}_{model}")
  summary = train.train_and_evaluate(config, run_dir)
  print(
    f"task {task}: best validation {config.early_stopping_metric} "
    f"{summary['best_value']:.3f} at step {summary['best_step']}",
    flush=True,
  )
  evaluation.evaluate_run(run_dir, split="test")
  return run_dir


def split_mammograms(
  builder, cohort: str, splits: tuple[str, ...], name: str, count: int | None = None
) -> tuple[str, int]:
  """Writes a manifest of (up to `count`) mammograms of the `splits`' patients, those with
  calcifications first, with all their findings; returns its path and how many it holds."""
  patients = {p for p, info in builder.info.metadata["patients"].items() if info["split"] in splits}
  findings = [f for f in sources.read_manifest_at(cohort) if f.patient_id in patients]
  with_clusters = {f.image_path for f in findings if f.abnormality == "calcification"}
  ordered = sorted(
    dict.fromkeys(f.image_path for f in findings), key=lambda p: p not in with_clusters
  )
  chosen = set(ordered[:count])
  path = os.path.join(os.path.dirname(cohort), name)
  manifest.write_manifest(path, [f for f in findings if f.image_path in chosen])
  return path, len(chosen)


def fit_reranker(builder, workdir: str, task1_run: str) -> tuple[str, int]:
  """Scores every mammogram of the training and validation patients and fits the tile reranker
  on their tiles (`mcalc-score`, then `mcalc-rerank`); returns its path and the image count.
  Its features are classical, so the patients the network trained on are fair to fit on."""
  cohort = os.path.join(workdir, "cohort")
  inputs, count = split_mammograms(builder, cohort, ("train", "validation"), "reranker_inputs.csv")
  scores = os.path.join(workdir, "reranker_fit")
  archive.score_job(
    archive.ScoreOptions(workdir=task1_run, input=inputs, output=scores, overlays=False)
  )
  path = os.path.join(workdir, "reranker.json")
  reranking.save(path, scored.fit_scored_folder(scores, inputs))
  return path, count


def fit_mark_classifier(builder, workdir: str, task1_run: str, reranker: str) -> str:
  """Scores the validation patients' mammograms (the network never trained on them) with the
  tile reranker and fits the CAD marks' cluster classifier on their marks; returns its path."""
  inputs, _ = split_mammograms(
    builder, os.path.join(workdir, "cohort"), ("validation",), "marks_inputs.csv"
  )
  scores = os.path.join(workdir, "marks_fit")
  archive.score_job(
    archive.ScoreOptions(
      workdir=task1_run, input=inputs, output=scores, overlays=False, reranker=reranker
    )
  )
  images, readable = scored.read_scored_folder(scores, inputs)
  classifier = marking.fit_on(pathlib.Path(scores), marking.Marking(), images, readable)
  path = os.path.join(workdir, marking.CLASSIFIER_FILE)
  reranking.save(path, classifier)
  return path


def localisation(inputs: str, heatmaps: str) -> dict:
  """Whole-image evaluation of the scored test mammograms, and how often the hottest tile of an
  image with clusters lies on one of them (its best cluster ranks first); with CAD marks, their
  mark FROC too (`found["marks"]`)."""
  result = scored.evaluate_scored_folder(heatmaps, inputs, resamples=200)
  best: dict[str, int] = {}
  for c in result["clusters"]:
    rank = c["rank"] if c["rank"] is not None else 10**9
    best[c["image"]] = min(best.get(c["image"], rank), rank)
  result["hottest_on_a_cluster"] = {"images": len(best), "hits": sum(r == 1 for r in best.values())}
  return result


@dataclasses.dataclass(frozen=True)
class Localised:
  """The scored test mammograms of one whole-image decision and their evaluation."""

  label: str
  heatmaps: str
  found: dict


def score_test_mammograms(
  run_dirs: list[str], inputs: str, output: str, reranker: str = "", mark_classifier: str = ""
) -> dict:
  """`mcalc-score` of the test mammograms (Task 2 where Task 1 fires), then their FROC."""
  archive.score_job(
    archive.ScoreOptions(
      workdir=run_dirs[0],
      task2_workdir=run_dirs[1],
      input=inputs,
      output=output,
      reranker=reranker,
      mark_classifier=mark_classifier,
    )
  )
  return localisation(inputs, output)


def _print_localisation(network: Localised, reranked: Localised, fitted_on: int) -> None:
  counts = network.found["counts"]
  hits = [r.found["hottest_on_a_cluster"]["hits"] for r in (network, reranked)]
  with_clusters = network.found["hottest_on_a_cluster"]["images"]
  sensitivity = [r.found["metrics"][froc.sensitivity_name(1.0)] for r in (network, reranked)]
  print(
    f"Whole test mammograms ({counts['clusters']} clusters in {with_clusters} of "
    f"{counts['images']} images): the hottest tile is on a cluster in {hits[1]} of "
    f"{with_clusters} after the tile reranker (fitted on the {fitted_on} mammograms of the "
    f"training and validation patients), {hits[0]} by the network alone; cluster sensitivity at "
    f"1 false-positive region per image {sensitivity[1]:.2f} and {sensitivity[0]:.2f}.",
    flush=True,
  )
  found = reranked.found.get("marks")
  if found is not None:
    point = found["metrics"][froc.sensitivity_name(0.5)]
    print(
      f"CAD marks (specks grouped into clusters, scored by the cluster classifier fitted on the "
      f"validation patients): {found['counts']['marks_per_image']:.1f} marks per image, cluster "
      f"sensitivity at 0.5 false marks per image {point:.2f}.",
      flush=True,
    )


def _print_summary(
  workdir: str,
  run_dirs: list[str],
  table: str,
  localised: list[Localised],
  reranker: tuple[str, int] | None,
) -> None:
  print(pathlib.Path(table).read_text(), flush=True)
  if reranker is not None:
    _print_localisation(*localised, reranker[1])
  _stage("where everything is")
  for label, path in [("cohort (DICOM + manifest.csv)", "cohort"), ("TFDS dataset", "tfds")]:
    print(f"  {label:32s} {os.path.join(workdir, path)}")
  for run_dir in run_dirs:
    print(f"  {'run (TensorBoard, checkpoints)':32s} {run_dir}")
    print(f"  {'  test metrics, ROC, calibration':32s} {os.path.join(run_dir, 'eval', 'test')}")
  print(f"  {'Table 2 report':32s} {table}")
  if reranker is not None:
    print(f"  {'tile reranker':32s} {reranker[0]}")
    print(f"  {'CAD marks classifier':32s} {os.path.join(workdir, marking.CLASSIFIER_FILE)}")
  for result in localised:
    with open(os.path.join(result.heatmaps, "scores.csv"), newline="") as f:
      count = len(list(csv.DictReader(f)))
    print(f"  {f'heatmaps, {result.label} ({count} images)':32s} {result.heatmaps}")
    print(f"  {'  FROC, cluster ranks':32s} {os.path.join(result.heatmaps, 'froc')}")
    if "marks" in result.found:
      froc_dir = os.path.join(result.heatmaps, "froc")
      print(f"  {'  marks.csv, mark FROC':32s} {os.path.join(froc_dir, scored.MARKS_FOLDER)}")
      print(
        f"  {'  marks and tiles read together':32s} {os.path.join(froc_dir, scored.READING_FOLDER)}"
      )


def run_demo(
  workdir: str,
  *,
  patients: int,
  epochs: int,
  model: str,
  difficulty: float,
  heatmaps: int,
  seed: int,
) -> None:
  """Every stage of the system, in order, on a synthetic cohort."""
  start = time.time()
  os.makedirs(workdir, exist_ok=True)
  stages = 6 if heatmaps > 0 else 4
  _stage(f"1/{stages} synthetic cohort of {patients} patients and its TFDS patch dataset")
  builder = build_dataset(workdir, patients, difficulty, seed)
  run_dirs = []
  for task in (1, 2):
    _stage(f"{task + 1}/{stages} training and evaluating Task {task} ({model}, {epochs} epochs)")
    run_dirs.append(train_task(task, workdir, builder, epochs, model, seed))
  _stage(f"4/{stages} Table 2 report")
  table, _ = report.write_report(run_dirs, os.path.join(workdir, "table2"))
  localised, reranker = [], None
  if heatmaps > 0:
    _stage(
      f"5/{stages} tile reranker on the training and validation patients' whole mammograms, "
      "CAD marks' classifier on the validation patients'"
    )
    reranker = fit_reranker(builder, workdir, run_dirs[0])
    classifier = fit_mark_classifier(builder, workdir, run_dirs[0], reranker[0])
    _stage(f"6/{stages} heatmaps of up to {heatmaps} test mammograms with mcalc-score, and FROC")
    cohort = os.path.join(workdir, "cohort")
    inputs, _ = split_mammograms(builder, cohort, ("test",), "heatmap_inputs.csv", heatmaps)
    for label, name, rerank, classified in (
      ("network", "heatmaps", "", ""),
      ("reranked, with CAD marks", "heatmaps_reranked", reranker[0], classifier),
    ):
      output = os.path.join(workdir, name)
      found = score_test_mammograms(run_dirs, inputs, output, rerank, classified)
      localised.append(Localised(label, output, found))
  _print_summary(workdir, run_dirs, table, localised, reranker)
  print(f"\nmcalc-demo finished in {time.time() - start:.0f} s", flush=True)
