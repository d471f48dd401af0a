"""Importers: mini-MIAS Info.txt, CBIS-DDSM case tables and users' spreadsheets."""

from __future__ import annotations

import collections

import numpy as np
import pytest
from conftest import shared_dataset
from PIL import Image
from test_mammogram import phantom, write_dicom

from input_pipeline.importers import import_cbis_ddsm, import_generic, import_mias
from input_pipeline.manifest import Finding, ManifestError, read_manifest, write_manifest

# --- mini-MIAS -------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def mias_findings():
  return import_mias(shared_dataset("mias"))  # ~1 s: the breast mask of each annotated image


def test_mias_has_18_usable_calcification_clusters_and_2_off_the_breast(mias_findings):
  calcs = [f for f in mias_findings if f.abnormality == "calcification"]
  usable = [f for f in calcs if not f.note]
  flagged = [f for f in calcs if f.note == "annotation_outside_breast"]  # found by the mask

  assert collections.Counter(f.label for f in usable) == {"benign": 9, "malignant": 9}
  assert sorted(f.finding_id for f in flagged) == ["mdb212_1", "mdb214_1"]
  assert len(calcs) == 20


def test_mias_rows_follow_the_readme_conventions(mias_findings):
  by_id = {f.finding_id: f for f in mias_findings}
  mdb211 = by_id["mdb211_1"]  # "mdb211 G CALC M 680 327 13", origin bottom-left

  assert (mdb211.col, mdb211.row, mdb211.radius) == (680, 1024 - 327, 13)
  assert (mdb211.patient_id, mdb211.laterality, mdb211.view) == ("106", "R", "MLO")
  assert (mdb211.label, mdb211.density, mdb211.subtype) == ("malignant", "fatty-glandular", "CALC")
  assert sum(f.abnormality == "none" for f in mias_findings) == 138
  assert {f.finding_id for f in mias_findings if f.image_path.endswith("mdb226.png")} == {
    "mdb226_1",
    "mdb226_2",
    "mdb226_3",
  }


def test_every_mias_centre_lies_inside_its_image(mias_findings):
  for f in mias_findings:
    if f.row is not None:
      assert 0 <= f.row < 1024 and 0 <= f.col < 1024, f.finding_id


def test_mias_rows_without_coordinates_are_kept_with_a_note(tmp_path):
  for name in ("mdb001", "mdb002"):
    Image.fromarray((phantom((128, 128)) >> 4).astype(np.uint8)).save(tmp_path / f"{name}.png")
  (tmp_path / "Info.txt").write_text(
    "free header text\n"
    "mdb001 G CALC B *NOTE 3*\n"
    "mdb001 G CIRC M\n"
    "mdb002 D NORM \n"
    "mdb003 F NORM\n"  # its image is not here: skipped
    "=====\n"
  )

  findings = import_mias(tmp_path)
  assert [(f.finding_id, f.abnormality, f.label, f.note) for f in findings] == [
    ("mdb001_1", "calcification", "benign", "diffuse_calcification_no_coordinates"),
    ("mdb001_2", "mass", "malignant", "no_coordinates"),
    ("", "none", "", ""),
  ]


def test_mias_findings_write_a_manifest(mias_findings, tmp_path):
  write_manifest(tmp_path / "mias.csv", mias_findings)

  assert read_manifest(tmp_path / "mias.csv") == mias_findings


# --- CBIS-DDSM -------------------------------------------------------------------------------


@pytest.mark.parametrize(
  "table, counts",
  [
    ("calc_case_description_train_set.csv", {"malignant": 544, "benign": 528 + 474}),
    ("calc_case_description_test_set.csv", {"malignant": 129, "benign": 130 + 67}),
  ],
)
def test_official_calc_tables_parse_every_row(cbis_dir, table, counts):
  findings = import_cbis_ddsm(cbis_dir / "metadata" / table, image_root=cbis_dir / "absent")

  assert collections.Counter(f.label for f in findings) == counts
  assert {f.abnormality for f in findings} == {"calcification"}
  assert {f.density for f in findings} <= {"0", "1", "2", "3", "4"}
  assert all("\n" not in f.mask_path and f.mask_path.endswith(".dcm") for f in findings)
  assert all(f.row is None for f in findings)  # no masks here: no centres
  without_callback = [f for f in findings if f.note == "benign_without_callback"]
  assert len(without_callback) == counts["benign"] - (528 if "train" in table else 130)


def test_case_description_next_to_flat_dicoms(cbis_dir):
  findings = import_cbis_ddsm(cbis_dir)  # a folder: its *case_description*.csv

  assert [(f.laterality, f.view, f.label) for f in findings] == [
    ("L", "CC", "malignant"),
    ("L", "MLO", "malignant"),
    ("R", "CC", "benign"),
    ("R", "MLO", "benign"),
  ]
  assert all(
    f.image_path.startswith(str(cbis_dir)) and f.image_path.endswith(f"_{f.view}.dcm")
    for f in findings
  )  # table paths resolved to the renamed files


