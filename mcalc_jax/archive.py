"""Archive scoring: a heatmap and a score for every mammogram of an archive, resumable after a kill.

`score_job(ScoreOptions(...))` is the `mcalc-score` job (and what `mcalc-demo` runs in process);
`score_archive` scores a list of `Input`s with a ready `scoring.Scorer`.

Input: every DICOM (.dcm, .dicom, or no extension with a DICOM preamble), PNG and PGM under the
folder, recursively, in sorted order (OUTPUT and hidden entries excluded); or the images of a
manifest CSV (`input_pipeline.manifest`), whose findings with coordinates are drawn as circles;
or the MG instances of a DICOMweb server (`mcalc_jax.dicomweb`, keyed by a hash of the SOP
Instance UID). Each input reads itself (`InputLike.read`), so scoring does not care which.

Output, per image KEY (the first 16 hex digits of the sha1 of its path relative to the input
folder, or to the manifest's folder; never patient tags):
  KEY.npz      the probability grids and the geometry that maps them to pixels (mcalc_jax.heatmaps)
  KEY.png      the overlay (unless --nooverlays)
  scores.csv   one row per scored image: SCORE_COLUMNS
  errors.csv   one row per image that could not be read or scored: ERROR_COLUMNS
With --keep_identifiers both CSVs also carry `path` (relative), and error reasons keep the path.
With --dicom_results, also dicom/KEY.seg.dcm and dicom/KEY.sr.dcm (`mcalc_jax.dicom_results`,
the only outputs that carry patient and study data), sent back by STOW-RS with --stow_url.

Every file is written atomically and a CSV row only after the image's files, each row in one
fsynced write; a rerun drops a torn last row, skips images already in scores.csv or errors.csv
and rescores the rest. With several processes (jax.distributed), process i takes the images with
index i modulo the process count and appends to its shards scores.i-of-n.csv / errors.i-of-n.csv;
when every process is done, process 0 merges the shards into scores.csv / errors.csv (one row per
image, in input order). Shards stay, so after a kill of any process a rerun resumes, with any
process count, and merges again (the merge is idempotent).
"""

from __future__ import annotations

import collections
import concurrent.futures
import csv
import dataclasses
import glob
import hashlib
import importlib
import io
import math
import os
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from typing import TYPE_CHECKING, Protocol

import jax
import pydicom
from absl import logging
from tqdm import tqdm

from input_pipeline import manifest
from input_pipeline.errors import MammogramError
from input_pipeline.mammogram import Mammogram, read_mammogram, spacing_options
from mcalc_jax import files, heatmaps, inference, parallel, scoring

if TYPE_CHECKING:  # optional extra `dicom`: imported by score_job only when asked for
  from mcalc_jax.dicom_results import DicomResults

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
  "pixel_spacing_mm",
  "spacing_assumed",
  "tile_mm",
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
  pixel_spacing_mm: float | None = None  # documented by the manifest's source, if the file lacks it

  def read(self, with_header: bool = False) -> tuple[Mammogram, pydicom.Dataset | None]:
    """The decoded image and, when asked and the file is DICOM, its header (for DICOM results)."""
    mammogram = read_mammogram(self.path, spacing_options(self.pixel_spacing_mm))
    if not with_header or not _is_dicom(self.path):
      return mammogram, None
    return mammogram, pydicom.dcmread(self.path, stop_before_pixels=True)


class InputLike(Protocol):
  """What scoring needs of an input: an `Input` (a file) or a `dicomweb.DicomwebInput`."""

  key: str
  path: str
  relative_path: str
  annotations: tuple[heatmaps.Circle, ...]

  def read(self, with_header: bool = False) -> tuple[Mammogram, pydicom.Dataset | None]: ...


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
  for folder, dirs, names in os.walk(source):
    dirs[:] = sorted(
      d
      for d in dirs
      if not d.startswith(".") and os.path.abspath(os.path.join(folder, d)) != exclude
    )
    for name in sorted(names):
      path = os.path.join(folder, name)
      if not name.startswith(".") and _is_image(path):
        relative = os.path.relpath(path, source).replace(os.sep, "/")
        found.append(Input(image_key(relative), path, relative))
  return found


