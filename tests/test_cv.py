"""Cross-validation: every patient predicted once by a model that never saw it; reruns resume."""

from __future__ import annotations

import dataclasses
import json
import os
import pathlib
import shutil
import subprocess
import sys

import ml_collections
import numpy as np
import pytest

from input_pipeline import prepare
from input_pipeline.manifest import read_manifest, write_manifest
from mcalc_jax.archives import discovery
from mcalc_jax.base import csvlog
from mcalc_jax.configs import data, default
from mcalc_jax.experiments import cv, folds, localization, marking
from mcalc_jax.reports import report
from mcalc_jax.whole_image import bilateral, marks, reranking
from tests.test_tfds_builder import NUM_PATIENTS, build, write_cohort

REPO = pathlib.Path(__file__).parents[1]
FOLDS = 3


def build_dataset(folder) -> str:
  """A tiny patch dataset: two views per patient, a benign or malignant cluster in each.

  Every patient has a cluster so that each fold's validation part (20% of each label stratum of
  its training part) holds calcification patches.
  """
  manifest = write_cohort(folder, cluster_every=1, corrupt=False)
  return str(build(manifest, str(folder / "tfds"), name="cvtiny").data_dir_root)


def tiny_config(model: str, data_dir: str, **overrides) -> ml_collections.ConfigDict:
  """`model` on the tiny cohort's 32x32 patches, 2 steps per fold."""
  config = default.get_config(f"model={model}")
  config.update(
    dict(
      dataset="mcalc_patches/cvtiny",
      data_dir=data_dir,
      patch_size=32,
      batch_size=4,
      eval_batch_size=8,
      num_train_steps=2,
      eval_every_steps=2,
      log_every_steps=1,
      async_checkpointing=False,
      **overrides,
    )
  )
  config.preprocess.input_size = 32
  config.cv.bootstrap_resamples = 20
  return config


@pytest.fixture(scope="module")
def finished(tmp_path_factory):
  """A 3-fold cross-validation of ResNet18 on 32x32 patches, 2 steps per fold."""
  folder = tmp_path_factory.mktemp("cv")
  config = tiny_config("resnet18", build_dataset(folder))
  workdir = folder / "run"
  summary = cv.cross_validate(config, workdir, FOLDS, seed=0)
  return config, workdir, summary


def test_no_patient_is_predicted_by_a_model_that_trained_on_it(finished):
  _, workdir, _ = finished
  assignment = json.loads((workdir / folds.FOLDS_FILE).read_text())["folds"]
  assert len(assignment) == FOLDS
  for i, fold in enumerate(assignment):
    seen = set(fold["train"]) | set(fold["validation"])
    assert not seen & set(fold["test"])
    preds = folds.load_predictions(workdir / f"fold_{i}" / folds.PREDICTIONS_FILE)
    assert set(preds["test"]["patient_id"]) <= set(fold["test"])
    assert not set(preds["test"]["patient_id"]) & seen
    assert set(preds["validation"]["patient_id"]) <= set(fold["validation"])


def test_every_patient_is_predicted_exactly_once(finished):
  _, workdir, summary = finished
  assignment = json.loads((workdir / folds.FOLDS_FILE).read_text())["folds"]
  assert sorted(p for f in assignment for p in f["test"]) == [f"p{p}" for p in range(NUM_PATIENTS)]
  predicted_by = {}
  for i in range(FOLDS):
    preds = folds.load_predictions(workdir / f"fold_{i}" / folds.PREDICTIONS_FILE)
    for patient in set(preds["test"]["patient_id"]):
      assert patient not in predicted_by, (
        f"{patient} predicted by folds {predicted_by[patient]}, {i}"
      )
      predicted_by[patient] = i
  assert sorted(predicted_by) == sorted(f"p{p}" for p in range(NUM_PATIENTS))
  assert summary["pooled_counts"]["patients"] == NUM_PATIENTS


def test_pooled_evaluation_is_readable_by_the_report(finished):
  config, workdir, summary = finished
  assert (workdir / "eval" / "test" / "metrics.json").is_file()
  evaluation = report.load_evaluation(workdir)
  assert evaluation["run"]["network"] == "resnet18" and evaluation["run"]["task"] == 1
  assert report.table_rows([evaluation])
  on_disk = json.loads((workdir / cv.SUMMARY_FILE).read_text())
  assert len(on_disk["per_fold"]) == FOLDS and set(on_disk["spread"]) == {"auc", "accuracy"}
  assert on_disk == json.loads(json.dumps(summary))


