"""CBIS-DDSM calcification cases (../shared/data/cbis-ddsm-mg-dicom): DICOM, ROI masks.

`mcalc-prepare --config=configs/data/cbis_ddsm.py --data_dir=DIR`; point `--config.location` at a
full TCIA download to build the whole set.
"""

import os

import ml_collections

from input_pipeline import tfds_builder

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def get_config() -> ml_collections.ConfigDict:
  """CBIS-DDSM data config: 4 ROIs per calcification (inside its mask), 70/20/10 by patient."""
  location = os.path.join(os.path.dirname(REPO), "shared", "data", "cbis-ddsm-mg-dicom")
  return tfds_builder.data_config("cbis_ddsm", location)
