"""The optional tf.data backend: the grain backend's batches, value for value, or a clear error."""

from __future__ import annotations

import sys

import numpy as np
import pytest
from test_pipeline import N, take
from test_pipeline import make_data as make_grain_data  # the grain tests' cohort

from input_pipeline import patch_data, pipeline, tfdata_pipeline
from mcalc_jax.configs import default

NEEDS_TF = "the tf.data backend needs TensorFlow: pip install 'mcalc_jax[tfdata]'"


@pytest.fixture
def tensorflow():
  return pytest.importorskip("tensorflow", reason=NEEDS_TF)


def assert_same_batches(actual: list[dict], expected: list[dict]) -> None:
  """Same keys, dtypes and values (ids included, as `str`), batch by batch."""
  assert len(actual) == len(expected)
  for a, e in zip(actual, expected, strict=True):
    assert a.keys() == e.keys()
    for key in e:
      assert a[key].dtype == e[key].dtype, key
      np.testing.assert_array_equal(a[key], e[key], err_msg=key)


@pytest.mark.parametrize("overrides", [{}, {"task": 2}, {"augment": False}])
def test_train_batches_equal_the_grain_backends(tensorflow, overrides):
  grain_data = make_grain_data(**overrides)
  tfdata = tfdata_pipeline.TfdataPatchData(make_grain_data(**overrides))
  assert tfdata.steps_per_epoch() == grain_data.steps_per_epoch()
  # 6 steps per epoch for task 1 (2 for task 2): 14 steps cross several epochs.
  assert_same_batches(take(tfdata.train_batches(3), 14), take(grain_data.train_batches(3), 14))


def test_resumed_tfdata_run_sees_the_batches_of_an_uninterrupted_grain_run(tensorflow):
  uninterrupted = take(make_grain_data().train_batches(0), 20)
  resumed = tfdata_pipeline.TfdataPatchData(make_grain_data()).train_batches(start_step=11)
  assert_same_batches(take(resumed, 9), uninterrupted[11:])


def test_each_process_gets_the_grain_backends_share(tensorflow):
  for index in range(2):
    grain_data = make_grain_data(index, 2)
    tfdata = tfdata_pipeline.TfdataPatchData(make_grain_data(index, 2))
    assert_same_batches(take(tfdata.train_batches(5), 3), take(grain_data.train_batches(5), 3))
    assert_same_batches(list(tfdata.eval_batches("test")), list(grain_data.eval_batches("test")))


def test_eval_batches_equal_the_grain_backends_padding_mask_and_ids(tensorflow):
  tfdata = tfdata_pipeline.TfdataPatchData(make_grain_data())
  batches = list(tfdata.eval_batches("test"))
  assert_same_batches(batches, list(make_grain_data().eval_batches("test")))
  assert [int(b["mask"].sum()) for b in batches] == [16, 16, 16, 2]  # 50 = 3 * 16 + 2
  assert batches[0]["patch_id"][0] == "patch0" and batches[-1]["finding_id"][0] == ""


def test_too_few_training_examples_for_a_batch_are_refused(tensorflow):
  tfdata = tfdata_pipeline.TfdataPatchData(make_grain_data(batch_size=64))
  with pytest.raises(ValueError, match="no full batch of 64"):
    tfdata.train_batches()


def test_create_data_picks_the_tfdata_backend(tensorflow, monkeypatch):
  monkeypatch.setattr(pipeline, "TfdsPatchData", lambda config: make_grain_data())
  config = default.get_config()
  config.input_backend = "tfdata"
  data = patch_data.create_data(config)
  assert isinstance(data, tfdata_pipeline.TfdataPatchData)
  assert data.num_examples("test") == N


# Without TensorFlow too (CI): a wrong backend or a missing extra fails with what to do.


def test_create_data_refuses_an_unknown_backend():
  config = default.get_config()
  config.input_backend = "torch"
  with pytest.raises(ValueError, match="input_backend must be 'grain' or 'tfdata'"):
    patch_data.create_data(config)


def test_missing_tensorflow_names_the_extra_to_install(monkeypatch):
  monkeypatch.setitem(sys.modules, "tensorflow", None)  # `import tensorflow` now fails
  with pytest.raises(ImportError, match=r"pip install 'mcalc_jax\[tfdata\]'"):
    tfdata_pipeline.TfdataPatchData(make_grain_data())
