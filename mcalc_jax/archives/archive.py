"""Archive scoring: a heatmap and a score for every mammogram of an archive, resumable after a kill.

`score_job(ScoreOptions(...))` is the `mcalc-score` job (and what `mcalc-demo` runs in process);
`score_archive` scores a list of inputs with a ready `scoring.Scorer`.

Input: the images of a folder or a manifest (`mcalc_jax.archives.discovery`), or the MG instances of a
DICOMweb server (`mcalc_jax.archives.dicomweb`, keyed by a hash of the SOP Instance UID). Each input reads
itself (`InputLike.read`), so scoring does not care which; decoders (worker processes, or one
thread on a CPU backend: `mcalc_jax.archives.decoding`) read and tile them ahead of the devices, and the
progress line and the last log line say whether the run waited on decoding or on the devices.

Output, per image KEY (the first 16 hex digits of the sha1 of its path relative to the input
folder, or to the manifest's folder; never patient tags):
  KEY.npz      the probability grids and the geometry that maps them to pixels (mcalc_jax.whole_image.heatmaps)
  KEY.png      the overlay (unless --nooverlays), with the reported CAD marks
and per folder:
  scores.csv   one row per scored image: SCORE_COLUMNS (`in_domain`: `domain.TrainingDomain`)
  errors.csv   one row per image that could not be read or scored: ERROR_COLUMNS
  marks.csv    with --mark_classifier, one row per CAD mark of every scored image, reported or
               not (`mcalc_jax.whole_image.marks`; FROC needs them all): marks.CSV_COLUMNS, centre
               and box in ORIGINAL pixels; its operating threshold is in settings.json
  settings.json       what produced the images (`mcalc_jax.archives.output_folder`): a resume
                      with other models, tiling, thresholds or reranker refuses in one line
  journal.csv         where each image was in the process (`mcalc_jax.archives.journal`)
  mcalc-score.0.lock  held while a run writes: a second run on the folder refuses in one line
With --keep_identifiers both CSVs also carry `path` (relative), and error reasons keep the path.
With --dicom_results, also dicom/KEY.seg.dcm and dicom/KEY.sr.dcm (`mcalc_jax.archives.dicom_results`,
the only outputs that carry patient and study data), sent back by STOW-RS with --stow_url.

Every file is written atomically and a CSV row only after the image's files, each row in one
fsynced write; a rerun drops a torn last row, skips images already in scores.csv or errors.csv
and rescores the rest. An image's marks rows come before its scores row, and a rerun first drops
the marks rows of images without one, so every scored image has its marks once. An image that
killed the process gets an error row instead of killing every rerun (the journal: at most two
reruns); an image too large to decode safely is an error row before its pixels are read
(`input_pipeline.mammogram.SizeLimits`, --max_megapixels).
With several processes (jax.distributed), process i takes the images with
index i modulo the process count and appends to its shards scores.i-of-n.csv / errors.i-of-n.csv
(marks.i-of-n.csv, journal.i-of-n.csv, mcalc-score.i.lock);
when every process is done, process 0 merges the shards into scores.csv / errors.csv / marks.csv
(one row per image or mark, in input order). Shards stay, so after a kill of any process a rerun
resumes, with any process count, and merges again (the merge is idempotent).
"""

from __future__ import annotations

import collections
import concurrent.futures
import dataclasses
import glob
import hashlib
import importlib
import math
import os
import pathlib
from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import TYPE_CHECKING

import jax
import numpy as np
from absl import logging
from tqdm import tqdm

from input_pipeline.errors import MammogramError, UserError
from input_pipeline.mammogram import DEFAULT_LIMITS, SizeLimits
from mcalc_jax.archives import decoding, domain, journal, output_folder
from mcalc_jax.archives.decoding import DecodedImage
from mcalc_jax.archives.discovery import InputLike, find_inputs
from mcalc_jax.archives.journal import Journal
from mcalc_jax.base import csvlog, files, parallel
from mcalc_jax.model import checkpointing, inference, speck_detector
from mcalc_jax.whole_image import heatmaps, marks, reranking, scoring, tiling

