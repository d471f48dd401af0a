"""The benchmarks run end to end on tiny inputs: seconds, no timings asserted (they are noise)."""

from tools.benchmarks import marks_speed


def test_marks_speed_prints_the_tile_and_dense_rows_and_the_profile(capsys):
  marks_speed.main(["--shape=240,180", "--rounds=1", "--resample=zoom,jax", "--profile"])
  out = capsys.readouterr().out
  for row in (
    "| tiles (112 px",
    "resampled (zoom)",
    "resampled (jax)",
    "own pixels",
    "| local noise",
  ):
    assert row in out
