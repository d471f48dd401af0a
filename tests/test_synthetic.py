"""The synthetic cohort: valid DICOM files, a matching manifest, and the physics the task needs."""

from __future__ import annotations

import collections
import os

import numpy as np
import pydicom
import pytest
import scipy.ndimage

from input_pipeline import breast, insertion, manifest, synthetic
from input_pipeline.mammogram import read_mammogram
from tools import realism

SMALL = synthetic.SyntheticOptions(
  image_size=(600, 450), cluster_probability=1.0, monochrome1_fraction=0.5
)


@pytest.fixture(scope="module")
def cohort(tmp_path_factory) -> str:
  """Three patients, every breast with a cluster, half the patients stored MONOCHROME1."""
  return synthetic.generate_cohort(
    tmp_path_factory.mktemp("synthetic"), num_patients=3, seed=7, options=SMALL
  )


def display_pixels(ds: pydicom.Dataset) -> np.ndarray:
  """Stored values with dense tissue bright."""
  pixels = ds.pixel_array.astype(np.int32)
  return synthetic.MAX_VALUE - pixels if ds.PhotometricInterpretation == "MONOCHROME1" else pixels


def images(manifest_path: str) -> dict[str, list[manifest.Finding]]:
  by_image = collections.defaultdict(list)
  for finding in manifest.read_manifest(manifest_path):
    by_image[finding.image_path].append(finding)
  return by_image


def test_files_are_valid_12_bit_mammography_dicoms(cohort):
  photometric = set()
  for path in images(cohort):
    ds = pydicom.dcmread(path)
    assert ds.file_meta.MediaStorageSOPClassUID == synthetic.DIGITAL_MAMMOGRAPHY_FOR_PRESENTATION
    assert ds.SOPClassUID == synthetic.DIGITAL_MAMMOGRAPHY_FOR_PRESENTATION
    assert ds.Modality == "MG"
    assert (ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation) == (16, 12, 11, 0)
    assert ds.pixel_array.dtype == np.uint16
    assert ds.pixel_array.shape == SMALL.image_size
    assert ds.pixel_array.max() <= 4095
    assert [float(v) for v in ds.PixelSpacing] == [0.085, 0.085]
    assert [float(v) for v in ds.ImagerPixelSpacing] == [0.085, 0.085]
    assert ds.ImageLaterality in ("L", "R") and ds.ViewPosition in ("CC", "MLO")
    assert ds.PatientID.startswith("SYN") and "PatientName" not in ds
    photometric.add(ds.PhotometricInterpretation)
  assert photometric == {"MONOCHROME1", "MONOCHROME2"}


def test_manifest_rows_match_the_files(cohort):
  for path, findings in images(cohort).items():
    ds = pydicom.dcmread(path, stop_before_pixels=True)
    for f in findings:
      assert (f.patient_id, f.laterality, f.view) == (
        ds.PatientID,
        ds.ImageLaterality,
        ds.ViewPosition,
      )
      assert f.density in synthetic.DENSITIES
    if findings[0].abnormality == "none":
      assert len(findings) == 1 and findings[0].label == ""
      continue
    for f in findings:
      assert f.abnormality == "calcification" and f.label in ("benign", "malignant")
      assert f.subtype in (
        *synthetic.BENIGN_MORPHOLOGIES,
        *synthetic.MALIGNANT_MORPHOLOGIES,
        synthetic.AMBIGUOUS_MORPHOLOGY,
      )
      assert 5 < f.radius < 56  # the cluster fits a 112-pixel patch


def test_every_patient_has_cc_and_mlo_of_both_breasts(cohort):
  views = collections.defaultdict(set)
  for f in manifest.read_manifest(cohort):
    views[f.patient_id].add((f.laterality, f.view))
  assert len(views) == 3
  assert all(v == {("L", "CC"), ("L", "MLO"), ("R", "CC"), ("R", "MLO")} for v in views.values())


