"""Importers from public datasets' and users' annotation files to manifest findings.

Each returns `list[Finding]` with absolute image paths and centres in the original file's pixels
(column from the left, row from the top); `manifest.write_manifest` stores them.
"""

from __future__ import annotations

import csv
import dataclasses
import glob
import logging
import math
import os
import re
from collections.abc import Iterator, Mapping

import numpy as np
import pydicom
from PIL import Image
from pydicom.errors import InvalidDicomError

from input_pipeline import breast, errors, mammogram
from input_pipeline.manifest import COLUMNS, Finding, parse_finding

LABELS = {
  "": "",
  "b": "benign",
  "benign": "benign",
  "benign_without_callback": "benign",
  "m": "malignant",
  "malignant": "malignant",
}
ABNORMALITIES = {
  "": "",
  "calc": "calcification",
  "calcification": "calcification",
  "calcifications": "calcification",
  "microcalcification": "calcification",
  "microcalcifications": "calcification",
  "mass": "mass",
  "arch": "distortion",
  "distortion": "distortion",
  "architectural distortion": "distortion",
  "asym": "asymmetry",
  "asymmetry": "asymmetry",
  "other": "other",
  "none": "none",
  "norm": "none",
  "normal": "none",
}
LATERALITIES = {"l": "L", "left": "L", "r": "R", "right": "R"}

# --- mini-MIAS -------------------------------------------------------------------------------

MIAS_CLASSES = {
  "CALC": "calcification",
  "CIRC": "mass",
  "SPIC": "mass",
  "MISC": "mass",
  "ARCH": "distortion",
  "ASYM": "asymmetry",
  "NORM": "none",
}
MIAS_DENSITY = {"F": "fatty", "G": "fatty-glandular", "D": "dense-glandular"}
MIAS_PIXEL_SPACING_MM = 0.2  # the 50 um digitisation reduced to 200 um (the MIAS README)
_MIAS_ROW = re.compile(r"^(mdb(\d{3}))\s+([FGD])\s+([A-Z]{4})\b(.*)$")


def import_mias(mias_dir: str | os.PathLike, *, check_breast: bool = True) -> list[Finding]:
  """Findings of mini-MIAS `Info.txt` for the images present under `mias_dir` (or its images/).

  MIAS gives centres with the origin at the bottom-left: row = image height - Y. Rows without
  coordinates (a severity only, or `*NOTE 3*` for diffuse calcification) are kept with a note.
  With `check_breast`, an annotation whose centre lies outside the breast mask (mdb212 and
  mdb214 in the public data) is noted `annotation_outside_breast` so patch extraction skips it.
  """
  mias_dir = os.fspath(mias_dir)
  findings, missing = [], set()
  rows_per_image: dict[str, int] = {}
  for ref, number, tissue, code, rest in _mias_rows(os.path.join(mias_dir, "Info.txt")):
    path = _mias_image(mias_dir, ref)
    if path is None:
      missing.add(ref)
      continue
    rows_per_image[ref] = rows_per_image.get(ref, 0) + 1
    findings.append(_mias_finding(path, ref, number, tissue, code, rest, rows_per_image[ref]))
  if missing:
    logging.warning("mini-MIAS: %d images listed in Info.txt are not in %s", len(missing), mias_dir)
  return _flag_outside_breast(findings) if check_breast else findings


def _mias_rows(info_path: str) -> Iterator[tuple[str, int, str, str, list[str]]]:
  if not os.path.isfile(info_path):
    raise FileNotFoundError(f"mini-MIAS annotation file not found: {info_path}")
  with open(info_path) as f:
    for line in f:
      match = _MIAS_ROW.match(line.strip())
      if match:
        ref, number, tissue, code, rest = match.groups()
        yield ref, int(number), tissue, code, rest.split()


def _mias_image(mias_dir: str, ref: str) -> str | None:
  for folder in ("images", ""):
    for ext in (".png", ".pgm"):
      path = os.path.join(mias_dir, folder, ref + ext)
      if os.path.isfile(path):
        return os.path.abspath(path)
  return None


