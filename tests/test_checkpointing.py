"""Checkpoints: what Orbax keeps, the run's config, and the classifier loaded from a workdir."""

import pathlib
import runpy

import jax
import ml_collections
import numpy as np
import pytest

from mcalc_jax import checkpointing, parallel

DEFAULT_CONFIG = pathlib.Path(__file__).parents[1] / "configs" / "default.py"


def _config(**overrides) -> ml_collections.ConfigDict:
  """The default config with a small ResNet18 input (32x32 patches)."""
  config = runpy.run_path(str(DEFAULT_CONFIG))["get_config"]()
  config.model, config.patch_size, config.preprocess.input_size = "resnet18", 32, 32
  config.update(overrides)
  return config


def test_keeps_the_latest_and_the_best_checkpoint(tmp_path):
  with checkpointing.create_manager(tmp_path, _config()) as manager:
    for step, auc in [(1, 0.7), (2, 0.9), (3, 0.6), (4, 0.8)]:
      checkpointing.save(manager, step, {"w": np.full(3, step)}, {"step": step}, {"auc": auc})
    checkpointing.save(manager, 5, {"w": np.full(3, 5)}, {"step": 5})  # no evaluation
    manager.wait_until_finished()
    assert manager.all_steps() == [2, 5] and manager.best_step() == 2
    arrays, progress = checkpointing.restore(manager, 2, {"w": np.zeros(3)})
  np.testing.assert_array_equal(arrays["w"], [2, 2, 2])
  assert progress == {"step": 2}


def test_best_by_loss_is_the_lowest():
  assert checkpointing.metric_is_better("loss", 0.2, 0.3)
  assert checkpointing.metric_is_better("auc", 0.8, 0.7)
  assert checkpointing.metric_is_better("auc", 0.5, None)
  assert not checkpointing.metric_is_better("auc", float("nan"), 0.5)


def test_config_round_trips_through_json(tmp_path):
  config = _config(learning_rate=3e-4)
  checkpointing.save_config(config, tmp_path)
  assert checkpointing.load_config(tmp_path).to_dict() == config.to_dict()


def test_load_classifier_gives_softmax_of_the_saved_model(tmp_path):
  from mcalc_jax import train  # noqa: PLC0415  (train sits above checkpointing)

  config = _config()
  checkpointing.save_config(config, tmp_path)
  _, _, state = train.create_train_state(config, parallel.make_mesh())
  with checkpointing.create_manager(tmp_path, config) as manager:
    checkpointing.save(manager, 7, {"model": state.variables()}, {}, {"auc": 0.5})
  classifier = checkpointing.load_classifier(tmp_path, "latest")
  assert classifier.patch_size == 32 and classifier.config.model == "resnet18"
  jax.tree.map(
    np.testing.assert_array_equal, classifier.variables, jax.device_get(state.variables())
  )
  probs = classifier.probabilities(np.random.default_rng(0).uniform(size=(5, 32, 32, 1)))
  assert probs.shape == (5, 2) and probs.dtype == np.float32
  np.testing.assert_allclose(probs.sum(axis=1), 1, rtol=1e-6)


def test_load_classifier_explains_a_missing_run(tmp_path):
  with pytest.raises(FileNotFoundError, match="config.json"):
    checkpointing.load_classifier(tmp_path)