def test_breast_sits_at_the_chest_wall_side_of_its_laterality(cohort):
  for path, findings in images(cohort).items():
    pixels = display_pixels(pydicom.dcmread(path))
    left, right = pixels[:, :20].mean(), pixels[:, -20:].mean()
    assert (left > right) == (findings[0].laterality == "L")


def test_clusters_lie_inside_the_breast_in_both_views(cohort):
  by_image = images(cohort)
  for path, findings in by_image.items():
    inside = breast.breast_mask(display_pixels(pydicom.dcmread(path)))
    for f in findings:
      if f.abnormality == "calcification":
        assert inside[int(f.row), int(f.col)]
  clusters = collections.Counter(
    (f.patient_id, f.laterality, f.finding_id)
    for fs in by_image.values()
    for f in fs
    if f.abnormality == "calcification"
  )
  assert clusters and set(clusters.values()) == {2}  # each cluster in CC and MLO


def test_specks_are_brighter_than_their_surroundings(cohort):
  for path, findings in images(cohort).items():
    pixels = display_pixels(pydicom.dcmread(path)).astype(np.float32)
    detail = pixels - scipy.ndimage.median_filter(pixels, size=9)
    noise = 1.4826 * np.median(np.abs(detail[pixels > 1000]))
    for f in findings:
      r, c, radius = int(f.row), int(f.col), int(f.radius)
      assert detail[r - radius : r + radius + 1, c - radius : c + radius + 1].max() > 2.5 * noise


def test_density_categories_follow_the_paper_proportions():
  specs = synthetic.sample_cohort(2000, seed=1)
  counts = collections.Counter(s.density for s in specs if s.laterality == "L" and s.view == "CC")
  for density, expected in zip(synthetic.DENSITIES, synthetic.DENSITY_PROBABILITIES, strict=True):
    assert counts[density] / 2000 == pytest.approx(expected, abs=0.03)


def test_denser_breasts_have_more_glandular_tissue():
  specs = synthetic.sample_cohort(400, seed=2)
  means = [
    np.mean([s.glandular_fraction for s in specs if s.density == d]) for d in synthetic.DENSITIES
  ]
  assert means == sorted(means)


def test_same_seed_gives_identical_files_and_another_seed_does_not(tmp_path):
  tiny = synthetic.SyntheticOptions(image_size=(160, 120), cluster_probability=1.0)
  paths = [
    synthetic.generate_cohort(tmp_path / name, num_patients=1, seed=seed, options=tiny)
    for name, seed in (("a", 3), ("b", 3), ("c", 4))
  ]

  def contents(manifest_path):
    folder = os.path.dirname(manifest_path)
    files = sorted(
      os.path.relpath(os.path.join(d, n), folder) for d, _, names in os.walk(folder) for n in names
    )
    return {name: open(os.path.join(folder, name), "rb").read() for name in files}

  a, b, c = map(contents, paths)
  assert a == b
  pixels = [
    pydicom.dcmread(p / "SYN0001" / "SYN0001_L_CC.dcm").PixelData
    for p in (tmp_path / "a", tmp_path / "c")
  ]
  assert pixels[0] != pixels[1]


def power_law_slope(image: np.ndarray, spacing_mm: float) -> float:
  """Slope of log power against log frequency over 0.15-1 cycles/mm (Hann-windowed)."""
  n = image.shape[0]
  window = np.outer(np.hanning(n), np.hanning(n))
  power = np.abs(np.fft.fft2((image - image.mean()) * window)) ** 2
  freq = np.hypot(*np.meshgrid(np.fft.fftfreq(n), np.fft.fftfreq(n), indexing="ij")) / spacing_mm
  band = (freq > 0.15) & (freq < 1.0)
  return float(np.polyfit(np.log(freq[band]), np.log(power[band]), 1)[0])