def _mias_finding(
  path: str, ref: str, number: int, tissue: str, code: str, rest: list[str], index: int
) -> Finding:
  abnormality = MIAS_CLASSES.get(code, "other")
  common = dict(
    patient_id=str(math.ceil(number / 2)),
    image_path=path,
    abnormality=abnormality,
    density=MIAS_DENSITY[tissue],
    view="MLO",
    laterality="L" if number % 2 == 0 else "R",
    subtype=code,
    pixel_spacing_mm=MIAS_PIXEL_SPACING_MM,
  )
  if abnormality == "none":
    return Finding(**common)
  label = LABELS.get(rest[0].lower(), "") if rest else ""
  coordinates = rest[1:4] if label else rest[:3]
  finding = Finding(**common, finding_id=f"{ref}_{index}", label=label)
  if len(coordinates) == 3 and all(c.isdigit() for c in coordinates):
    x, y, radius = (float(c) for c in coordinates)
    return dataclasses.replace(finding, col=x, row=_image_height(path) - y, radius=radius)
  diffuse = "*NOTE" in " ".join(rest)
  note = "diffuse_calcification_no_coordinates" if diffuse else "no_coordinates"
  return dataclasses.replace(finding, note=note)


def _image_height(path: str) -> int:
  """Rows of an image without decoding it (MIAS centres count Y up from the bottom row)."""
  with Image.open(path) as image:
    return image.size[1]


def _flag_outside_breast(findings: list[Finding]) -> list[Finding]:
  """Notes annotations whose centre is off the image or outside the breast mask."""
  flagged, masks = [], {}
  for f in findings:
    if f.row is not None and f.col is not None:
      if f.image_path not in masks:
        masks[f.image_path] = _original_breast_mask(f)
      mask = masks[f.image_path]
      if mask is not None and not _inside(mask, f.row, f.col):
        f = dataclasses.replace(f, note="annotation_outside_breast")
    flagged.append(f)
  return flagged


def _original_breast_mask(finding: Finding) -> np.ndarray | None:
  """The breast mask in the file's own orientation; None (logged) when the image is unreadable."""
  options = mammogram.ReadOptions(canonical=False, laterality_hint=finding.laterality)
  try:
    return breast.breast_mask(mammogram.read_mammogram(finding.image_path, options).pixels)
  except errors.MammogramError as e:
    logging.warning("breast check skipped: %s", e)
    return None


def _inside(mask: np.ndarray, row: float, col: float) -> bool:
  r, c = round(row), round(col)
  return 0 <= r < mask.shape[0] and 0 <= c < mask.shape[1] and bool(mask[r, c])


# --- CBIS-DDSM -------------------------------------------------------------------------------


_CBIS_COLUMNS = {
  "patient id",
  "left or right breast",
  "image view",
  "abnormality id",
  "abnormality type",
  "pathology",
  "image file path",
  "cropped image file path",
  "roi mask file path",
}


def import_folder(
  folder: str | os.PathLike, spacing_mm: float | None = None, patient_id: str = ""
) -> list[Finding]:
  """One 'none' row per image (PNG, DICOM, PGM) in `folder`: backgrounds without a manifest.

  `spacing_mm` is the pixel size the source documents (None: the reader assumes one);
  `patient_id` defaults to each file's stem.
  """
  folder = os.fspath(folder)
  names = sorted(
    n for n in os.listdir(folder) if n.lower().endswith((".png", ".dcm", ".pgm", ".dicom"))
  )
  return [
    Finding(
      patient_id=patient_id or os.path.splitext(n)[0],
      image_path=os.path.abspath(os.path.join(folder, n)),
      pixel_spacing_mm=spacing_mm,
    )
    for n in names
  ]


