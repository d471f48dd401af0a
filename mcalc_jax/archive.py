"""Archive scoring: a heatmap and a score for every mammogram of an archive, resumable after a kill.

`score_job(ScoreOptions(...))` is the `mcalc-score` job (and what `mcalc-demo` runs in process);
`score_archive` scores a list of inputs with a ready `scoring.Scorer`.

Input: the images of a folder or a manifest (`mcalc_jax.discovery`), or the MG instances of a
DICOMweb server (`mcalc_jax.dicomweb`, keyed by a hash of the SOP Instance UID). Each input reads
itself (`InputLike.read`), so scoring does not care which; decoders (worker processes, or one
thread on a CPU backend: `mcalc_jax.decoding`) read and tile them ahead of the devices, and the
progress line and the last log line say whether the run waited on decoding or on the devices.

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
import importlib
import io
import math
import os
from collections.abc import Callable, Iterable, Iterator, Sequence
from typing import TYPE_CHECKING

import jax
from absl import logging
from tqdm import tqdm

from input_pipeline.errors import MammogramError
from mcalc_jax import decoding, files, heatmaps, inference, parallel, reranking, scoring, tiling
from mcalc_jax.decoding import DecodedImage
from mcalc_jax.discovery import InputLike, find_inputs

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
_WRITES_IN_FLIGHT = 4  # images held by the writer thread at most


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

  def scored(self, decoded: DecodedImage, scores: tiling.ImageScores) -> None:
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

  def _write_scores(self, decoded: DecodedImage, scores: tiling.ImageScores) -> None:
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


def _score_row(decoded: DecodedImage, scores: tiling.ImageScores) -> list[object]:
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
  num_workers: int = -1,
  results: DicomResults | None = None,
  reranker: reranking.TileReranker | None = None,
) -> decoding.DecodeClock:
  """Scores this process's share of `inputs` that no earlier run finished, into `output`.

  `num_workers` processes decode ahead (`mcalc_jax.decoding`; 0: one thread, -1: as many as
  `decoding.auto_workers` gives this backend). `results`, if given, also writes (and sends) each
  DICOM image's DICOM results. `reranker` replaces each Task 1 grid by its tile reranker's
  (`mcalc_jax.reranking`) before anything is written. With several processes, all wait for the
  last one and process 0 merges their logs (`merge_logs`). Returns how long the scoring waited for decoded images (`decoding.DecodeClock`).
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

  if num_workers < 0:
    num_workers = decoding.auto_workers(jax.default_backend())
  clock = decoding.DecodeClock(max(num_workers, 1))
  with tqdm(total=len(todo), unit="image", desc="mcalc-score") as progress:
    outputs = _Outputs(output, keep_identifiers, overlays, progress, results)
    decoded_images = decoding.decode_ahead(
      todo, scorer.plan, workers=num_workers, with_header=results is not None, clock=clock
    )

    def readable() -> Iterator[tuple[DecodedImage, tiling.PreparedImage]]:
      for item, result in decoded_images:
        progress.set_postfix_str(clock.progress(), refresh=False)
        if isinstance(result, Exception):
          outputs.failed(item, result)
        else:
          yield result, result.prepared

    try:
      for decoded, scores in scorer.score_stream(readable()):
        if reranker is not None:
          image = decoded.prepared
          scores = reranking.rerank_image(image.pixels / image.max_value, scores, reranker)
        outputs.scored(decoded, scores)
    finally:
      decoded_images.close()
      outputs.close()
  if todo:
    logging.info("%s", clock.verdict())
  parallel.barrier("mcalc-score: every share scored")
  if parallel.is_writer():
    merge_logs(output, [i.key for i in inputs])
  return clock


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
  num_workers: int = -1  # decode worker processes (0: one thread here; -1: auto_workers)
  overlays: bool = True
  dicomweb_url: str = ""  # a DICOMweb server to read from instead of `input`
  dicomweb_studies: tuple[str, ...] = ()  # StudyInstanceUIDs; () with dicomweb_study_dates
  dicomweb_study_dates: str = ""  # DICOM date range, e.g. 20240101-20240131; "": all
  dicomweb_modality: str = "MG"
  dicomweb_tries: int = 4  # per request, with exponential backoff
  dicom_results: bool = False  # a Segmentation and an SR per DICOM image (patient data!)
  stow_url: str = ""  # DICOMweb server to STOW-RS the DICOM results to
  reranker: str = ""  # a tile reranker's JSON (an mcalc-cv run's reranker.json); "": none


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
  reranker = reranking.load(options.reranker) if options.reranker else None
  if reranker is not None:  # before any image: the run's tiles are the reranker's or none are
    reranker.check_field_of_view(scorer.plan.field_of_view_mm, options.reranker)
  score_archive(
    scorer,
    inputs,
    options.output,
    keep_identifiers=options.keep_identifiers,
    overlays=options.overlays,
    num_workers=options.num_workers,
    results=_dicom_results(options, task1, scorer.stride) if options.dicom_results else None,
    reranker=reranker,
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
