"""The manifest CSV: what is written reads back, and broken rows say where they are."""

from __future__ import annotations

import pytest

from input_pipeline.manifest import (
  COLUMNS,
  Finding,
  ManifestError,
  parse_finding,
  read_manifest,
  write_manifest,
)


def test_findings_round_trip_with_paths_made_absolute(tmp_path):
  findings = [
    Finding(
      patient_id="7",
      image_path="images/a.png",
      finding_id="a_1",
      abnormality="calcification",
      label="malignant",
      col=12.5,
      row=40.0,
      radius=9.0,
      density="B",
      view="CC",
      laterality="L",
      subtype="pleomorphic",
    ),
    Finding(patient_id="7", image_path="/data/b.dcm"),  # a normal image: abnormality 'none'
  ]
  write_manifest(tmp_path / "manifest.csv", findings)

  read = read_manifest(tmp_path / "manifest.csv")
  assert read[0] == Finding(
    **{**findings[0].__dict__, "image_path": str(tmp_path / "images" / "a.png")}
  )
  assert read[1] == findings[1]
  assert (tmp_path / "manifest.csv").read_text().splitlines()[0] == ",".join(COLUMNS)


@pytest.mark.parametrize(
  "column, text, message",
  [
    ("label", "probably benign", "label"),
    ("abnormality", "lump", "abnormality"),
    ("col", "12,5", "not a number"),
    ("row", "nan", "not finite"),
    ("patient_id", "", "required"),
  ],
)
def test_broken_rows_name_the_file_and_line(tmp_path, column, text, message):
  row = {
    "patient_id": "1",
    "image_path": "x.png",
    "abnormality": "calcification",
    "label": "benign",
    "col": "1",
    "row": "2",
    column: text,
  }
  path = tmp_path / "m.csv"
  path.write_text(",".join(row) + "\n" + ",".join(f'"{v}"' for v in row.values()) + "\n")

  with pytest.raises(ManifestError, match=rf"m\.csv:2: .*{message}"):
    read_manifest(path)


def test_missing_columns_and_files(tmp_path):
  (tmp_path / "m.csv").write_text("image,label\nx.png,benign\n")

  with pytest.raises(ManifestError, match="missing columns"):
    read_manifest(tmp_path / "m.csv")
  with pytest.raises(FileNotFoundError, match="absent.csv"):
    read_manifest(tmp_path / "absent.csv")


def test_parse_finding_validates_rows_from_any_source():
  finding = parse_finding({"patient_id": " 3 ", "image_path": "x.dcm", "radius": "4"}, "here")

  assert finding == Finding(patient_id="3", image_path="x.dcm", radius=4.0)


def test_spreadsheet_exports_read_as_the_schema(tmp_path):
  excel = "\ufeffPatient ID;Image Path;Radius\r\n7;a.png;9\r\n".encode()  # BOM, semicolons, CRLF
  (tmp_path / "excel.csv").write_bytes(excel)

  [finding] = read_manifest(tmp_path / "excel.csv")
  assert (finding.patient_id, finding.radius) == ("7", 9.0)
  assert finding.image_path == str(tmp_path / "a.png")


@pytest.mark.parametrize(
  "content, message",
  [
    (b"patient_id,image_path,pixel_spacing_mm\n7,a.png,1000\n", r"m\.csv:2: .*1000, outside"),
    (b"patient_id,image_path,pixel_spacing_mm\n7,a.png,-0.2\n", r"m\.csv:2: .*-0.2, outside"),
    (b"patient_id,image_path,col,row,radius\n7,a.png,1,2,1e15\n", r"m\.csv:2: .*'radius'"),
    ("patient_id,image_path\n7,caf\xe9.png\n".encode("latin-1"), r"m\.csv:2: not UTF-8"),
    (b"patient_id,image_path\n7," + b"x" * 200_000 + b"\n", r"m\.csv:2: not CSV"),
    (
      b"patient|image\n7|a.png\n",
      r"m\.csv:1: missing columns .* \(the header is \['patient\|image'\]",
    ),
  ],
)
def test_values_outside_physics_and_unreadable_text_name_the_line(tmp_path, content, message):
  (tmp_path / "m.csv").write_bytes(content)

  with pytest.raises(ManifestError, match=message):
    read_manifest(tmp_path / "m.csv")