if TYPE_CHECKING:  # optional extra `dicom`: imported by score_job only when asked for
  from mcalc_jax.archives.dicom_results import DicomResults

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
  "marks_reported",  # at or above the mark classifier's operating point; '' without one
  "in_domain",  # yes | no | unknown (`domain.TrainingDomain.check`)
  "domain_reason",  # why not, or what is unknown
  # breast tiles at or above the tile threshold: the reranker's operating threshold (chosen out
  # of fold, its JSON's "threshold") with --reranker, else task1_threshold
  "tiles_flagged",
)
ERROR_COLUMNS = ("key", "error", "reason")
_WRITES_IN_FLIGHT = 4  # images held by the writer thread at most


def finished_keys(output: str, names: Sequence[str] = ("scores", "errors")) -> set[str]:
  """Keys in any process's scores or errors log (`names`): images that a rerun skips."""
  keys = set()
  for name in names:
    for path in glob.glob(os.path.join(output, f"{name}*.csv")):
      keys.update(row[0] for row in csvlog.read_log(path)[1])
  return keys


def merge_logs(output: str, keys: Sequence[str]) -> None:
  """scores.csv, errors.csv and marks.csv with their rows and every shard's: one row per key (per
  mark), in `keys` order.

  Rows of keys not in `keys` (inputs since removed) follow in the order found; shards are kept.
  """
  order = {key: i for i, key in enumerate(keys)}
  for name in ("scores", "errors", "marks"):
    shards = sorted(glob.glob(os.path.join(output, f"{name}.*-of-*.csv")))
    if shards:
      merged = os.path.join(output, f"{name}.csv")
      rank = _mark_rank if name == "marks" else None
      csvlog.merge([merged, *shards], merged, order, rank)


def _mark_rank(row: Sequence[str], order: Mapping[str, int]) -> tuple[int, int]:
  """A marks row's place: its image's (its key column), then its cluster id."""
  return order.get(row[1], len(order)), int(row[2])


def _drop_unscored_marks(output: str) -> None:
  """Rewrites this process's marks log without the rows of images that have no scores row (a
  run killed between an image's marks and its row): the rerun marks them again, once."""
  path = os.path.join(output, _own("marks"))
  header, rows, clean = csvlog.read_log(path)
  if header is None:
    return
  scored = finished_keys(output, ("scores",))
  kept = [row for row in rows if row[1] in scored]
  if len(kept) < len(rows) or not clean:
    csvlog.write_log(path, header, kept)


class CrashedRunError(MammogramError):
  """The image was in the process's hands, alone, when a run died a second time: skipped."""


def _own(name: str) -> str:
  """This process's file NAME.csv: the only one, or with several processes its shard."""
  if jax.process_count() == 1:
    return f"{name}.csv"
  return f"{name}.{jax.process_index()}-of-{jax.process_count()}.csv"


@dataclasses.dataclass(frozen=True)
class MarkOptions:
  """What each scored image gets beside its grids: CAD marks by `classifier` (none: no marks),
  and its `in_domain` verdict against the run's `domain` (None: not known)."""

  classifier: marks.ClusterClassifier | None = None
  domain: domain.TrainingDomain | None = None


