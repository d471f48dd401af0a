"""Generated noise patches: a PatchData source for smoke tests, CLI checks and benchmarks.

`config.dataset = "noise"` trains on these instead of a TFDS dataset. Background patches are
smooth noise; calcification patches (label 1) add a few bright specks, so the task is learnable.
Not to be confused with the synthetic cohort (`input_pipeline.synthetic`): real DICOM mammograms
rendered from a breast model, which travel the whole path like real data.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import numpy as np

from input_pipeline import patches
from input_pipeline.pipeline import ID_FIELDS, process_place

DATASET = "noise"


class NoisePatchData:
  """Batch contents depend only on (seed, step), so `train_batches(start_step)` replays exactly and
  each process keeps its block of slots of the same global batch (as `pipeline` does)."""

  field_of_view_mm = patches.NATIVE_PIXELS  # generated patches have no pixel size

  def __init__(self, config, *, train_examples: int = 256, eval_examples: int = 64):
    process_index, process_count = process_place()
    self._size = int(config.patch_size)
    self._seed = int(config.seed)
    self._process = (process_index, process_count)
    self._local_batch = config.batch_size // process_count
    self._eval_batch = config.eval_batch_size // process_count
    self._examples = {config.train_split: train_examples}
    self._examples |= {config.eval_split: eval_examples, config.test_split: eval_examples}

  def num_examples(self, split: str) -> int:
    return self._examples[split]

  def train_batches(self, start_step: int = 0) -> Iterator[dict[str, np.ndarray]]:
    """This process's block of slots of each global batch, so any process count trains alike."""
    index, count = self._process
    mine = slice(index * self._local_batch, (index + 1) * self._local_batch)
    for step in range(start_step, 2**62):
      rng = np.random.default_rng([self._seed, step, 0])
      yield {k: v[mine] for k, v in self._patches(rng, self._local_batch * count).items()}

  def eval_batches(self, split: str) -> Iterator[dict[str, Any]]:
    rng = np.random.default_rng([self._seed, len(split), 2**31])
    examples = self._patches(rng, self._examples[split])
    ids = np.array([f"noise-{i}" for i in range(self._examples[split])], object)
    examples |= dict.fromkeys(ID_FIELDS, ids)
    index, count = self._process
    for start in range(0, self._examples[split], self._eval_batch * count):  # global batches
      first = start + index * self._eval_batch  # this process's block of slots, as in grain
      chunk = {k: v[first : first + self._eval_batch] for k, v in examples.items()}
      yield {k: _pad_rows(v, self._eval_batch) for k, v in chunk.items()}

  def _patches(self, rng: np.random.Generator, n: int) -> dict[str, np.ndarray]:
    labels = rng.integers(0, 2, n).astype(np.int32)
    images = 0.3 + 0.05 * rng.standard_normal((n, self._size, self._size, 1))
    for i in np.flatnonzero(labels):
      rows, cols = rng.integers(2, self._size - 2, (2, 5))
      for r, c in zip(rows, cols, strict=True):
        images[i, r - 1 : r + 2, c - 1 : c + 2] = 0.9
    return {
      "image": np.clip(images, 0, 1).astype(np.float32),
      "label": labels,
      "mask": np.ones(n, bool),
    }


def _pad_rows(values: np.ndarray, size: int) -> np.ndarray:
  """Pads to `size` rows: zeros (mask False for 'mask'), empty strings for ids."""
  if values.dtype == object:
    return np.concatenate([values, np.full(size - len(values), "", object)])
  return np.pad(values, [(0, size - len(values))] + [(0, 0)] * (values.ndim - 1))
