"""Cross-validation: every patient predicted once by a model that never saw it; reruns resume."""

from __future__ import annotations

import json
import os
import pathlib
import shutil
import subprocess
import sys

import ml_collections
import numpy as np
import pytest

from input_pipeline.manifest import read_manifest
from mcalc_jax import archive, bilateral, cv, discovery, report, reranking
from mcalc_jax.configs import default
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
  return config


@pytest.fixture(scope="module")
def finished(tmp_path_factory):
  """A 3-fold cross-validation of ResNet18 on 32x32 patches, 2 steps per fold."""
  folder = tmp_path_factory.mktemp("cv")
  config = tiny_config("resnet18", build_dataset(folder))
  workdir = folder / "run"
  summary = cv.cross_validate(config, workdir, FOLDS, seed=0, resamples=20)
  return config, workdir, summary


def test_no_patient_is_predicted_by_a_model_that_trained_on_it(finished):
  _, workdir, _ = finished
  folds = json.loads((workdir / cv.FOLDS_FILE).read_text())["folds"]
  assert len(folds) == FOLDS
  for i, fold in enumerate(folds):
    seen = set(fold["train"]) | set(fold["validation"])
    assert not seen & set(fold["test"])
    preds = cv.load_predictions(workdir / f"fold_{i}" / cv.PREDICTIONS_FILE)
    assert set(preds["test"]["patient_id"]) <= set(fold["test"])
    assert not set(preds["test"]["patient_id"]) & seen
    assert set(preds["validation"]["patient_id"]) <= set(fold["validation"])


def test_every_patient_is_predicted_exactly_once(finished):
  _, workdir, summary = finished
  folds = json.loads((workdir / cv.FOLDS_FILE).read_text())["folds"]
  assert sorted(p for f in folds for p in f["test"]) == [f"p{p}" for p in range(NUM_PATIENTS)]
  predicted_by = {}
  for i in range(FOLDS):
    preds = cv.load_predictions(workdir / f"fold_{i}" / cv.PREDICTIONS_FILE)
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
  paths = [workdir / f"fold_{i}" / cv.PREDICTIONS_FILE for i in range(FOLDS)]
  before = [os.stat(p).st_mtime_ns for p in paths]
  again = cv.cross_validate(config, workdir, FOLDS, seed=0, resamples=20)
  assert [os.stat(p).st_mtime_ns for p in paths] == before
  assert again["per_fold"] == summary["per_fold"]
  with pytest.raises(ValueError, match="other folds"):
    cv.cross_validate(config, workdir, FOLDS, seed=1, resamples=20)


def test_lost_fold_predictions_are_redone_from_its_checkpoint(finished):
  config, workdir, summary = finished
  path = workdir / "fold_1" / cv.PREDICTIONS_FILE
  before = cv.load_predictions(path)
  path.unlink()
  again = cv.cross_validate(config, workdir, FOLDS, seed=0, resamples=20)
  after = cv.load_predictions(path)
  np.testing.assert_allclose(after["test"]["prob"], before["test"]["prob"], rtol=1e-5)
  assert list(after["test"]["patient_id"]) == list(before["test"]["patient_id"])
  assert again["pooled_counts"] == summary["pooled_counts"]


def test_cli_prints_the_summary_of_a_finished_cross_validation(finished):
  config, workdir, _ = finished
  command = [
    sys.executable,
    "-m",
    "mcalc_jax.cli.cv",
    "--config=configs/default.py",
    f"--workdir={workdir}",
    f"--folds={FOLDS}",
    "--cv_seed=0",
    f"--config.dataset={config.dataset}",
    f"--config.data_dir={config.data_dir}",
    "--config.model=resnet18",
    "--config.patch_size=32",
  ]
  result = subprocess.run(
    command, cwd=REPO, capture_output=True, text=True, timeout=300, check=False
  )
  assert result.returncode == 0, result.stderr[-3000:]
  printed = json.loads(result.stdout[result.stdout.index("{") :])
  assert printed["folds"] == FOLDS and len(printed["per_fold"]) == FOLDS
  bad = subprocess.run(
    [*command, "--config.learning_rat=1"],
    cwd=REPO,
    capture_output=True,
    text=True,
    timeout=300,
    check=False,
  )
  assert bad.returncode != 0 and "learning_rat" in bad.stderr


def test_the_classical_floor_cross_validates_mines_and_localises_every_image_once(tmp_path):
  """The top-hat floor through the same folds as the networks, with a round of hard-negative
  mining from each fold's training images, its whole images scored out of fold: every image
  once, by the fold that held its patient out."""
  config = tiny_config("tophat", build_dataset(tmp_path), learning_rate=0.01)
  config.preprocess.update(dict(blur_sigma=0.0, normalization="unit"))
  findings = read_manifest(tmp_path / "manifest.csv")
  localization = cv.Localization(findings, batch_size=16)
  cv.cross_validate(config, tmp_path / "run", FOLDS, seed=0, resamples=20)
  summary = cv.cross_validate(  # the same run given a round of mining goes on from its folds
    config,
    tmp_path / "run",
    FOLDS,
    seed=0,
    resamples=20,
    localization=localization,
    mining_rounds=1,
    mining_per_image=1,
  )

  folds = json.loads((tmp_path / "run" / cv.FOLDS_FILE).read_text())["folds"]
  scored = {
    row[0]: i
    for i in range(FOLDS)
    for row in archive.read_log(str(tmp_path / "run" / f"fold_{i}" / cv.IMAGES_DIR / "scores.csv"))[
      1
    ]
  }
  inputs = discovery.inputs_from_findings(findings, localization.base)
  patient = {f.image_path: f.patient_id for f in findings}
  assert sorted(scored) == sorted(i.key for i in inputs)  # every image, once
  for item in inputs:
    assert patient[item.path] in folds[scored[item.key]]["test"]
  for i, fold in enumerate(folds):  # mined from the fold's training patients only
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
    reranking.load(tmp_path / "run" / f"fold_{i}" / cv.RERANKER_FILE)


def test_calibrated_pooling_keeps_every_folds_ranking(finished, tmp_path):
  """`calibrate=True` Platt-scales each fold on its validation part before pooling: the folds'
  own AUCs stay, the pooled probabilities move onto one scale (the saved predictions stay raw)."""
  config, workdir, summary = finished
  copy = tmp_path / "run"
  shutil.copytree(workdir, copy)
  calibrated = cv.cross_validate(config, copy, FOLDS, seed=0, resamples=20, calibrate=True)
  assert [f["auc"] for f in calibrated["per_fold"]] == [f["auc"] for f in summary["per_fold"]]
  assert len(calibrated["calibration"]) == FOLDS and summary["calibration"] is None
  raw = cv.load_predictions(copy / "fold_0" / cv.PREDICTIONS_FILE)
  np.testing.assert_array_equal(
    raw["test"]["prob"],
    cv.load_predictions(workdir / "fold_0" / cv.PREDICTIONS_FILE)["test"]["prob"],
  )
