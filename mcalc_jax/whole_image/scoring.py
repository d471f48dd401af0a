"""Whole-mammogram scoring: a patch classifier slid over the breast, at archive throughput.

Tiles cover what the classifier's patches covered: its patch size in pixels, or, for a run
trained on patches of `field_of_view_mm` millimetres, that many millimetres of each image at the
image's own pixel spacing (a tile of 0.2-mm film and one of 0.07-mm FFDM show the same tissue;
the network's preprocessing resamples the tile to its input grid on the device). Tiles are laid
every `stride` patch pixels (scaled like the tile) from the top-left corner; when the stride
leaves a strip at the far edge, one more tile is laid flush with that edge (so every pixel is
covered, deterministically; an image smaller than a tile is zero-padded to one tile).
Tiles whose breast fraction (from `input_pipeline.breast.breast_mask`, on a strided copy) is
below a threshold are skipped and counted, not scored; by default the threshold background
patches were cut with (75 %), so no tile is of a kind the model never trained on (on MIAS the
breast-edge tiles were most of the floor's false positives; docs/ablation.md).

Throughput comes from doing on the host only what must happen there:
- each image goes to the devices once, packed with its neighbours into one flat uint16 buffer
  of fixed length (replicated over the local devices); tiles are cut from it ON the devices;
- the host sends only tile origins, in batches of one fixed shape (padded; padded slots are
  ignored), sharded over a 'data' mesh of the local devices, so the network compiles once and
  tiles of several small images share a batch;
- work for the next pack is dispatched before the results of the previous one are read back.
Every process scores its own images on its own devices (no collectives), so a multi-process run
is as many independent scorers as processes.

Task 1 gives a probability grid (one value per tile); a second classifier, if given, scores the
tiles whose Task 1 probability reaches `task1_threshold` (Task 2, malignancy).
"""

from __future__ import annotations

import collections
import dataclasses
import functools
import time
from collections.abc import Callable, Iterable, Iterator
from typing import Any, Protocol, TypeVar, runtime_checkable

import jax
import jax.numpy as jnp
import numpy as np

from input_pipeline import breast, patches
from input_pipeline.mammogram import Mammogram
from mcalc_jax.base import parallel
from mcalc_jax.model import inference
from mcalc_jax.model.preprocess import PreprocessOptions
from mcalc_jax.whole_image.tiling import ImageScores, PreparedImage, TilePlan

ProbabilitiesFn = Callable[[jax.Array], jax.Array]
Key = TypeVar("Key")

DEFAULT_MIN_BREAST_FRACTION = patches.PatchSettings.min_breast_fraction  # as training patches
DEFAULT_BUFFER_PIXELS = 2**25  # 64 MiB of uint16: two or three full-field mammograms


@dataclasses.dataclass(frozen=True)
class TileSettings:
  """How whole images are tiled and batched: one type, and one set of names, for `mcalc-score`'s
  flags (`--stride`, ...) and a cross-validation's whole-image pass (`config.whole_image.stride`,
  ...)."""

  stride: int = 0  # in patch pixels; 0: the patch size
  min_breast_fraction: float = DEFAULT_MIN_BREAST_FRACTION  # tiles with less are not scored
  batch_size: int = 256  # tiles per device call, over the local devices
  task1_threshold: float = 0.5  # Task 1 probability from which a tile gets a Task 2 score

  @classmethod
  def from_config(cls, config: Any) -> TileSettings:
    """The settings of a config group that holds them (`config.whole_image`), other fields aside."""
    return cls(**{f.name: config[f.name] for f in dataclasses.fields(cls) if f.name in config})

  def scorer(self, task1: Any, task2: Any = None) -> Scorer:
    """A scorer of `task1` (and `task2`) classifiers with these settings."""
    return Scorer(
      task1,
      task2=task2,
      stride=self.stride or None,
      batch_size=self.batch_size,
      task1_threshold=self.task1_threshold,
      min_breast_fraction=self.min_breast_fraction,
    )


@runtime_checkable
class ClassifierLike(Protocol):
  """A patch classifier whose `probabilities` is jit-able (device arrays in and out), with the
  side of its patches and the millimetres they covered (`patches.NATIVE_PIXELS`: native pixels)."""

  patch_size: int
  field_of_view_mm: float

  def probabilities(self, images: jax.Array) -> jax.Array: ...