def test_noise_field_has_the_requested_spectrum():
  field = synthetic.power_law_noise((256, 256), 3.0, np.random.default_rng(0))
  assert power_law_slope(field, 0.085) == pytest.approx(-3.0, abs=0.2)


def test_mammogram_background_has_a_power_law_spectrum_with_beta_near_3():
  options = synthetic.SyntheticOptions(image_size=(600, 450), cluster_probability=0.0)
  slopes = []
  for spec in synthetic.sample_cohort(2, seed=2, options=options):
    image = synthetic.render_image(spec, options)
    inside = scipy.ndimage.binary_erosion(image.breast_mask, iterations=40)
    rows, cols = np.nonzero(inside)
    r, c = int(rows.mean()), int(cols.mean())
    assert inside[r - 64 : r + 64, c - 64 : c + 64].all()
    slopes.append(power_law_slope(image.pixels[r - 64 : r + 64, c - 64 : c + 64], 0.085))
  assert np.mean(slopes) == pytest.approx(-3.0, abs=0.4)


def test_malignant_specks_vary_more_in_size_than_benign():
  options = synthetic.SyntheticOptions(cluster_probability=1.0, difficulty=0.0)
  variation = collections.defaultdict(list)
  for spec in synthetic.sample_cohort(100, seed=5, options=options)[::2]:
    for cluster in spec.clusters:
      volumes = np.array([s.length_mm * s.width_mm**2 for s in cluster.specks])
      variation[cluster.label].append(volumes.std() / volumes.mean())
  assert np.mean(variation["malignant"]) > 2 * np.mean(variation["benign"])


def test_difficulty_lowers_speck_conspicuity_monotonically():
  peaks = []
  for difficulty in (0.0, 0.5, 1.0):
    options = synthetic.SyntheticOptions(
      image_size=(600, 450), cluster_probability=1.0, difficulty=difficulty
    )
    spec = synthetic.sample_cohort(1, seed=11, options=options)[0]
    image = synthetic.render_image(spec, options)
    pixels = image.pixels.astype(np.float32)
    detail = pixels - scipy.ndimage.median_filter(pixels, size=9)
    peaks.append(
      np.mean(
        [
          detail[
            int(a.row) - int(a.radius) : int(a.row) + int(a.radius) + 1,
            int(a.col) - int(a.radius) : int(a.col) + int(a.radius) + 1,
          ].max()
          for a in image.annotations
        ]
      )
    )
  assert peaks[0] > peaks[1] > peaks[2]


def test_difficulty_outside_unit_interval_is_rejected():
  with pytest.raises(ValueError, match="difficulty"):
    synthetic.SyntheticOptions(difficulty=1.5)


def test_read_mammogram_puts_the_chest_wall_left_and_maps_clusters_back(cohort):
  for path, findings in images(cohort).items():
    mammogram = read_mammogram(path)
    f = findings[0]
    assert (mammogram.laterality, mammogram.view) == (f.laterality, f.view)
    assert mammogram.bits_stored == 12 and mammogram.pixel_spacing_mm == (0.085, 0.085)
    assert mammogram.flipped == (f.laterality == "R")
    pixels = mammogram.pixels
    assert pixels[:, :20].mean() > pixels[:, -20:].mean()  # dense tissue bright, chest wall left
    for f in findings:
      if f.abnormality == "calcification":
        row, col = mammogram.from_original(int(f.row), int(f.col))
        original = display_pixels(pydicom.dcmread(path))[int(f.row), int(f.col)]
        assert pixels[row, col] == original


# The NYU for-presentation FFDM (breast_cancer_classifier, 4 CC views, 0.07-mm pixels): medians
# over the images from
#   python -m tools.realism stats --set nyu=../shared/data/nyu-ffdm-png/breast_cancer_classifier \
#       --spacing nyu=0.07 --json nyu.json
# (their NPS, range^2 mm^2, at these frequencies, mm^-1, from the json's curves). Stored, not
# recomputed: the four 8.5-Mpixel images take longer than this file's tests together.
NYU_FFDM = {"fine_sd": 0.0795, "tophat_p99_9": 0.628}
NYU_FFDM_NPS = {0.5: 5.58e-4, 1.0: 4.15e-4, 2.0: 8.46e-5, 3.0: 3.37e-5, 4.0: 2.02e-5, 5.0: 1.55e-5}


