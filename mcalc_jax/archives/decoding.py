"""Images read, decoded and tiled ahead of the devices, in worker processes.

Decoding a mammogram is Python-library work (pydicom's RLE decoder, pylibjpeg, Pillow) that holds
the GIL for much of its time: on threads, every decoder shares one core, and a GPU scoring 70
mammograms a second would wait on it. So `decode_ahead` reads, decodes and prepares each image
(`tiling.TilePlan.prepare`: tiles, breast fractions) in worker processes, forked from a
`forkserver` (so none of the parent's threads, and no JAX runtime, is copied), and hands them on
in input order; a script that scores needs the usual `if __name__ == "__main__":` guard. At
most `2 x workers` images are in flight, so memory stays bounded however far the decoders could
run ahead. On a CPU backend the default is no worker process (`auto_workers`).

A `DecodeClock` records how long the consumer waited for decoded images: a run that waited a
good part of its time was decode-bound (more workers, or a faster codec: the `codecs` extra),
one that did not was device-bound. Pixels come back from a worker through shared memory.

A worker killed by its image is survived (`DecoderCrashedError`); an image decoded in this
process is marked in the run's journal while it decodes (`mcalc_jax.archives.journal`), so one
that kills the process is known to the rerun.
"""

from __future__ import annotations

import collections
import concurrent.futures
import contextlib
import dataclasses
import logging
import multiprocessing
import os
import pickle
import time
from collections.abc import Iterable, Iterator
from concurrent.futures.process import BrokenProcessPool
from multiprocessing import shared_memory

import numpy as np
import pydicom

from input_pipeline.errors import MammogramError
from input_pipeline.mammogram import Mammogram
from mcalc_jax.archives.discovery import InputLike
from mcalc_jax.archives.journal import DECODING, Journal
from mcalc_jax.whole_image.tiling import PreparedImage, TilePlan

# Workers yield the cores to the scoring process (its devices' feeder, or on a CPU the network).
_WORKER_NICENESS = 10
# A run whose consumer waited longer than this share of its time for images was decode-bound.
DECODE_BOUND_FRACTION = 0.1


@dataclasses.dataclass(frozen=True)
class DecodedImage:
  """An image read, decoded and prepared for the devices.

  `mammogram` carries the image's metadata; its pixels are `prepared.pixels` (the same array,
  padded to at least one tile), so they cross from a worker process once.
  """

  input: InputLike
  mammogram: Mammogram
  prepared: PreparedImage
  seconds: float  # reading, decoding and preparing, in the worker
  header: pydicom.Dataset | None = None  # read only for DICOM results


def decode(item: InputLike, plan: TilePlan, with_header: bool = False) -> DecodedImage:
  """Reads, decodes and prepares one image (what a worker process runs)."""
  start = time.perf_counter()
  mammogram, header = item.read(with_header=with_header)
  prepared = plan.prepare(mammogram)
  mammogram = dataclasses.replace(mammogram, pixels=prepared.pixels)
  return DecodedImage(item, mammogram, prepared, time.perf_counter() - start, header)


@dataclasses.dataclass(frozen=True)
class _Shared:
  """A decoded image whose pixels wait in a shared-memory block (`name`), not in `decoded`."""

  decoded: DecodedImage
  name: str
  shape: tuple[int, ...]
  dtype: str


def _decode_to_shared(item: InputLike, plan: TilePlan, with_header: bool) -> _Shared:
  """`decode` in a worker: the pixels go back through shared memory (one copy each side),
  not pickled through the pipe (four copies, and the parent's GIL held while it unpickles)."""
  decoded = decode(item, plan, with_header)
  pixels = decoded.prepared.pixels
  block = shared_memory.SharedMemory(create=True, size=max(pixels.nbytes, 1))
  np.ndarray(pixels.shape, pixels.dtype, buffer=block.buf)[...] = pixels
  block.close()
  return _Shared(_with_pixels(decoded, _NO_PIXELS), block.name, pixels.shape, pixels.dtype.str)


