"""CAD marks in `mcalc-score` and `mcalc-froc`: marks.csv in original pixels (flipped images
too), one row per mark after a killed run, the reported marks in the SR, the marks' FROC on real
mini-MIAS clusters, and the `in_domain` column."""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import os
import pathlib
import shutil
import subprocess
import sys

import highdicom as hd
import jax
import numpy as np
import pydicom
import pytest
from PIL import Image

from input_pipeline import manifest
from input_pipeline.importers import import_mias
from input_pipeline.mammogram import read_mammogram, spacing_options
from mcalc_jax.archives import archive, dicom_results, discovery, domain, output_folder, scored
from mcalc_jax.base import csvlog, parallel
from mcalc_jax.configs import default
from mcalc_jax.model import speck_detector
from mcalc_jax.whole_image import froc, image_reading, marks, reranking, specks
from tests.conftest import shared_dataset
from tests.test_dicom_results import CLUSTER, IDENTITY, right_breast  # noqa: F401 (a fixture)
from tests.test_score_cli import checkpoint, rows_of, speck_scorer  # noqa: F401
from tests.test_scoring import synthetic_mammogram
from tests.test_speck_detector import TINY, passing_cnr

REPO = pathlib.Path(__file__).resolve().parents[1]
MIAS = ("mdb219", "mdb241", "mdb220", "mdb242")  # two right breasts with a cluster, two normal
# What the mcalc recipe's MIAS run records: 11.2-mm tiles seen at 56 pixels (0.2 mm), film.
MIAS_DOMAIN = domain.TrainingDomain("mcalc_patches/mias_11p2mm", "film", 0.2)


def by_specks(threshold: float = 0.5) -> marks.ClusterClassifier:
  """A hand-built classifier: P = sigmoid(specks - 3), reported from `threshold`."""
  model = reranking.TileReranker(("specks",), np.ones(1), -3.0, np.zeros(1), np.ones(1))
  return marks.ClusterClassifier(model, operating_point=marks.OperatingPoint(threshold))


def marking(classifier: marks.ClusterClassifier, domain=None) -> archive.MarkOptions:
  return archive.MarkOptions(classifier, domain)


@pytest.fixture(scope="module")
def mias(tmp_path_factory) -> dict:
  """Four real mini-MIAS films scored from a manifest with marks by a cluster classifier fitted
  on their own marks: the folder, the manifest, the classifier and the findings."""
  mias_dir = shared_dataset("mias")
  findings = [
    f for f in import_mias(mias_dir, check_breast=False) if any(r in f.image_path for r in MIAS)
  ]
  images = []
  for ref in MIAS:
    found = [f for f in findings if ref in f.image_path]
    mammogram = read_mammogram(found[0].image_path, spacing_options(found[0].pixel_spacing_mm))
    own = marks.mark_image(specks.mammogram_speck_map(mammogram), ref)
    images.append(marks.MarkedImage(ref, ref, ref, tuple(own), froc.clusters_of(found), 0.2))
  classifier = marks.fit_classifier(images)
  root = tmp_path_factory.mktemp("mias")
  manifest.write_manifest(root / "manifest.csv", findings)
  reranking.save(root / "classifier.json", classifier)
  inputs = discovery.find_inputs(str(root / "manifest.csv"))
  archive.score_archive(
    speck_scorer(), inputs, str(root / "scores"), marking=marking(classifier, MIAS_DOMAIN)
  )
  return {"root": root, "classifier": classifier, "findings": findings, "inputs": inputs}


