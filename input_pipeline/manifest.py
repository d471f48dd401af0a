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
`benign_without_callback`, `inserted` (a simulated cluster, `input_pipeline.insertion`: a positive
for training, never evidence of detection).

Reading is forgiving where a spreadsheet's export differs harmlessly (a UTF-8 byte-order mark,
semicolon or tab delimiters, headers such as `Patient ID`) and precise where it does not: every
error names the file and line, and values must be physical (a pixel spacing a mammogram can
have, coordinates and radii within the largest mammogram there is).
"""

from __future__ import annotations

import csv
import dataclasses
import io
import math
import os
import re
from collections.abc import Iterable, Mapping

from input_pipeline.errors import UserError
from input_pipeline.mammogram import PLAUSIBLE_SPACING_MM

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
REQUIRED = ("patient_id", "image_path")
# 500 mm at the finest plausible spacing: no mammogram is wider, no finding further or larger.
MAX_PIXELS_ACROSS = 100_000
# Physical range of each number column: (lowest, highest, whether the lowest is allowed).
_RANGES = {
  "col": (0.0, MAX_PIXELS_ACROSS, True),
  "row": (0.0, MAX_PIXELS_ACROSS, True),
  "radius": (0.0, MAX_PIXELS_ACROSS, False),
  "pixel_spacing_mm": (*PLAUSIBLE_SPACING_MM, True),
}
_DELIMITERS = (",", ";", "\t")


class ManifestError(UserError):
  """A manifest (or one of its rows) that breaks the schema; the message names the file and line."""


def parse_finding(raw: Mapping[str, str | None], where: str) -> Finding:
  """Validates one row (column name -> text) into a Finding; `where` prefixes any error."""
  values: dict[str, object] = {}
  for name in COLUMNS:
    text = (raw.get(name) or "").strip()
    if name in _RANGES:
      values[name] = _number(name, text, where)
    elif text:  # a blank keeps the default (abnormality 'none')
      values[name] = text
  if not all(values.get(name) for name in REQUIRED):
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
  low, high, low_allowed = _RANGES[name]
  if not (low <= value if low_allowed else low < value) or value > high:
    bound = "[" if low_allowed else "("
    raise ManifestError(f"{where}: column {name!r} is {value:g}, outside {bound}{low:g}, {high:g}]")
  return value


def read_manifest(path: str | os.PathLike) -> list[Finding]:
  """Reads a manifest CSV; relative image and mask paths become absolute.

  Raises:
    FileNotFoundError: no such file.
    ManifestError: not UTF-8 text, no header with the required columns, a row that is not CSV
      or breaks the schema; naming the file and line.
  """
  path = os.fspath(path)
  if not os.path.isfile(path):
    raise FileNotFoundError(f"manifest not found: {path}")
  base = os.path.dirname(os.path.abspath(path))
  rows = csv.reader(io.StringIO(_text(path), newline=""), delimiter=_delimiter(path))
  findings = []
  try:
    header = [_column(name) for name in next(rows, [])]
    missing = sorted(set(REQUIRED) - set(header))
    if missing:
      raise ManifestError(f"{path}:1: missing columns {missing} (the header is {header})")
    for values in rows:
      if values:  # a blank line is no row
        findings.append(
          parse_finding(dict(zip(header, values, strict=False)), f"{path}:{rows.line_num}")
        )
  except csv.Error as e:  # an oversize field, a NUL byte, an unclosed quote
    raise ManifestError(f"{path}:{rows.line_num}: not CSV ({e})") from e
  return [_absolute(f, base) for f in findings]


def _text(path: str) -> str:
  """The file as text: UTF-8, with or without the byte-order mark spreadsheets write."""
  with open(path, "rb") as f:
    data = f.read()
  try:
    return data.decode("utf-8-sig")
  except UnicodeDecodeError as e:
    line = data[: e.start].count(b"\n") + 1
    raise ManifestError(
      f"{path}:{line}: not UTF-8 text (byte 0x{data[e.start]:02x}): save the manifest as UTF-8"
    ) from e


def _delimiter(path: str) -> str:
  """The delimiter that makes the header hold the required columns (comma if none does)."""
  with open(path, encoding="utf-8-sig", errors="replace") as f:
    first = f.readline()
  for delimiter in _DELIMITERS:
    if set(REQUIRED) <= {_column(name) for name in first.split(delimiter)}:
      return delimiter
  return _DELIMITERS[0]


def _column(name: str) -> str:
  """A header cell as a column name: `Patient ID`, ` image-path ` read as the schema's names."""
  return re.sub(r"[\s-]+", "_", name.strip().strip('"').strip()).lower()


def _absolute(finding: Finding, base: str) -> Finding:
  def resolve(p: str) -> str:
    return p if not p or os.path.isabs(p) else os.path.normpath(os.path.join(base, p))

  return dataclasses.replace(
    finding, image_path=resolve(finding.image_path), mask_path=resolve(finding.mask_path)
  )


def write_manifest(path: str | os.PathLike, findings: Iterable[Finding]) -> None:
  """Writes findings as a manifest CSV (atomically: a temporary file renamed into place)."""
  path = os.fspath(path)
  tmp = f"{path}.{os.getpid()}.tmp"  # two writers never share a temporary
  with open(tmp, "w", newline="") as f:
    writer = csv.DictWriter(f, fieldnames=COLUMNS)
    writer.writeheader()
    for finding in findings:
      row = dataclasses.asdict(finding)
      writer.writerow({k: ("" if v is None else v) for k, v in row.items()})
  os.replace(tmp, path)
