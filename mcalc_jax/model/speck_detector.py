"""A trained dense speck detector: a small fully convolutional network from a whole mammogram on
a grid of `PIXEL_MM` (0.2 mm) to a speck logit per pixel of that grid (output stride 1).

Why: the classical speck map (`mcalc_jax.whole_image.specks.classical_speck_map`, the top-hat
over its local level) sees contrast only; specks labelled pixel by pixel in real tissue
(`input_pipeline.speck_labels`) let a network also learn their size, shape and surroundings.

Translation-equivariant, normalised locally: no pooling and no whole-image statistic. A fixed
front end (no parameters) turns (pixels, breast mask) into three channels: the white top-hat by
the classical map's 0.4-mm disk over its mean over the breast in a `WINDOW_PX` square (the
classical contrast-to-noise ratio, log-compressed), the image less its `DETAIL_PX` box mean over
that residual's local RMS (shape and texture), and the mask. Convolutions, dilated for context,
follow. So a pixel's output depends on the input within `HALO` pixels only: `dense_map` cuts a
whole image into bands of rows overlapping by `HALO` and gets the single pass's map while holding
one band in memory.

Parameters are saved as a plain npz (one array per parameter path) beside a JSON of the
architecture (`save`, `load`): a few thousand numbers, no optimiser state to resume, readable
with numpy alone; Orbax's checkpoint manager serves the long resumable patch runs.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import os
from collections.abc import Callable, Iterator, Mapping

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx
from scipy import special

from input_pipeline import speck_labels
from mcalc_jax.base import files
from mcalc_jax.model import morphology

PIXEL_MM = speck_labels.PIXEL_MM  # the grid it reads and writes
TOPHAT_RADIUS_PX = 2  # 0.4 mm, the classical map's disk
WINDOW_PX = 25  # 5 mm: the square the local levels are averaged over
DETAIL_PX = 5  # 1 mm: the box mean the detail channel is taken against
DILATIONS = (1, 1, 2, 4)  # the 3x3 convolutions' dilations: 8 pixels (1.6 mm) of context
FRONT_HALO = 2 * TOPHAT_RADIUS_PX + WINDOW_PX // 2  # the front end's reach
CONV_HALO = sum(DILATIONS)  # the convolutions' reach
HALO = FRONT_HALO + CONV_HALO  # a pixel's output depends on the input this far around it only
BAND_ROWS = 256  # output rows per band of `dense_map`
_EPS = 1e-4  # a floor for the local levels (fractions of the range): flat images stay finite
_WIDTH_STEP = 128  # widths are padded to a multiple of this, so few shapes are compiled
_P_FLOOR = 1e-7  # probabilities are kept this far from 0 and 1 before a logit shift


@dataclasses.dataclass(frozen=True)
class DetectorConfig:
  """The architecture (saved beside the parameters)."""

  width: int = 16
  seed: int = 0
  # Networks whose probabilities are averaged, each initialised and fed batches apart: one
  # detector's result swings by several clusters with its training draw, their mean less.
  members: int = 1


class Member(nnx.Module):
  """One network of the ensemble: the front end's channels [N, H, W, 3] -> speck logits [N, H, W]."""

  def __init__(self, width: int, *, rngs: nnx.Rngs):
    channels = [3, *[width] * len(DILATIONS)]
    self.convs = nnx.List(
      [
        nnx.Conv(a, b, (3, 3), kernel_dilation=d, padding="SAME", rngs=rngs)
        for a, b, d in zip(channels[:-1], channels[1:], DILATIONS, strict=True)
      ]
    )
    self.mix = nnx.Conv(width, width, (1, 1), rngs=rngs)
    self.out = nnx.Conv(width, 1, (1, 1), rngs=rngs)

  def __call__(self, h: jax.Array) -> jax.Array:
    for conv in self.convs:
      h = jax.nn.relu(conv(h))
    return self.out(jax.nn.relu(self.mix(h)))[..., 0]


