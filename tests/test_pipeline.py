"""The batch stream: exact resume, per-process shares, eval padding, task 2 selection."""

from __future__ import annotations

import itertools

import ml_collections
import numpy as np
import pytest

from input_pipeline import pipeline

N = 50  # 30 background, 10 benign, 10 malignant calcification patches


def make_config(**overrides) -> ml_collections.ConfigDict:
  config = ml_collections.ConfigDict(
    dict(
      task=1,
      batch_size=8,
      eval_batch_size=16,
      seed=0,
      shuffle_seed_offset=1,
      augment=True,
      num_workers=0,
      prefetch=2,
      train_split="train",
    )
  )
  config.update(overrides)
  return config


def make_arrays() -> dict[str, np.ndarray]:
  images = np.random.default_rng(0).integers(0, 4096, (N, 8, 8, 1)).astype(np.uint16)
  task1 = np.array([0] * 30 + [1] * 20)
  return {
    "image": images,
    "max_value": 4095,
    "task1_label": task1,
    "task2_label": np.array([-1] * 30 + [0] * 10 + [1] * 10),
    "patch_id": np.array([f"patch{i}" for i in range(N)]),
    "patient_id": np.array([f"p{i // 5}" for i in range(N)]),
  }


def make_data(process_index=0, process_count=1, **overrides) -> pipeline.ArrayPatchData:
  arrays = make_arrays()
  return pipeline.ArrayPatchData(
    {"train": arrays, "test": arrays},
    make_config(**overrides),
    process_index=process_index,
    process_count=process_count,
  )


def take(iterator, n):
  return list(itertools.islice(iterator, n))


def test_train_batches_have_the_contract_shape_and_range():
  (batch,) = take(make_data().train_batches(), 1)
  assert batch["image"].shape == (8, 8, 8, 1) and batch["image"].dtype == np.float32
  assert batch["image"].min() >= 0.0 and batch["image"].max() <= 1.0
  assert batch["label"].dtype == np.int32 and batch["mask"].all()


def test_resuming_at_a_step_gives_the_batches_of_the_uninterrupted_run():
  data = make_data()
  uninterrupted = take(data.train_batches(0), 20)  # 6 steps per epoch: crosses 3 epochs
  resumed = take(make_data().train_batches(start_step=11), 9)
  for a, b in zip(uninterrupted[11:], resumed, strict=True):
    np.testing.assert_array_equal(a["image"], b["image"])
    np.testing.assert_array_equal(a["label"], b["label"])


def test_each_epoch_is_a_new_permutation_without_repeats():
  data = make_data(augment=False, task=2)  # 20 examples, batch 8: 2 steps, 4 dropped
  # The images are random, so a pixel value identifies an example.
  epochs = [
    np.concatenate([b["image"][:, 0, 0, 0] for b in take(data.train_batches(s), 2)]) for s in (0, 2)
  ]
  assert len(set(epochs[0].tolist())) == 16
  assert not np.array_equal(epochs[0], epochs[1])


def test_processes_share_every_global_batch():
  whole = take(make_data().train_batches(3), 2)
  parts = [take(make_data(i, 2).train_batches(3), 2) for i in range(2)]
  for step in range(2):
    joined = np.concatenate([parts[0][step]["image"], parts[1][step]["image"]])
    np.testing.assert_array_equal(joined, whole[step]["image"])
    assert len(parts[0][step]["label"]) == 4


def test_eval_pads_the_last_batch_with_mask_false_and_carries_ids():
  batches = list(make_data().eval_batches("test"))
  assert [b["image"].shape[0] for b in batches] == [16] * 4
  assert [int(b["mask"].sum()) for b in batches] == [16, 16, 16, 2]
  patch_ids = [p for b in batches for p, m in zip(b["patch_id"], b["mask"], strict=True) if m]
  assert patch_ids == [f"patch{i}" for i in range(N)]
  assert batches[-1]["finding_id"][0] == ""  # absent ids come back empty


def test_task2_keeps_only_calcifications_with_a_known_label():
  data = make_data(task=2)
  assert data.num_examples("test") == 20
  labels = np.concatenate([b["label"][b["mask"]] for b in data.eval_batches("test")])
  np.testing.assert_array_equal(labels, [0] * 10 + [1] * 10)


def test_batch_size_must_divide_over_processes():
  with pytest.raises(ValueError, match="not divisible"):
    make_data(0, 3)
