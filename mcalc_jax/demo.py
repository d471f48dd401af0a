"""The whole system on a synthetic screening cohort, in one call (the `mcalc-demo` job).

Generates synthetic DICOM mammograms with a findings manifest, builds the TFDS patch dataset,
trains Task 1 (calcification vs background) and Task 2 (benign vs malignant), evaluates both on
the test split, writes the Table-2-style report, and scores a few test mammograms into heatmaps
with the archive-scoring job users run on their archives. Every stage calls its own job's
library code, so the demo exercises the product, not a copy of it.
"""

from __future__ import annotations

import csv
import os
import pathlib
import time

from input_pipeline import manifest, prepare
from mcalc_jax import archive, evaluation, froc, report, train
from mcalc_jax.configs import data as configs_data
from mcalc_jax.configs import default as configs_default


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


def test_mammograms(builder, cohort: str, count: int) -> str:
  """Writes a manifest of `count` test-split mammograms, those with calcifications first, with
  all their findings; returns its path."""
  test_patients = {
    p for p, info in builder.info.metadata["patients"].items() if info["split"] == "test"
  }
  findings = [
    f
    for f in manifest.read_manifest(os.path.join(cohort, "manifest.csv"))
    if f.patient_id in test_patients
  ]
  with_clusters = {f.image_path for f in findings if f.abnormality == "calcification"}
  ordered = sorted(
    dict.fromkeys(f.image_path for f in findings), key=lambda p: p not in with_clusters
  )
  chosen = [f for f in findings if f.image_path in set(ordered[:count])]
  path = os.path.join(os.path.dirname(cohort), "heatmap_inputs.csv")
  manifest.write_manifest(path, chosen)
  return path


def localisation(inputs: str, heatmaps: str) -> dict:
  """Whole-image evaluation of the scored test mammograms, and how often the hottest tile of an
  image with clusters lies on one of them (its best cluster ranks first)."""
  result = froc.evaluate_scored_folder(heatmaps, inputs, resamples=200)
  best: dict[str, int] = {}
  for c in result["clusters"]:
    rank = c["rank"] if c["rank"] is not None else 10**9
    best[c["image"]] = min(best.get(c["image"], rank), rank)
  result["hottest_on_a_cluster"] = {"images": len(best), "hits": sum(r == 1 for r in best.values())}
  return result


def _print_summary(
  workdir: str, run_dirs: list[str], table: str, heatmaps: str | None, found: dict | None
) -> None:
  print(pathlib.Path(table).read_text(), flush=True)
  if found is not None:
    hot, m = found["hottest_on_a_cluster"], found["metrics"]
    print(
      f"Whole test mammograms: the hottest tile is on a cluster in {hot['hits']} of "
      f"{hot['images']} images with clusters; cluster sensitivity "
      f"{m['sensitivity_at_1_fp']:.2f} at 1 false-positive region per image "
      f"({found['counts']['clusters']} clusters, {found['counts']['images']} images).",
      flush=True,
    )
  _stage("where everything is")
  for label, path in [("cohort (DICOM + manifest.csv)", "cohort"), ("TFDS dataset", "tfds")]:
    print(f"  {label:32s} {os.path.join(workdir, path)}")
  for run_dir in run_dirs:
    print(f"  {'run (TensorBoard, checkpoints)':32s} {run_dir}")
    print(f"  {'  test metrics, ROC, calibration':32s} {os.path.join(run_dir, 'eval', 'test')}")
  print(f"  {'Table 2 report':32s} {table}")
  if heatmaps is not None:
    with open(os.path.join(heatmaps, "scores.csv"), newline="") as f:
      rows = list(csv.DictReader(f))
    print(f"  {'heatmaps (' + str(len(rows)) + ' images)':32s} {heatmaps}")
    print(f"  {'  FROC, cluster ranks':32s} {os.path.join(heatmaps, 'froc')}")


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
  _stage(f"1/5 synthetic cohort of {patients} patients and its TFDS patch dataset")
  builder = build_dataset(workdir, patients, difficulty, seed)
  run_dirs = []
  for task in (1, 2):
    _stage(f"{task + 1}/5 training and evaluating Task {task} ({model}, {epochs} epochs)")
    run_dirs.append(train_task(task, workdir, builder, epochs, model, seed))
  _stage("4/5 Table 2 report")
  table, _ = report.write_report(run_dirs, os.path.join(workdir, "table2"))
  output, found = None, None
  if heatmaps > 0:
    _stage(f"5/5 heatmaps of up to {heatmaps} test mammograms with mcalc-score, and their FROC")
    inputs = test_mammograms(builder, os.path.join(workdir, "cohort"), heatmaps)
    output = os.path.join(workdir, "heatmaps")
    archive.score_job(
      archive.ScoreOptions(
        workdir=run_dirs[0], task2_workdir=run_dirs[1], input=inputs, output=output
      )
    )
    found = localisation(inputs, output)
  _print_summary(workdir, run_dirs, table, output, found)
  print(f"\nmcalc-demo finished in {time.time() - start:.0f} s", flush=True)
