"""The synthetic cohort (input_pipeline.synthetic): DICOM files + manifest, generated on demand.

`mcalc-prepare --config=configs/data/synthetic.py --data_dir=DIR` writes the cohort to
`config.location` (default DIR/synthetic_cohort) unless a manifest.csv is already there.
"""

import ml_collections

from input_pipeline import tfds_builder


def get_config() -> ml_collections.ConfigDict:
  """Synthetic data config: 4 ROIs per cluster; `synthetic` says what cohort to generate."""
  config = tfds_builder.data_config("synthetic", location="")
  config.synthetic = ml_collections.ConfigDict()
  config.synthetic.num_patients = 24
  config.synthetic.seed = 0
  config.synthetic.difficulty = 0.5
  return config
