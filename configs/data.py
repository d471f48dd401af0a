"""Data configuration of `mcalc-prepare`: which source, where it is, how patches are cut and split.

  mcalc-prepare --config=configs/data.py:source=mias --data_dir=runs/tfds
  mcalc-prepare --config=configs/data.py:source=cbis_ddsm,location=/data/CBIS-DDSM --data_dir=...
  mcalc-prepare --config=configs/data.py:source=synthetic --data_dir=... --config.synthetic.num_patients=200
  mcalc-prepare --config=configs/data.py:source=inserted,background=mias,field_of_view_mm=11.2 ...

Arguments: `source` (a source of `input_pipeline.sources.SOURCES`), `location` (the source's
folder or manifest; default: its folder under $MCALC_SHARED_DATA or the checkout's
../shared/data, when there; for `synthetic` and `inserted`, where the cohort is generated),
`field_of_view_mm` (patches of that many millimetres, resampled to `patch.size` pixels; 0: the
paper's native-pixel patches; the dataset is then named e.g. `mias_11p2mm`), and for `inserted`
its `background` source (`inserted_mias_0_11p2mm`: seed 0) and `seed`. Other changed patch or
split settings need a new `--config.name` (tfds refuses a changed config under a registered
name).
"""

import dataclasses

import ml_collections

from input_pipeline import patches, sources
from mcalc_jax.configs import common


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  """Returns the data configuration for `arg` ('source=mias' by default)."""
  args = common.parse_arg(
    arg, source="mias", location="", field_of_view_mm=0.0, background="mias", seed=0
  )
  source = sources.get(args.source)
  config = ml_collections.ConfigDict()
  config.source = args.source
  # the builder config: <data_dir>/mcalc_patches/<name>/<version>
  named = f"inserted_{args.background}_{args.seed}" if args.source == "inserted" else args.source
  config.name = sources.dataset_name(named, args.field_of_view_mm)
  config.location = args.location or sources.default_location(args.source)
  config.seed = args.seed  # patch sampling and patient split (and insertion)
  # Patch extraction (input_pipeline.patches.PatchSettings): ROIs of `size` pixels around each
  # annotation, `per_cluster` of them per cluster, as many background patches from tissue.
  settings = patches.PatchSettings(
    per_cluster=source.per_cluster, field_of_view_mm=args.field_of_view_mm
  )
  config.patch = {k: v for k, v in dataclasses.asdict(settings).items() if k != "seed"}
  config.split = ml_collections.ConfigDict({"fractions": (0.7, 0.2, 0.1)})  # by patient
  if args.source == "synthetic":
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
  if args.source == "inserted":
    # input_pipeline.insertion: clusters inserted into `background`'s images without
    # calcifications (at `background_location`, default its shared folder), of an
    # `InsertionOptions.for_format` format, speck contrasts times `contrast_scale`.
    config.insertion = ml_collections.ConfigDict(
      {
        "background": args.background,
        "background_location": "",
        "format": "film",
        "contrast_scale": 1.0,
        "clusters_per_image": (1, 2),
        "seed": args.seed,
        "limit": 0,  # at most this many background images; 0: all
      }
    )
  return config
