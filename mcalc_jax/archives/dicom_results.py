"""Scoring results as DICOM that a PACS files with the study and a DICOM viewer shows (highdicom).

Per scored DICOM image, two instances, both referencing the source's Study/Series/SOP Instance
UIDs and carrying its patient and study modules (that is what files them with the study, and why
they are written only when asked for: `mcalc-score --dicom_results`):
  KEY.seg.dcm  a Segmentation of type FRACTIONAL (PROBABILITY) on the image's pixel grid, in the
               original orientation: segment 1 is Task 1's P(calcification), segment 2 Task 2's
               P(malignant) where a Task 2 classifier ran; each pixel is the mean of the scored
               tiles covering it (as `tiling.average_map`), 0 where none was scored, in steps of
               1/255, RLE Lossless. A fractional Segmentation rather than a Parametric Map: the
               source mammograms have no frame of reference, for which highdicom cannot build a
               Parametric Map, and it is what the viewers that show maps over a mammogram read
               (docs/dicom.md).
  KEY.sr.dcm   a Comprehensive SR, TID 1500 measurement report: the image-level score (highest
               tile P(calcification), and P(malignant) at that tile), the top tiles as
               regions (SCOORD closed polylines in the source's pixels) with their
               probabilities, and each reported CAD mark (`mcalc_jax.whole_image.marks`) as a
               region (a SCOORD POINT at its centre) with its Task 1 probability; the model
               (network, package version, run, mark classifier) in the algorithm identification
               and the device observer.
Instance UIDs derive from the source SOP Instance UID and the model identity, so a rerun
writes (and a PACS receives) the same instances again rather than duplicates.
Needs the `dicom` extra (highdicom).
"""

from __future__ import annotations

import copy
import dataclasses
import importlib.metadata
import os
from collections.abc import Callable, Sequence

import highdicom as hd
import ml_collections
import numpy as np
import pydicom
from pydicom.sr.codedict import codes
from pydicom.uid import RLELossless, generate_uid

from mcalc_jax.base import files
from mcalc_jax.whole_image import tiling
from mcalc_jax.whole_image.marks import Mark
from mcalc_jax.whole_image.tiling import ImageScores, TileGeometry

MANUFACTURER = "mcalc_jax"
SEGMENTATION_SERIES_NUMBER = 9701
REPORT_SERIES_NUMBER = 9702
TOP_REGIONS = 5
_FINDING = codes.SCT.MicrocalcificationsOfTheBreast
_TASK1 = codes.DCM.Probability  # of the finding type: microcalcifications
_TASK2 = codes.DCM.ProbabilityOfCancer
_NO_UNITS = codes.UCUM.NoUnits


@dataclasses.dataclass(frozen=True)
class ModelIdentity:
  """Which model made a result: the network, the package version and the runs' directories."""

  network: str  # config.model of the Task 1 run
  run: str  # the Task 1 run directory's name
  task2_run: str = ""
  version: str = ""
  checkpoint: str = "best"
  stride: int = 0
  mark_classifier: str = ""  # a prefix of the cluster classifier's sha256; "": no marks

  @classmethod
  def of_runs(
    cls,
    config: ml_collections.ConfigDict,
    workdir: str,
    task2_workdir: str = "",
    *,
    checkpoint: str = "best",
    stride: int = 0,
    mark_classifier: str = "",
  ) -> ModelIdentity:
    """The identity of a scoring job from its Task 1 run's config and its workdirs."""
    return cls(
      network=str(config.model),
      run=_run_name(workdir),
      task2_run=_run_name(task2_workdir) if task2_workdir else "",
      version=importlib.metadata.version("mcalc_jax"),
      checkpoint=checkpoint,
      stride=stride,
      mark_classifier=mark_classifier,
    )

  @property
  def name(self) -> str:
    return f"{MANUFACTURER} {self.network}"

  def parameters(self) -> dict[str, str]:
    found = {"run": self.run, "checkpoint": self.checkpoint, "stride": str(self.stride)}
    found |= {"task2_run": self.task2_run} if self.task2_run else {}
    return found | ({"mark_classifier": self.mark_classifier} if self.mark_classifier else {})

  def uid(self, source_uid: str, kind: str) -> str:
    """A UID of its own for result `kind` of `source_uid`, the same every rerun."""
    parts = [MANUFACTURER, kind, source_uid, *self.parameters().values(), self.version]
    return generate_uid(entropy_srcs=parts)


