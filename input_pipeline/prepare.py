"""Building the `mcalc_patches` TFDS dataset a data config describes (the `mcalc-prepare` job).

`prepare(config, data_dir)` generates the source's location first where the source is generated
(the synthetic cohort), builds the dataset (or finds it built) and returns its builder;
`counts_table(builder)` is the per-split, per-label summary the job prints.
"""

from __future__ import annotations

import os
import shutil

import ml_collections
import tensorflow_datasets as tfds
from absl import logging

from input_pipeline import sources, splits, tfds_builder

LABELS = ("background", "benign", "malignant", "calcification")


def prepare(
  config: ml_collections.ConfigDict,
  data_dir: str,
  *,
  overwrite: bool = False,
  beam_options: str = "",
) -> tfds.core.DatasetBuilder:
  """Builds (or finds) the dataset `config` (configs/data.py) describes; returns its builder.

  `beam_options` ("runner=DirectRunner,direct_num_workers=2", as `tfds build
  --beam_pipeline_options` takes them) generates through Apache Beam (the `beam` extra): one
  element per image, on any runner; the examples are those of the plain loop.
  """
  location = config.location
  if sources.get(config.source).generated:
    location = _GENERATORS[config.source](config, data_dir)
  builder = tfds_builder.McalcPatches(
    config=tfds_builder.builder_config(config),
    data_dir=data_dir,
    file_format="array_record",
    location=location,
    beam=bool(beam_options),
  )
  if overwrite and os.path.isdir(builder.data_dir):
    shutil.rmtree(builder.data_dir)
  logging.info(
    "building %s/%s from %s into %s", builder.name, config.name, location, builder.data_dir
  )
  builder.download_and_prepare(download_config=_download_config(beam_options))
  return builder


def _download_config(beam_options: str) -> tfds.download.DownloadConfig:
  if not beam_options:
    return tfds.download.DownloadConfig()
  try:
    from apache_beam.options.pipeline_options import PipelineOptions  # noqa: PLC0415
  except ImportError as e:
    raise ImportError(f"{e}: --beam_options needs pip install 'mcalc_jax[beam]'") from e
  flags = [f"--{option.strip()}" for option in beam_options.split(",") if option.strip()]
  return tfds.download.DownloadConfig(beam_options=PipelineOptions(flags=flags))


def _synthetic_cohort(config: ml_collections.ConfigDict, data_dir: str) -> str:
  """The synthetic cohort's folder, generated first unless its manifest exists."""
  from input_pipeline import synthetic  # noqa: PLC0415  (only this source renders images)

  location = config.location or os.path.join(data_dir, "synthetic_cohort")
  if not os.path.isfile(os.path.join(location, "manifest.csv")):
    logging.info("generating %d synthetic patients in %s", config.synthetic.num_patients, location)
    cohort = config.synthetic
    options = synthetic.SyntheticOptions(
      difficulty=cohort.difficulty,
      pixel_spacing_mm=cohort.get("pixel_spacing_mm", 0.085),
      image_size=tuple(cohort.get("image_size", (1200, 900))),
    )
    synthetic.generate_cohort(
      location, num_patients=cohort.num_patients, seed=cohort.seed, options=options
    )
  return location


def _inserted_cohort(config: ml_collections.ConfigDict, data_dir: str) -> str:
  """The inserted cohort's folder: clusters inserted into the background source's images without
  calcifications (`input_pipeline.insertion`; resumes, and refuses other settings there)."""
  from input_pipeline import insertion  # noqa: PLC0415  (only this source inserts clusters)

  settings = config.insertion
  name = f"inserted_{settings.background}_{settings.seed}"
  location = config.location or os.path.join(data_dir, name)
  findings = sources.load_findings(settings.background, settings.background_location)
  options = insertion.InsertionOptions.for_format(
    settings.format,
    contrast_scale=settings.contrast_scale,
    clusters_per_image=tuple(settings.clusters_per_image),
  )
  logging.info("inserting clusters into %s's images in %s", settings.background, location)
  insertion.insert_cohort(
    findings, location, seed=settings.seed, options=options, limit=settings.limit or None
  )
  return location


# How each generated source writes its location before the dataset is built.
_GENERATORS = {"synthetic": _synthetic_cohort, "inserted": _inserted_cohort}


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
