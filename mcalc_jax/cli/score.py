"""mcalc-score: a heatmap and a score for every mammogram of an archive, resumable after a kill.

  mcalc-score --workdir=runs/task1 --input=ARCHIVE_DIR|MANIFEST.csv --output=SCORES_DIR
      [--task2_workdir=runs/task2] [--stride=112] [--batch_size=256] [--task1_threshold=0.5]
      [--keep_identifiers] [--num_workers=2] [--overlays]

Input: every DICOM (.dcm, .dicom, or no extension with a DICOM preamble), PNG and PGM under the
folder, recursively, in sorted order (OUTPUT and hidden entries excluded); or the images of a
manifest CSV (`input_pipeline.manifest`), whose findings with coordinates are drawn as circles.

Output, per image KEY (the first 16 hex digits of the sha1 of its path relative to the input
folder, or to the manifest's folder; never patient tags):
  KEY.npz      the probability grids and the geometry that maps them to pixels (mcalc_jax.heatmaps)
  KEY.png      the overlay (unless --nooverlays)
  scores.csv   one row per scored image: SCORE_COLUMNS
  errors.csv   one row per image that could not be read or scored: ERROR_COLUMNS
With --keep_identifiers both CSVs also carry `path` (relative), and error reasons keep the path.

Every file is written atomically and a CSV row only after the image's files, each row in one
fsynced write; a rerun drops a torn last row, skips images already in scores.csv or errors.csv
and rescores the rest. With several processes (jax.distributed), process i takes the images with
index i modulo the process count and appends to scores.i-of-n.csv / errors.i-of-n.csv.
"""

from __future__ import annotations

import collections
import concurrent.futures
import csv
import dataclasses
import glob
import hashlib
import io
import math
import os
import time
from collections.abc import Callable, Iterable, Iterator

import jax
from absl import app, flags, logging
from tqdm import tqdm

from input_pipeline import manifest
from input_pipeline.errors import MammogramError
from input_pipeline.mammogram import Mammogram, read_mammogram
from mcalc_jax import checkpointing, heatmaps, parallel, scoring

_WORKDIR = flags.DEFINE_string(
  "workdir", None, "Training run directory of the Task 1 classifier.", required=True
)
_INPUT = flags.DEFINE_string(
  "input", None, "Folder of mammograms (recursive) or a manifest CSV.", required=True
)
_OUTPUT = flags.DEFINE_string("output", None, "Folder for the outputs.", required=True)
_TASK2_WORKDIR = flags.DEFINE_string(
  "task2_workdir", "", "Training run directory of the Task 2 (malignancy) classifier, if any."
)
_CHECKPOINT = flags.DEFINE_enum("checkpoint", "best", ["best", "latest"], "Checkpoint to load.")
_STRIDE = flags.DEFINE_integer("stride", 0, "Tile stride in pixels; 0: the patch size.")
_BATCH_SIZE = flags.DEFINE_integer("batch_size", 256, "Tiles per device call, all devices.")
_TASK1_THRESHOLD = flags.DEFINE_float(
  "task1_threshold", 0.5, "Task 1 probability from which a tile gets a Task 2 score."
)
_MIN_BREAST_FRACTION = flags.DEFINE_float(
  "min_breast_fraction", 0.1, "Tiles with less breast than this fraction are skipped."
)
_KEEP_IDENTIFIERS = flags.DEFINE_bool(
  "keep_identifiers", False, "Write input paths into the CSVs (they may name patients)."
)
_NUM_WORKERS = flags.DEFINE_integer("num_workers", 2, "Threads decoding images ahead.")
_OVERLAYS = flags.DEFINE_bool("overlays", True, "Write an overlay PNG per image.")

SCORE_COLUMNS = (
  "key",
  "laterality",
  "view",
  "rows",
  "cols",
  "task1_max",
  "task1_max_row",
  "task1_max_col",
  "task2_at_max",
  "tiles_scored",
  "tiles_skipped",
  "tiles_task2",
  "read_seconds",
  "score_seconds",
)
ERROR_COLUMNS = ("key", "error", "reason")
IMAGE_SUFFIXES = (".dcm", ".dicom", ".png", ".pgm")
_DEFAULT_RADIUS = 50.0  # pixels, for findings without a radius
_WRITES_IN_FLIGHT = 4  # images held by the writer thread at most