def _run_name(workdir: str) -> str:
  return os.path.basename(os.path.normpath(workdir))


def probability_map(grid: np.ndarray, geometry: TileGeometry) -> np.ndarray:
  """The segment's frame: `tiling.average_map` in the ORIGINAL orientation, 0 where no tile was
  scored."""
  return np.nan_to_num(geometry.orientation.array(tiling.average_map(grid, geometry))).clip(0, 1)


def segmentation(
  source: pydicom.Dataset, scores: ImageScores, identity: ModelIdentity
) -> hd.seg.Segmentation:
  """The fractional Segmentation of the probability maps (see the module docstring)."""
  grids = [scores.task1] + ([scores.task2] if scores.task2 is not None else [])
  maps = np.stack([probability_map(g, scores.geometry) for g in grids], axis=-1)[None]
  algorithm = hd.AlgorithmIdentificationSequence(
    name=identity.name,
    family=codes.DCM.ArtificialIntelligence,
    version=identity.version,
    parameters=identity.parameters(),
  )
  labels = ("P(calcification)", "P(malignant)")
  segments = [
    hd.seg.SegmentDescription(
      segment_number=n + 1,
      segment_label=labels[n],
      segmented_property_category=codes.SCT.MorphologicallyAbnormalStructure,
      segmented_property_type=_FINDING,
      algorithm_type=hd.seg.SegmentAlgorithmTypeValues.AUTOMATIC,
      algorithm_identification=algorithm,
    )
    for n in range(len(grids))
  ]
  seg = hd.seg.Segmentation(
    source_images=[source],
    pixel_array=maps,
    segmentation_type=hd.seg.SegmentationTypeValues.FRACTIONAL,
    segment_descriptions=segments,
    omit_empty_frames=False,
    transfer_syntax_uid=RLELossless,
    **_instance(source, identity, "probability", SEGMENTATION_SERIES_NUMBER),
    content_label="MCALC_MAP",
    content_description="Tile probabilities of the calcification classifier",
    **_equipment(identity),
  )
  _copy_orientation(source, seg)
  return seg


def _instance(
  source: pydicom.Dataset, identity: ModelIdentity, kind: str, series_number: int
) -> dict[str, str | int]:
  """Series and instance of one kind of result: one series per study, UIDs stable per source."""
  return {
    "series_instance_uid": identity.uid(source.StudyInstanceUID, f"{kind} series"),
    "series_number": series_number,
    "sop_instance_uid": identity.uid(source.SOPInstanceUID, kind),
    "instance_number": int(source.get("InstanceNumber") or 1),
    "series_description": f"{identity.name} calcification {kind}",
  }


def _equipment(identity: ModelIdentity) -> dict[str, str]:
  """General Equipment of a result: the software, its network, version and run."""
  return {
    "manufacturer": MANUFACTURER,
    "manufacturer_model_name": identity.network,
    "software_versions": identity.version,
    "device_serial_number": identity.run,
  }


def _copy_orientation(source: pydicom.Dataset, result: pydicom.Dataset) -> None:
  """Patient Orientation of the source (required without a frame of reference) when valid."""
  value = list(source.get("PatientOrientation") or [])
  valid = len(value) == 2 and all(set(str(v)) <= set("APRLHF") for v in value)
  result.PatientOrientation = value if valid else ""


