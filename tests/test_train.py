"""The training loop: it learns real patches, stops on NaN, early-stops, and resumes exactly.

`python tests/test_train.py WORKDIR KILL_AT_STEP` is the run that test_kill_and_resume_* kills
with SIGKILL; the tests themselves run under pytest.
"""

import csv
import os
import pathlib
import signal
import subprocess
import sys

import jax
import ml_collections
import numpy as np
import pytest
import sklearn.metrics
from PIL import Image

from input_pipeline import noise
from mcalc_jax.base import parallel
from mcalc_jax.configs import default
from mcalc_jax.model import checkpointing, inference, train

PATCH = 112


def _config(**overrides) -> ml_collections.ConfigDict:
  """Default config on noise 32x32 patches with SpeckNet: small enough for seconds-long runs."""
  config = default.get_config()
  config.update(
    {
      "model": "specknet",
      "dataset": "noise",
      "patch_size": 32,
      "batch_size": 8,
      "eval_batch_size": 16,
      "log_every_steps": 1,
    }
  )
  config.preprocess.input_size = 32
  config.update(overrides)
  return config


def _data(config: ml_collections.ConfigDict) -> noise.NoisePatchData:
  return noise.NoisePatchData(config, train_examples=64, eval_examples=16)


# --- host-side pieces ----------------------------------------------------------------------


def test_validation_auc_matches_sklearn_with_ties():
  rng = np.random.default_rng(0)
  labels = rng.integers(0, 2, 200)
  scores = np.round(rng.uniform(size=200) + 0.3 * labels, 1)  # rounding makes many ties
  assert train.validation_auc(labels, scores) == pytest.approx(
    sklearn.metrics.roc_auc_score(labels, scores)
  )
  assert np.isnan(train.validation_auc(np.ones(3), np.arange(3.0)))


def test_early_stopping_counts_evaluations_without_improvement():
  stopping = train.EarlyStopping("auc", patience=2)
  for step, auc in [(1, 0.6), (2, 0.7), (3, 0.7), (4, 0.65)]:
    stopping.update(step, auc)
  assert stopping.best_step == 3  # a tie moves the best step, like Orbax's BestN ...
  assert stopping.should_stop  # ... but does not reset the patience
  assert not train.EarlyStopping("loss", patience=0, evals_without_improvement=9).should_stop


def test_schedule_resolves_epochs():
  schedule = train.Schedule.from_config(_config(num_epochs=3), _data(_config()))
  assert (schedule.steps_per_epoch, schedule.num_steps) == (8, 24)
  assert schedule.eval_every == schedule.checkpoint_every == 8


def test_synthetic_data_replays_from_any_step():
  data = _data(_config())
  from_zero = [b["image"] for _, b in zip(range(4), data.train_batches(0), strict=False)]
  np.testing.assert_array_equal(next(data.train_batches(3))["image"], from_zero[3])


# --- training -----------------------------------------------------------------------------


