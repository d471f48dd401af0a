"""Batches of patches for training and evaluation, from the TFDS dataset (grain) or from arrays.

The training stream is a pure function of the step: step s belongs to epoch s // steps_per_epoch
and takes positions [p * B, (p + 1) * B) of that epoch's seeded permutation (B the global batch,
remainder dropped), and each example's augmentation is seeded by (seed, step, slot in the global
batch). So `train_batches(start_step)` gives exactly the batches an uninterrupted run saw from that
step, with no iterator state to checkpoint (the training step is the state), and every process
computes the same global batch and keeps its own slice of `batch_size // process_count` slots.

grain runs the per-batch work (reading, decoding, augmentation) in threads, optionally in worker
processes, with prefetch. Images leave as float32 pixels / max_value in [0, 1]; blur,
normalisation and resize run on the device (`mcalc_jax.model.preprocess`), not here.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Iterator, Mapping, Sequence
from typing import Protocol

import grain
import numpy as np
from scipy import ndimage

ID_FIELDS = ("patient_id", "image_id", "finding_id", "patch_id")
_ENDLESS = 2**62  # steps; grain's MapDataset needs a length


def process_place() -> tuple[int, int]:
  """(index, count) of this process in the job; JAX is asked only here, when it is needed."""
  import jax  # noqa: PLC0415

  return jax.process_index(), jax.process_count()


class PatchData(Protocol):
  """What the training loop consumes (see docs/design.md)."""

  field_of_view_mm: float  # millimetres a patch covers (`patches.NATIVE_PIXELS`: native pixels)

  def train_batches(self, start_step: int = 0) -> Iterator[dict]: ...

  def eval_batches(self, split: str) -> Iterator[dict]: ...

  def num_examples(self, split: str) -> int: ...


def as_text(value) -> str:
  """An id as str, whether it arrives as str or as bytes (TFDS string features)."""
  return value.decode() if isinstance(value, bytes) else str(value)


class _TaskView(Sequence):
  """The examples of one split that a task uses, as (image in [0, 1], label, ids)."""

  def __init__(self, source: Sequence[Mapping], task: int):
    self._source = source
    if task not in (1, 2):
      raise ValueError(f"task must be 1 or 2, not {task}")
    field = "task1_label" if task == 1 else "task2_label"
    labels = np.array([int(source[i][field]) for i in range(len(source))], np.int32)
    if task == 2:  # calcification patches whose benign/malignant label is known
      task1 = np.array([int(source[i]["task1_label"]) for i in range(len(source))])
      keep = np.flatnonzero((task1 == 1) & (labels >= 0))
    else:
      keep = np.arange(len(source))
    self._indices, self.labels = keep, labels[keep]

  def __len__(self) -> int:
    return len(self._indices)

  def __getitem__(self, i: int) -> dict:
    record = self._source[int(self._indices[i])]
    image = np.asarray(record["image"], np.float32) / float(record["max_value"])
    ids = {k: as_text(record[k]) if k in record else "" for k in ID_FIELDS}
    return {"image": image, "label": self.labels[i], **ids}


def augment(
  image: np.ndarray, rng: np.random.Generator, *, intensity: float = 0.0, rotation: float = 0.0
) -> np.ndarray:
  """One of the 8 flips/90-degree rotations (calcifications have no preferred orientation), then,
  when asked, a rotation by up to `rotation` degrees and a contrast and brightness change of up to
  `intensity` (a fraction): detectors, films and processing differ in both."""
  image = np.rot90(image, k=int(rng.integers(4)), axes=(0, 1))
  image = image[:, ::-1] if rng.integers(2) else image
  if rotation > 0:
    angle = rng.uniform(-rotation, rotation)
    image = ndimage.rotate(image, angle, axes=(0, 1), reshape=False, order=1, mode="reflect")
  if intensity > 0:
    mean = image.mean()
    contrast, shift = rng.uniform(1 - intensity, 1 + intensity), rng.uniform(-1, 1) * intensity
    image = np.clip(mean + (image - mean) * contrast + shift * 0.1, 0.0, 1.0)
  return np.ascontiguousarray(image, np.float32)


def _stack(examples: Sequence[dict], mask: Sequence[bool], with_ids: bool) -> dict:
  batch = {
    "image": np.stack([e["image"] for e in examples]).astype(np.float32),
    "label": np.array([e["label"] for e in examples], np.int32),
    "mask": np.array(mask, bool),
  }
  if with_ids:
    batch.update({k: np.array([e[k] for e in examples], object) for k in ID_FIELDS})
  return batch


class GrainPatchData:
  """PatchData over any random-access sources of TFDS-style records, one per split.

  A record has `image` (S, S, 1) integers, `max_value`, `task1_label`, `task2_label` and
  optionally the id fields. `config` is the training config (task, batch_size, eval_batch_size,
  seed, shuffle_seed_offset, augment, num_workers, prefetch, train_split).
  `field_of_view_mm` is the millimetres a patch covers (0: patches at native pixels).
  """

  def __init__(
    self,
    sources: Mapping[str, Sequence[Mapping]],
    config,
    *,
    field_of_view_mm: float = 0.0,
    process_index: int | None = None,
    process_count: int | None = None,
  ):
    if process_count is None:
      process_index, process_count = process_place()
    self.field_of_view_mm = float(field_of_view_mm)
    self._sources, self._config = sources, config
    self._views: dict[str, _TaskView] = {}
    self._epoch: tuple[int, np.ndarray | None] = (-1, None)
    self._process_index, self._process_count = process_index or 0, process_count
    for name in ("batch_size", "eval_batch_size"):
      if config[name] % process_count:
        raise ValueError(f"{name}={config[name]} is not divisible by {process_count} processes")

  def _view(self, split: str) -> _TaskView:
    """The split's task view, made once (it reads every label)."""
    if split not in self._views:
      if split not in self._sources:
        raise KeyError(f"no split {split!r}; have {sorted(self._sources)}")
      self._views[split] = _TaskView(self._sources[split], self._config.task)
    return self._views[split]

  def num_examples(self, split: str) -> int:
    return len(self._view(split))

  def steps_per_epoch(self) -> int:
    """Full global batches per epoch (the remainder is dropped)."""
    return self.num_examples(self._config.train_split) // self._config.batch_size

  @property
  def config(self):
    """The training config the batches follow."""
    return self._config

  def num_eval_batches(self, split: str) -> int:
    """Batches of one pass over `split` (the last one padded)."""
    return math.ceil(self.num_examples(split) / self._config.eval_batch_size)

  def train_batches(self, start_step: int = 0) -> Iterator[dict]:
    """Endless: this process's share of global batch `start_step`, then the next ones."""
    self.check_full_batch()
    steps = grain.MapDataset.range(start_step, _ENDLESS).map(self.train_batch)
    return iter(self._prefetched(steps))

  def eval_batches(self, split: str) -> Iterator[dict]:
    """One pass in file order; the last batch is padded with mask=False to the fixed shape."""
    indices = grain.MapDataset.range(self.num_eval_batches(split))
    return iter(self._prefetched(indices.map(functools.partial(self.eval_batch, split))))

  def _prefetched(self, batches: grain.MapDataset) -> grain.IterDataset:
    config = self._config
    options = grain.ReadOptions(num_threads=2, prefetch_buffer_size=max(2, config.prefetch))
    out = batches.to_iter_dataset(options)
    if config.num_workers > 0:
      out = out.mp_prefetch(grain.MultiprocessingOptions(num_workers=config.num_workers))
    return out

  def _permutation(self, epoch: int) -> np.ndarray:
    """The epoch's order, kept while the epoch lasts (threads racing here compute the same)."""
    cached, order = self._epoch
    if cached != epoch:
      seed = self._config.seed + self._config.shuffle_seed_offset
      order = np.random.default_rng([seed, epoch]).permutation(
        self.num_examples(self._config.train_split)
      )
      self._epoch = (epoch, order)
    return order

  def _local_slots(self, batch_size: int) -> range:
    local = batch_size // self._process_count
    return range(self._process_index * local, (self._process_index + 1) * local)

  def check_full_batch(self) -> None:
    """Training needs one full global batch at least (the remainder is dropped)."""
    if self.steps_per_epoch() == 0:
      raise ValueError(
        f"{self.num_examples(self._config.train_split)} training examples give "
        f"no full batch of {self._config.batch_size}"
      )

  def train_batch(self, step: int) -> dict:
    """This process's share of global batch `step`: a pure function of the step (and the seed)."""
    config, view = self._config, self._view(self._config.train_split)
    epoch, position = divmod(step, self.steps_per_epoch())
    order = self._permutation(epoch)
    examples = []
    for slot in self._local_slots(config.batch_size):
      example = view[int(order[position * config.batch_size + slot])]
      if config.augment:
        rng = np.random.default_rng([config.seed, step, slot])
        image = augment(
          example["image"],
          rng,
          intensity=config.get("augment_intensity", 0.0),
          rotation=config.get("augment_rotation_deg", 0.0),
        )
        example = {**example, "image": image}
      examples.append(example)
    return _stack(examples, [True] * len(examples), with_ids=False)

  def eval_batch(self, split: str, index: int) -> dict:
    """This process's share of batch `index` of one pass over `split`, padded with mask=False."""
    view, size = self._view(split), self._config.eval_batch_size
    positions = [index * size + slot for slot in self._local_slots(size)]
    mask = [p < len(view) for p in positions]
    examples = [view[p] if ok else _padding(view[0]) for p, ok in zip(positions, mask, strict=True)]
    return _stack(examples, mask, with_ids=True)