def _received(shared: _Shared) -> DecodedImage:
  """The decoded image with its pixels copied out of (and the block freed from) shared memory."""
  block = shared_memory.SharedMemory(name=shared.name)
  try:
    pixels = np.ndarray(shared.shape, shared.dtype, buffer=block.buf).copy()
  finally:
    block.close()
    block.unlink()
  return _with_pixels(shared.decoded, pixels)


def _with_pixels(decoded: DecodedImage, pixels: np.ndarray) -> DecodedImage:
  prepared = dataclasses.replace(decoded.prepared, pixels=pixels)
  mammogram = dataclasses.replace(decoded.mammogram, pixels=pixels)
  return dataclasses.replace(decoded, prepared=prepared, mammogram=mammogram)


_NO_PIXELS = np.zeros((0, 0), np.uint16)


@dataclasses.dataclass
class DecodeClock:
  """How long the consumer waited for decoded images, from the first image on.

  The first image is always waited for (nothing can run before it), so the clock starts when it
  arrives; `waited` is the time blocked on the images after it.
  """

  workers: int = 1
  images: int = 0
  waited: float = 0.0
  decode_seconds: float = 0.0  # the workers' time, summed
  started: float | None = None

  def record(self, waited: float, decoded: DecodedImage | None) -> None:
    if self.started is None:
      self.started = time.perf_counter()
    else:
      self.waited += waited
    self.images += 1
    if decoded is not None:
      self.decode_seconds += decoded.seconds

  @property
  def wall(self) -> float:
    return 0.0 if self.started is None else time.perf_counter() - self.started

  @property
  def wait_fraction(self) -> float:
    return self.waited / self.wall if self.wall > 0 else 0.0

  @property
  def decode_bound(self) -> bool:
    return self.wait_fraction > DECODE_BOUND_FRACTION

  def progress(self) -> str:
    """For the progress line: the share of time spent waiting for decoded images."""
    return f"waiting for decode {self.wait_fraction:.0%}"

  def verdict(self) -> str:
    """One line for the end of a run: decode-bound or device-bound, and what to do about it."""
    per_image = self.decode_seconds / max(self.images, 1)
    waited = (
      f"waited for decoded images {self.wait_fraction:.0%} of {self.wall:.1f} s "
      f"({self.images} images, {per_image:.2f} s each to decode on {self.workers} worker(s))"
    )
    if self.decode_bound:
      return (
        f"decode-bound: the scorer {waited}; give more --num_workers or install a faster "
        "codec (pip install 'mcalc_jax[codecs]')"
      )
    return f"device-bound: the scorer {waited}"


def auto_workers(backend: str, cores: int | None = None) -> int:
  """Decode worker processes for a run on `backend` (`jax.default_backend()`).

  None on a CPU backend: the network is the bottleneck there and uses every core, so a decode
  process only competes with it (docs/performance.md); elsewhere every core but one.
  """
  if backend == "cpu":
    return 0
  return max(1, (cores or os.cpu_count() or 2) - 1)


def decode_ahead(
  items: Iterable[InputLike],
  plan: TilePlan,
  *,
  workers: int,
  with_header: bool = False,
  clock: DecodeClock | None = None,
  journal: Journal | None = None,
) -> Iterator[tuple[InputLike, DecodedImage | Exception]]:
  """Each item with its decoded image (or what failed), in input order, decoded ahead.

  `workers` processes decode; 0 decodes on one thread of this process (no process start, for
  small runs and debugging). A failure of one image is yielded as its exception; an image whose
  decoder kills its worker process (a crashing codec) is retried alone in a fresh pool and, if
  it kills that one too, yielded as a `DecoderCrashedError`, and the run goes on. With
  `journal`, an image decoded in this process is marked `decoding` meanwhile.
  """
  clock = clock if clock is not None else DecodeClock(max(workers, 1))
  pool = _Pool(workers, plan, with_header, journal)
  pending: collections.deque = collections.deque()
  try:
    for item in items:
      pending.append((item, pool.submit(item)))
      if len(pending) >= 2 * max(workers, 1):
        yield pool.outcome(pending, clock)
    while pending:
      yield pool.outcome(pending, clock)
  finally:
    pool.shutdown(pending)


