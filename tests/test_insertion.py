"""Calcification clusters inserted into real mammograms: physical units, placement, labels."""

from __future__ import annotations

import csv
import dataclasses
import json
import math
import os

import numpy as np
import pytest
from conftest import shared_dataset
from scipy import ndimage

from input_pipeline import breast, importers, insertion, manifest, synthetic
from input_pipeline.mammogram import Mammogram, read_mammogram, spacing_options

OPTIONS = insertion.InsertionOptions.for_format("film", clusters_per_image=(2, 2))


@pytest.fixture(scope="module")
def mias_findings() -> list[manifest.Finding]:
  return importers.import_mias(shared_dataset("mias"))  # ~2 s


def first_image(findings, abnormality: str) -> list[manifest.Finding]:
  """The findings of the first image whose findings include `abnormality`."""
  path = next(f.image_path for f in findings if f.abnormality == abnormality)
  return [f for f in findings if f.image_path == path]


def read(findings) -> Mammogram:
  return read_mammogram(findings[0].image_path, spacing_options(findings[0].pixel_spacing_mm))


def phantom(spacing_mm: float, size_mm: float = 60.0) -> Mammogram:
  """A breast-like 16-bit image: a half disc of smooth texture at the left, chest wall left.

  Built at 0.1 mm and block-averaged for coarser spacings, so twins show the same tissue.
  """
  n = round(size_mm / 0.1)
  rng = np.random.default_rng(0)
  rows, cols = np.indices((n, n)) * 0.1
  disc = np.hypot(rows - size_mm / 2, cols) < 0.45 * size_mm
  texture = ndimage.gaussian_filter(rng.standard_normal((n, n)), 20)
  pixels = np.where(disc, 20000 + 3000 * texture / texture.std(), 0.0)
  factor = round(spacing_mm / 0.1)
  if factor > 1:
    pixels = pixels.reshape(n // factor, factor, n // factor, factor).mean(axis=(1, 3))
  pixels = np.rint(pixels).astype(np.uint16)
  return Mammogram(
    pixels, 65535, 16, (spacing_mm, spacing_mm), False, "L", "CC", False, pixels.shape, "phantom"
  )


# --- determinism ---------------------------------------------------------------------------


def test_the_same_seed_gives_identical_pixels_and_labels_and_another_seed_does_not(mias_findings):
  findings = first_image(mias_findings, "none")
  m = read(findings)
  first = insertion.insert_clusters(m, findings, seed=3, options=OPTIONS)
  again = insertion.insert_clusters(m, findings, seed=3, options=OPTIONS)
  other = insertion.insert_clusters(m, findings, seed=4, options=OPTIONS)
  assert len(first.clusters) == 2 and first.specks
  np.testing.assert_array_equal(first.pixels, again.pixels)
  np.testing.assert_array_equal(first.cluster_map, again.cluster_map)
  assert (first.clusters, first.specks) == (again.clusters, again.specks)
  assert not np.array_equal(first.pixels, other.pixels)
  assert first.clusters != other.clusters


# --- physical units ------------------------------------------------------------------------

SPECK = synthetic.Speck((0.0, 0.0, 0.0), (1.0, 0.0, 0.0), 0.5, 0.5, 1.0)  # a 0.5-mm sphere


@pytest.mark.parametrize("psf_sigma_mm", [0.0, 0.1])
def test_a_half_millimetre_speck_covers_the_same_millimetres_at_100_and_200_um(psf_sigma_mm):
  measured = {}
  for spacing in (0.1, 0.2):
    _, _, stamp = insertion.render_speck(20.3, 20.6, (1.0, 0.0), SPECK, spacing, psf_sigma_mm)
    calcium_mm3 = stamp.sum() * spacing**2  # path (mm) integrated over the image's mm^2
    # The stamp's own spread in mm: the speck's, the PSF's and the pixel's (1/12 px^2).
    rows, cols = np.indices(stamp.shape) * spacing
    weights = stamp / stamp.sum()
    centre = (weights * rows).sum()
    variance = (weights * (rows - centre) ** 2).sum() - spacing**2 / 12
    measured[spacing] = calcium_mm3, math.sqrt(variance)
  sphere_mm3 = math.pi / 6 * 0.5**3
  for calcium_mm3, _ in measured.values():
    assert calcium_mm3 == pytest.approx(sphere_mm3, rel=0.01)
  assert measured[0.1][1] == pytest.approx(measured[0.2][1], rel=0.05)
  # A ball of radius r spreads its calcium with a variance of r^2 / 5 along each axis.
  expected = math.sqrt(0.25**2 / 5 + psf_sigma_mm**2)
  assert measured[0.1][1] == pytest.approx(expected, rel=0.05)


def test_inserted_clusters_carry_the_same_calcium_into_an_image_and_its_coarser_twin():
  options = dataclasses.replace(OPTIONS, clusters_per_image=(1, 1), skin_margin_mm=3.0)
  results = {}
  for spacing in (0.1, 0.2):
    m = phantom(spacing)
    out = insertion.insert_clusters(m, (), seed=5, options=options)
    added = out.pixels.astype(np.float64) - m.pixels
    results[spacing] = out, added.sum() * spacing**2
  fine, coarse = results[0.1][0], results[0.2][0]
  assert [(s.length_mm, s.width_mm, s.contrast) for s in fine.specks] == [
    (s.length_mm, s.width_mm, s.contrast) for s in coarse.specks
  ]
  assert results[0.1][1] == pytest.approx(results[0.2][1], rel=0.05)
  assert fine.clusters[0].radius * 0.1 == pytest.approx(coarse.clusters[0].radius * 0.2, rel=0.01)


def test_in_the_linear_domain_calcium_lowers_the_exposure_and_keeps_the_range():
  m = phantom(0.1)
  noisy = np.random.default_rng(1).poisson(m.pixels.astype(float) / 20) * 20  # quantum noise
  m = dataclasses.replace(m, pixels=np.clip(noisy, 0, 65535).astype(np.uint16))
  options = dataclasses.replace(OPTIONS, domain="linear", skin_margin_mm=3.0)
  out = insertion.insert_clusters(m, (), seed=2, options=options)
  again = insertion.insert_clusters(m, (), seed=2, options=options)
  np.testing.assert_array_equal(out.pixels, again.pixels)
  added = out.pixels.astype(np.float64) - m.pixels
  peaks = [(round(s.row), round(s.col)) for s in out.specks if s.peak_value > 200]
  assert peaks and all(added[r, c] > 0 for r, c in peaks)  # dense-bright: less exposure
  assert out.pixels.max() <= m.max_value


# --- placement -----------------------------------------------------------------------------


def test_nothing_is_inserted_within_an_annotated_finding_or_outside_the_breast(mias_findings):
  findings = first_image(mias_findings, "mass")  # mdb001: a 197-pixel mass
  m = read(findings)
  options = dataclasses.replace(OPTIONS, clusters_per_image=(4, 4))
  out = insertion.insert_clusters(m, findings, seed=0, options=options)
  assert out.clusters
  changed = out.original_pixels != (m.pixels[:, ::-1] if m.flipped else m.pixels)
  original_breast = breast.breast_mask(m.pixels)
  original_breast = original_breast[:, ::-1] if m.flipped else original_breast
  assert changed.any() and original_breast[changed].all()
  assert original_breast[out.speck_mask].all()
  rows, cols = np.nonzero(changed | out.speck_mask)
  for f in findings:
    clearance = np.hypot(rows - f.row, cols - f.col) - f.radius
    assert clearance.min() * 0.2 >= options.finding_margin_mm
  # every changed pixel belongs to a cluster's enclosing circle
  inside_some = np.zeros(rows.shape, bool)
  for c in out.clusters:
    inside_some |= np.hypot(rows - c.row, cols - c.col) <= c.radius + 1
  assert inside_some.all()


def test_an_image_with_a_finding_without_position_gets_nothing():
  m = phantom(0.2)
  diffuse = manifest.Finding("1", "phantom", abnormality="calcification", note="no_coordinates")
  out = insertion.insert_clusters(m, [diffuse], seed=0, options=OPTIONS)
  assert out.clusters == () and "without a position" in out.skipped
  np.testing.assert_array_equal(out.pixels, m.pixels)


def test_evaluation_only_images_are_never_backgrounds():
  held = manifest.Finding("0", "/data/nyu-ffdm-png/gmic_exam0/0_L-CC.png")
  with pytest.raises(ValueError, match="evaluation"):
    insertion.background_images([held])


# --- files ---------------------------------------------------------------------------------


def test_every_inserted_speck_and_cluster_is_in_the_manifest_and_specks_csv(
  mias_findings, tmp_path
):
  calcified = first_image(mias_findings, "calcification")
  normal = [f for f in mias_findings if f.abnormality == "none"][:2]
  mass = first_image(mias_findings, "mass")
  out_dir = tmp_path / "inserted"
  path = insertion.insert_cohort(calcified + normal + mass, out_dir, seed=1, options=OPTIONS)
  rows = manifest.read_manifest(path)
  assert {os.path.basename(r.image_path) for r in rows} == {
    os.path.basename(f.image_path) for f in normal + mass
  }  # the calcified image is no background
  inserted = [r for r in rows if r.note == insertion.INSERTED_NOTE]
  with open(out_dir / "specks.csv", newline="") as f:
    specks = list(csv.DictReader(f))
  labels = {}
  for name in os.listdir(out_dir / "labels"):
    with open(out_dir / "labels" / name) as f:
      labels[name] = json.load(f)
  assert len(inserted) == sum(
    1 for record in labels.values() for r in record["findings"] if r["note"] == "inserted"
  )
  assert len(specks) == sum(len(record["specks"]) for record in labels.values())
  assert {r.patient_id for r in rows} == {f.patient_id for f in normal + mass}
  assert [r.abnormality for r in rows if r.finding_id == mass[0].finding_id] == ["mass"]
  for r in inserted:
    assert r.abnormality == "calcification" and r.label in ("benign", "malignant")
    assert r.pixel_spacing_mm == 0.2 and r.finding_id.startswith("ins")
    own = [s for s in specks if s["finding_id"] == r.finding_id and s["image_path"] in r.image_path]
    assert own, f"cluster {r.finding_id} of {r.image_path} has no specks"
    for s in own:  # every speck lies inside its cluster's circle, in original pixels
      assert math.hypot(float(s["row"]) - r.row, float(s["col"]) - r.col) <= r.radius
    image = read_mammogram(r.image_path, spacing_options(r.pixel_spacing_mm))
    assert image.max_value == 255 and image.bits_stored == 8
    mask = read_mammogram(r.mask_path, spacing_options(0.2))
    assert mask.original_shape == image.original_shape
  before = (out_dir / "manifest.csv").read_bytes()
  insertion.insert_cohort(calcified + normal + mass, out_dir, seed=1, options=OPTIONS)  # resumes
  assert (out_dir / "manifest.csv").read_bytes() == before
  with pytest.raises(ValueError, match="other seed or options"):
    insertion.insert_cohort(normal, out_dir, seed=2, options=OPTIONS)


def test_the_command_line_inserts_the_clusters_per_image_it_is_asked_for(tmp_path, capsys):
  for count in (1, 3):
    out_dir = tmp_path / f"clusters_{count}"
    insertion.main(
      [
        "insert",
        "--source=mias",
        f"--location={shared_dataset('mias')}",
        f"--out={out_dir}",
        "--limit=1",
        f"--clusters_per_image={count},{count}",
      ]
    )
    rows = manifest.read_manifest(str(out_dir / "manifest.csv"))
    assert sum(r.note == insertion.INSERTED_NOTE for r in rows) == count
  with pytest.raises(SystemExit):  # one number is not a range: a usage error, nothing written
    insertion.main(["insert", "--source=mias", "--location=.", "--out=x", "--clusters_per_image=3"])
  assert "expected LOW,HIGH (two whole numbers), not '3'" in capsys.readouterr().err


def test_written_images_differ_from_their_source_only_at_inserted_specks(mias_findings, tmp_path):
  normal = [f for f in mias_findings if f.abnormality == "none"][:1]
  path = insertion.insert_cohort(normal, tmp_path, seed=0, options=OPTIONS)
  rows = [r for r in manifest.read_manifest(path) if r.note == insertion.INSERTED_NOTE]
  source = read_mammogram(normal[0].image_path, spacing_options(0.2))
  written = read_mammogram(rows[0].image_path, spacing_options(0.2))
  assert written.flipped == source.flipped
  changed = np.argwhere(written.pixels != source.pixels)
  assert len(changed)
  near_a_cluster = np.zeros(len(changed), bool)
  for r in rows:
    row, col = source.from_original(r.row, r.col)
    near_a_cluster |= np.hypot(changed[:, 0] - row, changed[:, 1] - col) <= r.radius + 1
  assert near_a_cluster.all()


# --- measured contrast ---------------------------------------------------------------------


def test_the_stored_mias_speck_contrasts_are_what_the_measurement_gives():
  measured = insertion.measure_mias_speck_contrasts(shared_dataset("mias"))
  summary = insertion.summarise_contrasts(measured)
  assert summary.clusters == 18 and summary.specks == insertion.MIAS_SPECKS_MEASURED
  assert summary.log_mean == pytest.approx(insertion.MIAS_LOG_CONTRAST_MEAN, abs=1e-3)
  assert summary.log_sd == pytest.approx(insertion.MIAS_LOG_CONTRAST_SD, abs=1e-3)
  assert summary.cluster_log_sd == pytest.approx(insertion.MIAS_CLUSTER_LOG_SD, abs=1e-3)
  assert summary.quantiles == insertion.MIAS_SPECK_CONTRAST_QUANTILES
  assert summary.floor == pytest.approx(insertion.MIAS_FLOOR_CONTRAST, abs=1e-4)
  level = insertion.mias_detail_level(shared_dataset("mias"))
  assert level == pytest.approx(insertion.MIAS_DETAIL_LEVEL, abs=1e-4)
