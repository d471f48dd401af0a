"""mcalc-prepare: builds the `mcalc_patches` TFDS dataset (array_record, no TensorFlow needed).

  mcalc-prepare --config=configs/data.py:source=mias --data_dir=DIR [--config.location=...]
      [--config.patch.per_cluster=4 --config.name=mias_k4] [--overwrite]
      [--beam_options=runner=DirectRunner,direct_num_workers=2,direct_running_mode=multi_processing]

Prints the patch counts per split and label, and every image that was skipped and why.
"""

from __future__ import annotations

from absl import flags

from input_pipeline import prepare
from mcalc_jax.cli import common

_CONFIG = common.define_config_flag("Data config (configs/data.py:source=NAME).")
_DATA_DIR = flags.DEFINE_string("data_dir", None, "TFDS data_dir to write to.", required=True)
_OVERWRITE = flags.DEFINE_bool("overwrite", False, "Rebuild even if this version exists.")
_BEAM_OPTIONS = flags.DEFINE_string(
  "beam_options",
  "",
  "Generate through Apache Beam with these pipeline options (comma-separated, e.g. "
  "runner=DirectRunner,direct_num_workers=4); needs the beam extra.",
)


def main(argv: list[str]) -> None:
  common.no_extra_arguments(argv)
  builder = prepare.prepare(
    _CONFIG.value, _DATA_DIR.value, overwrite=_OVERWRITE.value, beam_options=_BEAM_OPTIONS.value
  )
  skipped = builder.info.metadata["skipped"]
  print(f"{builder.name}/{builder.builder_config.name} {builder.version} in {builder.data_dir}")
  print(prepare.counts_table(builder))
  print(f"skipped: {len(skipped)}")
  for item in skipped:
    print(f"  {item['path']}: {item['reason']}")


def run() -> None:
  common.run(main)


if __name__ == "__main__":
  run()