def test_every_mark_of_a_real_flipped_film_lands_in_its_original_pixels(mias):
  output = mias["root"] / "scores"
  rows = rows_of(output / "marks.csv")
  keys = {i.key: pathlib.Path(i.path).stem for i in mias["inputs"]}
  assert {keys[r["key"]] for r in rows} == set(MIAS)
  assert len({r["mark"] for r in rows}) == len(rows)
  for ref, finding in (("mdb219", (268, 546, 29)), ("mdb241", (346, 453, 38))):
    assert read_mammogram(
      next(f.image_path for f in mias["findings"] if ref in f.image_path)
    ).flipped
    near = [r for r in rows if keys[r["key"]] == ref and on(r, *finding)]
    assert len(near) == 1, f"{ref}: no mark on the cluster in the original file's pixels"
  threshold = mias["classifier"].operating_point.threshold
  for score in rows_of(output / "scores.csv"):
    reported = [r for r in rows if r["key"] == score["key"] and float(r["task1"]) >= threshold]
    assert (
      int(score["marks_reported"])
      == len(reported)
      == sum(int(r["reported"]) for r in rows if r["key"] == score["key"])
    )
    assert score["in_domain"] == "unknown"
    assert score["domain_reason"] == "film or digital: a PNG or PGM does not say"
  settings = json.loads((output / output_folder.SETTINGS_FILE).read_text())
  assert settings["mark_threshold"] == threshold


def test_the_overlays_box_the_reported_marks_only(mias):
  output = mias["root"] / "scores"
  scores = rows_of(output / "scores.csv")
  assert {int(s["marks_reported"]) > 0 for s in scores} == {True, False}
  for score in scores:
    with Image.open(output / f"{score['key']}.png") as png:
      rgb = np.asarray(png.convert("RGB"), np.int32)
    magenta = (rgb[..., 0] - rgb[..., 1] > 100) & (rgb[..., 2] - rgb[..., 1] > 100)
    assert magenta.any() == (int(score["marks_reported"]) > 0), score["key"]
    assert max(rgb.shape) < 2500


def on(row: dict[str, str], cluster_row: float, cluster_col: float, radius: float) -> bool:
  """Whether a marks.csv row's centre lies within an annotated circle (original pixels)."""
  return np.hypot(float(row["row"]) - cluster_row, float(row["col"]) - cluster_col) <= radius


def flipped_png(path: pathlib.Path, at: list[tuple[int, int]]) -> None:
  """A 12-bit breast stored on the RIGHT (read flipped) with a 3 x 3 speck at each original
  (row, col)."""
  pixels = np.fliplr(synthetic_mammogram((600, 450), clusters=[], seed=1).pixels).copy()
  for row, col in at:
    pixels[row - 1 : row + 2, col - 1 : col + 2] = 3900
  path.parent.mkdir(parents=True, exist_ok=True)
  Image.fromarray(pixels).save(path)


def test_a_marks_centre_and_box_are_the_specks_in_the_original_file(tmp_path):
  at = [(300, 300), (300, 330), (330, 300)]  # 2.1 mm apart at the PNG's assumed 0.07 mm
  flipped_png(tmp_path / "in" / "right.png", at)
  inputs = discovery.find_inputs(str(tmp_path / "in"))
  archive.score_archive(speck_scorer(), inputs, str(tmp_path / "out"), marking=marking(by_specks()))

  assert read_mammogram(inputs[0].path).flipped
  [mark] = [r for r in rows_of(tmp_path / "out" / "marks.csv") if int(r["specks"]) == 3]
  centre = np.mean(at, 0)
  # the speck map is at 0.2 mm (specks.MAP_PIXEL_MM): within half its pixel, 1.4 of the PNG's
  assert (float(mark["row"]), float(mark["col"])) == pytest.approx(centre, abs=1.5)
  box = [float(mark[k]) for k in ("top", "left", "bottom", "right")]
  assert box == pytest.approx([300, 300, 330, 330], abs=1.5)
  assert mark["task1"] == "0.500000" and mark["reported"] == "1" and mark["task2"] == "nan"
  assert mark["mark"] == f"{mark['key']}:{mark['cluster_id']}"


