"""Data configuration of `mcalc-prepare`: which source, where it is, how patches are cut and split.

  mcalc-prepare --config=configs/data.py:source=mias --data_dir=runs/tfds
  mcalc-prepare --config=configs/data.py:source=cbis_ddsm,location=/data/CBIS-DDSM --data_dir=...
  mcalc-prepare --config=configs/data.py:source=synthetic --data_dir=... --config.synthetic.num_patients=200

Arguments: `source` (a source of `input_pipeline.sources.SOURCES`), `location` (the source's
folder or manifest; default: its folder under $MCALC_SHARED_DATA or the checkout's
../shared/data, when there; for `synthetic`, where the cohort is generated) and
`field_of_view_mm` (patches of that many millimetres, resampled to `patch.size` pixels; 0: the
paper's native-pixel patches; the dataset is then named e.g. `mias_11p2mm`). Other changed patch
or split settings need a new `--config.name` (tfds refuses a changed config under a registered
name).
"""

import dataclasses
import os
import pathlib

import ml_collections

from input_pipeline import patches, sources
from mcalc_jax.configs import common

# Where each public source lies under the shared data folder beside a checkout.
_SHARED_FOLDERS = {"mias": "mias", "cbis_ddsm": "cbis-ddsm-mg-dicom"}


def _shared_location(source: str) -> str:
  root = (
    os.environ.get("MCALC_SHARED_DATA")
    or pathlib.Path(__file__).resolve().parents[1].parent / "shared" / "data"
  )
  path = pathlib.Path(root) / _SHARED_FOLDERS.get(source, "")
  return str(path) if source in _SHARED_FOLDERS and path.is_dir() else ""


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  """Returns the data configuration for `arg` ('source=mias' by default)."""
  args = common.parse_arg(arg, source="mias", location="", field_of_view_mm=0.0)
  source = sources.get(args.source)
  config = ml_collections.ConfigDict()
  config.source = args.source
  config.name = args.source  # the builder config: <data_dir>/mcalc_patches/<name>/<version>
  if args.field_of_view_mm > 0:
    config.name += f"_{args.field_of_view_mm:g}mm".replace(".", "p")
  config.location = args.location or _shared_location(args.source)
  config.seed = 0  # patch sampling and patient split
  # Patch extraction (input_pipeline.patches.PatchSettings): ROIs of `size` pixels around each
  # annotation, `per_cluster` of them per cluster, as many background patches from tissue.
  settings = patches.PatchSettings(per_cluster=source.per_cluster, size_mm=args.field_of_view_mm)
  config.patch = {k: v for k, v in dataclasses.asdict(settings).items() if k != "seed"}
  config.split = ml_collections.ConfigDict({"fractions": (0.7, 0.2, 0.1)})  # by patient
  if source.generated:
    # input_pipeline.synthetic.SyntheticOptions; pixel_spacing_mm=0.2 renders at film's scale
    config.synthetic = ml_collections.ConfigDict(
      {
        "num_patients": 24,
        "seed": 0,
        "difficulty": 0.5,
        "pixel_spacing_mm": 0.085,
        "image_size": (1200, 900),
      }
    )
  return config
