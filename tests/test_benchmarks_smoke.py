"""The benchmarks run end to end on tiny inputs: seconds, no timings asserted (they are noise)."""

from mcalc_jax.model import speck_detector
from tools.benchmarks import marks_speed


def test_marks_speed_prints_the_tile_and_dense_rows_and_the_profile(capsys, tmp_path):
  speck_detector.save(tmp_path, speck_detector.create(speck_detector.DetectorConfig(width=4)))
  marks_speed.main([
    "--shape=240,180", "--rounds=1", "--resample=zoom,jax", "--profile",
    "--detector_members=2", f"--detector_dir={tmp_path}",
  ])  # fmt: skip
  out = capsys.readouterr().out
  for row in (
    "| tiles (112 px",
    "resampled (zoom)",
    "resampled (jax)",
    "own pixels",
    "speck detector (2 members, random weights)",
    f"speck detector (1 member(s), {tmp_path})",
    "| local noise",
  ):
    assert row in out
