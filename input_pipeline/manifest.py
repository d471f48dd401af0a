"""The annotation manifest: one CSV schema for findings, whatever the source.

One row per finding; an image without findings has one row with `abnormality='none'`, so the
manifest also lists the normal images that background patches come from. Coordinates are in the
ORIGINAL file's pixels (column from the left, row from the top); `image_path` and `mask_path` are
relative to the manifest's folder unless absolute. `density` is ACR A-D / 1-4 where the source
gives it, else the source's own category (mini-MIAS: fatty, fatty-glandular, dense-glandular).
`pixel_spacing_mm` is the pixel size where the image file records none but its source documents
it (mini-MIAS film: 0.2 mm), so that patches and tiles can be cut in millimetres.
`note` is one token that downstream stages may act on: `annotation_outside_breast` (excluded
from patch extraction), `no_coordinates`, `diffuse_calcification_no_coordinates`,
`benign_without_callback`.
"""

from __future__ import annotations

import csv
import dataclasses
import math
import os
from collections.abc import Iterable, Mapping

ABNORMALITIES = ("calcification", "mass", "distortion", "asymmetry", "other", "none")
LABELS = ("benign", "malignant", "")


@dataclasses.dataclass(frozen=True)
class Finding:
  """One row of the manifest."""

  patient_id: str
  image_path: str
  finding_id: str = ""
  abnormality: str = "none"
  label: str = ""
  col: float | None = None
  row: float | None = None
  radius: float | None = None
  mask_path: str = ""
  density: str = ""
  view: str = ""
  laterality: str = ""
  subtype: str = ""
  note: str = ""
  pixel_spacing_mm: float | None = None


COLUMNS = tuple(f.name for f in dataclasses.fields(Finding))
_FLOAT_COLUMNS = ("col", "row", "radius", "pixel_spacing_mm")


class ManifestError(ValueError):
  """A manifest row that breaks the schema; the message names the file and line."""


def parse_finding(raw: Mapping[str, str | None], where: str) -> Finding:
  """Validates one row (column name -> text) into a Finding; `where` prefixes any error."""
  values: dict[str, object] = {}
  for name in COLUMNS:
    text = (raw.get(name) or "").strip()
    if name in _FLOAT_COLUMNS:
      values[name] = _number(name, text, where)
    elif text:  # a blank keeps the default (abnormality 'none')
      values[name] = text
  if not values.get("patient_id") or not values.get("image_path"):
    raise ManifestError(f"{where}: patient_id and image_path are required")
  finding = Finding(**values)
  if finding.abnormality not in ABNORMALITIES:
    raise ManifestError(f"{where}: abnormality {finding.abnormality!r} not in {ABNORMALITIES}")
  if finding.label not in LABELS:
    raise ManifestError(f"{where}: label {finding.label!r} not in {LABELS}")
  return finding


def _number(name: str, text: str, where: str) -> float | None:
  if not text:
    return None
  try:
    value = float(text)
  except ValueError as e:
    raise ManifestError(f"{where}: column {name!r} is not a number: {text!r}") from e
  if not math.isfinite(value):
    raise ManifestError(f"{where}: column {name!r} is not finite: {text!r}")
  return value


def read_manifest(path: str | os.PathLike) -> list[Finding]:
  """Reads a manifest CSV; relative image and mask paths become absolute."""
  path = os.fspath(path)
  if not os.path.isfile(path):
    raise FileNotFoundError(f"manifest not found: {path}")
  base = os.path.dirname(os.path.abspath(path))
  with open(path, newline="") as f:
    reader = csv.DictReader(f)
    missing = {"patient_id", "image_path"} - set(reader.fieldnames or ())
    if missing:
      raise ManifestError(f"{path}: missing columns {sorted(missing)}")
    findings = [parse_finding(raw, f"{path}:{i + 2}") for i, raw in enumerate(reader)]
  return [_absolute(f, base) for f in findings]


def _absolute(finding: Finding, base: str) -> Finding:
  def resolve(p: str) -> str:
    return p if not p or os.path.isabs(p) else os.path.normpath(os.path.join(base, p))

  return dataclasses.replace(
    finding, image_path=resolve(finding.image_path), mask_path=resolve(finding.mask_path)
  )


def write_manifest(path: str | os.PathLike, findings: Iterable[Finding]) -> None:
  """Writes findings as a manifest CSV (atomically: a temporary file renamed into place)."""
  path = os.fspath(path)
  tmp = f"{path}.tmp"
  with open(tmp, "w", newline="") as f:
    writer = csv.DictWriter(f, fieldnames=COLUMNS)
    writer.writeheader()
    for finding in findings:
      row = dataclasses.asdict(finding)
      writer.writerow({k: ("" if v is None else v) for k, v in row.items()})
  os.replace(tmp, path)