def test_marks_by_a_trained_detector_record_its_parameters_and_a_changed_one_refuses(tmp_path):
  at = [(300, 300), (300, 330), (330, 300)]
  flipped_png(tmp_path / "in" / "right.png", at)
  inputs = discovery.find_inputs(str(tmp_path / "in"))
  folder = tmp_path / "run" / "speck_detector"
  speck_detector.save(folder, passing_cnr(speck_detector.create(TINY)))
  rule = specks.SpeckRule(threshold=0.5)  # a probability on the detector's map
  trained = dataclasses.replace(by_specks(), speck_rule=rule, detector=str(folder))
  output = str(tmp_path / "out")
  archive.score_archive(speck_scorer(), inputs, output, marking=marking(trained))

  [mark] = [r for r in rows_of(tmp_path / "out" / "marks.csv") if int(r["specks"]) == 3]
  assert (float(mark["row"]), float(mark["col"])) == pytest.approx(np.mean(at, 0), abs=1.5)
  settings = json.loads((tmp_path / "out" / output_folder.SETTINGS_FILE).read_text())
  params = (folder / speck_detector.PARAMS_FILE).read_bytes()
  assert settings["mark_detector_sha256"] == hashlib.sha256(params).hexdigest()
  detector = speck_detector.load(folder)
  for changed in (speck_detector.calibrated(detector, 0.5), speck_detector.create(TINY)):
    speck_detector.save(folder, changed)  # recalibrated, then retrained, in the same folder
    with pytest.raises(output_folder.OutputFolderError, match="mark_detector_sha256="):
      archive.score_archive(speck_scorer(), inputs, output, marking=marking(trained))


def score_and_die(folder: str, output: str) -> None:
  """A run of the kill test, in its own process: it dies (as by kill -9) when it is about to
  write the second image's scores row, after that image's marks rows."""
  append, rows = csvlog.CsvLog.append, []

  def dies_at_the_second_scores_row(log, row):
    if log._path.endswith("scores.csv"):
      rows.append(row)
      if len(rows) == 2:
        os._exit(137)
    append(log, row)

  csvlog.CsvLog.append = dies_at_the_second_scores_row
  inputs = discovery.find_inputs(folder)
  archive.score_archive(speck_scorer(), inputs, output, marking=marking(by_specks()))


def test_a_run_killed_between_an_images_marks_and_its_row_resumes_to_one_row_per_mark(tmp_path):
  for n in range(3):
    flipped_png(tmp_path / "in" / f"{n}.png", [(300 + 10 * n, 300), (300, 330), (330, 300)])
  inputs = discovery.find_inputs(str(tmp_path / "in"))
  archive.score_archive(
    speck_scorer(), inputs, str(tmp_path / "whole"), marking=marking(by_specks())
  )
  output = tmp_path / "killed"
  code = "from tests.test_archive_marks import score_and_die as s; "
  code += f"s({str(tmp_path / 'in')!r}, {str(output)!r})"
  killed = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, timeout=300)
  assert killed.returncode == 137, killed.stderr[-2000:]
  with open(output / "marks.csv", "a") as f:
    f.write(f"{inputs[2].key}:0,{inputs[2].key},0,30")  # and a row torn by a kill
  assert [r["key"] for r in rows_of(output / "scores.csv")] == [inputs[0].key]
  assert [r for r in rows_of(output / "marks.csv") if r["key"] == inputs[1].key], (
    "the second image's marks are written before its row"
  )

  archive.score_archive(speck_scorer(), inputs, str(output), marking=marking(by_specks()))
  assert (output / "marks.csv").read_text() == (tmp_path / "whole" / "marks.csv").read_text()
  assert [r["key"] for r in rows_of(output / "scores.csv")] == [i.key for i in inputs]


def test_a_resume_with_another_mark_classifier_refuses_and_writes_nothing(tmp_path):
  flipped_png(tmp_path / "in" / "a.png", [(300, 300), (300, 330), (330, 300)])
  inputs = discovery.find_inputs(str(tmp_path / "in"))
  output = str(tmp_path / "out")
  archive.score_archive(speck_scorer(), inputs, output, marking=marking(by_specks()))
  before = (tmp_path / "out" / "marks.csv").read_text()

  refused = pytest.raises(output_folder.OutputFolderError, match="mark_classifier_sha256=")
  with refused:
    archive.score_archive(speck_scorer(), inputs, output, marking=marking(by_specks(0.9)))
  with refused:
    archive.score_archive(speck_scorer(), inputs, output)  # no classifier is another one too
  assert (tmp_path / "out" / "marks.csv").read_text() == before


