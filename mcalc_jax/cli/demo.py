"""mcalc-demo: the whole system on a synthetic screening cohort, in one command.

  mcalc-demo --workdir=runs/demo [--patients=40 --epochs=8 --model=alexnet]

Generates synthetic DICOM mammograms with a findings manifest, builds the TFDS patch dataset,
trains Task 1 (calcification vs background) and Task 2 (benign vs malignant), evaluates both on
the test split, writes the Table-2-style report, and scores a few test mammograms into heatmaps
with `mcalc-score`, the same job users run on their archives. Every stage reuses its own job's
library code, so the demo exercises the product, not a copy of it.
"""

from __future__ import annotations

import csv
import os
import pathlib
import runpy
import subprocess
import sys
import time

import ml_collections
from absl import app, flags, logging

_WORKDIR = flags.DEFINE_string("workdir", "runs/demo", "Where everything is written.")
_PATIENTS = flags.DEFINE_integer("patients", 40, "Synthetic patients (4 mammograms each).")
_EPOCHS = flags.DEFINE_integer("epochs", 8, "Training epochs per task.")
_MODEL = flags.DEFINE_enum("model", "alexnet", ["alexnet", "resnet18", "resnet34"], "Network.")
_DIFFICULTY = flags.DEFINE_float("difficulty", 0.5, "Synthetic speck subtlety, 0 (easy) to 1.")
_HEATMAPS = flags.DEFINE_integer(
  "heatmaps", 4, "Test mammograms to score into heatmaps (0: skip the scoring step)."
)
_SEED = flags.DEFINE_integer("seed", 0, "Seeds the cohort, the splits and the training.")

CONFIGS = pathlib.Path(__file__).resolve().parents[2] / "configs"


def _config(relative: str) -> ml_collections.ConfigDict:
  """A config file of the repository's configs/ folder (they are files, not a package)."""
  path = CONFIGS / relative
  if not path.is_file():
    raise FileNotFoundError(
      f"{path} not found: mcalc-demo runs from a source checkout (pip install -e .)"
    )
  return runpy.run_path(str(path))["get_config"]()


def _stage(message: str) -> None:
  print(f"\n== {message}", flush=True)


def build_dataset(workdir: str, patients: int, difficulty: float, seed: int):
  """Generates the cohort and builds its TFDS patch dataset; returns the builder."""
  from mcalc_jax.cli import prepare

  data = _config("data/synthetic.py")
  data.location = os.path.join(workdir, "cohort")
  data.synthetic.num_patients = patients
  data.synthetic.difficulty = difficulty
  data.synthetic.seed = seed
  builder = prepare.prepare(data, os.path.join(workdir, "tfds"))
  print(prepare.counts_table(builder), flush=True)
  return builder


def train_task(task: int, workdir: str, builder, epochs: int, model: str, seed: int) -> str:
  """Trains and evaluates one task; returns its run directory."""
  from mcalc_jax import evaluation, train

  config = _config(f"task{task}_{model}.py")
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
  """Writes a manifest of `count` test-split mammograms with calcifications; returns its path."""
  from input_pipeline import manifest

  test_patients = {
    p for p, info in builder.info.metadata["patients"].items() if info["split"] == "test"
  }
  findings = [
    f
    for f in manifest.read_manifest(os.path.join(cohort, "manifest.csv"))
    if f.patient_id in test_patients and f.abnormality == "calcification"
  ]
  images = list(dict.fromkeys(f.image_path for f in findings))[:count]
  chosen = [f for f in findings if f.image_path in images]
  path = os.path.join(os.path.dirname(cohort), "heatmap_inputs.csv")
  manifest.write_manifest(path, chosen)
  return path


def score(task1_dir: str, task2_dir: str, inputs: str, output: str) -> None:
  """Runs the `mcalc-score` job itself on the chosen mammograms."""
  command = [
    sys.executable,
    "-m",
    "mcalc_jax.cli.score",
    f"--workdir={task1_dir}",
    f"--task2_workdir={task2_dir}",
    f"--input={inputs}",
    f"--output={output}",
    "--verbosity=-1",  # warnings and the progress bar only, like the rest of the demo
  ]
  subprocess.run(command, check=True)


def _print_summary(workdir: str, run_dirs: list[str], table: str, heatmaps: str | None) -> None:
  print(pathlib.Path(table).read_text(), flush=True)
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
  from mcalc_jax import report

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
  output = None
  if heatmaps > 0:
    _stage(f"5/5 heatmaps of {heatmaps} test mammograms with mcalc-score")
    inputs = test_mammograms(builder, os.path.join(workdir, "cohort"), heatmaps)
    output = os.path.join(workdir, "heatmaps")
    score(run_dirs[0], run_dirs[1], inputs, output)
  _print_summary(workdir, run_dirs, table, output)
  print(f"\nmcalc-demo finished in {time.time() - start:.0f} s", flush=True)


def main(argv: list[str]) -> None:
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {argv[1:]}")
  logging.set_verbosity(logging.WARNING)
  from mcalc_jax import parallel  # noqa: PLC0415 (imports JAX: after the flags are parsed)

  parallel.enable_compilation_cache()
  run_demo(
    os.path.abspath(_WORKDIR.value),
    patients=_PATIENTS.value,
    epochs=_EPOCHS.value,
    model=_MODEL.value,
    difficulty=_DIFFICULTY.value,
    heatmaps=_HEATMAPS.value,
    seed=_SEED.value,
  )


def run() -> None:
  app.run(main)


if __name__ == "__main__":
  run()