def test_rerun_skips_finished_folds(finished):
  config, workdir, summary = finished
  paths = [workdir / f"fold_{i}" / folds.PREDICTIONS_FILE for i in range(FOLDS)]
  before = [os.stat(p).st_mtime_ns for p in paths]
  again = cv.cross_validate(config, workdir, FOLDS, seed=0)
  assert [os.stat(p).st_mtime_ns for p in paths] == before
  assert again["per_fold"] == summary["per_fold"]
  with pytest.raises(ValueError, match="other folds"):
    cv.cross_validate(config, workdir, FOLDS, seed=1)


def test_lost_fold_predictions_are_redone_from_its_checkpoint(finished):
  config, workdir, summary = finished
  path = workdir / "fold_1" / folds.PREDICTIONS_FILE
  before = folds.load_predictions(path)
  path.unlink()
  again = cv.cross_validate(config, workdir, FOLDS, seed=0)
  after = folds.load_predictions(path)
  np.testing.assert_allclose(after["test"]["prob"], before["test"]["prob"], rtol=1e-5)
  assert list(after["test"]["patient_id"]) == list(before["test"]["patient_id"])
  assert again["pooled_counts"] == summary["pooled_counts"]


def test_the_cli_reruns_a_cross_validation_from_its_folder_alone(finished):
  """WORKDIR/config.json records the experiment, evaluation settings included: `mcalc-cv
  --workdir=WORKDIR` repeats it; a config that would train something else is refused."""
  config, workdir, summary = finished
  recorded = json.loads((workdir / "config.json").read_text())
  assert recorded["cv"]["bootstrap_resamples"] == 20 and recorded["whole_image"]["rerank"]
  command = [sys.executable, "-m", "mcalc_jax.cli.cv", f"--workdir={workdir}"]
  result = subprocess.run(
    command, cwd=REPO, capture_output=True, text=True, timeout=300, check=False
  )
  assert result.returncode == 0, result.stderr[-3000:]
  printed = json.loads(result.stdout[result.stdout.index("{") :])
  assert printed == json.loads(json.dumps(summary))

  def refused(*overrides: str) -> str:
    args = [
      *command,
      "--config=configs/default.py",
      f"--config.dataset={config.dataset}",
      *overrides,
    ]
    bad = subprocess.run(args, cwd=REPO, capture_output=True, text=True, timeout=300, check=False)
    assert bad.returncode != 0
    return bad.stderr

  assert "learning_rat" in refused("--config.learning_rat=1")
  assert "records another training" in refused()  # AlexNet at 112 pixels, not this ResNet18


