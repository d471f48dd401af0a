"""DICOM results: the map and the SR say what the scores say, where the source's pixels are."""

from __future__ import annotations

import pathlib
import shutil
import subprocess

import highdicom as hd
import numpy as np
import pydicom
import pytest

from input_pipeline import synthetic
from input_pipeline.mammogram import read_mammogram
from mcalc_jax.archives import archive, dicom_results, discovery
from mcalc_jax.whole_image import scoring, tiling
from tests.test_score_cli import rows_of
from tests.test_scoring import PATCH, speck_probabilities

IDENTITY = dicom_results.ModelIdentity("resnet18", "task1-run", "task2-run", "0.1.0", "best", 112)
CLUSTER = (300, 250)  # (row, col) in the stored (original) pixels of the right breast


@pytest.fixture(scope="module")
def right_breast(tmp_path_factory) -> pathlib.Path:
  """A synthetic R CC DICOM (stored chest wall right: read flipped) with one bright cluster."""
  # the unprocessed look: a stamped cluster then outshines every speck of the tissue
  options = synthetic.SyntheticOptions(
    image_size=(600, 450), monochrome1_fraction=0.0, processing="none"
  )
  spec = next(s for s in synthetic.sample_cohort(2, seed=3, options=options) if s.laterality == "R")
  pixels = synthetic.render_image(spec, options).pixels.copy()
  rng = np.random.default_rng(0)
  for dr, dc in rng.integers(-25, 25, size=(14, 2)):
    row, col = CLUSTER[0] + dr, CLUSTER[1] + dc
    pixels[row - 1 : row + 2, col - 1 : col + 2] = synthetic.MAX_VALUE
  path = tmp_path_factory.mktemp("source") / "right.dcm"
  synthetic.write_dicom(str(path), pixels, spec, options, cohort_seed=3)
  return path


def score(path: pathlib.Path, stride: int = PATCH) -> tiling.ImageScores:
  scorer = scoring.Scorer(
    speck_probabilities, task2=speck_probabilities, patch_size=PATCH, stride=stride, batch_size=64
  )
  return scorer.score(read_mammogram(path))


@pytest.fixture(scope="module")
def written(right_breast, tmp_path_factory) -> tuple[tiling.ImageScores, list[pydicom.Dataset]]:
  scores = score(right_breast)
  writer = dicom_results.DicomResults(str(tmp_path_factory.mktemp("dicom")), IDENTITY)
  writer.write("key", pydicom.dcmread(right_breast, stop_before_pixels=True), scores)
  return scores, [pydicom.dcmread(p) for p in writer.paths("key")]


def test_the_map_is_the_average_map_on_the_original_grid_and_overlays_sample_it():
  geometry = tiling.TileGeometry(
    tile_rows=tiling.tile_origins(700, PATCH, 48),
    tile_cols=tiling.tile_origins(500, PATCH, 48),
    patch_size=PATCH,
    stride=48,
    image_shape=(700, 500),
    original_shape=(700, 500),
    flipped=True,
  )
  grid = np.random.default_rng(1).random(geometry.grid_shape).astype(np.float32)
  grid[grid < 0.3] = np.nan

  full = tiling.average_map(grid, geometry)
  expected = np.nan_to_num(np.fliplr(full))
  np.testing.assert_allclose(dicom_results.probability_map(grid, geometry), expected, atol=1e-6)
  np.testing.assert_array_equal(tiling.average_map(grid, geometry, 3), full[::3, ::3])


def test_segmentation_holds_both_maps_and_references_the_source(written, right_breast):
  scores, (seg, _) = written
  source = pydicom.dcmread(right_breast, stop_before_pixels=True)
  # pydicom, not highdicom, reads it back: highdicom's reader wants a SliceThickness that a
  # projection image has not (docs/dicom.md)
  assert seg.SegmentationType == "FRACTIONAL" and len(seg.SegmentSequence) == 2
  assert (seg.StudyInstanceUID, seg.PatientID) == (source.StudyInstanceUID, source.PatientID)
  assert seg.SOPInstanceUID != source.SOPInstanceUID
  [referenced] = seg.ReferencedSeriesSequence[0].ReferencedInstanceSequence
  assert referenced.ReferencedSOPInstanceUID == source.SOPInstanceUID
  maps = seg.pixel_array.astype(np.float32) / seg.MaximumFractionalValue  # [segment, row, col]
  for n, grid in enumerate((scores.task1, scores.task2)):
    expected = dicom_results.probability_map(grid, scores.geometry)
    np.testing.assert_allclose(maps[n], expected, atol=0.5 / 255 + 1e-6)
  assert maps[0][CLUSTER] == 1.0  # the cluster lights up where it is stored, not mirrored
  assert maps[0][CLUSTER[0], source.Columns - 1 - CLUSTER[1]] < 0.5