def import_cbis_ddsm(
  case_csv: str | os.PathLike, image_root: str | os.PathLike | None = None
) -> list[Finding]:
  """Findings of CBIS-DDSM case description tables (calc or mass, train or test).

  Args:
    case_csv: one case table, or a folder whose `*case_description*.csv` files are all read.
    image_root: where the table's relative DICOM paths start (default: the table's folder). A
      path that does not exist as written is also looked for as `<first folder>.dcm` and as the
      only DICOM under `<first folder>/` (the layout of a TCIA download).

  The ROI mask and cropped-image columns are swapped in some rows, so the mask is the candidate
  with the full mammogram's size (or the larger one when the mammogram is absent). The centre and
  radius come from the mask; without a readable mask, col/row/radius stay empty and `mask_path`
  keeps the table's mask path. BENIGN_WITHOUT_CALLBACK is benign, noted
  `benign_without_callback`.
  """
  case_csv = os.fspath(case_csv)
  tables = (
    sorted(glob.glob(os.path.join(case_csv, "*case_description*.csv")))
    if os.path.isdir(case_csv)
    else [case_csv]
  )
  if not tables:
    raise FileNotFoundError(f"no *case_description*.csv in {case_csv}")
  default_root = case_csv if os.path.isdir(case_csv) else os.path.dirname(case_csv)
  root = os.path.abspath(os.fspath(image_root or default_root))
  return [_cbis_finding(row, root, where) for table in tables for row, where in _cbis_rows(table)]


def _cbis_rows(table: str) -> Iterator[tuple[dict[str, str], str]]:
  """Rows with normalised keys ('breast_density' -> 'breast density') and stripped values."""
  with open(table, newline="", encoding="utf-8-sig") as f:
    reader = csv.DictReader(f)
    missing = _CBIS_COLUMNS - {_cbis_key(k) for k in reader.fieldnames or ()}
    if missing:
      raise ValueError(f"{table}: not a CBIS-DDSM case table, missing {sorted(missing)}")
    for i, raw in enumerate(reader):
      row = {_cbis_key(k): (v or "").strip() for k, v in raw.items() if k is not None}
      yield row, f"{table}: row {i + 1}"


def _cbis_key(key: str) -> str:
  return " ".join(key.replace("_", " ").lower().split())


def _cbis_finding(row: dict[str, str], root: str, where: str) -> Finding:
  image = _resolve_dicom(root, row["image file path"])
  abnormality = ABNORMALITIES.get(row["abnormality type"].lower(), "other")
  pathology = row["pathology"].lower()
  mask_path, mask_fits = _cbis_mask(root, row, image)
  finding = parse_finding(
    dict(
      patient_id=row["patient id"],
      image_path=image,
      finding_id=f"{abnormality}_{row['abnormality id']}",
      abnormality=abnormality,
      label=LABELS.get(pathology, pathology),
      mask_path=mask_path,
      density=row.get("breast density", ""),
      view=row["image view"].upper(),
      laterality=LATERALITIES.get(row["left or right breast"].lower(), ""),
      subtype=row.get("calc type") or row.get("mass shape", ""),
      note="benign_without_callback" if pathology == "benign_without_callback" else "",
    ),
    where,
  )
  centre = _mask_centre(mask_path) if mask_fits else None
  if centre is None:
    return finding
  centre_row, centre_col, radius = centre
  return dataclasses.replace(finding, row=centre_row, col=centre_col, radius=radius)


def _resolve_dicom(root: str, relative: str) -> str:
  exact = os.path.join(root, relative)
  if os.path.isfile(exact):
    return exact
  flat = os.path.join(root, _top_folder(relative) + ".dcm")
  if os.path.isfile(flat):
    return flat
  found = _dicoms_under(root, relative)
  return found[0] if len(found) == 1 else exact


def _top_folder(relative: str) -> str:
  return relative.replace("\\", "/").split("/")[0]


def _dicoms_under(root: str, relative: str) -> list[str]:
  """Every DICOM below the top folder of `relative` (TCIA downloads rename the inner folders)."""
  pattern = os.path.join(glob.escape(root), glob.escape(_top_folder(relative)), "**", "*.dcm")
  return sorted(glob.glob(pattern, recursive=True))


def _cbis_mask(root: str, row: dict[str, str], image: str) -> tuple[str, bool]:
  """The ROI mask path, and whether it has the mammogram's size (else no centre is trusted).

  The mask and crop columns are swapped in some rows; the mask is the one with the full
  mammogram's size. Without a match the larger candidate (or the table's mask path) is kept.
  """
  listed = [os.path.join(root, row[k]) for k in ("roi mask file path", "cropped image file path")]
  candidates = [p for p in listed if os.path.isfile(p)] or _dicoms_under(
    root, row["roi mask file path"]
  )
  shapes = {p: s for p in candidates if (s := _dicom_shape(p))}
  full = _dicom_shape(image)
  matching = [p for p, s in shapes.items() if s == full]
  if matching:
    return matching[0], True
  if shapes:
    return max(shapes, key=lambda p: shapes[p][0] * shapes[p][1]), False
  return listed[0], False