def test_the_reports_scoords_are_the_reported_marks_and_dciodvfy_passes(right_breast, tmp_path):  # noqa: F811
  inputs = [discovery.Input("k1", str(right_breast), "site/right.dcm")]
  writer = dicom_results.DicomResults(str(tmp_path / "out" / "dicom"), IDENTITY)
  options = marking(by_specks(0.9))  # 14 specks: P = 0.99998
  archive.score_archive(
    speck_scorer(), inputs, str(tmp_path / "out"), results=writer, marking=options
  )

  [mark] = [r for r in rows_of(tmp_path / "out" / "marks.csv") if r["reported"] == "1"]
  assert abs(float(mark["row"]) - CLUSTER[0]) < 5 and abs(float(mark["col"]) - CLUSTER[1]) < 5
  sr = hd.sr.ComprehensiveSR.from_dataset(pydicom.dcmread(writer.paths("k1")[1]))
  groups = sr.content.get_planar_roi_measurement_groups(graphic_type=hd.sr.GraphicTypeValues.POINT)
  [group] = groups
  [point] = group.roi.value  # (column, row): the centre of pixel (r, c) is (c + 0.5, r + 0.5)
  assert point == pytest.approx([float(mark["col"]) + 0.5, float(mark["row"]) + 0.5], abs=0.06)
  [selected_from] = group.roi.ContentSequence
  source = pydicom.dcmread(right_breast, stop_before_pixels=True)
  assert selected_from.ReferencedSOPSequence[0].ReferencedSOPInstanceUID == source.SOPInstanceUID
  [probability] = group.get_measurements()
  assert probability.value == pytest.approx(float(mark["task1"]), abs=1e-6)
  if shutil.which("dciodvfy") is None:
    pytest.skip("dciodvfy (dicom3tools) absent: the SR's SCOORDs are checked, its IOD is not")
  checked = subprocess.run(
    ["dciodvfy", writer.paths("k1")[1]], capture_output=True, text=True, timeout=60
  )
  lines = (checked.stdout + checked.stderr).splitlines()
  assert lines and not [line for line in lines if line.startswith("Error")], lines


def test_mcalc_froc_writes_the_marks_froc_with_the_hand_checked_hits(mias, tmp_path):
  root = mias["root"]
  command = [sys.executable, "-m", "mcalc_jax.cli.froc", f"--scores={root / 'scores'}"]
  command += [
    f"--manifest={root / 'manifest.csv'}",
    f"--output={tmp_path}",
    "--bootstrap_resamples=20",
  ]
  result = subprocess.run(command, capture_output=True, text=True, timeout=300, cwd=REPO)
  assert result.returncode == 0, result.stderr[-2000:]

  folder = tmp_path / "froc_marks"
  assert sorted(p.name for p in folder.iterdir()) == [
    "clusters.csv",
    "froc.csv",
    "froc.json",
    "froc.png",
    "images.csv",
  ]
  evaluation = json.loads((folder / "froc.json").read_text())
  rows = rows_of(root / "scores" / "marks.csv")
  keys = {i.key: pathlib.Path(i.path).stem for i in mias["inputs"]}
  # By hand: each cluster is found at the best mark whose centre lies inside its circle.
  expected = {
    ref: max(float(r["task1"]) for r in rows if keys[r["key"]] == ref and on(r, *circle))
    for ref, circle in (("mdb219", (268, 546, 29)), ("mdb241", (346, 453, 38)))
  }
  found = {keys[c["image"]]: c for c in evaluation["clusters"]}
  assert {ref: found[ref]["found_at_score"] for ref in expected} == pytest.approx(
    expected, abs=1e-6
  )
  assert evaluation["counts"]["false_positive_regions"] == len(rows) - 2
  assert evaluation["counts"]["images"] == 4 and evaluation["hit_rule"] == marks.HIT_RULE
  pseudonyms = [row["patient_id"] for row in evaluation["clusters"] + evaluation["images"]]
  assert all(p.startswith("patient-") for p in pseudonyms)
  printed = json.loads(result.stdout)
  assert printed["marks"]["metrics"] == evaluation["metrics"] and "metrics" in printed
  # the marks and the tiles read together: each image's two scores, summed as logits
  together = scored.read_images(tmp_path / scored.READING_FOLDER)
  tile_rows, mark_rows = scored.read_images(tmp_path), scored.read_images(folder)
  assert [row["image"] for row in together] == [row["image"] for row in tile_rows]
  assert [float(row["score"]) for row in together] == pytest.approx(
    [row["score"] for row in image_reading.combined(tile_rows, mark_rows)]
  )
  assert all(row["patient_id"].startswith("patient-") for row in together)
  assert printed["image_reading"]["metrics"]["image_auc"] is not None