class SpeckDetector(nnx.Module):
  """(pixels, breast mask) [N, H, W, 2] on the grid -> speck probabilities [N, H, W], the mean of
  its members' (module docstring)."""

  def __init__(self, config: DetectorConfig, *, rngs: nnx.Rngs):
    self.config = config
    self.members = nnx.List([Member(config.width, rngs=rngs) for _ in range(config.members)])
    self.logit_shift = 0.0  # added to the mean probability's logit (`calibrated`); not trained

  def __call__(self, x: jax.Array) -> jax.Array:
    h = front_end(x)
    p = jnp.mean(jnp.stack([jax.nn.sigmoid(member(h)) for member in self.members]), 0)
    if not self.logit_shift:
      return p
    p = jnp.clip(p, _P_FLOOR, 1 - _P_FLOOR)
    return jax.nn.sigmoid(jnp.log(p) - jnp.log1p(-p) + self.logit_shift)

  def member_logits(self, x: jax.Array, trim: int) -> jax.Array:
    """[members, N, ...] inputs, a batch per member -> [members, N, ...] logits; `trim` pixels
    of each side are cut after the front end (training crops carry `FRONT_HALO` of context that
    only the front end needs)."""
    h = front_end(x.reshape(-1, *x.shape[2:]))[:, trim:-trim, trim:-trim]
    h = h.reshape(*x.shape[:2], *h.shape[1:])
    return jnp.stack([member(part) for member, part in zip(self.members, h, strict=True)])


def front_end(x: jax.Array) -> jax.Array:
  """[N, H, W, 2] (pixels, mask) -> [N, H, W, 3]: log(1 + top-hat CNR), detail over its local
  RMS, mask (module docstring)."""
  pixels, mask = x[..., :1], x[..., 1:]
  tophat = morphology.white_tophat(pixels, TOPHAT_RADIUS_PX)
  cnr = tophat / (_masked_mean(tophat, mask, WINDOW_PX) + _EPS)
  detail = pixels - _box_mean(pixels, DETAIL_PX)
  rms = jnp.sqrt(_masked_mean(detail**2, mask, WINDOW_PX)) + _EPS
  return jnp.concatenate([jnp.log1p(cnr), detail / rms, mask], -1)


def _box_sum(x: jax.Array, size: int) -> jax.Array:
  """Sums over `size` x `size` squares (zero beyond the borders), separably."""
  for window in ((1, size, 1, 1), (1, 1, size, 1)):
    x = jax.lax.reduce_window(x, 0.0, jax.lax.add, window, (1, 1, 1, 1), "SAME")
  return x


def _box_mean(x: jax.Array, size: int) -> jax.Array:
  """Means over `size` x `size` squares of the pixels inside the image."""
  rows, cols = (_inside_count(n, size) for n in x.shape[1:3])
  return _box_sum(x, size) / (rows[:, None, None] * cols[None, :, None])