class _Outputs:
  """Writes each image's files and then its CSV rows, on one background thread, in order."""

  def __init__(
    self,
    output: str,
    keep_identifiers: bool,
    overlays: bool,
    progress: tqdm,
    stages: Journal,
    results: DicomResults | None = None,
    marking: MarkOptions = MarkOptions(),
    tile_threshold: float = 0.5,
  ):
    identity = ("path",) if keep_identifiers else ()
    self.scores = csvlog.CsvLog(
      os.path.join(output, _own("scores")), SCORE_COLUMNS[:1] + identity + SCORE_COLUMNS[1:]
    )
    self.errors = csvlog.CsvLog(
      os.path.join(output, _own("errors")), ERROR_COLUMNS[:1] + identity + ERROR_COLUMNS[1:]
    )
    self.marks = None
    if marking.classifier is not None:
      self.marks = csvlog.CsvLog(os.path.join(output, _own("marks")), marks.CSV_COLUMNS)
    self._output, self._keep, self._overlays, self._progress = (
      output,
      keep_identifiers,
      overlays,
      progress,
    )
    self._stages, self._results, self._marking = stages, results, marking
    self._tile_threshold = tile_threshold
    self._warned = False  # about an image outside the training domain, once a run
    self._pool = concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="write")
    self._pending: collections.deque = collections.deque()

  def scored(self, decoded: DecodedImage, scores: tiling.ImageScores) -> None:
    self._submit(self._write_scores, decoded, scores)

  def failed(self, item: InputLike, error: Exception) -> None:
    self._submit(self._write_error, item, error)

  def drain(self) -> None:
    """Waits until every image handed over so far is written."""
    while self._pending:
      self._pending.popleft().result()

  def close(self) -> None:
    self.drain()
    self._pool.shutdown()
    self.scores.close()
    self.errors.close()
    if self.marks is not None:
      self.marks.close()

  def _submit(self, fn: Callable, *args) -> None:
    self._pending.append(self._pool.submit(fn, *args))
    while len(self._pending) > _WRITES_IN_FLIGHT:
      self._pending.popleft().result()  # re-raises a failed write (disk full, ...) here

  def _write_scores(self, decoded: DecodedImage, scores: tiling.ImageScores) -> None:
    with self._stages.working(decoded.input.key, journal.WRITING):
      self._write_image(decoded, scores)

  def _write_image(self, decoded: DecodedImage, scores: tiling.ImageScores) -> None:
    """The image's files, then its marks rows, then its scores row (which makes it done)."""
    item = decoded.input
    classifier = self._marking.classifier
    found = _marks_of(decoded, scores, classifier) if classifier is not None else []
    shown = marks.reported(found, classifier) if classifier is not None else []
    heatmaps.write_scores(os.path.join(self._output, f"{item.key}.npz"), scores)
    if self._overlays:
      heatmaps.write_overlay(
        os.path.join(self._output, f"{item.key}.png"),
        decoded.prepared.pixels,
        scores,
        annotations=item.annotations,
        title=item.relative_path if self._keep else item.key,
        marks=shown,
      )
    if self._results is not None:
      try:
        self._results.write(item.key, decoded.header, scores, shown)
      except Exception as e:  # noqa: BLE001 (a result the PACS did not take is that image's error)
        self._write_error(item, e)
        return
    for mark in found:
      self.marks.append(marks.to_row(mark, classifier.operating_point.threshold))
    reported = len(shown) if classifier is not None else ""
    flagged = int(np.count_nonzero(scores.task1 >= self._tile_threshold))  # NaN: not flagged
    row = [*_score_row(decoded, scores), reported, *self._domain(decoded), flagged]
    self.scores.append([item.key, *self._identity(item), *row])
    self._progress.update()

  def _domain(self, decoded: DecodedImage) -> tuple[str, str]:
    """The image's `in_domain` columns; the first image outside the domain is logged, once."""
    domain = self._marking.domain
    if domain is None:
      return "unknown", "the training run is not known to this scoring"
    verdict, reason = domain.check(decoded.mammogram, decoded.header)
    if verdict == "no" and not self._warned:
      self._warned = True
      logging.warning(
        "Some images lie outside what the model was trained on (the first, %s: %s); their "
        "scores are less trustworthy: see the in_domain column of scores.csv.",
        decoded.input.key,
        reason,
      )
    return verdict, reason

  def _write_error(self, item: InputLike, error: Exception) -> None:
    reason = str(error)
    if not self._keep:  # the reason without the path, which may name the patient
      reason = error.reason if isinstance(error, MammogramError) else reason
      reason = reason.replace(item.path, "<image>").replace(item.relative_path, "<image>")
    self.errors.append([item.key, *self._identity(item), type(error).__name__, reason])
    logging.warning("%s (%s) failed: %s", item.key, type(error).__name__, files.printable(reason))
    self._progress.update()

  def _identity(self, item: InputLike) -> list[str]:
    return [item.relative_path] if self._keep else []