def report(
  source: pydicom.Dataset,
  scores: ImageScores,
  identity: ModelIdentity,
  *,
  regions: int = TOP_REGIONS,
  marks: Sequence[Mark] = (),
) -> hd.sr.ComprehensiveSR:
  """The TID 1500 measurement report of one image (see the module docstring); `marks` are the
  reported ones."""
  algorithm = hd.sr.AlgorithmIdentification(
    name=identity.name,
    version=identity.version,
    parameters=[f"{k}={v}" for k, v in identity.parameters().items()],
  )
  device = hd.sr.ObserverContext(
    observer_type=codes.DCM.Device,
    observer_identifying_attributes=hd.sr.DeviceObserverIdentifyingAttributes(
      uid=identity.uid("", "device"),
      name=identity.name,
      manufacturer_name=MANUFACTURER,
      model_name=identity.network,
      serial_number=identity.run,
    ),
  )
  groups = [_image_group(source, scores, identity, algorithm)]
  groups += [
    _region_group(source, scores, identity, algorithm, n, cell)
    for n, cell in enumerate(top_tiles(scores, regions), 1)
  ]
  groups += [_mark_group(source, identity, algorithm, mark) for mark in marks]
  content = hd.sr.MeasurementReport(
    observation_context=hd.sr.ObservationContext(observer_device_context=device),
    procedure_reported=codes.SCT.Mammography,
    imaging_measurements=groups,
    title=codes.DCM.ImagingMeasurementReport,
  )
  return hd.sr.ComprehensiveSR(
    evidence=[source],
    content=content,
    manufacturer=MANUFACTURER,
    is_complete=True,
    **_instance(source, identity, "report", REPORT_SERIES_NUMBER),
  )


def top_tiles(scores: ImageScores, count: int) -> list[tuple[int, int]]:
  """Grid cells of the `count` highest Task 1 probabilities, highest first (ties row-major)."""
  flat = np.nan_to_num(scores.task1, nan=-1.0).ravel()
  order = np.argsort(-flat, kind="stable")[: min(count, scores.tiles_scored)]
  return [tuple(int(v) for v in np.unravel_index(i, scores.task1.shape)) for i in order]


def _measurements(
  scores: ImageScores, cell: tuple[int, int], algorithm: hd.sr.AlgorithmIdentification
) -> list[hd.sr.Measurement]:
  """P(calcification) of a tile and, where Task 2 scored it, P(malignant)."""
  values = [(_TASK1, float(scores.task1[cell]))]
  if scores.task2 is not None and not np.isnan(scores.task2[cell]):
    values.append((_TASK2, float(scores.task2[cell])))
  return [
    hd.sr.Measurement(name=name, value=value, unit=_NO_UNITS, algorithm_id=algorithm)
    for name, value in values
  ]


def _image_group(
  source: pydicom.Dataset,
  scores: ImageScores,
  identity: ModelIdentity,
  algorithm: hd.sr.AlgorithmIdentification,
) -> hd.sr.MeasurementsAndQualitativeEvaluations:
  """The image-level score: the hottest tile's probabilities (none if no tile was scored)."""
  hottest = scores.hottest()
  return hd.sr.MeasurementsAndQualitativeEvaluations(
    tracking_identifier=hd.sr.TrackingIdentifier(
      uid=identity.uid(source.SOPInstanceUID, "image group"), identifier="image"
    ),
    finding_type=_FINDING,
    algorithm_id=algorithm,
    measurements=_measurements(scores, hottest, algorithm) if hottest is not None else None,
    source_images=[hd.sr.SourceImageForMeasurementGroup.from_source_image(source)],
  )


def _region_group(
  source: pydicom.Dataset,
  scores: ImageScores,
  identity: ModelIdentity,
  algorithm: hd.sr.AlgorithmIdentification,
  rank: int,
  cell: tuple[int, int],
) -> hd.sr.PlanarROIMeasurementsAndQualitativeEvaluations:
  """One top tile: its square in the source's pixels and its probabilities."""
  region = hd.sr.ImageRegion(
    graphic_type=hd.sr.GraphicTypeValues.POLYLINE,
    graphic_data=tile_outline(scores.geometry, *cell),
    source_image=hd.sr.SourceImageForRegion.from_source_image(source),
  )
  return hd.sr.PlanarROIMeasurementsAndQualitativeEvaluations(
    tracking_identifier=hd.sr.TrackingIdentifier(
      uid=identity.uid(source.SOPInstanceUID, f"region {rank}"), identifier=f"region {rank}"
    ),
    referenced_region=region,
    finding_type=_FINDING,
    algorithm_id=algorithm,
    measurements=_measurements(scores, cell, algorithm),
  )


