"""Classical speck detectors as jit-able array functions: white top-hat, DoG, local contrast.

A microcalcification is a small bright speck on a smoother background. A white top-hat (the image
minus its grey opening by a disk a little larger than the speck) keeps exactly such specks; a
Difference of Gaussians keeps blobs of one scale; the local standard deviation flags texture.
These are the features of the classical floor (`models.TopHatFloor`) and of the morphological
front end a CNN can start from (`models.MorphologicalFrontEnd`). Images are [N, H, W, 1]
float32; borders repeat the edge pixel.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np

from mcalc_jax.preprocess import gaussian_blur


@functools.cache
def disk_offsets(radius: float) -> tuple[tuple[int, int], ...]:
  """(dy, dx) of a flat disk structuring element of `radius` pixels (at least the centre)."""
  r = int(np.floor(radius))
  return tuple(
    (dy, dx) for dy in range(-r, r + 1) for dx in range(-r, r + 1) if dy * dy + dx * dx <= radius**2
  )


def _filter(images: jax.Array, radius: float, reduce) -> jax.Array:
  """`reduce` (jnp.minimum or jnp.maximum) over the disk's shifts of every pixel."""
  offsets = disk_offsets(radius)
  r = max(max(abs(dy), abs(dx)) for dy, dx in offsets)
  padded = jnp.pad(images, ((0, 0), (r, r), (r, r), (0, 0)), mode="edge")
  h, w = images.shape[1:3]
  out = None
  for dy, dx in offsets:
    shifted = padded[:, r + dy : r + dy + h, r + dx : r + dx + w]
    out = shifted if out is None else reduce(out, shifted)
  return out


def white_tophat(images: jax.Array, radius: float) -> jax.Array:
  """The image minus its grey opening (erosion, then dilation) by a disk of `radius` pixels."""
  opened = _filter(_filter(images, radius, jnp.minimum), radius, jnp.maximum)
  return images - opened


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
