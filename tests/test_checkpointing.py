"""Checkpoints: what Orbax keeps, and the run's config."""

import json

import ml_collections
import numpy as np

from mcalc_jax.base import metrics
from mcalc_jax.configs import default
from mcalc_jax.model import checkpointing


def small_config(**overrides) -> ml_collections.ConfigDict:
  """The default config with a small ResNet18 input (32x32 patches)."""
  config = default.get_config()
  config.model, config.patch_size, config.preprocess.input_size = "resnet18", 32, 32
  config.update(overrides)
  return config


def test_keeps_the_latest_and_the_best_checkpoint(tmp_path):
  with checkpointing.create_manager(tmp_path, small_config()) as manager:
    for step, auc in [(1, 0.7), (2, 0.9), (3, 0.6), (4, 0.8)]:
      checkpointing.save(manager, step, {"w": np.full(3, step)}, {"step": step}, {"auc": auc})
    checkpointing.save(manager, 5, {"w": np.full(3, 5)}, {"step": 5})  # no evaluation
    manager.wait_until_finished()
    assert manager.all_steps() == [2, 5] and manager.best_step() == 2
    arrays, progress = checkpointing.restore(manager, 2, {"w": np.zeros(3)})
  np.testing.assert_array_equal(arrays["w"], [2, 2, 2])
  assert progress == {"step": 2}


def test_best_by_loss_is_the_lowest():
  assert metrics.is_better("loss", 0.2, 0.3)
  assert metrics.is_better("auc", 0.8, 0.7)
  assert metrics.is_better("auc", 0.5, None)
  assert not metrics.is_better("auc", float("nan"), 0.5)


def test_config_round_trips_through_json(tmp_path):
  config = small_config(learning_rate=3e-4)
  checkpointing.save_config(config, tmp_path)
  assert checkpointing.load_config(tmp_path).to_dict() == config.to_dict()


def test_a_config_saved_before_the_cpu_fields_moved_loads_with_their_new_names(tmp_path):
  old = small_config().to_dict()
  del old["cpu_tuning"]
  old |= {"conv_batch_chunk": 0, "inference_micro_batch": 8}
  (tmp_path / checkpointing.CONFIG_FILE).write_text(json.dumps(old))
  loaded = checkpointing.load_config(tmp_path)
  assert loaded.cpu_tuning.to_dict() == {"conv_chunk": 0, "inference_chunk": 8}
  assert "conv_batch_chunk" not in loaded