def _mias_batch(mias_dir: pathlib.Path, per_class: int = 8) -> dict[str, np.ndarray]:
  """8 patches centred on calcification clusters and 8 from the breast of normal images."""
  with open(mias_dir / "annotations.csv", newline="") as f:
    rows = list(csv.DictReader(f))
  calcs = [r for r in rows if r["abnormality_class"] == "CALC" and r["row"] and not r["note"]]
  normals = [r for r in rows if r["abnormality_class"] == "NORM"]

  def cut(image: np.ndarray, row: int, col: int) -> np.ndarray:
    r = np.clip(row - PATCH // 2, 0, image.shape[0] - PATCH)
    c = np.clip(col - PATCH // 2, 0, image.shape[1] - PATCH)
    return image[r : r + PATCH, c : c + PATCH]

  def read(row: dict[str, str]) -> np.ndarray:
    return np.asarray(Image.open(mias_dir / row["image_file"]), np.float32) / 255.0

  patches = [cut(read(r), int(r["row"]), int(r["col"])) for r in calcs[:per_class]]
  for r in normals[:per_class]:
    image = read(r)
    breast_rows, breast_cols = np.nonzero(image > 0.3)  # the breast's centre of mass
    patches.append(cut(image, int(breast_rows.mean()), int(breast_cols.mean())))
  return {
    "image": np.stack(patches)[..., None],
    "label": np.repeat(np.array([1, 0], np.int32), per_class),
  }


@pytest.mark.parametrize("model", ["alexnet", "resnet18", "resnet34"])
def test_each_network_fits_a_small_batch_of_real_patches(model, mias_dir):
  # 112-pixel MIAS patches, resized on the device to 64 (AlexNet's smallest size is 63).
  config = _config(model=model, patch_size=PATCH)
  config.preprocess.input_size = 64
  mesh = parallel.make_mesh()
  graphdef, tx, state = train.create_train_state(config, mesh)
  step = train.make_train_step(config, graphdef, tx, mesh)
  batch = parallel.global_batch(_mias_batch(mias_dir), mesh)
  accuracy, losses = [], []
  for _ in range(30):
    state, metrics = step(state, batch)
    accuracy.append(float(metrics["accuracy"]))
    losses.append(float(metrics["loss"]))
    if accuracy[-1] == 1.0:
      break
  assert accuracy[-1] == 1.0, (accuracy, losses)
  assert losses[-1] < losses[0]


class _NaNData(noise.NoisePatchData):
  """Synthetic patches with a NaN pixel in the batch of step 3 (index 2)."""

  def train_batches(self, start_step: int = 0):
    for step, batch in enumerate(super().train_batches(start_step), start_step):
      if step == 2:
        batch["image"][0, 0, 0, 0] = np.nan
      yield batch


def test_nan_loss_stops_the_run_naming_the_step(tmp_path):
  config = _config(num_train_steps=5)
  with pytest.raises(FloatingPointError, match="at step 3"):
    train.train_and_evaluate(
      config, tmp_path, _NaNData(config, train_examples=64, eval_examples=16)
    )


def _resume_config() -> ml_collections.ConfigDict:
  return _config(num_train_steps=5, eval_every_steps=2, checkpoint_every_steps=1)


class _KilledData(noise.NoisePatchData):
  """Synthetic patches whose process dies by SIGKILL when asked for batch `kill_at`."""

  def __init__(self, config: ml_collections.ConfigDict, kill_at: int):
    super().__init__(config, train_examples=64, eval_examples=16)
    self._kill_at = kill_at

  def train_batches(self, start_step: int = 0):
    for step, batch in enumerate(super().train_batches(start_step), start_step):
      if step == self._kill_at:
        os.kill(os.getpid(), signal.SIGKILL)
      yield batch


def test_kill_and_resume_ends_with_the_same_parameters(tmp_path):
  config = _resume_config()
  uninterrupted = train.train_and_evaluate(config, tmp_path / "straight", _data(config))
  killed = subprocess.run(
    [sys.executable, __file__, str(tmp_path / "resumed"), "3"],
    capture_output=True,
    text=True,
    timeout=300,
    check=False,
  )
  assert killed.returncode == -signal.SIGKILL, killed.stderr[-3000:]
  resumed = train.train_and_evaluate(config, tmp_path / "resumed", _data(config))
  assert resumed["start_step"] in (2, 3)  # step 3's async save may not have been committed
  assert resumed["step"] == uninterrupted["step"] == 5
  assert resumed["validation"] == uninterrupted["validation"]
  expected = inference.load_classifier(tmp_path / "straight", "latest").variables
  actual = inference.load_classifier(tmp_path / "resumed", "latest").variables
  jax.tree.map(np.testing.assert_array_equal, actual, expected)


def test_a_finished_run_restarts_as_a_no_op(tmp_path):
  config = _config(num_train_steps=2)
  train.train_and_evaluate(config, tmp_path, _data(config))
  again = train.train_and_evaluate(config, tmp_path, _data(config))
  assert again["start_step"] == again["step"] == 2


def test_fine_tuning_starts_from_the_pretrained_runs_best_checkpoint(tmp_path):
  config = _config(num_train_steps=2, eval_every_steps=2)
  train.train_and_evaluate(config, tmp_path / "pretrained", _data(config))
  tuned = _config(num_train_steps=1, init_from=str(tmp_path / "pretrained"))
  _, _, state = train.create_train_state(tuned, parallel.make_mesh())
  expected = inference.load_classifier(tmp_path / "pretrained", "best").variables
  jax.tree.map(np.testing.assert_array_equal, jax.device_get(state.variables()), expected)
  assert int(state.step) == 0  # a new run: its own steps and a fresh optimizer


def test_fine_tuning_refuses_a_run_of_another_network(tmp_path):
  config = _config(num_train_steps=1)
  train.train_and_evaluate(config, tmp_path / "resnet", _data(config))
  other = _config(model="tophat", front_end="", init_from=str(tmp_path / "resnet"))
  with pytest.raises(ValueError, match="structure differs"):
    train.create_train_state(other, parallel.make_mesh())


def test_a_run_records_the_field_of_view_of_its_data(tmp_path):
  config = _config(num_train_steps=1)
  data = _data(config)
  data.field_of_view_mm = 11.2
  train.train_and_evaluate(config, tmp_path, data)
  assert checkpointing.load_config(tmp_path).field_of_view_mm == 11.2
  config.field_of_view_mm = 22.4
  with pytest.raises(ValueError, match="cover 11.2 mm"):
    train.train_and_evaluate(config, tmp_path / "other", data)


if __name__ == "__main__":
  workdir, kill_at = sys.argv[1], int(sys.argv[2])
  train.train_and_evaluate(_resume_config(), workdir, _KilledData(_resume_config(), kill_at))
