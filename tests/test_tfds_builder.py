"""The TFDS dataset: built from a manifest and read back with grain, all without TensorFlow."""

from __future__ import annotations

import sys

import ml_collections
import numpy as np
import pytest
from PIL import Image

from input_pipeline import pipeline, tfds_builder
from input_pipeline.manifest import Finding, write_manifest
from mcalc_jax.configs import data, default
from mcalc_jax.model import train

NUM_PATIENTS = 10


def write_png(path, calcifications=()) -> None:
  """A 160x120 8-bit image: a bright half-disc of breast against the left edge."""
  rows, cols = np.mgrid[:160, :120]
  inside = (rows - 80) ** 2 + cols**2 < 110**2
  pixels = np.where(inside, 120 + np.random.default_rng(0).integers(0, 40, (160, 120)), 3)
  for row, col in calcifications:
    pixels[row - 1 : row + 2, col - 1 : col + 2] = 255
  Image.fromarray(pixels.astype(np.uint8)).save(path)


def write_cohort(folder, *, cluster_every: int = 2, corrupt: bool = True) -> str:
  """Patients with two views each; every `cluster_every`-th patient has a calcification on CC,
  malignant and benign in turn; with `corrupt`, one file is broken. Returns the manifest."""
  findings = []
  for p in range(NUM_PATIENTS):
    for view in ("CC", "MLO"):
      name = f"p{p}_{view}.png"
      if p % cluster_every == 0 and view == "CC":
        write_png(folder / name, [(60, 40)])
        label = "malignant" if (p // cluster_every) % 2 == 0 else "benign"
        findings.append(
          Finding(f"p{p}", name, "c1", "calcification", label, col=40, row=60, radius=5)
        )
      else:
        write_png(folder / name)
        findings.append(Finding(f"p{p}", name, view=view))
  if corrupt:
    (folder / "p1_MLO.png").write_bytes(b"\x89PNG\r\n\x1a\n broken")
  manifest = folder / "manifest.csv"
  write_manifest(manifest, findings)
  return str(manifest)


def build(manifest: str, data_dir: str, name: str = "tiny") -> tfds_builder.McalcPatches:
  """The 32x32 patch dataset of a manifest, 3 patches per cluster."""
  config = data.get_config("source=manifest")
  config.location, config.name, config.patch.size, config.patch.per_cluster = manifest, name, 32, 3
  builder = tfds_builder.McalcPatches(
    config=tfds_builder.builder_config(config),
    data_dir=data_dir,
    file_format="array_record",
    location=config.location,
  )
  builder.download_and_prepare()
  return builder


@pytest.fixture(scope="module")
def built(tmp_path_factory):
  folder = tmp_path_factory.mktemp("cohort")
  return build(write_cohort(folder), str(folder / "tfds"))


def records(builder, split):
  source = builder.as_data_source(split)
  return [source[i] for i in range(len(source))]


def test_build_and_read_need_no_tensorflow(built):
  assert "tensorflow" not in sys.modules  # the build above and the reads below import none
  (record, *_) = records(built, "train")
  assert record["image"].shape == (32, 32, 1) and record["image"].dtype == np.uint16


def test_splits_are_patient_disjoint_and_recorded(built):
  patients = {
    split: {r["patient_id"] for r in records(built, split)} for split in built.info.splits
  }
  assert not (
    patients["train"] & patients["validation"]
    or patients["train"] & patients["test"]
    or patients["validation"] & patients["test"]
  )
  recorded = built.info.metadata["patients"]
  for split, ids in patients.items():
    assert all(recorded[p.decode()]["split"] == split for p in ids)


def test_calcification_centres_lie_inside_their_annotation(built):
  calcifications = [r for s in built.info.splits for r in records(built, s) if r["task1_label"]]
  assert len(calcifications) == 3 * 5
  for r in calcifications:
    assert np.hypot(r["center_row"] - 60, r["center_col"] - 40) <= 5 + 1
    assert r["task2_label"] in (0, 1) and r["max_value"] == 255


def test_corrupt_image_is_skipped_and_reported(built):
  (skipped,) = built.info.metadata["skipped"]
  assert skipped["path"].endswith("p1_MLO.png") and skipped["reason"]
  image_ids = {r["image_id"] for s in built.info.splits for r in records(built, s)}
  assert b"p1_MLO" not in image_ids


def test_reopened_dataset_feeds_the_training_pipeline(built):
  config = ml_collections.ConfigDict(
    dict(
      dataset="mcalc_patches/tiny",
      data_dir=str(built.data_dir_root),
      task=1,
      batch_size=4,
      eval_batch_size=8,
      seed=0,
      shuffle_seed_offset=1,
      augment=True,
      num_workers=0,
      prefetch=1,
      train_split="train",
    )
  )
  data = pipeline.TfdsPatchData(config, process_index=0, process_count=1)
  batch = next(data.train_batches(0))
  assert batch["image"].shape == (4, 32, 32, 1) and batch["image"].max() <= 1.0
  total = sum(data.num_examples(s) for s in ("train", "validation", "test"))
  assert total == sum(sum(c.values()) for c in built.info.metadata["counts"].values())
  assert "tensorflow" not in sys.modules


def test_changed_settings_need_a_new_config_name(tmp_path):
  config = data.get_config(f"source=mias,location={tmp_path}")
  assert tfds_builder.builder_config(config) is tfds_builder.McalcPatches.builder_configs["mias"]
  config.patch.per_cluster = 2
  with pytest.raises(ValueError, match="--config.name"):
    tfds_builder.builder_config(config)


def test_training_loop_runs_from_the_tfds_dataset(built, tmp_path):

  config = default.get_config()
  config.update(
    dict(
      dataset="mcalc_patches/tiny",
      data_dir=str(built.data_dir_root),
      batch_size=4,
      eval_batch_size=8,
      num_train_steps=2,
      eval_every_steps=2,
      patch_size=32,
      async_checkpointing=False,
    )
  )
  summary = train.train_and_evaluate(config, tmp_path / "run")
  assert summary["step"] == 2 and summary["validation"]
  assert "tensorflow" not in sys.modules
