"""The trained classifier: loaded from a run's workdir, softmax out, predictions with their ids."""

import jax
import numpy as np
import pytest

from mcalc_jax.base import parallel
from mcalc_jax.model import checkpointing, inference, train
from tests.test_checkpointing import small_config as _config


def test_load_classifier_gives_softmax_of_the_saved_model(tmp_path):
  config = _config()
  checkpointing.save_config(config, tmp_path)
  _, _, state = train.create_train_state(config, parallel.make_mesh())
  with checkpointing.create_manager(tmp_path, config) as manager:
    checkpointing.save(manager, 7, {"model": state.variables()}, {}, {"auc": 0.5})
  classifier = inference.load_classifier(tmp_path, "latest")
  assert classifier.patch_size == 32 and classifier.config.model == "resnet18"
  jax.tree.map(
    np.testing.assert_array_equal, classifier.variables, jax.device_get(state.variables())
  )
  probs = classifier.probabilities(np.random.default_rng(0).uniform(size=(5, 32, 32, 1)))
  assert probs.shape == (5, 2) and probs.dtype == np.float32
  np.testing.assert_allclose(probs.sum(axis=1), 1, rtol=1e-6)


def test_load_classifier_explains_a_missing_run(tmp_path):
  with pytest.raises(FileNotFoundError, match="config.json"):
    inference.load_classifier(tmp_path)


class _FixedClassifier:
  """Stands in for inference.Classifier: P(class 1) is the patch's mean pixel."""

  def probabilities(self, images: np.ndarray) -> np.ndarray:
    p = images.mean(axis=(1, 2, 3))
    return np.stack([1 - p, p], axis=1)


def test_predict_keeps_unmasked_examples_with_their_ids():
  batch = {
    "image": np.linspace(0, 1, 4).reshape(4, 1, 1, 1).astype(np.float32),
    "label": np.array([0, 1, 1, 0], np.int32),
    "mask": np.array([True, True, True, False]),
    "patch_id": np.array(["a", "b", "c", ""], object),
  }
  out = inference.predict(_FixedClassifier(), [batch, batch])
  np.testing.assert_allclose(out["prob"], [0, 1 / 3, 2 / 3] * 2, rtol=1e-6)
  np.testing.assert_array_equal(out["patch_id"], ["a", "b", "c"] * 2)
  np.testing.assert_array_equal(out["label"], [0, 1, 1] * 2)
