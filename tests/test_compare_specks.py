"""tools.compare_specks: the speck statistics that say whether two datasets' specks look alike."""

import numpy as np

from tools import compare_specks


def test_a_speck_raises_the_tophat_maximum_and_count_but_not_the_texture():
  flat = np.full((2, 56, 56, 1), 0.5, np.float32)
  flat[1, 27:29, 27:29] = 0.6  # a 0.4-mm speck on 0.2-mm pixels
  stats = compare_specks.speck_statistics(flat, pixel_mm=0.2)
  tophat, count, texture = (stats[c] for c in compare_specks._COLUMNS)
  assert tophat[0] == 0 and np.isclose(tophat[1], 0.1)
  assert count[0] == 0 and count[1] == 4
  np.testing.assert_allclose(texture, 0.0, atol=1e-6)