@dataclasses.dataclass(frozen=True)
class Input:
  """One image to score: its key, where it is, and the findings to draw."""

  key: str
  path: str
  relative_path: str
  annotations: tuple[heatmaps.Circle, ...] = ()


def image_key(relative_path: str) -> str:
  """A stable, non-identifying name for an image: a hash of its path relative to the input."""
  return hashlib.sha1(relative_path.encode()).hexdigest()[:16]


def find_inputs(source: str, exclude: str = "") -> list[Input]:
  """The images of a folder (recursive, sorted, `exclude` and hidden entries skipped) or manifest."""
  if os.path.isfile(source):
    return _manifest_inputs(source)
  if not os.path.isdir(source):
    raise FileNotFoundError(f"--input {source} is neither a folder nor a manifest file")
  exclude = os.path.abspath(exclude) if exclude else ""
  found = []
  for folder, dirs, files in os.walk(source):
    dirs[:] = sorted(
      d
      for d in dirs
      if not d.startswith(".") and os.path.abspath(os.path.join(folder, d)) != exclude
    )
    for name in sorted(files):
      path = os.path.join(folder, name)
      if not name.startswith(".") and _is_image(path):
        relative = os.path.relpath(path, source).replace(os.sep, "/")
        found.append(Input(image_key(relative), path, relative))
  return found


def _is_image(path: str) -> bool:
  suffix = os.path.splitext(path)[1].lower()
  if suffix:
    return suffix in IMAGE_SUFFIXES
  with open(path, "rb") as f:
    return f.read(132)[128:] == b"DICM"


def _manifest_inputs(path: str) -> list[Input]:
  base = os.path.dirname(os.path.abspath(path))
  circles: dict[str, list[heatmaps.Circle]] = collections.defaultdict(list)
  for finding in manifest.read_manifest(path):
    found = circles[finding.image_path]  # creates the entry: images without findings count too
    if finding.row is not None and finding.col is not None:
      found.append(heatmaps.Circle(finding.row, finding.col, finding.radius or _DEFAULT_RADIUS))
  inputs = []
  for image_path, drawn in circles.items():
    relative = os.path.relpath(image_path, base).replace(os.sep, "/")
    inputs.append(Input(image_key(relative), image_path, relative, tuple(drawn)))
  return inputs


class CsvLog:
  """An append-only CSV keyed by its first column, whose rows survive kill -9 whole.

  Each row is one write of a whole line, flushed to disk; opening an existing log drops a torn
  last line and repeated keys (rewriting the file atomically if it had any).
  """

  def __init__(self, path: str, columns: tuple[str, ...]):
    header, rows, clean = read_log(path)
    if header is not None and tuple(header) != columns:
      raise ValueError(
        f"{path} has columns {header}, this run writes {list(columns)}: "
        "use another --output (or the same --keep_identifiers as before)"
      )
    if header is None or not clean:
      with heatmaps.atomic_write(path, "w") as f:
        csv.writer(f, lineterminator="\n").writerows([columns, *rows])
    self._fd = os.open(path, os.O_WRONLY | os.O_APPEND)

  def append(self, row: Iterable[object]) -> None:
    text = io.StringIO()
    csv.writer(text, lineterminator="\n").writerow(
      [str(v).replace("\n", " ").replace("\r", " ") for v in row]
    )
    line = text.getvalue().encode()
    while line:  # one write in practice; a short write (disk nearly full) continues the line
      line = line[os.write(self._fd, line) :]
    os.fsync(self._fd)

  def close(self) -> None:
    os.close(self._fd)


def read_log(path: str) -> tuple[list[str] | None, list[list[str]], bool]:
  """Header and rows of a CSV log minus a torn last line and repeated keys; whether it had none."""
  if not os.path.exists(path):
    return None, [], True
  with open(path, newline="") as f:
    lines = f.read().splitlines(keepends=True)
  whole = [line for line in lines if line.endswith("\n")]
  rows = list(csv.reader(whole))
  header, body = (rows[0], rows[1:]) if rows else (None, [])
  seen: set[str] = set()
  unique = []
  for row in body:
    if row and row[0] not in seen:
      seen.add(row[0])
      unique.append(row)
  return header, unique, len(whole) == len(lines) and len(unique) == len(body)