def _mark_group(
  source: pydicom.Dataset,
  identity: ModelIdentity,
  algorithm: hd.sr.AlgorithmIdentification,
  mark: Mark,
) -> hd.sr.PlanarROIMeasurementsAndQualitativeEvaluations:
  """One reported mark: its centre on the source's pixels and its Task 1 probability."""
  region = hd.sr.ImageRegion(
    graphic_type=hd.sr.GraphicTypeValues.POINT,
    graphic_data=mark_point(mark),
    source_image=hd.sr.SourceImageForRegion.from_source_image(source),
  )
  name = f"mark {mark.cluster_id}"
  probability = hd.sr.Measurement(
    name=_TASK1, value=mark.task1, unit=_NO_UNITS, algorithm_id=algorithm
  )
  return hd.sr.PlanarROIMeasurementsAndQualitativeEvaluations(
    tracking_identifier=hd.sr.TrackingIdentifier(
      uid=identity.uid(source.SOPInstanceUID, name), identifier=name
    ),
    referenced_region=region,
    finding_type=_FINDING,
    algorithm_id=algorithm,
    measurements=[probability],
  )


def mark_point(mark: Mark) -> np.ndarray:
  """A mark's centre as one SCOORD (column, row) point: image coordinates put the centre of
  pixel (r, c), where a mark's row and col count, at (c + 0.5, r + 0.5)."""
  return np.array([[mark.col + 0.5, mark.row + 0.5]], dtype=np.float32)


def tile_outline(geometry: TileGeometry, i: int, j: int) -> np.ndarray:
  """The closed outline of tile (i, j) as SCOORD (column, row) points in the ORIGINAL image.

  Image coordinates put pixel (r, c) at [c, c + 1) x [r, r + 1); the tile is clipped to the
  image (a tile of an image smaller than the patch reaches into padding).
  """
  rows, cols = geometry.original_shape
  top, left = int(geometry.tile_rows[i]), int(geometry.tile_cols[j])
  bottom, right = min(top + geometry.patch_size, rows), min(left + geometry.patch_size, cols)
  left, right = sorted((geometry.orientation.edge(left), geometry.orientation.edge(right)))
  corners = [(left, top), (right, top), (right, bottom), (left, bottom), (left, top)]
  return np.array(corners, dtype=np.float32)


# Patient and General Study attributes of Type 2 (present, possibly empty) that highdicom copies.
_TYPE2 = (
  "PatientName",
  "PatientID",
  "PatientBirthDate",
  "PatientSex",
  "StudyDate",
  "StudyTime",
  "ReferringPhysicianName",
  "StudyID",
  "AccessionNumber",
)


def with_type2_attributes(source: pydicom.Dataset) -> pydicom.Dataset:
  """A copy of a header with the Type 2 patient/study attributes it lacks, empty (as DICOM says).

  Sources that leave them out (digitised film, our synthetic files) are still valid images, and
  their results must be valid instances too.
  """
  source = copy.deepcopy(source)
  for keyword in _TYPE2:
    if keyword not in source:
      setattr(source, keyword, "")
  return source


class DicomResults:
  """Writes each scored DICOM image's Segmentation and SR into `folder`, and sends them if asked.

  `store` (e.g. `dicomweb.Server.store`, STOW-RS) gets both instances of an image once they are
  on disk; a failure raises, which the archive records as that image's error.
  """

  def __init__(
    self,
    folder: str,
    identity: ModelIdentity,
    *,
    store: Callable[[Sequence[pydicom.Dataset]], None] | None = None,
    regions: int = TOP_REGIONS,
  ):
    os.makedirs(folder, exist_ok=True)
    self.folder, self.identity, self._store, self._regions = folder, identity, store, regions

  def paths(self, key: str) -> list[str]:
    """The files written for image `key`."""
    return [os.path.join(self.folder, f"{key}.{kind}.dcm") for kind in ("seg", "sr")]

  def write(
    self,
    key: str,
    source: pydicom.Dataset | None,
    scores: ImageScores,
    marks: Sequence[Mark] = (),
  ) -> None:
    """Writes (and stores) the results of one image, its reported `marks` in the SR; images
    without a DICOM header get none."""
    if source is None:
      return
    source = with_type2_attributes(source)
    results = [
      segmentation(source, scores, self.identity),
      report(source, scores, self.identity, regions=self._regions, marks=marks),
    ]
    for path, dataset in zip(self.paths(key), results, strict=True):
      with files.atomic_write(path) as f:
        dataset.save_as(f, enforce_file_format=True)
    if self._store is not None:
      self._store(results)