def _marks_of(
  decoded: DecodedImage, scores: tiling.ImageScores, classifier: marks.ClusterClassifier
) -> list[marks.Mark]:
  """Every CAD mark of a decoded image (its pixels unpadded), on its (reranked) grids."""
  rows, cols = scores.geometry.image_shape
  mammogram = dataclasses.replace(decoded.mammogram, pixels=decoded.mammogram.pixels[:rows, :cols])
  return marks.mark_mammogram(mammogram, decoded.input.key, classifier, scores)


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
  """Removes what a killed run of this process may have left half-written (its share's files:
  no live process writes them while this one holds the folder)."""
  names = [f"{i.key}.{ext}" for i in inputs for ext in ("npz", "png")]
  names += [_own(name) for name in ("scores", "errors", "marks")]
  names += ["scores.csv", "errors.csv", "marks.csv"]
  paths = [os.path.join(output, name) for name in names]
  if results is not None:
    paths += [path for i in inputs for path in results.paths(i.key)]
  by_folder = collections.defaultdict(set)
  for path in paths:
    by_folder[os.path.dirname(path)].add(os.path.basename(path))
  for folder, folder_names in by_folder.items():
    if os.path.isdir(folder):
      files.remove_stale_temporaries(folder, folder_names)


@dataclasses.dataclass
class _Pipeline:
  """One process's images decoded, scored, reranked and handed to the writer, journaled.

  Every DICOM's header is read with it: what it says of the acquisition
  (`domain.TrainingDomain`), and the DICOM results' patient and study modules."""

  scorer: scoring.Scorer
  outputs: _Outputs
  stages: Journal
  progress: tqdm
  clock: decoding.DecodeClock
  workers: int
  reranker: reranking.TileReranker | None

  def run(self, items: Sequence[InputLike]) -> None:
    """Scores `items` in order, decoding ahead and several images in flight."""
    decoded_images = decoding.decode_ahead(
      items,
      self.scorer.plan,
      workers=self.workers,
      with_header=True,
      clock=self.clock,
      journal=self.stages,
    )

    def readable() -> Iterator[tuple[DecodedImage, tiling.PreparedImage]]:
      for item, result in decoded_images:
        self.progress.set_postfix_str(self.clock.progress(), refresh=False)
        if isinstance(result, Exception):
          self.outputs.failed(item, result)
        else:
          self.stages.mark(item.key, journal.SCORING)
          yield result, result.prepared

    try:
      for decoded, scores in self.scorer.score_stream(readable()):
        if self.reranker is not None:
          image = decoded.prepared
          scores = reranking.rerank_image(image.pixels / image.max_value, scores, self.reranker)
        self.stages.mark(decoded.input.key, journal.WAITING)
        self.outputs.scored(decoded, scores)
    finally:
      decoded_images.close()

  def run_alone(self, items: Sequence[InputLike]) -> None:
    """Scores each of `items` with nothing else in flight, journaled as alone."""
    self.stages.alone = True
    for item in items:
      self.run([item])
      self.outputs.drain()
    self.stages.alone = False


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
  settings: Mapping[str, object] | None = None,
  marking: MarkOptions = MarkOptions(),
) -> decoding.DecodeClock:
  """Scores this process's share of `inputs` that no earlier run finished, into `output`.

  `num_workers` processes decode ahead (`mcalc_jax.archives.decoding`; 0: one thread, -1: as many as
  `decoding.auto_workers` gives this backend). `results`, if given, also writes (and sends) each
  DICOM image's DICOM results. `reranker` replaces each Task 1 grid by its tile reranker's
  (`mcalc_jax.whole_image.reranking`) before anything is written. `marking` adds each image's CAD
  marks (marks.csv; on the reranked grids) and its `in_domain` verdict. With several processes,
  all wait for the last one and process 0 merges their logs (`merge_logs`). Returns how long the
  scoring waited for decoded images (`decoding.DecodeClock`).

  The process holds `output` meanwhile, and its settings record must be this run's (the
  scorer's tiling and threshold, the reranker, the mark classifier and its threshold, whether
  DICOM results are written, and `settings`: the models' identity); an image a process died
  with twice, alone, is an error row (`mcalc_jax.archives.journal`). Raises `output_folder.OutputFolderError` otherwise.
  """
  record = _settings(scorer, reranker, results, marking.classifier) | dict(settings or {})
  with output_folder.claimed(output, record, jax.process_index()):
    clock = _score_share(
      scorer,
      inputs[jax.process_index() :: jax.process_count()],
      output,
      keep_identifiers=keep_identifiers,
      overlays=overlays,
      workers=decoding.auto_workers(jax.default_backend()) if num_workers < 0 else num_workers,
      results=results,
      reranker=reranker,
      marking=marking,
    )
    parallel.barrier("mcalc-score: every share scored")
    if parallel.is_writer():
      merge_logs(output, [i.key for i in inputs])
  return clock


