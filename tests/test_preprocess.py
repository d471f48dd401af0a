"""On-device preprocessing: blur, normalisation and resize, checked against scipy and by hand."""

import jax
import ml_collections
import numpy as np
import pytest
import scipy.ndimage

from mcalc_jax.model.preprocess import PreprocessOptions, gaussian_blur, gaussian_kernel, preprocess


def _patches(n: int = 3, size: int = 32) -> np.ndarray:
  return np.random.default_rng(0).uniform(0, 1, (n, size, size, 1)).astype(np.float32)


@pytest.mark.parametrize("sigma", [0.7, 1.0, 2.5])
def test_blur_matches_scipy_gaussian_filter(sigma):
  images = _patches()
  # jnp.pad's "reflect" (no repeated edge) is scipy's "mirror"; both truncate at 3 sigma here.
  expected = scipy.ndimage.gaussian_filter(
    images, (0, sigma, sigma, 0), mode="mirror", truncate=3.0
  )
  np.testing.assert_allclose(gaussian_blur(images, sigma), expected, atol=1e-5)


def test_kernel_is_normalised_and_symmetric():
  taps = gaussian_kernel(1.5)
  assert taps.sum() == pytest.approx(1.0) and np.allclose(taps, taps[::-1])


def test_zscore_gives_each_patch_mean_0_std_1():
  images = _patches() * np.array([1.0, 0.1, 0.5]).reshape(3, 1, 1, 1)
  out = np.asarray(preprocess(images, PreprocessOptions(normalization="zscore", input_size=32)))
  np.testing.assert_allclose(out.mean(axis=(1, 2, 3)), 0, atol=1e-5)
  np.testing.assert_allclose(out.std(axis=(1, 2, 3)), 1, atol=1e-3)


def test_flat_patch_stays_flat():
  out = preprocess(np.full((1, 32, 32, 1), 0.4, np.float32), PreprocessOptions(input_size=32))
  np.testing.assert_allclose(out, 0, atol=1e-2)  # not NaN, nor float32 rounding noise blown up


def test_unit_without_blur_at_input_size_is_the_identity():
  images = _patches()
  out = preprocess(images, PreprocessOptions(blur_sigma=0, normalization="unit", input_size=32))
  np.testing.assert_array_equal(out, images)


def test_resizes_to_the_input_size_inside_jit():
  options = PreprocessOptions(blur_sigma=1.0, input_size=64)
  out = jax.jit(preprocess, static_argnums=1)(_patches(size=112), options)
  assert out.shape == (3, 64, 64, 1) and out.dtype == np.float32


def test_options_come_from_the_run_config():
  config = ml_collections.ConfigDict(
    {"preprocess": {"blur_sigma": 0.5, "normalization": "unit", "input_size": 224}}
  )
  assert PreprocessOptions.from_config(config) == PreprocessOptions(0.5, "unit", 224)


def test_bad_options_are_rejected():
  with pytest.raises(ValueError, match="minmax"):
    PreprocessOptions(normalization="minmax")
  with pytest.raises(ValueError, match="blur_sigma"):
    PreprocessOptions(blur_sigma=-1)
