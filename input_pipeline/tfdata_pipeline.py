"""The batch streams of a `GrainPatchData` run on tf.data instead of grain (optional backend).

Pick it for tf.data's autotuned parallelism and prefetch, or to fit hosts and tooling already
built around tf.data (e.g. TPU VMs). Batches are those of the grain backend, value for value: the
same pure per-step and per-index batch functions run inside `tf.numpy_function`, in order, so a
resumed run sees the same batches too. Needs TensorFlow: `pip install 'mcalc_jax[tfdata]'`;
nothing else in the package imports it.
"""

from __future__ import annotations

import contextlib
import functools
from collections.abc import Callable, Iterator
from typing import Any

import numpy as np

from input_pipeline import pipeline

_EXTRA = "pip install 'mcalc_jax[tfdata]'"


def _tensorflow() -> Any:
  """TensorFlow, imported on first use so that the core install never needs it."""
  try:
    import tensorflow as tf
  except ImportError as error:
    raise ImportError(f"the tf.data input backend needs TensorFlow: {_EXTRA}") from error
  # tf.data runs on the CPU: a GPU build of TF must not take the accelerator's memory from JAX
  # (RuntimeError: the caller's own TF use already initialised the GPUs; leave them).
  with contextlib.suppress(RuntimeError):
    tf.config.set_visible_devices([], "GPU")
  return tf


class TfdataPatchData:
  """PatchData whose train and eval streams run on tf.data over a grain-backend source.

  Wraps any `GrainPatchData` (`TfdsPatchData`, `ArrayPatchData`, ...) and reuses its batch
  functions, epoch permutations and per-process slots; only the scheduling differs: tf.data's
  autotuned threads and `prefetch` instead of grain's (`config.num_workers` is not used). The
  numeric arrays are read-only (tf.data's buffers); nothing in training writes to a batch.
  `patch_data.create_data` builds one for `config.input_backend = "tfdata"`.
  """

  def __init__(self, data: pipeline.GrainPatchData):
    self._tf = _tensorflow()  # fails here, with the extra to install, not at the first batch
    # The grain backend's pure batch functions are its contract; calling them keeps the two equal.
    self._data = data

  @property
  def field_of_view_mm(self) -> float:
    return self._data.field_of_view_mm

  def num_examples(self, split: str) -> int:
    return self._data.num_examples(split)

  def steps_per_epoch(self) -> int:
    """Full global batches per epoch (the remainder is dropped), as the wrapped source."""
    return self._data.steps_per_epoch()

  def train_batches(self, start_step: int = 0) -> Iterator[dict]:
    """Endless: this process's share of global batch `start_step`, then the next ones."""
    data = self._data
    data.check_full_batch()
    steps = self._tf.data.Dataset.counter(start_step)
    return self._stream(steps, lambda step: data.train_batch(int(step)), probe=start_step)

  def eval_batches(self, split: str) -> Iterator[dict]:
    """One pass in file order; the last batch is padded with mask=False to the fixed shape."""
    num = self._data.num_eval_batches(split)
    if num == 0:
      return iter(())
    batch = functools.partial(self._data.eval_batch, split)
    return self._stream(self._tf.data.Dataset.range(num), lambda i: batch(int(i)), probe=0)

  def _stream(self, indices: Any, batch: Callable[[Any], dict], probe: int) -> Iterator[dict]:
    """`batch` mapped over `indices` in order, as numpy dicts typed like grain's.

    The batch at `probe` (computed once here) fixes the keys, dtypes and static shapes that
    `tf.numpy_function` must declare, and builds the split's task view before threads race for it.
    Id fields travel as tf.string and are decoded back to `str` object arrays.
    """
    tf = self._tf
    example = batch(probe)
    keys = tuple(example)
    strings = tuple(k for k in keys if example[k].dtype == object)
    dtypes = [tf.string if k in strings else tf.as_dtype(example[k].dtype) for k in keys]

    def flat(index: Any) -> list[np.ndarray]:
      out = batch(index)
      return [
        np.array([s.encode() for s in out[k]], object) if k in strings else out[k] for k in keys
      ]

    def as_dict(index: Any) -> dict:
      tensors = tf.numpy_function(flat, [index], dtypes, stateful=False)
      for tensor, key in zip(tensors, keys, strict=True):
        tensor.set_shape(example[key].shape)
      return dict(zip(keys, tensors, strict=True))

    prefetch = max(2, self._data.config.prefetch)
    dataset = indices.map(as_dict, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
    numpy_batches = dataset.prefetch(prefetch).as_numpy_iterator()
    return map(functools.partial(_decoded, strings), numpy_batches)


def _decoded(strings: tuple[str, ...], batch: dict) -> dict:
  """tf.string fields (bytes) back to the `str` object arrays of the grain backend."""
  for key in strings:
    batch[key] = np.array([b.decode() for b in batch[key]], object)
  return batch