def _dicom_shape(path: str) -> tuple[int, int] | None:
  """(Rows, Columns) from the header alone, or None if the file is missing or not DICOM."""
  if not os.path.isfile(path):
    return None
  try:
    ds = pydicom.dcmread(path, stop_before_pixels=True, specific_tags=["Rows", "Columns"])
    return int(ds.Rows), int(ds.Columns)
  except (InvalidDicomError, AttributeError, OSError, ValueError):
    return None


def _mask_centre(mask_path: str) -> tuple[float, float, float] | None:
  """(row, col, radius) of the mask's centroid and enclosing circle, in the file's pixels."""
  try:
    mask = mammogram.read_mask(mask_path)
  except errors.MammogramError as e:
    logging.warning("ROI mask not used: %s", e)
    return None
  rows, cols = np.nonzero(mask)
  row, col = float(rows.mean()), float(cols.mean())
  radius = float(np.sqrt(((rows - row) ** 2 + (cols - col) ** 2).max()))
  return round(row, 2), round(col, 2), round(radius, 2)


# --- users' spreadsheets ---------------------------------------------------------------------


def import_generic(
  csv_path: str | os.PathLike,
  columns: Mapping[str, str] | None = None,
  *,
  labels: Mapping[str, str] | None = None,
  abnormalities: Mapping[str, str] | None = None,
  default_abnormality: str = "calcification",
) -> list[Finding]:
  """Findings from a user's CSV (comma, semicolon or tab separated).

  Args:
    csv_path: the spreadsheet; relative image and mask paths start at its folder.
    columns: manifest column -> spreadsheet column, e.g. {'patient_id': 'PatientID',
      'image_path': 'File', 'label': 'Histology'}; unmapped manifest columns are read from a
      spreadsheet column of the same name when there is one.
    labels: extra label spellings (lower case) -> 'benign' | 'malignant' | '', on top of LABELS.
    abnormalities: extra abnormality spellings (lower case) -> manifest abnormality.
    default_abnormality: for rows with a label, centre or mask but no abnormality (spreadsheets
      of calcifications rarely say so); rows with none of these are 'none'.

  Raises:
    manifest.ManifestError: naming the file and line of a row that breaks the schema.
  """
  csv_path = os.fspath(csv_path)
  base = os.path.dirname(os.path.abspath(csv_path))
  columns = {name: (columns or {}).get(name, name) for name in COLUMNS}
  label_map = {**LABELS, **(labels or {})}
  abnormality_map = {**ABNORMALITIES, **(abnormalities or {})}
  with open(csv_path, newline="", encoding="utf-8-sig") as f:
    sample = f.read(8192)
    f.seek(0)
    dialect = _dialect(sample)
    findings = []
    for i, raw in enumerate(csv.DictReader(f, dialect=dialect)):
      row = {name: (raw.get(column) or "").strip() for name, column in columns.items()}
      row["label"] = label_map.get(row["label"].lower(), row["label"])
      row["laterality"] = LATERALITIES.get(row["laterality"].lower(), row["laterality"])
      row["view"] = row["view"].upper()
      row["abnormality"] = _generic_abnormality(row, abnormality_map, default_abnormality)
      for key in ("image_path", "mask_path"):
        row[key] = row[key] and os.path.normpath(os.path.join(base, row[key]))
      findings.append(parse_finding(row, f"{csv_path}:{i + 2}"))
  return findings


def _dialect(sample: str) -> type[csv.Dialect] | csv.Dialect:
  try:
    return csv.Sniffer().sniff(sample, delimiters=",;\t")
  except csv.Error:  # one column, or too little text to tell
    return csv.excel


def _generic_abnormality(row: dict[str, str], mapping: Mapping[str, str], default: str) -> str:
  text = row["abnormality"]
  value = mapping.get(text.lower(), text)
  if value:
    return value
  annotated = row["label"] or row["col"] or row["row"] or row["mask_path"]
  return default if annotated else "none"