def test_the_classical_floor_cross_validates_mines_and_localises_every_image_once(tmp_path):
  """The top-hat floor through the same folds as the networks, with a round of hard-negative
  mining from each fold's training images, its whole images scored out of fold: every image
  once, by the fold that held its patient out."""
  config = tiny_config("tophat", build_dataset(tmp_path), learning_rate=0.01)
  config.preprocess.update(dict(blur_sigma=0.0, normalization="unit"))
  findings = read_manifest(tmp_path / "manifest.csv")
  cv.cross_validate(config, tmp_path / "run", FOLDS, seed=0)
  config.whole_image.update(source="manifest", location=str(tmp_path / "manifest.csv"))
  config.whole_image.batch_size = 16
  # a reranker for digital archives, fitted on a cohort of clusters (this one, standing in for
  # insertions into real FFDM)
  config.whole_image.digital_cohort = str(tmp_path)
  config.cv.update(mining_rounds=1, mining_per_image=1)
  # the same run given whole images and a round of mining goes on from its folds
  summary = cv.cross_validate(config, tmp_path / "run", FOLDS, seed=0)

  assignment = json.loads((tmp_path / "run" / folds.FOLDS_FILE).read_text())["folds"]
  scored = {
    row[0]: i
    for i in range(FOLDS)
    for row in csvlog.read_log(
      str(tmp_path / "run" / f"fold_{i}" / localization.IMAGES_DIR / "scores.csv")
    )[1]
  }
  inputs = discovery.inputs_from_findings(findings, localization.WholeImagePass(findings).base)
  patient = {f.image_path: f.patient_id for f in findings}
  assert sorted(scored) == sorted(i.key for i in inputs)  # every image, once
  for item in inputs:
    assert patient[item.path] in assignment[scored[item.key]]["test"]
  for i, fold in enumerate(assignment):  # mined from the fold's training patients only
    with np.load(tmp_path / "run" / f"fold_{i}" / "mined_1.npz") as mined:
      assert set(mined["patient_id"]) <= set(fold["train"]) and len(mined["patient_id"])
    assert (tmp_path / "run" / f"fold_{i}" / "round_1" / "config.json").exists()
  froc_json = json.loads((tmp_path / "run" / "eval" / "froc" / "froc.json").read_text())
  assert froc_json["counts"]["clusters"] == NUM_PATIENTS  # one cluster per patient
  assert summary["whole_image"]["counts"]["images"] == 2 * NUM_PATIENTS
  reranked = summary["whole_image"]["reranked"]  # the default tile reranker, refitted per fold
  assert reranked["mode"] == "classical" and reranked["counts"] == summary["whole_image"]["counts"]
  assert (tmp_path / "run" / "eval" / "froc_reranked" / "froc.json").exists()
  # read against the other breast as well: these images state no laterality, so none has a
  # partner and the bilateral reading equals the plain one
  for whole in (summary["whole_image"], reranked):
    assert whole["bilateral"]["weight"] == bilateral.DEFAULT_WEIGHT
    assert whole["bilateral"]["metrics"] == whole["metrics"]
  for name in ("froc_bilateral", "froc_reranked_bilateral"):
    assert (tmp_path / "run" / "eval" / name / "froc.json").exists()
  for i in range(FOLDS):
    reranking.load(tmp_path / "run" / f"fold_{i}" / localization.RERANKER_FILE)
  # each saved reranker carries the threshold of the out-of-fold FROC at 1 FP per image
  assert reranking.load(tmp_path / "run" / localization.RERANKER_FILE).threshold == pytest.approx(
    reranked["threshold"]
  )
  digital = reranking.load(tmp_path / "run" / localization.DIGITAL_RERANKER_FILE)
  assert digital.features == reranking.DEFAULT_FEATURES
  assert digital.threshold == pytest.approx(reranked["digital"]["threshold"])
  # its inserted clusters found out of background image (each image by one fitted on the others')
  assert reranked["digital"]["counts"]["images"] == 2 * NUM_PATIENTS  # scored by fold 0's model
  assert reranked["digital"]["counts"]["clusters"] == NUM_PATIENTS
  digital_marks = summary["whole_image"]["marks"]["digital"]
  if "skipped" not in digital_marks:
    marks.load(tmp_path / "run" / marking.DIGITAL_CLASSIFIER_FILE)
    assert digital_marks["counts"]["clusters"] == NUM_PATIENTS
  assert len(list((tmp_path / "run" / marking.DIGITAL_DIR).rglob("*.npz"))) == 2 * NUM_PATIENTS
  recorded = json.loads((tmp_path / "run" / "config.json").read_text())
  assert recorded["whole_image"]["source"] == "manifest" and recorded["cv"]["mining_rounds"] == 1
  assert cv.rerun(tmp_path / "run") == summary  # from the folder alone


def test_calibrated_pooling_keeps_every_folds_ranking(finished, tmp_path):
  """`calibrate=True` Platt-scales each fold on its validation part before pooling: the folds'
  own AUCs stay, the pooled probabilities move onto one scale (the saved predictions stay raw)."""
  config, workdir, summary = finished
  copy = tmp_path / "run"
  shutil.copytree(workdir, copy)
  config = ml_collections.ConfigDict(config.to_dict())
  config.cv.calibrate = True
  calibrated = cv.cross_validate(config, copy, FOLDS, seed=0)
  assert [f["auc"] for f in calibrated["per_fold"]] == [f["auc"] for f in summary["per_fold"]]
  assert len(calibrated["calibration"]) == FOLDS and summary["calibration"] is None
  raw = folds.load_predictions(copy / "fold_0" / folds.PREDICTIONS_FILE)
  np.testing.assert_array_equal(
    raw["test"]["prob"],
    folds.load_predictions(workdir / "fold_0" / folds.PREDICTIONS_FILE)["test"]["prob"],
  )