def test_in_domain_says_what_the_image_and_the_run_record(openrem_dir, cbis_dir):
  config = default.get_config("model=specknet")
  config.field_of_view_mm = 11.2  # what the trained run records (the dataset's)
  recorded = domain.TrainingDomain.of_config(config)
  assert (recorded.dataset, recorded.kind) == (MIAS_DOMAIN.dataset, "film")
  assert recorded.pixel_mm == pytest.approx(0.2)
  film = dataclasses.replace(
    synthetic_mammogram(), pixel_spacing_mm=(0.2, 0.2), spacing_assumed=False
  )
  headers = {
    name: pydicom.dcmread(path, stop_before_pixels=True)
    for name, path in (
      ("digital", openrem_dir / "MG-Im-GE_Seno_1_ForPresentation.dcm"),
      ("raw", openrem_dir / "MG-Im-GE_Seno_1_ForProcessing.dcm"),
      ("scanned", cbis_dir / "Mass-Test_P_00820_LEFT_CC.dcm"),
    )
  }
  assert MIAS_DOMAIN.check(film, headers["digital"]) == (
    "no",
    "a digital image; the run learned from film (mcalc_patches/mias_11p2mm)",
  )
  assert MIAS_DOMAIN.check(film, headers["raw"])[1].startswith(
    "raw detector pixels (FOR PROCESSING)"
  )
  assert MIAS_DOMAIN.check(film, headers["scanned"]) == (
    "unknown",
    "film or digital: its DICOM header does not say",
  )
  headers["scanned"].ConversionType = "DF"
  assert MIAS_DOMAIN.check(film, headers["scanned"]) == ("yes", "")
  fine = dataclasses.replace(film, pixel_spacing_mm=(0.07, 0.07))  # resampled to 0.2 mm
  assert MIAS_DOMAIN.check(fine, headers["scanned"]) == ("yes", "")
  ffdm = dataclasses.replace(film, pixel_spacing_mm=(0.5, 0.5))
  assert MIAS_DOMAIN.check(ffdm, headers["scanned"]) == (
    "no",
    "0.5-mm pixels; the network sees 0.2 mm",
  )
  paper = default.get_config("model=resnet18,recipe=paper")
  paper.field_of_view_mm = 0.0  # native pixels, of a size config.json does not hold
  native = domain.TrainingDomain.of_config(paper)
  assert native.pixel_mm == 0 and native.check(film, headers["scanned"]) == (
    "unknown",
    "pixel size: the run learned native pixels of a size it does not record",
  )