def finished_keys(output: str) -> set[str]:
  """Keys in any process's scores or errors log: images that a rerun skips."""
  keys = set()
  for path in glob.glob(os.path.join(output, "scores*.csv")) + glob.glob(
    os.path.join(output, "errors*.csv")
  ):
    keys.update(row[0] for row in read_log(path)[1])
  return keys


def _log_names() -> tuple[str, str]:
  if jax.process_count() == 1:
    return "scores.csv", "errors.csv"
  shard = f"{jax.process_index()}-of-{jax.process_count()}"
  return f"scores.{shard}.csv", f"errors.{shard}.csv"


@dataclasses.dataclass(frozen=True)
class _Decoded:
  """An image decoded and prepared on a worker thread."""

  input: Input
  mammogram: Mammogram
  prepared: scoring.PreparedImage
  seconds: float


def _read_ahead(
  inputs: list[Input],
  prepare: Callable[[Input], _Decoded],
  workers: int,
) -> Iterator[tuple[Input, _Decoded | Exception]]:
  """Decodes images on `workers` threads, a few ahead of the consumer, in input order."""
  with concurrent.futures.ThreadPoolExecutor(workers, thread_name_prefix="decode") as pool:
    pending: collections.deque = collections.deque()
    for item in inputs:
      pending.append((item, pool.submit(prepare, item)))
      if len(pending) > 2 * workers:
        yield _outcome(*pending.popleft())
    while pending:
      yield _outcome(*pending.popleft())


def _outcome(item: Input, future: concurrent.futures.Future) -> tuple[Input, _Decoded | Exception]:
  try:
    return item, future.result()
  except Exception as e:  # noqa: BLE001 (any failure of one image is that image's error row)
    return item, e


class _Outputs:
  """Writes each image's files and then its CSV row, on one background thread, in order."""

  def __init__(self, output: str, keep_identifiers: bool, overlays: bool, progress: tqdm):
    scores_name, errors_name = _log_names()
    identity = ("path",) if keep_identifiers else ()
    self.scores = CsvLog(
      os.path.join(output, scores_name), SCORE_COLUMNS[:1] + identity + SCORE_COLUMNS[1:]
    )
    self.errors = CsvLog(
      os.path.join(output, errors_name), ERROR_COLUMNS[:1] + identity + ERROR_COLUMNS[1:]
    )
    self._output, self._keep, self._overlays, self._progress = (
      output,
      keep_identifiers,
      overlays,
      progress,
    )
    self._pool = concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="write")
    self._pending: collections.deque = collections.deque()

  def scored(self, decoded: _Decoded, scores: scoring.ImageScores) -> None:
    self._submit(self._write_scores, decoded, scores)

  def failed(self, item: Input, error: Exception) -> None:
    self._submit(self._write_error, item, error)

  def close(self) -> None:
    while self._pending:
      self._pending.popleft().result()
    self._pool.shutdown()
    self.scores.close()
    self.errors.close()

  def _submit(self, fn: Callable, *args) -> None:
    self._pending.append(self._pool.submit(fn, *args))
    while len(self._pending) > _WRITES_IN_FLIGHT:
      self._pending.popleft().result()  # re-raises a failed write (disk full, ...) here

  def _write_scores(self, decoded: _Decoded, scores: scoring.ImageScores) -> None:
    item = decoded.input
    heatmaps.write_scores(os.path.join(self._output, f"{item.key}.npz"), scores)
    if self._overlays:
      heatmaps.write_overlay(
        os.path.join(self._output, f"{item.key}.png"),
        decoded.prepared.pixels,
        scores,
        annotations=item.annotations,
        title=item.relative_path if self._keep else item.key,
      )
    self.scores.append([item.key, *self._identity(item), *_score_row(decoded, scores)])
    self._progress.update()

  def _write_error(self, item: Input, error: Exception) -> None:
    reason = str(error)
    if not self._keep:  # the reason without the path, which may name the patient
      reason = error.reason if isinstance(error, MammogramError) else reason
      reason = reason.replace(item.path, "<image>").replace(item.relative_path, "<image>")
    self.errors.append([item.key, *self._identity(item), type(error).__name__, reason])
    logging.warning("%s (%s) failed: %s", item.key, type(error).__name__, reason)
    self._progress.update()

  def _identity(self, item: Input) -> list[str]:
    return [item.relative_path] if self._keep else []


