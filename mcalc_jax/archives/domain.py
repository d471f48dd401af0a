"""Whether an image lies inside what a model was trained on, from the run's record and the
image's header: a clinician reading a score on a digital mammogram from a film-trained model, or
on raw detector pixels, should be told so (`mcalc-score`'s in_domain column)."""

from __future__ import annotations

import dataclasses
from typing import Any

import numpy as np
import pydicom

from input_pipeline import sources
from input_pipeline.mammogram import Mammogram

# Tiles are resampled to the network's pixels, so finer pixels are in its domain; pixels coarser
# by more than this factor cannot show the specks the network learnt.
_PIXEL_FACTOR = 1.5
_DIGITAL_SOP_CLASSES = (
  "1.2.840.10008.5.1.4.1.1.1.2",  # Digital Mammography X-Ray Image, for presentation
  "1.2.840.10008.5.1.4.1.1.1.2.1",  # ... for processing
  "1.2.840.10008.5.1.4.1.1.1.1",  # Digital X-Ray Image, for presentation
  "1.2.840.10008.5.1.4.1.1.1.1.1",  # ... for processing
  "1.2.840.10008.5.1.4.1.1.1",  # Computed Radiography Image
)
_FILM_CONVERSIONS = ("DF",)  # ConversionType: Digitized Film (WSD, a workstation, says neither)


@dataclasses.dataclass(frozen=True)
class TrainingDomain:
  """What a Task 1 run's config.json says of the images it learned from: the patch dataset, its
  kind (`film` for a digitised-film source, '' when the record does not say) and the pixel side
  the network sees (its field of view over its input size; 0: native pixels of a size the record
  does not hold).

  `check` holds one image against it: a FOR PROCESSING (raw detector) image is outside (no
  source here trains on raw pixels), a digital image is outside a film run (and film outside a
  digital one), and so is an image whose pixels are more than `_PIXEL_FACTOR` coarser
  than the network's. What neither the image nor the record says is `unknown`, never `yes`."""

  dataset: str
  kind: str = ""
  pixel_mm: float = 0.0

  @classmethod
  def of_config(cls, config: Any) -> TrainingDomain:
    """The domain a run's config (`inference.Classifier.config`) records."""
    dataset = str(config.get("dataset", ""))
    name = dataset.rsplit("/", 1)[-1].removeprefix("inserted_")
    film = any(name == s or name.startswith(f"{s}_") for s in sources.FILM_SOURCES)
    field_of_view = float(config.get("field_of_view_mm") or 0.0)
    input_size = int(config.preprocess.get("input_size") or config.patch_size)
    return cls(dataset, "film" if film else "", field_of_view / input_size)

  def check(self, mammogram: Mammogram, header: pydicom.Dataset | None) -> tuple[str, str]:
    """('yes' | 'no' | 'unknown', why not or what is unknown) of one image and its header."""
    verdicts = [self._acquisition(header), self._pixels(mammogram)]
    for verdict in ("no", "unknown"):
      reasons = [reason for v, reason in verdicts if v == verdict]
      if reasons:
        return verdict, "; ".join(reasons)
    return "yes", ""

  def _acquisition(self, header: pydicom.Dataset | None) -> tuple[str, str]:
    if header is not None and str(header.get("PresentationIntentType", "")) == "FOR PROCESSING":
      return "no", "raw detector pixels (FOR PROCESSING)"
    kind = _image_kind(header)
    if not kind:
      what = "a PNG or PGM" if header is None else "its DICOM header"
      return "unknown", f"film or digital: {what} does not say"
    if not self.kind:
      return "unknown", f"film or digital: the run's record ({self.dataset}) does not say"
    if kind != self.kind:
      return "no", f"a {kind} image; the run learned from {self.kind} ({self.dataset})"
    return "yes", ""

  def _pixels(self, mammogram: Mammogram) -> tuple[str, str]:
    if mammogram.spacing_assumed:
      return "unknown", "pixel size: the file does not record it"
    if not self.pixel_mm:
      return "unknown", "pixel size: the run learned native pixels of a size it does not record"
    pixel = float(np.mean(mammogram.pixel_spacing_mm))
    if pixel > self.pixel_mm * _PIXEL_FACTOR:
      return "no", f"{pixel:.3g}-mm pixels; the network sees {self.pixel_mm:.3g} mm"
    return "yes", ""


def _image_kind(header: pydicom.Dataset | None) -> str:
  """'film', 'digital' or '' (not said) from a DICOM header (None: no DICOM)."""
  if header is None:
    return ""
  if str(header.get("ConversionType", "")) in _FILM_CONVERSIONS:
    return "film"
  return "digital" if str(header.get("SOPClassUID", "")) in _DIGITAL_SOP_CLASSES else ""