def write_cbis_case(root, image, mask, crop):
  """A 64x48 mammogram, its ROI mask (rows 20-30, cols 10-14) and crop, and a case table whose
  mask and crop columns are swapped, with the official file's CRLF and quoted newlines."""
  full = phantom((64, 48))
  roi = np.zeros_like(full)
  roi[20:31, 10:15] = 255
  write_dicom(root / image, full)
  write_dicom(root / mask, roi, Modality="OT")
  write_dicom(root / crop, full[20:31, 8:17], Modality="OT")
  table = root / "calc_case_description_test_set.csv"
  table.write_bytes(
    b"patient_id,breast_density,left or right breast,image view,abnormality id,"
    b"abnormality type,calc type,calc distribution,assessment,pathology,subtlety,"
    b"image file path,cropped image file path,ROI mask file path\r\n"
    b"P_1,2,LEFT,CC,1,calcification,AMORPHOUS,CLUSTERED,4,BENIGN_WITHOUT_CALLBACK,3,"
    b'Calc-Test_P_1_LEFT_CC/1.2/000000.dcm,"Calc-Test_P_1_LEFT_CC_1/1.3/000000.dcm\n",'
    b'"Calc-Test_P_1_LEFT_CC_1/1.3/000001.dcm\n"\r\n'
  )
  return table


@pytest.mark.parametrize(
  "image, mask, crop",
  [
    # as the table says, but the crop sits under the mask column
    (
      "Calc-Test_P_1_LEFT_CC/1.2/000000.dcm",
      "Calc-Test_P_1_LEFT_CC_1/1.3/000000.dcm",
      "Calc-Test_P_1_LEFT_CC_1/1.3/000001.dcm",
    ),
    # a TCIA download: same top folders, renamed series folders and files
    (
      "Calc-Test_P_1_LEFT_CC/08-07-2016-DDSM-NA/1.000000-full mammogram images-1/1-1.dcm",
      "Calc-Test_P_1_LEFT_CC_1/08-07-2016-DDSM-NA/1.000000-ROI mask images-2/1-2.dcm",
      "Calc-Test_P_1_LEFT_CC_1/08-07-2016-DDSM-NA/1.000000-cropped images-3/1-1.dcm",
    ),
  ],
)
def test_mask_is_found_by_size_whatever_the_columns_and_layout(tmp_path, image, mask, crop):
  [finding] = import_cbis_ddsm(write_cbis_case(tmp_path, image, mask, crop))

  assert finding.image_path == str(tmp_path / image)
  assert finding.mask_path == str(tmp_path / mask)
  assert (finding.row, finding.col) == (25, 12)  # the ROI's centroid, original pixels
  assert finding.radius == pytest.approx(np.hypot(5, 2), abs=0.01)
  assert (finding.label, finding.note, finding.density, finding.subtype) == (
    "benign",
    "benign_without_callback",
    "2",
    "AMORPHOUS",
  )


def test_not_a_case_table(tmp_path):
  (tmp_path / "other.csv").write_text("patient_id,label\n1,benign\n")

  with pytest.raises(ValueError, match="missing"):
    import_cbis_ddsm(tmp_path / "other.csv")


# --- users' spreadsheets ---------------------------------------------------------------------


def test_generic_spreadsheet_with_its_own_column_names(tmp_path):
  (tmp_path / "export.csv").write_text(
    "\ufeffPatient;File;Histology;X;Y;Side\n"  # an Excel export: BOM and semicolons
    "A1;scans/a1.dcm;M;120;340;LEFT\n"
    "A2;scans/a2.dcm;;;;R\n"
  )
  columns = {
    "patient_id": "Patient",
    "image_path": "File",
    "label": "Histology",
    "col": "X",
    "row": "Y",
    "laterality": "Side",
  }

  a1, a2 = import_generic(tmp_path / "export.csv", columns)
  assert a1 == Finding(
    patient_id="A1",
    image_path=str(tmp_path / "scans" / "a1.dcm"),
    abnormality="calcification",
    label="malignant",
    col=120,
    row=340,
    laterality="L",
  )
  assert (a2.abnormality, a2.label, a2.laterality) == ("none", "", "R")


def test_generic_label_spellings_and_errors(tmp_path):
  path = tmp_path / "f.csv"
  path.write_text("patient_id,image_path,label\n1,a.png,ductal carcinoma\n2,b.png,unknown\n")

  with pytest.raises(ManifestError, match=r"f\.csv:3: label 'unknown'"):
    import_generic(path, labels={"ductal carcinoma": "malignant"})