@dataclasses.dataclass
class _Pack:
  """Images sharing one device buffer and one tile size; `offsets` are where each image's pixels
  start in it."""

  tile: int
  keys: list[Any]
  images: list[PreparedImage]
  offsets: list[int]
  buffer: jax.Array | None = None
  task1: list[jax.Array] = dataclasses.field(default_factory=list)


class Scorer:
  """Scores whole mammograms with a Task 1 classifier and, optionally, a Task 2 classifier.

  `task1`/`task2` are `inference.Classifier`s, other `ClassifierLike` objects, or bare
  jit-able probabilities functions (float32 [N, S, S, 1] in [0, 1] -> [N, 2]; then give
  `patch_size`).
  `batch_size` is the global tile batch over the local devices (rounded up to a multiple of
  their number); `buffer_pixels` is the length of the device buffer that images are packed into
  (an image larger than that gets a buffer of its own, a multiple of that length, which goes
  with it: the cheap tile cutter compiles once per multiple, and no later pack stays large).
  """

  def __init__(
    self,
    task1: ClassifierLike | ProbabilitiesFn,
    *,
    task2: ClassifierLike | ProbabilitiesFn | None = None,
    patch_size: int | None = None,
    field_of_view_mm: float | None = None,
    stride: int | None = None,
    batch_size: int = 256,
    task1_threshold: float = 0.5,
    min_breast_fraction: float = DEFAULT_MIN_BREAST_FRACTION,
    buffer_pixels: int = DEFAULT_BUFFER_PIXELS,
    breast_mask_fn: Callable[[np.ndarray], np.ndarray] = breast.breast_mask,
    devices: list[jax.Device] | None = None,
  ):
    patch_size = _patch_size(patch_size, task1, task2)
    if not 0 < (stride or patch_size) <= patch_size:
      raise ValueError(f"stride must be in 1..{patch_size} (the patch size), got {stride}")
    self.task1_threshold = task1_threshold
    self.plan = TilePlan(
      patch_size,
      stride or patch_size,
      _field_of_view(field_of_view_mm, task1, task2),
      min_breast_fraction,
      breast_mask_fn,
    )
    mesh = parallel.make_mesh(devices or jax.local_devices())
    self.batch_size = -(-batch_size // mesh.size) * mesh.size
    self._replicated = parallel.replicated(mesh)
    self._batched = parallel.batch_sharded(mesh)
    self._task1 = _device_probabilities(task1, self._replicated)
    self._task2 = _device_probabilities(task2, self._replicated) if task2 is not None else None
    self._buffer_pixels = buffer_pixels
    self._cutters: dict[int, Callable[..., jax.Array]] = {}

  @property
  def patch_size(self) -> int:
    return self.plan.patch_size

  @property
  def stride(self) -> int:
    return self.plan.stride

  @property
  def field_of_view_mm(self) -> float:
    return self.plan.field_of_view_mm

  def prepare(self, mammogram: Mammogram) -> PreparedImage:
    """Host-side work for one image (`TilePlan.prepare`); thread-safe, no device use."""
    return self.plan.prepare(mammogram)

  def score(self, mammogram: Mammogram) -> ImageScores:
    """Scores one image (for many, `score_stream` overlaps host and device work)."""
    [(_, scores)] = list(self.score_stream([(None, self.prepare(mammogram))]))
    return scores

  def score_stream(
    self, items: Iterable[tuple[Key, PreparedImage]]
  ) -> Iterator[tuple[Key, ImageScores]]:
    """Scores (key, prepared image) pairs lazily, in order, one pack in flight ahead."""
    in_flight: collections.deque[_Pack] = collections.deque()
    last = time.perf_counter()

    def finish(pack: _Pack) -> list[tuple[Key, ImageScores]]:
      nonlocal last
      results = self._finish(pack)
      now = time.perf_counter()
      shares = _shares(now - last, [s.tiles_scored for _, s in results])
      last = now
      return [
        (k, dataclasses.replace(s, seconds=t)) for (k, s), t in zip(results, shares, strict=True)
      ]

    for pack in self._packs(items):
      self._launch_task1(pack)
      in_flight.append(pack)
      if len(in_flight) > 1:
        yield from finish(in_flight.popleft())
    while in_flight:
      yield from finish(in_flight.popleft())

  def _packs(self, items: Iterable[tuple[Key, PreparedImage]]) -> Iterator[_Pack]:
    pack = _Pack(self.patch_size, [], [], [])
    used = 0
    for key, image in items:
      tile = image.geometry.patch_size
      full = used + image.pixels.size > self._buffer_pixels
      if pack.keys and (full or tile != pack.tile):
        yield pack
        pack, used = _Pack(tile, [], [], []), 0
      pack.tile = tile
      pack.keys.append(key)
      pack.images.append(image)
      pack.offsets.append(used)
      used += image.pixels.size
    if pack.keys:
      yield pack

  def _launch_task1(self, pack: _Pack) -> None:
    """Sends the pack's pixels once, then dispatches Task 1 on every in-breast tile."""
    used = pack.offsets[-1] + pack.images[-1].pixels.size
    host = np.empty(-(-used // self._buffer_pixels) * self._buffer_pixels, np.uint16)
    for image, offset in zip(pack.images, pack.offsets, strict=True):
      host[offset : offset + image.pixels.size] = image.pixels.ravel()
    pack.buffer = jax.device_put(host, self._replicated)
    pack.task1 = self._dispatch(self._task1, pack, [im.breast_tiles for im in pack.images])

  def _dispatch(self, fn: ProbabilitiesFn, pack: _Pack, tiles: list[np.ndarray]) -> list[jax.Array]:
    """Queues fixed-shape batches of the given flat tile indices of each image of the pack."""
    table = _tile_table(pack, tiles, self.batch_size)
    results = []
    for b in range(0, len(table[0]), self.batch_size):
      batch = jax.device_put(tuple(c[b : b + self.batch_size] for c in table), self._batched)
      results.append(fn(self._cutter(pack.tile)(pack.buffer, *batch)))
    return results

  def _cutter(self, tile: int) -> Callable[..., jax.Array]:
    """The jitted tile cutter for tiles of `tile` pixels (one compile per tile size)."""
    if tile not in self._cutters:
      cut = functools.partial(_cut_tiles, patch_size=tile)
      self._cutters[tile] = jax.jit(cut, out_shardings=self._batched)
    return self._cutters[tile]

  def _finish(self, pack: _Pack) -> list[tuple[Any, ImageScores]]:
    """Reads Task 1 back, runs Task 2 on the tiles above threshold, and splits the results."""
    breast_tiles = [im.breast_tiles for im in pack.images]
    task1 = _split(_positive_class(pack.task1), breast_tiles)
    task2 = None
    if self._task2 is not None:
      hot = [t[p >= self.task1_threshold] for t, p in zip(breast_tiles, task1, strict=True)]
      task2 = _split(_positive_class(self._dispatch(self._task2, pack, hot)), hot)
    pack.buffer = None
    return [
      (
        key,
        ImageScores(
          geometry=image.geometry,
          task1=_grid(task1[n], breast_tiles[n], image.geometry.grid_shape),
          task2=None if task2 is None else _grid(task2[n], hot[n], image.geometry.grid_shape),
          task1_threshold=self.task1_threshold,
          seconds=0.0,
        ),
      )
      for n, (key, image) in enumerate(zip(pack.keys, pack.images, strict=True))
    ]


def _cut_tiles(
  buffer: jax.Array, starts: jax.Array, pitches: jax.Array, scales: jax.Array, *, patch_size: int
) -> jax.Array:
  """Cuts [B, S, S, 1] float32 tiles in [0, 1] out of the flat pixel buffer, on the device."""
  rows = jnp.arange(patch_size)

  def cut(start: jax.Array, pitch: jax.Array) -> jax.Array:
    return jax.vmap(
      lambda row: jax.lax.dynamic_slice(buffer, (start + row * pitch,), (patch_size,))
    )(rows)

  tiles = jax.vmap(cut)(starts, pitches).astype(jnp.float32)
  return (tiles * scales[:, None, None])[..., None]


def _positive_class(batches: list[jax.Array]) -> np.ndarray:
  """P(class 1) of every slot of the batches, padding included, on the host."""
  if not batches:
    return np.zeros(0, np.float32)
  return np.concatenate([b[:, 1] for b in jax.device_get(batches)]).astype(np.float32)


def _split(values: np.ndarray, tiles: list[np.ndarray]) -> list[np.ndarray]:
  """Splits concatenated per-tile values back into one array per image (padding dropped)."""
  ends = np.cumsum([t.size for t in tiles])
  return np.split(values[: ends[-1]], ends[:-1])


def _tile_table(
  pack: _Pack,
  tiles: list[np.ndarray],
  batch_size: int,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
  """Per tile: buffer index of its top-left pixel, row pitch, 1 / max value; in whole batches.

  Padding slots are zeros: they cut a harmless tile at index 0, and `_split` drops their results.
  """
  starts, pitches, scales = [], [], []
  for image, offset, flat in zip(pack.images, pack.offsets, tiles, strict=True):
    i, j = np.unravel_index(flat, image.geometry.grid_shape)
    pitch = image.pixels.shape[1]
    starts.append(
      offset + image.geometry.tile_rows[i].astype(np.int64) * pitch + image.geometry.tile_cols[j]
    )
    pitches.append(np.full(flat.size, pitch))
    scales.append(np.full(flat.size, 1.0 / image.max_value))
  total = sum(t.size for t in tiles)
  padding = -(-total // batch_size) * batch_size - total
  return tuple(
    np.pad(np.concatenate(c), (0, padding)).astype(dtype)
    for c, dtype in ((starts, np.int32), (pitches, np.int32), (scales, np.float32))
  )


def _grid(values: np.ndarray, flat: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
  """A NaN grid of `shape` holding `values` at flat tile indices `flat`."""
  grid = np.full(shape, np.nan, np.float32)
  grid.flat[flat] = values
  return grid


def _shares(seconds: float, tiles: list[int]) -> list[float]:
  """Splits a pack's seconds over its images by their number of tiles scored."""
  total = sum(tiles)
  if total == 0:
    return [seconds / len(tiles)] * len(tiles)
  return [seconds * n / total for n in tiles]


def _device_probabilities(
  model: ClassifierLike | ProbabilitiesFn,
  replicated: jax.sharding.NamedSharding,
) -> ProbabilitiesFn:
  """A jit-able, asynchronous probabilities function of device arrays on this process's mesh.

  `inference.Classifier.probabilities` takes host arrays and runs SPMD over every process's
  devices; scoring keeps tiles on this process's devices, so it calls the same jitted model
  function (same preprocessing) with the variables' local copies.
  """
  if isinstance(model, inference.Classifier):
    variables = jax.tree.map(lambda x: _local_copy(x, replicated), model.variables)
    options = PreprocessOptions.from_config(model.config)
    return functools.partial(
      inference.probabilities,
      model.graphdef,
      variables,
      options=options,
      chunk=inference.inference_chunk(model.config, replicated.mesh),
    )
  return model.probabilities if isinstance(model, ClassifierLike) else model


def _local_copy(array: jax.Array, replicated: jax.sharding.NamedSharding) -> jax.Array:
  """A replicated array over this process's devices, from this process's replicas of `array`."""
  if array.sharding == replicated:
    return array
  replicas = {shard.device: shard.data for shard in array.addressable_shards}
  devices = replicated.mesh.devices.flat
  return jax.make_array_from_single_device_arrays(
    array.shape, replicated, [replicas[d] for d in devices]
  )


def _field_of_view(given: float | None, *models: ClassifierLike | ProbabilitiesFn | None) -> float:
  """The one field of view (mm) the classifiers were trained at: `given`, else theirs (bare
  functions have none: native pixels)."""
  if given is not None:
    return float(given)
  views = {float(m.field_of_view_mm) for m in models if isinstance(m, ClassifierLike)}
  if len(views) > 1:
    raise ValueError(f"the classifiers were trained at different fields of view: {sorted(views)}")
  return views.pop() if views else patches.NATIVE_PIXELS


def _patch_size(patch_size: int | None, *models: ClassifierLike | ProbabilitiesFn | None) -> int:
  """The one patch size of the classifiers (and `patch_size`, if given); they must agree."""
  sizes = {int(m.patch_size) for m in models if isinstance(m, ClassifierLike)}
  if patch_size is not None:
    sizes.add(patch_size)
  if len(sizes) != 1:
    raise ValueError(f"need exactly one patch size for the classifiers, got {sorted(sizes)}")
  return sizes.pop()