def test_report_gives_the_score_and_the_hottest_tile_around_the_cluster(written, right_breast):
  scores, (_, sr) = written
  source = pydicom.dcmread(right_breast, stop_before_pixels=True)
  report = hd.sr.ComprehensiveSR.from_dataset(sr)

  evidence = report.CurrentRequestedProcedureEvidenceSequence[0].ReferencedSeriesSequence[0]
  assert evidence.ReferencedSOPSequence[0].ReferencedSOPInstanceUID == source.SOPInstanceUID
  assert report.StudyInstanceUID == source.StudyInstanceUID
  [image] = report.content.get_image_measurement_groups()
  assert image.get_measurements()[0].value == pytest.approx(np.nanmax(scores.task1), abs=1e-6)
  regions = report.content.get_planar_roi_measurement_groups()
  assert 0 < len(regions) <= dicom_results.TOP_REGIONS
  outline = regions[0].roi.value  # (column, row) points of the hottest tile's square
  [selected_from] = regions[0].roi.ContentSequence  # the SCOORD's IMAGE item
  assert selected_from.ReferencedSOPSequence[0].ReferencedSOPInstanceUID == source.SOPInstanceUID
  assert outline[:, 0].min() <= CLUSTER[1] <= outline[:, 0].max()
  assert outline[:, 1].min() <= CLUSTER[0] <= outline[:, 1].max()
  values = [m.value for m in regions[0].get_measurements()]
  assert values[0] == 1.0 and len(values) == 2  # Task 2 scored the hot tile
  items = text_items(report)
  assert {
    "Device Observer Model Name": "resnet18",
    "Device Observer Serial Number": "task1-run",
  }.items() <= items.items()
  assert items["Algorithm Name"] == "mcalc_jax resnet18" and items["Algorithm Version"] == "0.1.0"
  assert "run=task1-run" in items["Algorithm Parameters"]


def text_items(dataset: pydicom.Dataset) -> dict[str, str]:
  """Concept name -> text of every TEXT item of an SR content tree (the first of each name)."""
  found: dict[str, str] = {}
  for item in dataset.get("ContentSequence", []):
    if item.ValueType == "TEXT":
      found.setdefault(item.ConceptNameCodeSequence[0].CodeMeaning, item.TextValue)
    found = text_items(item) | found
  return found


def test_a_rerun_writes_the_same_instances(right_breast, written, tmp_path):
  _, first = written
  writer = dicom_results.DicomResults(str(tmp_path), IDENTITY)
  writer.write("key", pydicom.dcmread(right_breast, stop_before_pixels=True), score(right_breast))

  again = [pydicom.dcmread(p) for p in writer.paths("key")]
  assert [d.SOPInstanceUID for d in again] == [d.SOPInstanceUID for d in first]
  other = dicom_results.ModelIdentity("resnet18", "another-run", version="0.1.0")
  assert other.uid(first[0].SOPInstanceUID, "x") != IDENTITY.uid(first[0].SOPInstanceUID, "x")


@pytest.mark.skipif(shutil.which("dciodvfy") is None, reason="dciodvfy (dicom3tools) absent")
def test_dciodvfy_finds_no_error_in_the_segmentation_and_the_report(written, tmp_path):
  _, datasets = written
  for n, dataset in enumerate(datasets):
    path = tmp_path / f"{n}.dcm"
    dataset.save_as(path)
    checked = subprocess.run(["dciodvfy", str(path)], capture_output=True, text=True, timeout=60)
    lines = (checked.stdout + checked.stderr).splitlines()
    assert lines and not [line for line in lines if line.startswith("Error")], lines


def test_dicom_results_are_off_by_default_and_identifiers_stay_out_of_csvs(right_breast, tmp_path):
  inputs = [discovery.Input("k1", str(right_breast), "site/right.dcm")]
  scorer = scoring.Scorer(speck_probabilities, patch_size=PATCH, batch_size=64)
  archive.score_archive(scorer, inputs, str(tmp_path / "plain"))
  assert not (tmp_path / "plain" / "dicom").exists()

  writer = dicom_results.DicomResults(str(tmp_path / "asked" / "dicom"), IDENTITY)
  archive.score_archive(scorer, inputs, str(tmp_path / "asked"), results=writer)
  assert all(pathlib.Path(p).exists() for p in writer.paths("k1"))
  patient = pydicom.dcmread(right_breast, stop_before_pixels=True).PatientID
  text = "".join(p.read_text() for p in (tmp_path / "asked").glob("*.csv"))
  assert patient not in text and "site" not in text
  assert [r["key"] for r in rows_of(tmp_path / "asked" / "scores.csv")] == ["k1"]
