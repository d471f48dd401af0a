"""`mcalc_patches`: the TFDS patch dataset, built and read without TensorFlow.

Patches are `tfds.features.Tensor(uint16, encoding=ZLIB)` in array_record files: lossless at the
detector's bit depth (the public CBIS-DDSM builder's 8-bit JPEG loses exactly the specks we need),
and `Image` features would need TensorFlow to encode. Read with `builder.as_data_source(split)`
(or `open_builder`), never `as_dataset`, which needs TensorFlow.

One `BuilderConfig` per source holds everything that defines the examples (registered ones for
mias, cbis_ddsm, synthetic and a generic manifest; `builder_config` turns a data config from
configs/data.py into one); the data's location is passed to the builder (`location`) or comes from
`manual_dir`. Splits are by patient (`input_pipeline.splits`), and the split
of every patient, the settings and every skipped image are recorded in the dataset's
`metadata.json` (`builder.info.metadata`). A mammogram that cannot be read is logged with its path
and reason, recorded under `skipped`, and left out: one bad file never stops a build.

With `beam=True` (and Beam pipeline options in the download config) the same per-image function
(`image_examples`) runs as a Beam transform, one element per image, on any runner; the images'
metadata records come back as a side output and fill the same metadata.
"""

from __future__ import annotations

import dataclasses
import json
import os
from collections.abc import Iterator, Sequence
from typing import TYPE_CHECKING

import ml_collections
import numpy as np
import tensorflow_datasets as tfds
from absl import logging
from etils import epath

from input_pipeline import breast, errors, mammogram, patches, sources, splits
from input_pipeline.manifest import Finding

if TYPE_CHECKING:  # the optional `beam` extra, imported only when a build asks for it
  import apache_beam as beam

_RECORDS = "records"  # the Beam output with each image's metadata record


@dataclasses.dataclass
class McalcPatchesConfig(tfds.core.BuilderConfig):
  """What defines the data: the source kind, how patches are cut and how patients are split.

  The data's location is not part of it (it differs per machine): pass `location` to the builder
  or `manual_dir` to the download config.
  """

  source: str = "manifest"
  patch: patches.PatchSettings = dataclasses.field(default_factory=patches.PatchSettings)
  split_fractions: tuple[float, ...] = (0.7, 0.2, 0.1)
  split_seed: int = 0

  def settings(self) -> tuple:
    """Everything that changes the examples (equal settings give identical datasets)."""
    return self.source, self.patch, tuple(self.split_fractions), self.split_seed