def _is_image(path: str) -> bool:
  suffix = os.path.splitext(path)[1].lower()
  if suffix:
    return suffix in IMAGE_SUFFIXES
  return _is_dicom(path)


def _is_dicom(path: str) -> bool:
  with open(path, "rb") as f:
    return f.read(132)[128:] == b"DICM"


def _manifest_inputs(path: str) -> list[Input]:
  return inputs_from_findings(manifest.read_manifest(path), os.path.dirname(os.path.abspath(path)))


def inputs_from_findings(findings: Iterable[manifest.Finding], base: str) -> list[Input]:
  """One input per image of `findings` (absolute paths), keyed by its path relative to `base`,
  with its findings as circles to draw and the spacing its source documents."""
  circles: dict[str, list[heatmaps.Circle]] = collections.defaultdict(list)
  spacing: dict[str, float | None] = {}
  for finding in findings:
    found = circles[finding.image_path]  # creates the entry: images without findings count too
    spacing[finding.image_path] = spacing.get(finding.image_path) or finding.pixel_spacing_mm
    if finding.row is not None and finding.col is not None:
      found.append(heatmaps.Circle(finding.row, finding.col, finding.radius or _DEFAULT_RADIUS))
  inputs = []
  for image_path, drawn in circles.items():
    relative = os.path.relpath(image_path, base).replace(os.sep, "/")
    key = image_key(relative)
    inputs.append(Input(key, image_path, relative, tuple(drawn), spacing[image_path]))
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
      with files.atomic_write(path, "w") as f:
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


def merge_logs(output: str, keys: Sequence[str]) -> None:
  """scores.csv and errors.csv with their rows and every shard's: one row per key, in `keys` order.

  Rows of keys not in `keys` (inputs since removed) follow in the order found; shards are kept.
  """
  order = {key: i for i, key in enumerate(keys)}
  for name in ("scores", "errors"):
    shards = sorted(glob.glob(os.path.join(output, f"{name}.*-of-*.csv")))
    if not shards:
      continue
    merged = os.path.join(output, f"{name}.csv")
    header, rows = _union([merged, *shards])
    ranked = sorted(rows.values(), key=lambda row: order.get(row[0], len(order)))
    with files.atomic_write(merged, "w") as f:
      csv.writer(f, lineterminator="\n").writerows([header, *ranked])


def _union(paths: Sequence[str]) -> tuple[list[str], dict[str, list[str]]]:
  """The header the logs share and their rows by key (the first log with a key wins)."""
  header, rows = None, {}
  for path in paths:
    columns, body, _ = read_log(path)
    if columns is None:
      continue
    if header is not None and columns != header:
      raise ValueError(f"{path} has columns {columns}, other logs {header}: cannot merge them")
    header = columns
    for row in body:
      rows.setdefault(row[0], row)
  return header, rows


def _log_names() -> tuple[str, str]:
  if jax.process_count() == 1:
    return "scores.csv", "errors.csv"
  shard = f"{jax.process_index()}-of-{jax.process_count()}"
  return f"scores.{shard}.csv", f"errors.{shard}.csv"


@dataclasses.dataclass(frozen=True)
class DecodedImage:
  """An image read, decoded and prepared for the devices on a worker thread."""

  input: InputLike
  mammogram: Mammogram
  prepared: scoring.PreparedImage
  seconds: float
  header: pydicom.Dataset | None = None  # read only for DICOM results


def _read_ahead(
  inputs: list[Input],
  prepare: Callable[[Input], DecodedImage],
  workers: int,
) -> Iterator[tuple[Input, DecodedImage | Exception]]:
  """Decodes images on `workers` threads, a few ahead of the consumer, in input order."""
  with concurrent.futures.ThreadPoolExecutor(workers, thread_name_prefix="decode") as pool:
    pending: collections.deque = collections.deque()
    for item in inputs:
      pending.append((item, pool.submit(prepare, item)))
      if len(pending) > 2 * workers:
        yield _outcome(*pending.popleft())
    while pending:
      yield _outcome(*pending.popleft())


