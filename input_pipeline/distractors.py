"""Distractors pasted into background patches: what a sliding window mistakes for a cluster.

On whole MIAS mammograms the hottest false-positive tiles of a model trained on annotated
clusters against random tissue are single bright specks (an isolated benign calcification or
dust), thin bright lines (vascular calcification, a film scratch or a scanner line) and film
labels (docs/ablation.md), none of which the random background patches hold often enough to
learn from; a cluster is several specks together (BI-RADS: grouped, at least five within
1 cm). So training can paste into a background patch one or two isolated specks or a line
segment, leaving it background: the network must learn that one speck is not a cluster.

Sizes are fractions of the patch side (at 11.2 mm: specks of 0.1-0.25 mm sigma, lines 0.1 mm
wide and 2-11 mm long), contrasts in the [0, 1] intensity units of the patch (MIAS's specks
stand 0.03-0.07 above their surround).
"""

from __future__ import annotations

import numpy as np

SPECK_SIGMA = (0.01, 0.022)  # fraction of the patch side
LINE_SIGMA = 0.009
LINE_LENGTH = (0.2, 1.0)
CONTRAST = (0.03, 0.1)


def add_distractors(image: np.ndarray, rng: np.random.Generator) -> np.ndarray:
  """`image` ([S, S, 1] in [0, 1]) with one or two isolated specks or one line segment added."""
  side = image.shape[0]
  rows, cols = np.mgrid[:side, :side].astype(np.float32)
  if rng.random() < 0.5:
    layer = sum(_speck(rows, cols, side, rng) for _ in range(int(rng.integers(1, 3))))
  else:
    layer = _line(rows, cols, side, rng)
  return np.clip(image + layer[..., None], 0.0, 1.0).astype(np.float32)


def _speck(rows: np.ndarray, cols: np.ndarray, side: int, rng: np.random.Generator) -> np.ndarray:
  r, c = rng.uniform(0.1, 0.9, 2) * side
  sigma = rng.uniform(*SPECK_SIGMA) * side
  return rng.uniform(*CONTRAST) * np.exp(-((rows - r) ** 2 + (cols - c) ** 2) / (2 * sigma**2))


def _line(rows: np.ndarray, cols: np.ndarray, side: int, rng: np.random.Generator) -> np.ndarray:
  """A segment through a random point at a random angle: distance to it, as a Gaussian ridge."""
  r, c = rng.uniform(0.2, 0.8, 2) * side
  angle = rng.uniform(0, np.pi)
  half = rng.uniform(*LINE_LENGTH) * side / 2
  along = (rows - r) * np.sin(angle) + (cols - c) * np.cos(angle)
  across = (rows - r) * np.cos(angle) - (cols - c) * np.sin(angle)
  beyond = np.maximum(np.abs(along) - half, 0.0)
  sigma = LINE_SIGMA * side
  return rng.uniform(*CONTRAST) * np.exp(-(across**2 + beyond**2) / (2 * sigma**2))