class DecoderCrashedError(MammogramError):
  """The image's decoder killed the worker process decoding it, twice."""


class _Pool:
  """The workers, restarted when one dies; `outcome` takes the oldest pending image's result."""

  def __init__(self, workers: int, plan: TilePlan, with_header: bool, journal: Journal | None):
    if workers > 0:
      _check_picklable(plan)
    self._workers, self._plan, self._with_header = workers, plan, with_header
    self._journal = journal
    self._executor = self._start()

  def _start(self) -> concurrent.futures.Executor:
    if self._workers <= 0:
      return concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="decode")
    context = multiprocessing.get_context("forkserver")
    # The server is a fresh interpreter (not a fork of this threaded one) that imports this
    # module; each worker forks from it and, as multiprocessing does, imports the main module
    # (for mcalc-score that imports JAX but never starts it): about a second, once per run.
    context.set_forkserver_preload([__name__])
    return concurrent.futures.ProcessPoolExecutor(
      self._workers, mp_context=context, initializer=os.nice, initargs=(_WORKER_NICENESS,)
    )

  def submit(self, item: InputLike) -> concurrent.futures.Future:
    if self._workers <= 0:
      return self._executor.submit(self._decode_here, item)
    return self._executor.submit(_decode_to_shared, item, self._plan, self._with_header)

  def _decode_here(self, item: InputLike) -> DecodedImage:
    """`decode` on this process's thread, marked in the journal while it runs."""
    journal = self._journal
    with journal.working(item.key, DECODING) if journal else contextlib.nullcontext():
      return decode(item, self._plan, self._with_header)

  def shutdown(self, pending: collections.deque) -> None:
    """Stops the workers and frees the shared memory of images decoded but never taken."""
    self._executor.shutdown(wait=True, cancel_futures=True)
    for _, future in pending:
      if not future.cancelled() and isinstance(_result(future), _Shared):
        _received(future.result())

  def outcome(
    self, pending: collections.deque, clock: DecodeClock
  ) -> tuple[InputLike, DecodedImage | Exception]:
    item, future = pending.popleft()
    start = time.perf_counter()
    result = _result(future)
    if isinstance(result, BrokenProcessPool):
      result = self._retry_alone(item, pending)
    if isinstance(result, _Shared):
      result = _received(result)
    clock.record(time.perf_counter() - start, result if isinstance(result, DecodedImage) else None)
    return item, result

  def _retry_alone(self, item: InputLike, pending: collections.deque) -> DecodedImage | Exception:
    """After a worker died: `item` alone in a fresh pool, then the unfinished rest resubmitted."""
    logging.warning("%s: a decode worker died; retrying the image alone", item.key)
    self._restart()
    result = _result(self.submit(item))
    if isinstance(result, BrokenProcessPool):
      result = DecoderCrashedError(item.path, "decoding it killed the worker process, twice")
      self._restart()
    for n, (other, earlier) in enumerate(pending):  # what the dead pool finished, it keeps
      if not (earlier.done() and isinstance(_result(earlier), _Shared)):
        pending[n] = (other, self.submit(other))
    return result

  def _restart(self) -> None:
    self._executor.shutdown(wait=False, cancel_futures=True)
    self._executor = self._start()


def _check_picklable(plan: TilePlan) -> None:
  try:
    pickle.dumps(plan)
  except Exception as e:
    raise TypeError(
      f"worker processes need a picklable tile plan ({e}): give a module-level breast_mask_fn, "
      "or decode in this process (workers=0)"
    ) from e


def _result(future: concurrent.futures.Future) -> DecodedImage | Exception:
  try:
    return future.result()
  except Exception as e:  # noqa: BLE001 (any failure of one image is that image's error row)
    return e