def _outcome(
  item: Input, future: concurrent.futures.Future
) -> tuple[Input, DecodedImage | Exception]:
  try:
    return item, future.result()
  except Exception as e:  # noqa: BLE001 (any failure of one image is that image's error row)
    return item, e


class _Outputs:
  """Writes each image's files and then its CSV row, on one background thread, in order."""

  def __init__(
    self,
    output: str,
    keep_identifiers: bool,
    overlays: bool,
    progress: tqdm,
    results: DicomResults | None = None,
  ):
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
    self._results = results
    self._pool = concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="write")
    self._pending: collections.deque = collections.deque()

  def scored(self, decoded: DecodedImage, scores: scoring.ImageScores) -> None:
    self._submit(self._write_scores, decoded, scores)

  def failed(self, item: InputLike, error: Exception) -> None:
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

  def _write_scores(self, decoded: DecodedImage, scores: scoring.ImageScores) -> None:
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
    if self._results is not None:
      try:
        self._results.write(item.key, decoded.header, scores)
      except Exception as e:  # noqa: BLE001 (a result the PACS did not take is that image's error)
        self._write_error(item, e)
        return
    self.scores.append([item.key, *self._identity(item), *_score_row(decoded, scores)])
    self._progress.update()

  def _write_error(self, item: InputLike, error: Exception) -> None:
    reason = str(error)
    if not self._keep:  # the reason without the path, which may name the patient
      reason = error.reason if isinstance(error, MammogramError) else reason
      reason = reason.replace(item.path, "<image>").replace(item.relative_path, "<image>")
    self.errors.append([item.key, *self._identity(item), type(error).__name__, reason])
    logging.warning("%s (%s) failed: %s", item.key, type(error).__name__, reason)
    self._progress.update()

  def _identity(self, item: InputLike) -> list[str]:
    return [item.relative_path] if self._keep else []


def _score_row(decoded: DecodedImage, scores: scoring.ImageScores) -> list[object]:
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
    f"{scores.geometry.pixel_spacing_mm:.4f}",
    int(scores.geometry.spacing_assumed),
    f"{scores.geometry.patch_size * scores.geometry.pixel_spacing_mm:.2f}",
  ]


def _remove_stale_temporaries(
  output: str, inputs: Sequence[InputLike], results: DicomResults | None
) -> None:
  """Removes what a killed run of this process may have left half-written."""
  names = [f"{i.key}.{ext}" for i in inputs for ext in ("npz", "png")] + list(_log_names())
  paths = [os.path.join(output, name) for name in names]
  if results is not None:
    paths += [path for i in inputs for path in results.paths(i.key)]
  for path in paths:
    files.remove_stale_temporary(path)


def score_archive(
  scorer: scoring.Scorer,
  inputs: Sequence[InputLike],
  output: str,
  *,
  keep_identifiers: bool = False,
  overlays: bool = True,
  num_workers: int = 2,
  results: DicomResults | None = None,
) -> None:
  """Scores this process's share of `inputs` that no earlier run finished, into `output`.

  `results`, if given, also writes (and sends) each DICOM image's DICOM results. With several
  processes, all wait for the last one and process 0 merges their logs (`merge_logs`).
  """
  os.makedirs(output, exist_ok=True)
  share = inputs[jax.process_index() :: jax.process_count()]
  _remove_stale_temporaries(output, share, results)
  done = finished_keys(output)
  todo = [i for i in share if i.key not in done]
  logging.info(
    "%d images, %d for this process, %d already done.",
    len(inputs),
    len(share),
    len(share) - len(todo),
  )

  def prepare(item: InputLike) -> DecodedImage:
    start = time.perf_counter()
    mammogram, header = item.read(with_header=results is not None)
    prepared = scorer.prepare(mammogram)
    return DecodedImage(item, mammogram, prepared, time.perf_counter() - start, header)

  with tqdm(total=len(todo), unit="image", desc="mcalc-score") as progress:
    outputs = _Outputs(output, keep_identifiers, overlays, progress, results)

    def readable() -> Iterator[tuple[DecodedImage, scoring.PreparedImage]]:
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
  parallel.barrier("mcalc-score: every share scored")
  if parallel.is_writer():
    merge_logs(output, [i.key for i in inputs])


