"""On-device patch preprocessing shared by training, evaluation and whole-mammogram scoring.

Batches leave the input pipeline as float32 [N, S, S, 1] in [0, 1]; everything after that runs
inside the jitted model function, so one code path defines what the network sees. The order is
resize to the network's input grid (a tile cut at the run's millimetres from an image of any
pixel size becomes the network's pixels; training patches stored at that grid pass unchanged),
Gaussian blur (sigma in the network's input pixels), then normalisation.
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

NORMALIZATIONS = ("zscore", "unit", "detail")
# Std floor for the z-score: about half a 12-bit grey level. Flatter patches (empty background)
# are flat for the network too instead of amplified float32 rounding noise.
_MIN_STD = 1e-4
# The fine detail `detail` measures: finer than this blur (network pixels), and its floor (a
# quarter of an 8-bit grey level), so a flat patch is not amplified into noise.
_DETAIL_SIGMA_PX = 1.0
_MIN_DETAIL = 1e-3
_MAD_TO_SD = 1.4826


@dataclasses.dataclass(frozen=True)
class PreprocessOptions:
  """Hashable preprocessing settings, so jitted functions can take them as a static argument."""

  blur_sigma: float = 0.0  # Gaussian sigma in pixels; 0 disables the blur
  # zscore: per-patch mean 0, std 1; unit: [0, 1] as stored; detail: in units of the patch's own
  # fine structure (see `normalize`)
  normalization: str = "zscore"
  input_size: int = 112  # side the network sees; patches of another size are resized

  def __post_init__(self):
    if self.normalization not in NORMALIZATIONS:
      raise ValueError(f"normalization {self.normalization!r} is not one of {NORMALIZATIONS}")
    if self.blur_sigma < 0:
      raise ValueError(f"blur_sigma must be >= 0, got {self.blur_sigma}")

  @classmethod
  def from_config(cls, config: ml_collections.ConfigDict) -> PreprocessOptions:
    """Reads `config.preprocess` of a run configuration."""
    p = config.preprocess
    return cls(float(p.blur_sigma), str(p.normalization), int(p.input_size))


def gaussian_kernel(sigma: float) -> np.ndarray:
  """Normalised 1-D Gaussian taps out to 3 sigma, rounded as scipy.ndimage does (a trace-time
  constant)."""
  radius = max(1, int(3.0 * sigma + 0.5))
  taps = np.exp(-0.5 * (np.arange(-radius, radius + 1) / sigma) ** 2)
  return (taps / taps.sum()).astype(np.float32)


def gaussian_blur(images: jax.Array, sigma: float) -> jax.Array:
  """Separable Gaussian blur of [N, H, W, C] images with reflected borders."""
  taps = gaussian_kernel(sigma)
  radius = len(taps) // 2
  x = jnp.pad(images, ((0, 0), (radius, radius), (radius, radius), (0, 0)), mode="reflect")
  n, h, w, c = x.shape
  x = x.transpose(0, 3, 1, 2).reshape(n * c, 1, h, w)  # channels as batch: a depthwise blur
  for kernel in (taps.reshape(1, 1, -1, 1), taps.reshape(1, 1, 1, -1)):
    x = jax.lax.conv_general_dilated(x, jnp.asarray(kernel, x.dtype), (1, 1), "VALID")
  return x.reshape(n, c, *x.shape[2:]).transpose(0, 2, 3, 1)


def normalize(images: jax.Array, normalization: str) -> jax.Array:
  """Per-patch z-score (each patch to mean 0, std 1), the stored [0, 1] range, or `detail`: each
  patch minus its median over the robust sd of its structure finer than `_DETAIL_SIGMA_PX` (its
  texture and noise). A speck then reads as contrast to its own background's texture, whatever
  the format: for-presentation FFDM holds about five times film's fine detail (docs/realism.md),
  so on stored values all of its tissue looks like specks to a network trained on film."""
  if normalization == "unit":
    return images
  if normalization == "detail":
    fine = images - gaussian_blur(images, _DETAIL_SIGMA_PX)
    spread = _MAD_TO_SD * jnp.median(jnp.abs(fine), axis=(1, 2, 3), keepdims=True)
    centre = jnp.median(images, axis=(1, 2, 3), keepdims=True)
    return (images - centre) / jnp.maximum(spread, _MIN_DETAIL)
  # Shifting by one pixel first keeps float32 sums accurate (the shifted-data variance algorithm).
  shifted = images - images[:, :1, :1, :]
  mean = shifted.mean(axis=(1, 2, 3), keepdims=True)
  std = shifted.std(axis=(1, 2, 3), keepdims=True)
  return (shifted - mean) / jnp.maximum(std, _MIN_STD)


def preprocess(images: jax.Array, options: PreprocessOptions) -> jax.Array:
  """Resize, blur and normalise float32 [N, S, S, 1] patches in [0, 1] for the network."""
  x = jnp.asarray(images, jnp.float32)
  if x.shape[1:3] != (options.input_size, options.input_size):
    x = jax.image.resize(
      x, (x.shape[0], options.input_size, options.input_size, x.shape[3]), "linear"
    )
  if options.blur_sigma > 0:
    x = gaussian_blur(x, options.blur_sigma)
  return normalize(x, options.normalization)
