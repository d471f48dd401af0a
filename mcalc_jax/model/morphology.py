"""Classical speck detectors as jit-able array functions: white top-hat, DoG, local contrast.

A microcalcification is a small bright speck on a smoother background. A white top-hat (the image
minus its grey opening by a disk a little larger than the speck) keeps exactly such specks; a
Difference of Gaussians keeps blobs of one scale; the local standard deviation flags texture.
These are the features of the classical floor (`models.TopHatFloor`) and of the morphological
front end a CNN can start from (`models.MorphologicalFrontEnd`). Images are [N, H, W, 1]
float32; borders repeat the edge pixel.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from input_pipeline import morphology
from mcalc_jax.model.preprocess import gaussian_blur


def white_tophat(images: jax.Array, radius: float) -> jax.Array:
  """The image minus its grey opening by a disk of `radius` pixels (`input_pipeline.morphology`,
  on jax.numpy, borders repeating the edge pixel)."""
  return morphology.white_tophat(images, radius, mode="edge", xp=jnp)


def difference_of_gaussians(images: jax.Array, sigma: float) -> jax.Array:
  """Blur at `sigma` minus blur at 2 `sigma`: bright blobs about 2 `sigma` across."""
  return gaussian_blur(images, sigma) - gaussian_blur(images, 2 * sigma)


def local_std(images: jax.Array, size: int) -> jax.Array:
  """Standard deviation over `size` x `size` windows (stride 1, edge-padded)."""
  pad = size // 2
  padded = jnp.pad(images, ((0, 0), (pad, pad), (pad, pad), (0, 0)), mode="edge")

  def mean(x: jax.Array) -> jax.Array:
    window = (1, size, size, 1)
    return jax.lax.reduce_window(x, 0.0, jax.lax.add, window, (1, 1, 1, 1), "VALID") / size**2

  return jnp.sqrt(jnp.maximum(mean(padded**2) - mean(padded) ** 2, 0.0))
