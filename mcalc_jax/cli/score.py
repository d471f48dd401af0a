"""mcalc-score: a heatmap and a score for every mammogram of an archive, resumable after a kill.

  mcalc-score --workdir=runs/task1 --input=ARCHIVE_DIR|MANIFEST.csv --output=SCORES_DIR
      [--task2_workdir=runs/task2] [--stride=112] [--batch_size=256] [--task1_threshold=0.5]
      [--keep_identifiers] [--num_workers=-1] [--nooverlays] [--reranker=CV_RUN/reranker.json]
      [--max_megapixels=100] [--max_aspect_ratio=20] [--mark_classifier=CLASSIFIER.json]
  mcalc-score --workdir=runs/task1 --dicomweb_url=http://pacs/dicom-web --output=SCORES_DIR
      [--dicomweb_study_dates=20240101-20240131 | --dicomweb_studies=UID,UID]
      [--dicom_results [--stow_url=http://pacs/dicom-web]]

With --mark_classifier, every image's CAD marks go to OUTPUT/marks.csv and the reported ones onto
its overlay and into its SR (`mcalc_jax.whole_image.marks`). What is read and written (the
in_domain column included), and how a rerun resumes: `mcalc_jax.archives.archive`; DICOMweb:
`mcalc_jax.archives.dicomweb`; DICOM results: `mcalc_jax.archives.dicom_results` (docs/dicom.md).
"""

from __future__ import annotations

from absl import flags

from input_pipeline.mammogram import DEFAULT_LIMITS, SizeLimits
from mcalc_jax.archives import archive
from mcalc_jax.cli import cluster, common
from mcalc_jax.whole_image import scoring

_WORKDIR = flags.DEFINE_string(
  "workdir", None, "Training run directory of the Task 1 classifier.", required=True
)
_INPUT = flags.DEFINE_string(
  "input", "", "Folder of mammograms (recursive) or a manifest CSV (or give --dicomweb_url)."
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
  "min_breast_fraction",
  scoring.DEFAULT_MIN_BREAST_FRACTION,
  "Tiles with less breast than this fraction are skipped (default: as the training patches).",
)
_KEEP_IDENTIFIERS = flags.DEFINE_bool(
  "keep_identifiers", False, "Write input paths into the CSVs (they may name patients)."
)
_NUM_WORKERS = flags.DEFINE_integer(
  "num_workers",
  -1,
  "Worker processes decoding images ahead; 0: one thread of this process; -1: none on a CPU "
  "backend (the network has every core), every core but one on an accelerator.",
)
_OVERLAYS = flags.DEFINE_bool("overlays", True, "Write an overlay PNG per image.")
_DICOMWEB_URL = flags.DEFINE_string(
  "dicomweb_url", "", "DICOMweb base URL to read the images from (QIDO-RS + WADO-RS)."
)
_DICOMWEB_STUDIES = flags.DEFINE_list(
  "dicomweb_studies", [], "StudyInstanceUIDs to score (default: every study in the date range)."
)
_DICOMWEB_STUDY_DATES = flags.DEFINE_string(
  "dicomweb_study_dates", "", "Study date or range, e.g. 20240101-20240131 (default: all)."
)
_DICOMWEB_MODALITY = flags.DEFINE_string("dicomweb_modality", "MG", "Modality of the series.")
_DICOMWEB_TRIES = flags.DEFINE_integer(
  "dicomweb_tries", 4, "Tries per DICOMweb request (exponential backoff) before an error row."
)
_DICOM_RESULTS = flags.DEFINE_bool(
  "dicom_results",
  False,
  "Write a Segmentation (probability maps) and an SR per DICOM image into OUTPUT/dicom; they "
  "carry the source's patient and study data.",
)
_RERANKER = flags.DEFINE_string(
  "reranker",
  "",
  "A tile reranker (an mcalc-cv run's reranker.json; reranker_digital.json for a digital "
  "archive) that rescores each image's Task 1 tiles; scores.csv's tiles_flagged counts them "
  "at its operating threshold (chosen out of fold) instead of --task1_threshold.",
)
_MARK_CLASSIFIER = flags.DEFINE_string(
  "mark_classifier",
  "",
  "A cluster classifier's JSON (marks.fit_classifier, saved by reranking.save): CAD marks per "
  "image into OUTPUT/marks.csv, the reported ones onto the overlays and into the SRs (an mcalc-cv "
  "run's mark_classifier.json; mark_classifier_digital.json for a digital archive).",
)
_MAX_MEGAPIXELS = flags.DEFINE_float(
  "max_megapixels",
  DEFAULT_LIMITS.max_pixels / 1e6,
  "Images whose header claims more pixels are error rows, never decoded (a real mammogram has "
  "at most about 35).",
)
_MAX_ASPECT_RATIO = flags.DEFINE_float(
  "max_aspect_ratio",
  DEFAULT_LIMITS.max_aspect_ratio,
  "Images thinner than this (longer side / shorter side) are error rows, never decoded.",
)
_STOW_URL = flags.DEFINE_string(
  "stow_url", "", "DICOMweb base URL to send the DICOM results to (STOW-RS)."
)


def main(argv: list[str]) -> None:
  common.no_extra_arguments(argv)
  cluster.start_job()
  archive.score_job(
    archive.ScoreOptions(
      workdir=_WORKDIR.value,
      input=_INPUT.value,
      output=_OUTPUT.value,
      task2_workdir=_TASK2_WORKDIR.value,
      checkpoint=_CHECKPOINT.value,
      tiles=scoring.TileSettings(
        stride=_STRIDE.value,
        min_breast_fraction=_MIN_BREAST_FRACTION.value,
        batch_size=_BATCH_SIZE.value,
        task1_threshold=_TASK1_THRESHOLD.value,
      ),
      keep_identifiers=_KEEP_IDENTIFIERS.value,
      num_workers=_NUM_WORKERS.value,
      overlays=_OVERLAYS.value,
      dicomweb_url=_DICOMWEB_URL.value,
      dicomweb_studies=tuple(_DICOMWEB_STUDIES.value),
      dicomweb_study_dates=_DICOMWEB_STUDY_DATES.value,
      dicomweb_modality=_DICOMWEB_MODALITY.value,
      dicomweb_tries=_DICOMWEB_TRIES.value,
      dicom_results=_DICOM_RESULTS.value,
      stow_url=_STOW_URL.value,
      reranker=_RERANKER.value,
      mark_classifier=_MARK_CLASSIFIER.value,
      limits=SizeLimits(round(_MAX_MEGAPIXELS.value * 1e6), _MAX_ASPECT_RATIO.value),
    )
  )


def run() -> None:
  common.run(main)


if __name__ == "__main__":
  run()