@dataclasses.dataclass(frozen=True)
class ScoreOptions:
  """Everything the `mcalc-score` job takes (its flags, one for one)."""

  workdir: str  # the Task 1 run
  input: str  # folder (recursive) or manifest CSV; "" with dicomweb_url
  output: str
  task2_workdir: str = ""  # the Task 2 run, if any
  checkpoint: str = "best"
  stride: int = 0  # pixels; 0: the patch size
  batch_size: int = 256  # tiles per device call, all local devices
  task1_threshold: float = 0.5  # Task 1 probability from which a tile gets a Task 2 score
  min_breast_fraction: float = scoring.DEFAULT_MIN_BREAST_FRACTION
  keep_identifiers: bool = False
  num_workers: int = 2
  overlays: bool = True
  dicomweb_url: str = ""  # a DICOMweb server to read from instead of `input`
  dicomweb_studies: tuple[str, ...] = ()  # StudyInstanceUIDs; () with dicomweb_study_dates
  dicomweb_study_dates: str = ""  # DICOM date range, e.g. 20240101-20240131; "": all
  dicomweb_modality: str = "MG"
  dicomweb_tries: int = 4  # per request, with exponential backoff
  dicom_results: bool = False  # a Segmentation and an SR per DICOM image (patient data!)
  stow_url: str = ""  # DICOMweb server to STOW-RS the DICOM results to


def score_job(options: ScoreOptions) -> None:
  """Loads the runs' classifiers and scores every input not yet done (folder, manifest, server)."""
  _check(options)
  inputs = _inputs(options)
  task1 = inference.load_classifier(options.workdir, options.checkpoint)
  task2 = (
    inference.load_classifier(options.task2_workdir, options.checkpoint)
    if options.task2_workdir
    else None
  )
  scorer = scoring.Scorer(
    task1,
    task2=task2,
    stride=options.stride or None,
    batch_size=options.batch_size,
    task1_threshold=options.task1_threshold,
    min_breast_fraction=options.min_breast_fraction,
  )
  score_archive(
    scorer,
    inputs,
    options.output,
    keep_identifiers=options.keep_identifiers,
    overlays=options.overlays,
    num_workers=options.num_workers,
    results=_dicom_results(options, task1, scorer.stride) if options.dicom_results else None,
  )


def _check(options: ScoreOptions) -> None:
  if bool(options.input) == bool(options.dicomweb_url):
    raise ValueError("give exactly one of --input and --dicomweb_url")
  if options.stow_url and not options.dicom_results:
    raise ValueError("--stow_url sends DICOM results: it needs --dicom_results")


def _inputs(options: ScoreOptions) -> Sequence[InputLike]:
  """The images of a folder or manifest, or the instances a DICOMweb server lists."""
  if not options.dicomweb_url:
    return find_inputs(options.input, exclude=options.output)
  dicomweb = _optional("dicomweb")
  return dicomweb.find_instances(
    dicomweb.Server(options.dicomweb_url, tries=options.dicomweb_tries),
    study_uids=options.dicomweb_studies,
    study_dates=options.dicomweb_study_dates,
    modality=options.dicomweb_modality,
  )


def _dicom_results(options: ScoreOptions, task1: inference.Classifier, stride: int) -> DicomResults:
  """The DICOM results writer of this job: its model identity, and STOW-RS if asked."""
  dicom_results = _optional("dicom_results")
  identity = dicom_results.ModelIdentity.of_runs(
    task1.config,
    options.workdir,
    options.task2_workdir,
    checkpoint=options.checkpoint,
    stride=stride,
  )
  store = None
  if options.stow_url:
    store = _optional("dicomweb").Server(options.stow_url, tries=options.dicomweb_tries).store
  return dicom_results.DicomResults(os.path.join(options.output, "dicom"), identity, store=store)


def _optional(module: str):
  """A module of the `dicom` extra, or one line saying how to install it."""
  try:
    return importlib.import_module(f"mcalc_jax.{module}")
  except ImportError as e:
    raise ImportError(f"{e}: DICOMweb and DICOM results need pip install 'mcalc_jax[dicom]'") from e
