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


@pytest.mark.parametrize("model", ["alexnet", "resnet18"])
def test_inference_in_chunks_equals_the_whole_batch(model):
  """The CPU fast path (chunks of a few images) keeps the plain path's numbers."""
  from flax import nnx  # noqa: PLC0415

  from mcalc_jax import models  # noqa: PLC0415

  config = _config(model=model)
  if model == "alexnet":  # AlexNet's classifier needs the full 112x112 input
    config.patch_size = config.preprocess.input_size = 112
  graphdef, params, stats = nnx.split(
    models.create_model(config, nnx.Rngs(0)), nnx.Param, nnx.BatchStat
  )
  variables = {"params": params, "batch_stats": stats}
  options = checkpointing.PreprocessOptions.from_config(config)
  size = config.patch_size
  images = np.random.default_rng(0).uniform(size=(10, size, size, 1)).astype(np.float32)
  whole = checkpointing._probabilities(graphdef, variables, images, options, 0)
  for chunk in (1, 4, 16):  # 4 leaves a ragged last chunk, padded; 16 is more than the batch
    chunked = checkpointing._probabilities(graphdef, variables, images, options, chunk)
    np.testing.assert_allclose(chunked, whole, rtol=1e-5, atol=1e-6)


def test_chunk_size_is_per_network_on_one_cpu_and_off_when_sharded():
  one = parallel.make_mesh(jax.devices()[:1])
  assert checkpointing.inference_micro_batch(_config(model="resnet18"), one) == 16
  assert checkpointing.inference_micro_batch(_config(model="alexnet"), one) == 64
  assert checkpointing.inference_micro_batch(_config(inference_micro_batch=0), one) == 0
  assert checkpointing.inference_micro_batch(_config(inference_micro_batch=8), one) == 8
  if jax.device_count() > 1:
    assert checkpointing.inference_micro_batch(_config(), parallel.make_mesh()) == 0