def _score_share(
  scorer: scoring.Scorer,
  share: Sequence[InputLike],
  output: str,
  *,
  keep_identifiers: bool,
  overlays: bool,
  workers: int,
  results: DicomResults | None,
  reranker: reranking.TileReranker | None,
  marking: MarkOptions,
) -> decoding.DecodeClock:
  """This process's share: the images that killed a run twice failed, the suspects of the last
  death retried alone, then the rest."""
  _remove_stale_temporaries(output, share, results)
  _drop_unscored_marks(output)
  done = finished_keys(output)
  todo = [i for i in share if i.key not in done]
  journals = glob.glob(os.path.join(output, "journal*.csv"))
  suspects = journal.suspects(journals, {i.key for i in todo})
  logging.info(
    "%d images for this process, %d already done, %d in flight when a run died.",
    len(share),
    len(share) - len(todo),
    len(suspects),
  )
  tile_threshold = reranking.flagging_threshold(reranker, scorer.task1_threshold)
  logging.info("tiles_flagged counts the breast tiles at or above %.4g.", tile_threshold)
  clock = decoding.DecodeClock(max(workers, 1))
  stages = Journal(os.path.join(output, _own("journal")))
  with tqdm(total=len(todo), unit="image", desc="mcalc-score") as progress:
    outputs = _Outputs(
      output,
      keep_identifiers,
      overlays,
      progress,
      stages,
      results,
      marking,
      tile_threshold,
    )
    pipeline = _Pipeline(scorer, outputs, stages, progress, clock, workers, reranker)
    try:
      for item in todo:
        stage, alone = suspects.get(item.key, ("", False))
        if alone:
          outputs.failed(item, _stopped(item, stage))
      outputs.drain()
      stages.clear()  # the last run's marks are read: from here on, this run's
      pipeline.run_alone([i for i in todo if i.key in suspects and not suspects[i.key][1]])
      pipeline.run([i for i in todo if i.key not in suspects])
    finally:
      outputs.close()
      stages.close()
  if todo:
    logging.info("%s", clock.verdict())
  return clock


def _stopped(item: InputLike, stage: str) -> CrashedRunError:
  return CrashedRunError(
    item.path,
    f"stopped the previous run: the process died while {stage} it, twice (the second time "
    "with no other image in flight); skipped (remove its row from errors.csv to try again)",
  )


def _settings(
  scorer: scoring.Scorer,
  reranker: reranking.TileReranker | None,
  results: DicomResults | None,
  classifier: marks.ClusterClassifier | None,
) -> dict[str, object]:
  """What the outputs of a scorer depend on, for the folder's settings record (the mark
  classifier's entries only with one, so folders scored before marks existed still resume)."""
  plan = scorer.plan
  found = {} if classifier is None else _classifier_settings(classifier)
  return found | {
    "tile_pixels": plan.patch_size,
    "stride_pixels": plan.stride,
    "field_of_view_mm": plan.field_of_view_mm,
    "min_breast_fraction": plan.min_breast_fraction,
    "task1_threshold": scorer.task1_threshold,
    "reranker_sha256": _sha256(reranker.to_json()) if reranker is not None else "",
    "dicom_results": results is not None,
  }


def _classifier_settings(classifier: marks.ClusterClassifier) -> dict[str, object]:
  """The mark classifier and the operating point its `reported` marks are above."""
  threshold, chosen_for = dataclasses.astuple(classifier.operating_point)
  return {
    "mark_classifier_sha256": _sha256(classifier.to_json()),  # the file `reranking.save` wrote
    "mark_threshold": threshold,
    "mark_false_marks_per_image": None if math.isnan(chosen_for) else chosen_for,
  } | (
    {"mark_detector_sha256": _detector_sha256(classifier.detector)} if classifier.detector else {}
  )


def _detector_sha256(folder: str) -> str:
  """The hash of the speck detector's parameters, and of its logit shift where it has one: what
  its marks depend on."""
  params = pathlib.Path(folder, speck_detector.PARAMS_FILE).read_bytes()
  shift = speck_detector.load_shift(folder)
  return _sha256(params + (repr(shift).encode() if shift else b""))


def _sha256(text: str | bytes) -> str:
  return hashlib.sha256(text.encode() if isinstance(text, str) else text).hexdigest()