def _padding(like: dict) -> dict:
  return {"image": np.zeros_like(like["image"]), "label": 0, **dict.fromkeys(ID_FIELDS, "")}


class TfdsPatchData(GrainPatchData):
  """The `mcalc_patches` dataset named by `config.dataset` in `config.data_dir`, via grain."""

  def __init__(self, config, **process):
    from input_pipeline import tfds_builder  # keeps tfds out of array-only users' imports

    builder = tfds_builder.open_builder(config.dataset, config.data_dir or None)
    sources = {name: builder.as_data_source(name) for name in builder.info.splits}
    fov = tfds_builder.field_of_view_mm(builder)
    super().__init__(sources, config, field_of_view_mm=fov, **process)


class ArrayPatchData(GrainPatchData):
  """In-memory PatchData with the same semantics, e.g. for tests and small cohorts.

  `splits` maps a split name to arrays keyed like the TFDS features: `image` [N, S, S, 1],
  `task1_label` [N], and optionally `task2_label` [N] (default -1), `max_value` (scalar or [N],
  default 255 for uint8 else 65535) and the id fields [N].
  """

  def __init__(self, splits: Mapping[str, Mapping[str, np.ndarray]], config, **process):
    super().__init__(
      {name: _ArraySource(arrays) for name, arrays in splits.items()}, config, **process
    )


class _ArraySource(Sequence):
  """Records from parallel arrays, filling the optional fields with their defaults."""

  def __init__(self, arrays: Mapping[str, np.ndarray]):
    n = len(arrays["image"])
    image = np.asarray(arrays["image"])
    default_max = np.iinfo(image.dtype).max if image.dtype.kind in "ui" else 1
    self._arrays = {
      "task2_label": np.full(n, -1),
      **arrays,
      "max_value": np.broadcast_to(arrays.get("max_value", default_max), (n,)),
    }
    self._n = n

  def __len__(self) -> int:
    return self._n

  def __getitem__(self, i: int) -> dict:
    return {k: v[i] for k, v in self._arrays.items()}