def _score_row(decoded: _Decoded, scores: scoring.ImageScores) -> list[object]:
  """The SCORE_COLUMNS after key: hottest tile centre in original pixels, counts, seconds."""
  m = decoded.mammogram
  hottest = scores.hottest()
  peak: list[object] = ["", "", "", ""]
  if hottest is not None:
    row, col = scores.geometry.tile_center(*hottest)
    at_max = scores.task2[hottest] if scores.task2 is not None else math.nan
    peak = [
      f"{scores.task1[hottest]:.6f}",
      f"{row:.1f}",
      f"{col:.1f}",
      "" if math.isnan(at_max) else f"{at_max:.6f}",
    ]
  return [
    m.laterality,
    m.view,
    *m.original_shape,
    *peak,
    scores.tiles_scored,
    scores.tiles_skipped,
    scores.tiles_task2,
    f"{decoded.seconds:.3f}",
    f"{scores.seconds:.3f}",
  ]


def _remove_stale_temporaries(output: str, inputs: list[Input]) -> None:
  """Removes what a killed run of this process may have left half-written."""
  names = [f"{i.key}.{ext}" for i in inputs for ext in ("npz", "png")] + list(_log_names())
  for name in names:
    stale = heatmaps.temporary_path(os.path.join(output, name))
    if os.path.exists(stale):
      os.remove(stale)


def score_archive(
  scorer: scoring.Scorer,
  inputs: list[Input],
  output: str,
  *,
  keep_identifiers: bool = False,
  overlays: bool = True,
  num_workers: int = 2,
) -> None:
  """Scores this process's share of `inputs` that no earlier run finished, into `output`."""
  os.makedirs(output, exist_ok=True)
  share = inputs[jax.process_index() :: jax.process_count()]
  _remove_stale_temporaries(output, share)
  done = finished_keys(output)
  todo = [i for i in share if i.key not in done]
  logging.info(
    "%d images, %d for this process, %d already done.",
    len(inputs),
    len(share),
    len(share) - len(todo),
  )

  def prepare(item: Input) -> _Decoded:
    start = time.perf_counter()
    mammogram = read_mammogram(item.path)
    prepared = scorer.prepare(mammogram)
    return _Decoded(item, mammogram, prepared, time.perf_counter() - start)

  with tqdm(total=len(todo), unit="image", desc="mcalc-score") as progress:
    outputs = _Outputs(output, keep_identifiers, overlays, progress)

    def readable() -> Iterator[tuple[_Decoded, scoring.PreparedImage]]:
      for item, result in _read_ahead(todo, prepare, num_workers):
        if isinstance(result, Exception):
          outputs.failed(item, result)
        else:
          yield result, result.prepared

    try:
      for decoded, scores in scorer.score_stream(readable()):
        outputs.scored(decoded, scores)
    finally:
      outputs.close()


def main(argv: list[str]) -> None:
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {argv[1:]}")
  parallel.maybe_initialize_distributed()
  parallel.enable_compilation_cache()
  inputs = find_inputs(_INPUT.value, exclude=_OUTPUT.value)
  task1 = checkpointing.load_classifier(_WORKDIR.value, _CHECKPOINT.value)
  task2 = (
    checkpointing.load_classifier(_TASK2_WORKDIR.value, _CHECKPOINT.value)
    if _TASK2_WORKDIR.value
    else None
  )
  scorer = scoring.Scorer(
    task1,
    task2=task2,
    stride=_STRIDE.value or None,
    batch_size=_BATCH_SIZE.value,
    task1_threshold=_TASK1_THRESHOLD.value,
    min_breast_fraction=_MIN_BREAST_FRACTION.value,
  )
  score_archive(
    scorer,
    inputs,
    _OUTPUT.value,
    keep_identifiers=_KEEP_IDENTIFIERS.value,
    overlays=_OVERLAYS.value,
    num_workers=_NUM_WORKERS.value,
  )


def run() -> None:
  app.run(main)


if __name__ == "__main__":
  run()