def _inside_count(n: int, size: int) -> jax.Array:
  """How many of a centred window of `size` lie inside an axis of `n` (an iota, not a summed
  array of ones, which XLA folds slowly as a constant)."""
  index = jnp.arange(n)
  return (jnp.minimum(index + size // 2, n - 1) - jnp.maximum(index - size // 2, 0) + 1).astype(
    jnp.float32
  )


def _masked_mean(x: jax.Array, mask: jax.Array, size: int) -> jax.Array:
  """Means over `size` x `size` squares of the masked pixels (0 where a square has none)."""
  return _box_sum(x * mask, size) / jnp.maximum(_box_sum(mask, size), 1.0)


def create(config: DetectorConfig = DetectorConfig()) -> SpeckDetector:
  """A detector initialised from the config's seed."""
  return SpeckDetector(config, rngs=nnx.Rngs(config.seed))


# ---------------------------------------------------------------------------------------------
# Training.


def weighted_bce(
  logits: jax.Array, labels: jax.Array, weights: jax.Array, pos_weight: float
) -> jax.Array:
  """Pixel-wise binary cross-entropy, specks weighted by `pos_weight` (they are under 1% of the
  pixels), averaged over the weighted pixels (weight 0: ignored)."""
  per_pixel = pos_weight * labels * jax.nn.softplus(-logits) + (1 - labels) * jax.nn.softplus(
    logits
  )
  return jnp.sum(weights * per_pixel) / jnp.maximum(jnp.sum(weights), 1.0)


@dataclasses.dataclass(frozen=True)
class TrainOptions:
  """How a detector is trained."""

  steps: int = 400
  batch: int = 32
  learning_rate: float = 3e-3
  pos_weight: float = 5.0


def make_train_step(
  graphdef: nnx.GraphDef, tx: optax.GradientTransformation, pos_weight: float
) -> Callable:
  """The jitted, pure Adam step (params, opt_state, inputs, labels, weights) -> (params,
  opt_state, loss), a batch per member ([members, batch, ...]); inputs carry `HALO` pixels of
  context around the labelled square."""

  @jax.jit
  def step(params, opt_state, inputs, labels, weights):
    def loss_fn(params):
      model = nnx.merge(graphdef, params)
      logits = model.member_logits(inputs, FRONT_HALO)[
        ..., CONV_HALO:-CONV_HALO, CONV_HALO:-CONV_HALO
      ]
      return weighted_bce(logits, labels, weights, pos_weight)

    loss, grads = jax.value_and_grad(loss_fn)(params)
    updates, opt_state = tx.update(grads, opt_state, params)
    return optax.apply_updates(params, updates), opt_state, loss

  return step


def train(
  crops: speck_labels.Crops,
  config: DetectorConfig = DetectorConfig(),
  options: TrainOptions = TrainOptions(),
) -> tuple[SpeckDetector, list[float]]:
  """A detector trained on `crops` (halo `HALO`), batches drawn with replacement; the same
  seed gives the same parameters. Returns it and every step's loss."""
  context = (crops.inputs.shape[1] - crops.labels.shape[1]) / 2
  if context != HALO:
    raise ValueError(f"crops need {HALO} pixels of context around their labels, not {context:g}")
  graphdef, params = nnx.split(create(config))
  tx = optax.adam(options.learning_rate)
  opt_state = tx.init(params)
  step = make_train_step(graphdef, tx, options.pos_weight)
  losses = []
  for index in _batches(len(crops.labels), options, config):
    params, opt_state, loss = step(
      params, opt_state, crops.inputs[index], crops.labels[index], crops.weights[index]
    )
    losses.append(float(loss))
  return nnx.merge(graphdef, params), losses


def _batches(n: int, options: TrainOptions, config: DetectorConfig) -> Iterator[np.ndarray]:
  """[members, batch] crop indices per step: each member its own draw."""
  rng = np.random.default_rng(config.seed)
  for _ in range(options.steps):
    yield rng.integers(n, size=(config.members, options.batch))


# ---------------------------------------------------------------------------------------------
# Whole images.


@functools.partial(jax.jit, static_argnums=0)
def _probabilities(graphdef: nnx.GraphDef, params: nnx.State, x: jax.Array) -> jax.Array:
  return nnx.merge(graphdef, params)(x)


def dense_map(
  detector: SpeckDetector,
  pixels: np.ndarray,
  pixel_mm: float,
  *,
  mask: np.ndarray | None = None,
  band_rows: int = BAND_ROWS,
) -> np.ndarray:
  """float32 [h, w]: the speck probability of every pixel of the grid of `PIXEL_MM` over a whole
  image (`pixels` at `pixel_mm`, fractions of the range), zero outside `mask` (default: the breast
  less `speck_labels.EDGE_MARGIN_MM`). Only the mask's bounding box is passed through the network
  (with `HALO` of context), in bands of `band_rows` overlapping by `HALO` rows: the single
  pass's map, at the cost of the breast's box."""
  if mask is None:
    mask = speck_labels.inner_mask(pixels, pixel_mm)
  grid = speck_labels.to_grid(np.asarray(pixels, np.float32), pixel_mm)
  inside = speck_labels.to_grid(mask.astype(np.uint8), pixel_mm, order=0) > 0
  out = np.zeros(grid.shape, np.float32)
  rows, cols = (np.flatnonzero(inside.any(axis)) for axis in (1, 0))
  if not rows.size:
    return out
  box = np.s_[rows[0] : rows[-1] + 1, cols[0] : cols[-1] + 1]  # the breast's bounding box
  x = np.pad(
    np.stack([grid, inside.astype(np.float32)], -1),
    ((HALO, HALO), (HALO, HALO), (0, 0)),
    mode="edge",
  )
  # The box with `HALO` of the image (or its edge) around it: its map is the whole image's there.
  x = x[rows[0] : rows[-1] + 1 + 2 * HALO, cols[0] : cols[-1] + 1 + 2 * HALO]
  out[box] = np.where(inside[box], _banded(detector, x, band_rows), 0.0)
  return out


def _banded(detector: SpeckDetector, x: np.ndarray, band_rows: int) -> np.ndarray:
  """The detector's map of `x` [h + 2 HALO, w + 2 HALO, 2] (its `HALO` margin context only) in
  bands of `band_rows`, padded so that few shapes are compiled: [h, w]."""
  h, w = x.shape[0] - 2 * HALO, x.shape[1] - 2 * HALO
  rows = -(-h // band_rows) * band_rows - h
  cols = -(-w // _WIDTH_STEP) * _WIDTH_STEP - w
  x = np.pad(x, ((0, rows), (0, cols), (0, 0)), mode="edge")
  graphdef, params = nnx.split(detector)
  out = np.empty((h + rows, w + cols), np.float32)
  for top in range(0, h + rows, band_rows):
    band = jnp.asarray(x[None, top : top + band_rows + 2 * HALO])
    out[top : top + band_rows] = np.asarray(_probabilities(graphdef, params, band))[
      0, HALO:-HALO, HALO:-HALO
    ]
  return out[:h, :w]


# ---------------------------------------------------------------------------------------------
# Calibration.


def logit_shift(values: np.ndarray, fraction: float, threshold: float) -> float:
  """The shift of the logit that leaves `fraction` of `values` (a detector's uncalibrated
  probabilities over breast pixels) above `threshold`: detectors trained apart then mark the
  same share of tissue, where one threshold on their raw maps marks up to ten times more on one
  than on another (docs/results.md)."""
  if not 0 < fraction < 1:
    raise ValueError(f"the fraction above the threshold must lie in (0, 1), not {fraction}")
  if not 0 < threshold < 1:
    raise ValueError(f"a detector's threshold is a probability, not {threshold}")
  quantile = np.clip(float(np.quantile(values, 1 - fraction)), _P_FLOOR, 1 - _P_FLOOR)
  return float(special.logit(threshold) - special.logit(quantile))


def calibrated(detector: SpeckDetector, shift: float) -> SpeckDetector:
  """A copy of `detector` whose probabilities' logits are moved by `shift`."""
  copy = nnx.merge(*nnx.split(detector))
  copy.logit_shift = float(shift)
  return copy


# ---------------------------------------------------------------------------------------------
# Saving.

PARAMS_FILE = "speck_detector.npz"
CONFIG_FILE = "speck_detector.json"


def save(folder: str | os.PathLike, detector: SpeckDetector, meta: Mapping | None = None) -> None:
  """The parameters (npz, one array per parameter path) and the config (JSON, with `meta`: what
  it was trained on, and the logit shift where calibrated) into `folder`, each written
  atomically."""
  os.makedirs(folder, exist_ok=True)
  arrays = {jax.tree_util.keystr(p): np.asarray(v) for p, v in _leaves(nnx.state(detector))}
  with files.atomic_write(os.path.join(folder, PARAMS_FILE)) as f:
    np.savez(f, **arrays)
  record = {
    "config": dataclasses.asdict(detector.config),
    "meta": dict(meta or {}),
    **({"logit_shift": detector.logit_shift} if detector.logit_shift else {}),
  }
  files.write_text(os.path.join(folder, CONFIG_FILE), json.dumps(record, indent=2))


def load(folder: str | os.PathLike) -> SpeckDetector:
  """The detector `save` wrote into `folder`; ValueError when its parameters do not fit."""
  with open(os.path.join(folder, CONFIG_FILE)) as f:
    record = json.load(f)
  config = record["config"]
  detector = create(DetectorConfig(**config))
  with np.load(os.path.join(folder, PARAMS_FILE)) as stored:
    arrays = dict(stored)
  if "members" not in config:  # saved before ensembles: its one network is member 0
    arrays = {f"['members'][0]{path}": value for path, value in arrays.items()}
  graphdef, state = nnx.split(detector)
  paths = [jax.tree_util.keystr(p) for p, _ in _leaves(state)]
  if sorted(paths) != sorted(arrays):
    raise ValueError(f"{folder}: the saved parameters do not fit {CONFIG_FILE}'s architecture")
  treedef = jax.tree_util.tree_structure(state)
  loaded = nnx.merge(graphdef, jax.tree_util.tree_unflatten(treedef, [arrays[p] for p in paths]))
  return calibrated(loaded, _shift(record))


def load_shift(folder: str | os.PathLike) -> float:
  """The logit shift of the detector saved in `folder` (0: not calibrated)."""
  with open(os.path.join(folder, CONFIG_FILE)) as f:
    return _shift(json.load(f))


def _shift(record: Mapping) -> float:
  return float(record.get("logit_shift", 0.0))


def _leaves(state: nnx.State) -> list:
  return jax.tree_util.tree_leaves_with_path(state)