def test_images_outside_the_domain_are_marked_and_warned_about_once(tmp_path, caplog):
  findings = []
  for n in range(2):
    flipped_png(tmp_path / "in" / f"{n}.png", [(300, 300)])
    findings.append(manifest.Finding(f"p{n}", f"{n}.png", pixel_spacing_mm=0.5))
  manifest.write_manifest(tmp_path / "in" / "manifest.csv", findings)
  inputs = discovery.find_inputs(str(tmp_path / "in" / "manifest.csv"))
  options = archive.MarkOptions(domain=MIAS_DOMAIN)
  with caplog.at_level(logging.WARNING):
    archive.score_archive(speck_scorer(), inputs, str(tmp_path / "out"), marking=options)

  rows = rows_of(tmp_path / "out" / "scores.csv")
  assert [r["in_domain"] for r in rows] == ["no", "no"] and rows[0]["marks_reported"] == ""
  assert rows[0]["domain_reason"] == "0.5-mm pixels; the network sees 0.2 mm"
  warned = [r for r in caplog.records if "outside what the model was trained on" in r.getMessage()]
  assert len(warned) == 1
  assert not (tmp_path / "out" / "marks.csv").exists()


def test_mcalc_score_records_the_mark_classifier_and_refuses_another(
  tmp_path,
  checkpoint,  # noqa: F811 (a fixture)
  mias_dir,
):
  findings = [f for f in import_mias(mias_dir, check_breast=False) if "mdb219" in f.image_path]
  manifest.write_manifest(tmp_path / "manifest.csv", findings)
  for name, threshold in (("a.json", 0.5), ("b.json", 0.9)):
    reranking.save(tmp_path / name, by_specks(threshold))
  args = [f"--workdir={checkpoint}", f"--input={tmp_path / 'manifest.csv'}"]
  args += [f"--output={tmp_path / 'out'}", "--nooverlays"]

  def mcalc_score(classifier: str) -> subprocess.CompletedProcess:
    command = [
      sys.executable,
      "-m",
      "mcalc_jax.cli.score",
      *args,
      f"--mark_classifier={classifier}",
    ]
    return subprocess.run(command, cwd=REPO, capture_output=True, text=True, timeout=300)

  first = mcalc_score(str(tmp_path / "a.json"))
  assert first.returncode == 0, first.stderr[-2000:]
  settings = json.loads((tmp_path / "out" / output_folder.SETTINGS_FILE).read_text())
  digest = hashlib.sha256((tmp_path / "a.json").read_bytes()).hexdigest()
  assert settings["mark_classifier"] == str((tmp_path / "a.json").resolve())
  assert (settings["mark_classifier_sha256"], settings["mark_threshold"]) == (digest, 0.5)
  [score] = rows_of(tmp_path / "out" / "scores.csv")
  assert int(score["marks_reported"]) >= 1 and score["in_domain"] == "unknown"
  assert "native pixels" in score["domain_reason"]  # the run records 0 mm: native pixels

  refused = mcalc_score(str(tmp_path / "b.json"))
  assert refused.returncode == 1
  last = refused.stderr.strip().splitlines()[-1]
  assert "settings.json: this output was scored with mark_classifier=" in last, last


def test_two_processes_marks_merge_into_the_one_process_marks(tmp_path, monkeypatch):
  for n in range(3):
    flipped_png(tmp_path / "in" / f"{n}.png", [(300 + 10 * n, 300), (300, 330), (330, 300)])
  inputs = discovery.find_inputs(str(tmp_path / "in"))
  options = marking(by_specks())
  archive.score_archive(speck_scorer(), inputs, str(tmp_path / "one"), marking=options)
  monkeypatch.setattr(parallel, "barrier", lambda name: None)
  monkeypatch.setattr(jax, "process_count", lambda: 2)
  for index in (1, 0):  # process 0 last, as the barrier makes it
    monkeypatch.setattr(jax, "process_index", lambda index=index: index)
    archive.score_archive(speck_scorer(), inputs, str(tmp_path / "two"), marking=options)

  assert (tmp_path / "two" / "marks.1-of-2.csv").exists()
  one, two = ((tmp_path / f / "marks.csv").read_text() for f in ("one", "two"))
  assert two == one and len(one.splitlines()) > 3
