"""mcalc-prepare: builds the `mcalc_patches` TFDS dataset (array_record, no TensorFlow needed).

  mcalc-prepare --config=configs/data/mias.py --data_dir=DIR [--config.location=...]
      [--config.patch.per_cluster=4 --config.name=mias_k4] [--overwrite]

Prints the patch counts per split and label, and every image that was skipped and why.
"""

from __future__ import annotations

import os
import shutil

import tensorflow_datasets as tfds
from absl import app, flags, logging
from ml_collections import config_flags

from input_pipeline import splits, tfds_builder

_CONFIG = config_flags.DEFINE_config_file("config", None, "Data config (configs/data/*.py).")
_DATA_DIR = flags.DEFINE_string("data_dir", None, "TFDS data_dir to write to.", required=True)
_OVERWRITE = flags.DEFINE_bool("overwrite", False, "Rebuild even if this version exists.")

LABELS = ("background", "benign", "malignant", "calcification")


def prepare(config, data_dir: str, *, overwrite: bool = False) -> tfds.core.DatasetBuilder:
  """Builds (or finds) the dataset a data config describes; returns its builder."""
  location = config.location
  if config.source == "synthetic":
    location = _synthetic_cohort(config, data_dir)
  builder = tfds_builder.McalcPatches(
    config=tfds_builder.builder_config(config),
    data_dir=data_dir,
    file_format="array_record",
    location=location,
  )
  if overwrite and os.path.isdir(builder.data_dir):
    shutil.rmtree(builder.data_dir)
  logging.info(
    "building %s/%s from %s into %s", builder.name, config.name, location, builder.data_dir
  )
  builder.download_and_prepare()
  return builder


def _synthetic_cohort(config, data_dir: str) -> str:
  """The synthetic cohort's folder, generated first unless its manifest exists."""
  from input_pipeline import synthetic

  location = config.location or os.path.join(data_dir, "synthetic_cohort")
  if not os.path.isfile(os.path.join(location, "manifest.csv")):
    logging.info("generating %d synthetic patients in %s", config.synthetic.num_patients, location)
    synthetic.generate_cohort(
      location,
      num_patients=config.synthetic.num_patients,
      seed=config.synthetic.seed,
      options=synthetic.SyntheticOptions(difficulty=config.synthetic.difficulty),
    )
  return location


def counts_table(builder: tfds.core.DatasetBuilder) -> str:
  """Patches per split and label (and patients per split), as a text table."""
  metadata = builder.info.metadata
  rows = [
    f"{'split':<12}" + "".join(f"{label:>15}" for label in LABELS) + f"{'total':>8}{'patients':>10}"
  ]
  for split in splits.SPLITS:
    counts = metadata["counts"].get(split, {})
    patients = sum(p["split"] == split for p in metadata["patients"].values())
    rows.append(
      f"{split:<12}"
      + "".join(f"{counts.get(label, 0):>15}" for label in LABELS)
      + f"{sum(counts.values()):>8}{patients:>10}"
    )
  return "\n".join(rows)


def main(argv: list[str]) -> None:
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {argv[1:]}")
  builder = prepare(_CONFIG.value, _DATA_DIR.value, overwrite=_OVERWRITE.value)
  skipped = builder.info.metadata["skipped"]
  print(f"{builder.name}/{builder.builder_config.name} {builder.version} in {builder.data_dir}")
  print(counts_table(builder))
  print(f"skipped: {len(skipped)}")
  for item in skipped:
    print(f"  {item['path']}: {item['reason']}")


def run() -> None:
  app.run(main)


if __name__ == "__main__":
  run()