@pytest.fixture(scope="module")
def ffdm_statistics(tmp_path_factory) -> list[dict]:
  """tools.realism's statistics of one synthetic patient's four views, as its `stats` gives them."""
  folder = tmp_path_factory.mktemp("ffdm")
  options = synthetic.SyntheticOptions(cluster_probability=0.0)
  synthetic.generate_cohort(folder, num_patients=1, seed=0, options=options)
  table = realism.stats_table({"synthetic": realism.load_set(str(folder))}, margin_mm=2.0)
  return list(table["synthetic"]["images"].values())


def test_fine_structure_and_top_hat_are_within_25_percent_of_real_ffdm(ffdm_statistics):
  for key, reference in NYU_FFDM.items():
    assert np.median([s[key] for s in ffdm_statistics]) == pytest.approx(reference, rel=0.25), key


def test_noise_power_spectrum_is_within_25_percent_of_real_ffdm_from_0_5_to_5_per_mm(
  ffdm_statistics,
):
  """Not one frequency but the curve: anatomy at low frequencies, grain at high ones."""
  for frequency, reference in NYU_FFDM_NPS.items():
    median = np.median([realism.nps_at(s, frequency) for s in ffdm_statistics])
    assert median == pytest.approx(reference, rel=0.25), frequency


def statistics(spec: synthetic.ImageSpec, options: synthetic.SyntheticOptions, folder) -> dict:
  """tools.realism's statistics of one rendered image, read back from its DICOM file."""
  path = os.path.join(folder, f"{spec.image_id}_{options.processing}.dcm")
  synthetic.write_dicom(path, synthetic.render_image(spec, options).pixels, spec, options, 0)
  return realism.image_statistics(read_mammogram(path))


def test_presentation_processing_makes_tissue_grainy_and_none_keeps_the_detected_look(tmp_path):
  measured = {}
  for processing in synthetic.PROCESSINGS:
    options = synthetic.SyntheticOptions(cluster_probability=0.0, processing=processing)
    spec = synthetic.sample_cohort(1, seed=2, options=options)[0]
    measured[processing] = statistics(spec, options, tmp_path)
  presentation, detected = measured["presentation"], measured["none"]
  assert presentation["fine_sd"] > 1.5 * detected["fine_sd"]
  assert realism.nps_at(presentation, 4.0) > 3 * realism.nps_at(detected, 4.0)  # the grain


def test_clusters_outshine_the_tissue_around_them_in_the_white_top_hat():
  """Specks go through the processing with the tissue, so they stay visible: at the default
  difficulty most clusters' brightest speck tops the 99.9th top-hat percentile of the 1-6 mm
  around them, the brightest speck-sized tissue there (the faint amorphous and ductal ones may
  not)."""
  options = synthetic.SyntheticOptions(image_size=(600, 450), cluster_probability=1.0)
  ratios = []
  for spec in synthetic.sample_cohort(2, seed=3, options=options):
    image = synthetic.render_image(spec, options)
    tophat = insertion.white_tophat(image.pixels, options.pixel_spacing_mm)
    rows, cols = np.indices(tophat.shape)
    for a in image.annotations:
      distance = np.hypot(rows - a.row, cols - a.col)
      around = (distance > a.radius + 1 / 0.085) & (distance < a.radius + 6 / 0.085)
      tissue = np.percentile(tophat[around & image.breast_mask], 99.9)
      ratios.append(tophat[distance <= a.radius].max() / tissue)
  assert np.mean(np.greater(ratios, 1.0)) >= 0.75
