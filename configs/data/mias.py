"""mini-MIAS (../shared/data/mias): film, 200 um pixels, cluster centre + radius annotations.

`mcalc-prepare --config=configs/data/mias.py --data_dir=DIR`; override any field on the command
line, e.g. `--config.location=/data/mias --config.patch.per_cluster=4 --config.name=mias_k4`.
"""

import os

import ml_collections

from input_pipeline import tfds_builder

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def get_config() -> ml_collections.ConfigDict:
  """MIAS data config: 8 ROIs per cluster, background from all images, 70/20/10 by patient."""
  location = os.path.join(os.path.dirname(REPO), "shared", "data", "mias")
  return tfds_builder.data_config("mias", location)