def test_training_only_patches_never_reach_a_folds_validation_or_test_patients():
  """Inserted clusters of a cohort patient train only the folds that train on that patient;
  those of patients outside the cohort (synthetic) train every fold."""

  def patches(patients: list[str], label: int) -> dict[str, np.ndarray]:
    n = len(patients)
    return {
      "image": np.zeros((n, 8, 8, 1), np.uint16),
      "max_value": np.full(n, 255, np.int32),
      "task1_label": np.full(n, label, np.int32),
      "task2_label": np.full(n, -1, np.int32),
      "patient_id": np.array(patients),
      "image_id": np.array(patients),
      "finding_id": np.array([""] * n),
      "patch_id": np.array([f"{p}/{label}" for p in patients]),
    }

  cohort = patches(["a", "a", "b", "b", "c", "c"], 0)
  cohort["task1_label"][::2] = 1
  inserted = patches(["a", "b", "c", "synthetic_1"], 1)
  config = tiny_config("tophat", "")
  fold = {"train": ["a"], "validation": ["b"], "test": ["c"]}
  hybrid = folds.Patches(cohort, {}, 11.2, train_only=inserted)

  def patients(split: str, train_only: str = "mix") -> list[str]:
    data = folds.fold_data(hybrid, fold, config, train_only=train_only)
    return sorted(
      str(p)
      for batch in data.eval_batches(split)
      for p, real in zip(batch["patient_id"], batch["mask"], strict=True)
      if real
    )

  assert patients(config.train_split) == ["a", "a", "a", "synthetic_1"]  # a's two, + inserted
  assert patients(config.eval_split) == ["b", "b"] and patients(config.test_split) == ["c", "c"]
  # pretraining on the inserted alone, then fine-tuning on the real alone; both stop on real b
  assert patients(config.train_split, "pretrain") == ["a", "synthetic_1"]
  assert patients(config.train_split, "") == ["a", "a"]
  assert patients(config.eval_split, "pretrain") == ["b", "b"]


def test_a_hybrid_dataset_prepares_and_trains_every_fold_beside_the_real_patches(tmp_path):
  """Clusters inserted into the cohort's own images without calcifications (its MLO views)
  become a dataset (`mcalc-prepare`'s `source=inserted`) that a cross-validation trains on
  besides the real patches; the pooled evaluation still holds the real patches alone."""
  data_dir = build_dataset(tmp_path)
  backgrounds = [
    dataclasses.replace(f, image_path=str(tmp_path / f.image_path), pixel_spacing_mm=0.4)
    for f in read_manifest(tmp_path / "manifest.csv")
  ]
  write_manifest(tmp_path / "backgrounds.csv", backgrounds)
  inserted = data.get_config("source=inserted,background=manifest")
  inserted.insertion.update(background_location=str(tmp_path / "backgrounds.csv"), limit=6)
  inserted.patch.update(size=32, per_cluster=1)
  builder = prepare.prepare(inserted, data_dir)
  written = read_manifest(os.path.join(data_dir, "inserted_manifest_0", "manifest.csv"))
  assert {f.note for f in written if f.abnormality == "calcification"} == {"inserted"}
  assert builder.info.metadata["counts"]["train"]  # inserted clusters cut into patches

  config = tiny_config("tophat", data_dir, learning_rate=0.01)
  config.preprocess.update(dict(blur_sigma=0.0, normalization="unit"))
  config.cv.train_also = f"mcalc_patches/{inserted.name}"
  hybrid = cv.cross_validate(config, tmp_path / "hybrid", FOLDS)
  real = folds.load_patches(config.dataset, data_dir).arrays
  assert hybrid["pooled_counts"]["examples"] == len(real["image"])  # every real patch, once
  assert hybrid["pooled_counts"]["patients"] == NUM_PATIENTS
  recorded = json.loads((tmp_path / "hybrid" / "config.json").read_text())
  assert recorded["cv"]["train_also"] == f"mcalc_patches/{inserted.name}"

  # the other arm: each fold pretrains on the inserted clusters, then fine-tunes on real patches
  config.cv.train_also_as = "pretrain"
  tuned = cv.cross_validate(config, tmp_path / "pretrained", FOLDS)
  assert tuned["pooled_counts"] == hybrid["pooled_counts"]
  for i in range(FOLDS):
    fold_dir = tmp_path / "pretrained" / f"fold_{i}"
    fine_tuned = json.loads((fold_dir / "config.json").read_text())
    assert fine_tuned["init_from"] == str(fold_dir / cv.PRETRAINING_DIR)
    assert (fold_dir / cv.PRETRAINING_DIR / "config.json").exists()