@dataclasses.dataclass(frozen=True)
class ScoreOptions:
  """Everything the `mcalc-score` job takes (its flags, one for one)."""

  workdir: str  # the Task 1 run
  input: str  # folder (recursive) or manifest CSV; "" with dicomweb_url
  output: str
  task2_workdir: str = ""  # the Task 2 run, if any
  checkpoint: str = "best"
  tiles: scoring.TileSettings = scoring.TileSettings()
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
  limits: SizeLimits = DEFAULT_LIMITS  # images larger or thinner are error rows, not decoded
  mark_classifier: str = ""  # a cluster classifier's JSON (`marks.load`): CAD marks; "": none


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
  scorer = options.tiles.scorer(task1, task2)
  reranker = reranking.load(options.reranker) if options.reranker else None
  if reranker is not None:  # before any image: the run's tiles are the reranker's or none are
    reranker.check_field_of_view(scorer.plan.field_of_view_mm, options.reranker)
  classifier = marks.load(options.mark_classifier) if options.mark_classifier else None
  score_archive(
    scorer,
    inputs,
    options.output,
    keep_identifiers=options.keep_identifiers,
    overlays=options.overlays,
    num_workers=options.num_workers,
    results=_dicom_results(options, task1, scorer.stride, classifier)
    if options.dicom_results
    else None,
    reranker=reranker,
    settings=_models(options),
    marking=MarkOptions(classifier, domain.TrainingDomain.of_config(task1.config)),
  )


def _models(options: ScoreOptions) -> dict[str, str]:
  """The runs' identity for the folder's settings record: where each is, and its config; and
  where the mark classifier is, if any."""
  found = {"checkpoint": options.checkpoint}
  for name, workdir in (("task1", options.workdir), ("task2", options.task2_workdir)):
    config = os.path.join(workdir, checkpointing.CONFIG_FILE)
    found[f"{name}_run"] = os.path.realpath(workdir) if workdir else ""
    found[f"{name}_config_sha256"] = _sha256(pathlib.Path(config).read_bytes()) if workdir else ""
  if options.mark_classifier:
    found["mark_classifier"] = os.path.realpath(options.mark_classifier)
  return found


def _check(options: ScoreOptions) -> None:
  if bool(options.input) == bool(options.dicomweb_url):
    raise UserError("give exactly one of --input and --dicomweb_url")
  if options.stow_url and not options.dicom_results:
    raise UserError("--stow_url sends DICOM results: it needs --dicom_results")


def _inputs(options: ScoreOptions) -> Sequence[InputLike]:
  """The images of a folder or manifest, or the instances a DICOMweb server lists."""
  if not options.dicomweb_url:
    output_folder.check_outside(options.output, options.input)
    return find_inputs(options.input, options.limits)
  dicomweb = _optional("dicomweb")
  return dicomweb.find_instances(
    dicomweb.Server(options.dicomweb_url, tries=options.dicomweb_tries),
    study_uids=options.dicomweb_studies,
    study_dates=options.dicomweb_study_dates,
    modality=options.dicomweb_modality,
  )


def _dicom_results(
  options: ScoreOptions,
  task1: inference.Classifier,
  stride: int,
  classifier: marks.ClusterClassifier | None,
) -> DicomResults:
  """The DICOM results writer of this job: its model identity (the mark classifier's sha256 as
  settings.json has it), and STOW-RS if asked."""
  dicom_results = _optional("dicom_results")
  identity = dicom_results.ModelIdentity.of_runs(
    task1.config,
    options.workdir,
    options.task2_workdir,
    checkpoint=options.checkpoint,
    stride=stride,
    mark_classifier=_sha256(classifier.to_json())[:16] if classifier is not None else "",
  )
  store = None
  if options.stow_url:
    store = _optional("dicomweb").Server(options.stow_url, tries=options.dicomweb_tries).store
  return dicom_results.DicomResults(os.path.join(options.output, "dicom"), identity, store=store)


def _optional(module: str):
  """A module of the `dicom` extra, or one line saying how to install it."""
  try:
    return importlib.import_module(f"mcalc_jax.archives.{module}")
  except ImportError as e:
    raise ImportError(f"{e}: DICOMweb and DICOM results need pip install 'mcalc_jax[dicom]'") from e