class McalcPatches(tfds.core.GeneratorBasedBuilder):
  """Calcification and background patches at native bit depth, split by patient.

  `location`: for 'mias' / 'cbis_ddsm' the source folder (the importer reads it); for
  'synthetic' / 'manifest' the manifest CSV or the folder holding `manifest.csv`. Without it,
  `manual_dir` is used.
  """

  # Any change to the examples (patches.py, splits.py, the features) bumps the version.
  VERSION = tfds.core.Version("1.1.0")
  RELEASE_NOTES = {
    "1.0.0": "Paper's extraction: annotation-centred ROIs, tissue background.",
    "1.1.0": "Pixel spacing per example (documented by the source or assumed); windows in mm.",
  }
  BUILDER_CONFIGS = [
    McalcPatchesConfig(
      name=name,
      source=name,
      description=source.description,
      patch=patches.PatchSettings(per_cluster=source.per_cluster),
    )
    for name, source in sources.SOURCES.items()
  ]
  MANUAL_DOWNLOAD_INSTRUCTIONS = (
    "Pass --manual_dir: the MIAS or CBIS-DDSM folder, or a manifest.csv's folder."
  )

  @tfds.core.utils.classproperty
  @classmethod
  def code_path(cls) -> epath.Path:
    """This file; tfds's own lookup needs importlib_resources, which tfds does not install
    (tensorflow/datasets#11212)."""
    return epath.Path(__file__)

  def __init__(self, *, location: str | os.PathLike | None = None, beam: bool = False, **kwargs):
    super().__init__(**kwargs)
    self._location = os.fspath(location) if location else None
    self._beam = beam

  def _info(self) -> tfds.core.DatasetInfo:
    size = self.builder_config.patch.size
    text, int32 = tfds.features.Text(), np.int32
    return tfds.core.DatasetInfo(
      builder=self,
      description=__doc__.splitlines()[0],
      features=tfds.features.FeaturesDict(
        {
          "image": tfds.features.Tensor(
            shape=(size, size, 1), dtype=np.uint16, encoding=tfds.features.Encoding.ZLIB
          ),
          "max_value": tfds.features.Scalar(int32),
          "task1_label": tfds.features.Scalar(int32),
          "task2_label": tfds.features.Scalar(int32),
          "patient_id": text,
          "image_id": text,
          "finding_id": text,
          "patch_id": text,
          "center_row": tfds.features.Scalar(np.float32),
          "center_col": tfds.features.Scalar(np.float32),
          "source": text,
          "severity": text,
          "density": text,
          "pixel_spacing_mm": tfds.features.Scalar(np.float32),  # of the source image
          "spacing_assumed": tfds.features.Scalar(int32),  # 1: neither file nor source gave it
        }
      ),
      metadata=tfds.core.MetadataDict(),
    )

  def _split_generators(self, dl_manager: tfds.download.DownloadManager):
    config = self.builder_config
    location = self._location or (_has_manual(dl_manager) and os.fspath(dl_manager.manual_dir))
    if not location:
      raise ValueError(f"{config.name}: no data location (pass location or manual_dir)")
    findings = sources.get(config.source).load_findings(location)
    labels = splits.patient_labels(findings, config.patch.positive_abnormalities)
    assignment = splits.split_patients(labels, config.split_fractions, config.split_seed)
    self.info.metadata.update(
      source=config.source,
      patch_settings=dataclasses.asdict(config.patch),
      split_fractions=list(config.split_fractions),
      split_seed=config.split_seed,
      patients={p: {"split": assignment[p], "label": labels[p]} for p in sorted(labels)},
      skipped=[],
      counts={},
    )
    images = group_images(findings)
    by_split = {
      name: [im for im in images if assignment[im.patient_id] == name] for name in splits.SPLITS
    }
    rate = _positives(images, config.patch) / max(1, len(images))
    generate = self._beam_examples if self._beam else self._generate_examples
    return {
      name: generate(name, ims, _background_total(ims, rate, config.patch))
      for name, ims in by_split.items()
      if ims
    }

  def _generate_examples(
    self, split: str, images: Sequence[ImageFindings], num_background: int
  ) -> Iterator[tuple[str, dict]]:
    quotas = self._quotas(images, num_background)
    skipped, count = [], 0
    for i, im in enumerate(images):
      if i % max(1, len(images) // 10) == 0:
        logging.info("%s %s: image %d of %d", self.builder_config.name, split, i + 1, len(images))
      generated = image_examples(im, quotas[im.image_id], self.builder_config)
      self._record(split, [generated.record])
      skipped += generated.record.skipped
      count += len(generated.examples)
      yield from generated.examples
    if not count:  # TFDS would only assert that no examples were yielded
      raise EmptySplitError(split, len(images), skipped)

  def _beam_examples(
    self, split: str, images: Sequence[ImageFindings], num_background: int
  ) -> beam.PTransform:
    """The same examples as `_generate_examples`, as a Beam PTransform (one element per image);
    each image's metadata record goes to a JSON file that `_download_and_prepare` merges."""
    beam = tfds.core.lazy_imports.apache_beam
    quotas = self._quotas(images, num_background)
    work = [(im, quotas[im.image_id]) for im in images]
    records_path = os.fspath(self._records_dir() / f"{split}.json")
    config = self.builder_config

    @beam.ptransform_fn
    def examples(pipeline):
      outputs = (
        pipeline
        | "Images" >> beam.Create(work)
        | "Patches" >> beam.FlatMap(_beam_image, config).with_outputs(_RECORDS, main="examples")
      )
      _ = (
        outputs[_RECORDS]
        | "Records" >> beam.combiners.ToList()
        | "WriteRecords" >> beam.Map(_write_records, records_path)
      )
      return outputs.examples

    return examples()

  def _download_and_prepare(
    self, dl_manager: tfds.download.DownloadManager, download_config: tfds.download.DownloadConfig
  ) -> None:
    """Generates the splits; after a Beam run, merges the images' records into the metadata."""
    super()._download_and_prepare(dl_manager, download_config)
    if not self._beam:
      return
    records_dir = self._records_dir()
    for path in sorted(records_dir.glob("*.json")):
      records = [
        ImageRecord(image_id, tuple(map(tuple, counts)), tuple(map(tuple, skipped)))
        for image_id, counts, skipped in json.loads(path.read_text())
      ]
      self._record(path.stem, records)
    records_dir.rmtree()

  def _records_dir(self) -> epath.Path:
    return epath.Path(self.data_path) / "beam_records"

  def _quotas(self, images: Sequence[ImageFindings], num_background: int) -> dict[str, int]:
    settings = self.builder_config.patch
    return patches.background_quota([im.image_id for im in images], num_background, settings.seed)

  def _record(self, split: str, records: Sequence[ImageRecord]) -> None:
    """Adds images' patch counts and skipped files to the metadata, in image order."""
    counts = self.info.metadata["counts"].setdefault(split, {})
    for record in sorted(records, key=lambda r: r.image_id):
      for name, count in record.counts:
        counts[name] = counts.get(name, 0) + count
      for path, reason in record.skipped:
        logging.warning("skipped %s: %s", path, reason)
        self.info.metadata["skipped"].append({"path": path, "reason": reason})


class EmptySplitError(errors.UserError):
  """A split none of whose images gave a patch (all missing, say): named, with why."""

  def __init__(self, split: str, images: int, skipped: Sequence[tuple[str, str]]):
    reasons = "; ".join(f"{path}: {reason}" for path, reason in skipped[:3])
    more = f" and {len(skipped) - 3} more" if len(skipped) > 3 else ""
    why = f"skipped {reasons}{more}" if skipped else "none was skipped, none had a patch to cut"
    super().__init__(f"split {split!r} came out empty: no patch from its {images} images ({why})")


@dataclasses.dataclass(frozen=True)
class ImageFindings:
  """One image of the manifest with all its findings."""

  image_id: str
  path: str
  patient_id: str
  findings: tuple[Finding, ...]

  @property
  def density(self) -> str:
    return next((f.density for f in self.findings if f.density), "")

  @property
  def pixel_spacing_mm(self) -> float | None:
    """The pixel size the source documents for this image, if any."""
    return next((f.pixel_spacing_mm for f in self.findings if f.pixel_spacing_mm), None)


@dataclasses.dataclass(frozen=True)
class ImageRecord:
  """What one image added to the metadata: patches per class, and files skipped and why."""

  image_id: str
  counts: tuple[tuple[str, int], ...]
  skipped: tuple[tuple[str, str], ...]  # (path, reason)


@dataclasses.dataclass(frozen=True)
class ImageExamples:
  """The examples of one image and its metadata record (no side effects: Beam workers run it)."""

  examples: list[tuple[str, dict]]
  record: ImageRecord


def image_examples(
  im: ImageFindings, num_background: int, config: McalcPatchesConfig
) -> ImageExamples:
  """Every example of one image; a failure is recorded as skipped (one bad file never stops a
  build)."""
  skipped: list[tuple[str, str]] = []
  found = _image_patches(im, num_background, config.patch, skipped)
  counts: dict[str, int] = {}
  for patch in found:
    counts[patch_class(patch)] = counts.get(patch_class(patch), 0) + 1
  record = ImageRecord(im.image_id, tuple(counts.items()), tuple(skipped))
  return ImageExamples([(p.patch_id, _example(p, im, config.source)) for p in found], record)


def _beam_image(item: tuple[ImageFindings, int], config: McalcPatchesConfig):
  """One Beam element: the image's examples, then its record as a tagged output."""
  beam = tfds.core.lazy_imports.apache_beam
  generated = image_examples(*item, config)
  yield from generated.examples
  yield beam.pvalue.TaggedOutput(_RECORDS, generated.record)


def _write_records(records: list[ImageRecord], path: str) -> None:
  epath.Path(path).parent.mkdir(parents=True, exist_ok=True)
  rows = [[r.image_id, r.counts, r.skipped] for r in records]
  epath.Path(path).write_text(json.dumps(rows))


def _image_patches(
  im: ImageFindings,
  num_background: int,
  settings: patches.PatchSettings,
  skipped: list[tuple[str, str]],
) -> list[patches.Patch]:
  """Every patch of one image; what fails is appended to `skipped` as (path, reason)."""
  try:
    mg = mammogram.read_mammogram(im.path, mammogram.spacing_options(im.pixel_spacing_mm))
  except errors.MammogramError as e:
    skipped.append((im.path, e.reason))
    return []
  masks = _masks(mg, im.findings, skipped)
  found = patches.positive_patches(mg, im.findings, im.image_id, settings, masks=masks)
  try:
    found += patches.background_patches(
      mg,
      im.findings,
      im.image_id,
      num_background,
      settings,
      breast=breast.breast_mask(mg.pixels),
      masks=masks,
    )
  except patches.PatchSamplingError as e:
    skipped.append((im.path, str(e)))
    found += e.patches
  return found


def _masks(
  mg: mammogram.Mammogram, findings: Sequence[Finding], skipped: list[tuple[str, str]]
) -> dict[str, np.ndarray]:
  """ROI masks in the canonical orientation; an unreadable mask falls back to the circle."""
  masks = {}
  for f in findings:
    if not f.mask_path:
      continue
    try:
      mask = mammogram.read_mammogram(f.mask_path)
    except errors.MammogramError as e:
      skipped.append((f.mask_path, f"mask unreadable, circle used instead: {e.reason}"))
      continue
    if mask.original_shape != mg.original_shape:
      skipped.append(
        (
          f.mask_path,
          f"mask shape {mask.original_shape} is not the image's "
          f"{mg.original_shape}, circle used instead",
        )
      )
      continue
    # The reader orients each file on its own; undo the mask's flip and apply the image's.
    inside = mask.pixels > 0
    masks[f.finding_id] = inside[:, ::-1] if mask.flipped != mg.flipped else inside
  return masks


def group_images(findings: Sequence[Finding]) -> list[ImageFindings]:
  """Findings grouped by image, sorted by image id.

  The id is the file name without extension when those are unique, else the path (without
  extension) relative to the images' common folder.
  """
  by_path: dict[str, list[Finding]] = {}
  for f in findings:
    by_path.setdefault(f.image_path, []).append(f)
  paths = sorted(by_path)
  stems = [os.path.splitext(os.path.basename(p))[0] for p in paths]
  if len(set(stems)) < len(stems):
    root = os.path.commonpath(paths) if len(paths) > 1 else os.path.dirname(paths[0])
    stems = [os.path.splitext(os.path.relpath(p, root))[0] for p in paths]
  images = [
    ImageFindings(s, p, by_path[p][0].patient_id, tuple(by_path[p]))
    for s, p in zip(stems, paths, strict=True)
  ]
  return sorted(images, key=lambda im: im.image_id)


def _positives(images: Sequence[ImageFindings], settings: patches.PatchSettings) -> int:
  return sum(patches.num_positive_patches(im.findings, settings) for im in images)


def _background_total(
  images: Sequence[ImageFindings], rate: float, settings: patches.PatchSettings
) -> int:
  """`background_ratio` x the split's calcification patches; a split without calcifications
  gets background at the dataset's rate per image, so its specificity can still be measured."""
  positives = _positives(images, settings) or rate * len(images)
  return round(settings.background_ratio * positives)


def patch_class(patch: patches.Patch) -> str:
  """'background', 'benign', 'malignant' or 'calcification' (severity unknown)."""
  if not patch.task1_label:
    return "background"
  return patch.severity or "calcification"


def builder_config(config: ml_collections.ConfigDict) -> McalcPatchesConfig:
  """The BuilderConfig a data config (configs/data.py) describes; the registered object when the
  settings match.

  tfds refuses a custom config named like a registered one, so changed settings need a new
  `config.name`; the error says so.
  """
  patch = patches.PatchSettings.from_config({**config.patch, "seed": config.seed})
  custom = McalcPatchesConfig(
    name=config.name,
    source=config.source,
    patch=patch,
    split_fractions=tuple(config.split.fractions),
    split_seed=config.seed,
    description=sources.get(config.source).description,
  )
  registered = McalcPatches.builder_configs.get(config.name)
  if registered is None:
    return custom
  if registered.settings() != custom.settings():
    raise ValueError(
      f"settings differ from the registered config {config.name!r}; give them a "
      f"new name, e.g. --config.name={config.name}_custom"
    )
  return registered


def _has_manual(dl_manager: tfds.download.DownloadManager) -> bool:
  try:
    return bool(dl_manager.manual_dir)
  except AssertionError:  # tfds asserts when no manual_dir was given
    return False


def _example(patch: patches.Patch, im: ImageFindings, source: str) -> dict:
  return {
    "image": patch.image[..., None],
    "max_value": patch.max_value,
    "task1_label": patch.task1_label,
    "task2_label": patch.task2_label,
    "patient_id": im.patient_id,
    "image_id": im.image_id,
    "finding_id": patch.finding_id,
    "patch_id": patch.patch_id,
    "center_row": patch.center_row,
    "center_col": patch.center_col,
    "source": source,
    "severity": patch.severity,
    "density": im.density,
    "pixel_spacing_mm": patch.pixel_spacing_mm,
    "spacing_assumed": int(patch.spacing_assumed),
  }


def open_builder(
  dataset: str = "mcalc_patches/mias", data_dir: str | None = None
) -> tfds.core.DatasetBuilder:
  """The built `name/config` dataset (newest version), restored from its own files.

  Reading from the directory (not the registered config) finds datasets built with any settings,
  and avoids `tfds.data_source`'s lookup, which can miss local array_record datasets.
  """
  data_dir = (
    data_dir or os.environ.get("TFDS_DATA_DIR") or os.path.expanduser("~/tensorflow_datasets")
  )
  config_dir = os.path.join(data_dir, *dataset.split("/"))
  versions = sorted(
    (tfds.core.Version(v) for v in _listdir(config_dir) if tfds.core.Version.is_valid(v)),
    reverse=True,
  )
  if not versions:
    raise FileNotFoundError(f"no built dataset in {config_dir}: run mcalc-prepare first")
  return tfds.builder_from_directory(os.path.join(config_dir, str(versions[0])))


def field_of_view_mm(builder: tfds.core.DatasetBuilder) -> float:
  """Millimetres a built dataset's patch covers (`patches.NATIVE_PIXELS` at native pixels)."""
  settings = (builder.info.metadata or {}).get("patch_settings", {})
  # `size_mm`: datasets built before the name was `field_of_view_mm` everywhere; neither: before
  # patches were cut in millimetres.
  return float(settings.get("field_of_view_mm", settings.get("size_mm", patches.NATIVE_PIXELS)))


def _listdir(path: str) -> list[str]:
  return os.listdir(path) if os.path.isdir(path) else []
