"""The dense speck detector: banded maps equal a single pass, training is deterministic and learns,
crops' labels lie on the inserted specks, and a network map's marks map back to the original
pixels of a flipped image at 0.2 and 0.1 mm."""

from __future__ import annotations

import csv
import dataclasses
import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx
from PIL import Image

from input_pipeline import insertion, speck_labels
from input_pipeline.mammogram import read_mammogram, spacing_options
from input_pipeline.manifest import Finding, write_manifest
from mcalc_jax.model import speck_detector
from mcalc_jax.whole_image import marks, reranking, specks

TINY = speck_detector.DetectorConfig(width=4, seed=3)


def breast_image(shape: tuple[int, int], seed: int = 0) -> np.ndarray:
  """uint8 film-like pixels: dark background, a noisy breast over the right 60% (so reading it
  flips it to the canonical chest-wall-left)."""
  rng = np.random.default_rng(seed)
  pixels = np.full(shape, 10.0)
  pixels[:, int(0.4 * shape[1]) :] = 120.0
  return np.clip(pixels + rng.normal(0, 3, shape), 0, 255).astype(np.uint8)


def test_the_breasts_box_in_bands_gives_the_single_pass_over_the_whole_image():
  pixels = breast_image((150, 130)) / np.float32(255)
  detector = speck_detector.create(TINY)
  breast = speck_labels.inner_mask(pixels, 0.2)
  corner = breast.copy()
  corner[0, 0] = True  # a pixel far from the breast: the box becomes the whole image
  whole = speck_detector.dense_map(detector, pixels, 0.2, mask=corner, band_rows=1024)
  banded = speck_detector.dense_map(detector, pixels, 0.2, mask=breast, band_rows=16)
  assert banded.shape == (150, 130) and banded[breast].std() > 0
  np.testing.assert_allclose(banded[breast], whole[breast], atol=1e-6)
  assert not banded[~breast].any()


def tiny_crops(n: int = 8, size: int = 8) -> speck_labels.Crops:
  """Noise with one bright 2x2 speck per crop, labelled."""
  rng = np.random.default_rng(0)
  side = size + 2 * speck_detector.HALO
  inputs = np.stack([rng.normal(0.5, 0.01, (n, side, side)), np.ones((n, side, side))], -1)
  labels = np.zeros((n, size, size), np.float32)
  halo = speck_detector.HALO
  for k in range(n):
    r, c = rng.integers(1, size - 2, 2)
    labels[k, r : r + 2, c : c + 2] = 1
    inputs[k, r + halo : r + halo + 2, c + halo : c + halo + 2, 0] += 0.1
  return speck_labels.Crops(
    inputs.astype(np.float32), labels, np.ones_like(labels), np.array(["p"] * n)
  )


def test_training_is_deterministic_from_its_seed_and_lowers_the_loss():
  crops = tiny_crops()
  options = speck_detector.TrainOptions(steps=40, batch=4, learning_rate=1e-2)
  first, losses = speck_detector.train(crops, TINY, options)
  again, same = speck_detector.train(crops, TINY, options)
  assert losses == same
  for a, b in zip(
    jax.tree.leaves(nnx.state(first)), jax.tree.leaves(nnx.state(again)), strict=True
  ):
    np.testing.assert_array_equal(a, b)
  assert np.mean(losses[-5:]) < 0.7 * np.mean(losses[:5])


def test_an_ensemble_averages_members_trained_apart():
  crops = tiny_crops()
  options = speck_detector.TrainOptions(steps=3, batch=4)
  ensemble, _ = speck_detector.train(crops, dataclasses.replace(TINY, members=2), options)
  first, second = ensemble.members
  assert not np.array_equal(first.out.kernel[...], second.out.kernel[...])  # apart from the start
  x = jnp.asarray(crops.inputs[:2])
  h = speck_detector.front_end(x)
  mean = (jax.nn.sigmoid(first(h)) + jax.nn.sigmoid(second(h))) / 2
  np.testing.assert_allclose(ensemble(x), mean, atol=1e-6)


def test_a_detector_saved_before_ensembles_loads_as_one_member(tmp_path):
  detector = speck_detector.create(TINY)
  speck_detector.save(tmp_path, detector)
  with np.load(tmp_path / speck_detector.PARAMS_FILE) as stored:  # the layout of stop 33
    np.savez(tmp_path / speck_detector.PARAMS_FILE, **{
      path.removeprefix("['members'][0]"): value for path, value in stored.items()
    })  # fmt: skip
  record = json.loads((tmp_path / speck_detector.CONFIG_FILE).read_text())
  del record["config"]["members"]
  (tmp_path / speck_detector.CONFIG_FILE).write_text(json.dumps(record))
  pixels = breast_image((40, 50)) / np.float32(255)
  np.testing.assert_array_equal(
    speck_detector.dense_map(speck_detector.load(tmp_path), pixels, 0.2),
    speck_detector.dense_map(detector, pixels, 0.2),
  )


def test_saved_parameters_load_back(tmp_path):
  detector = speck_detector.create(TINY)
  speck_detector.save(tmp_path, detector, {"note": "test"})
  loaded = speck_detector.load(tmp_path)
  pixels = breast_image((40, 50)) / np.float32(255)
  np.testing.assert_array_equal(
    speck_detector.dense_map(loaded, pixels, 0.2), speck_detector.dense_map(detector, pixels, 0.2)
  )


def test_a_calibrated_detector_leaves_the_share_asked_for_above_its_threshold_and_saves_it(
  tmp_path,
):
  pixels = breast_image((120, 100)) / np.float32(255)
  raw = speck_detector.create(TINY)
  values = speck_detector.dense_map(raw, pixels, 0.2)
  values = values[values > 0]
  shift = speck_detector.logit_shift(values, 0.05, 0.85)
  detector = speck_detector.calibrated(raw, shift)
  shifted = speck_detector.dense_map(detector, pixels, 0.2)
  assert np.mean(shifted[shifted > 0] > 0.85) == pytest.approx(0.05, abs=0.002)
  np.testing.assert_array_equal(speck_detector.dense_map(raw, pixels, 0.2)[shifted > 0], values)
  speck_detector.save(tmp_path, detector)  # the shift travels with the parameters
  np.testing.assert_array_equal(
    speck_detector.dense_map(speck_detector.load(tmp_path), pixels, 0.2), shifted
  )
  with pytest.raises(ValueError, match="must lie in"):
    speck_detector.logit_shift(values, 0.0, 0.85)


def write_cohort(
  folder, pixels: np.ndarray, specks_rc: list[tuple[int, int, float]], patient_id: str = "7"
) -> None:
  """A one-image inserted cohort as `insertion.insert_cohort` writes it: 3x3 speck squares at
  ORIGINAL (row, col) with their contrasts, one cluster."""
  (folder / "images").mkdir(parents=True)
  (folder / "masks").mkdir()
  mask = np.zeros(pixels.shape, np.uint8)
  for r, c, _ in specks_rc:
    pixels[r - 1 : r + 2, c - 1 : c + 2] = 200
    mask[r - 1 : r + 2, c - 1 : c + 2] = 255
  Image.fromarray(pixels).save(folder / "images" / "img.png")
  Image.fromarray(mask).save(folder / "masks" / "img_ins1.png")
  centre = np.mean([(r, c) for r, c, _ in specks_rc], 0)
  cluster = Finding(
    patient_id, "images/img.png", "ins1", "calcification", "benign", float(centre[1]), float(centre[0]),
    8.0, "masks/img_ins1.png", note=insertion.INSERTED_NOTE, pixel_spacing_mm=0.2,
  )  # fmt: skip
  write_manifest(str(folder / "manifest.csv"), [cluster])
  with open(folder / "specks.csv", "w", newline="") as f:
    writer = csv.DictWriter(f, insertion.SPECK_COLUMNS)
    writer.writeheader()
    for r, c, contrast in specks_rc:
      row = dict.fromkeys(insertion.SPECK_COLUMNS, 0.0)
      writer.writerow(row | {"image_path": "images/img.png", "finding_id": "ins1", "row": r, "col": c, "contrast": contrast})  # fmt: skip
  (folder / "insertion.json").write_text(json.dumps({"options": {"contrast_scale": 1.0}}))


def test_crop_labels_line_up_with_the_inserted_specks_and_faint_ones_are_ignored(tmp_path):
  pixels = breast_image((120, 100))
  visible, faint = (60, 70, 0.1), (64, 76, 0.01)
  write_cohort(tmp_path, pixels, [visible, faint])
  (image,) = speck_labels.read_cohort(tmp_path)
  assert image.patient_id == "7" and image.specks[:, 2].tolist() == [1.0, 0.0]
  labelled = speck_labels.labelled(image)
  flip = 99  # canonical col = width - 1 - original col: the breast was on the right
  np.testing.assert_array_equal(np.argwhere(labelled.labels), [
    (r, flip - c) for r in range(59, 62) for c in range(71, 68, -1)
  ])  # fmt: skip
  assert labelled.weights[64, flip - 76] == 0  # the faint speck: no weight either way
  crops = speck_labels.crops([image], size=16, halo=5, random_per_image=0, bright_per_image=0)
  assert crops.labels.shape == (4, 16, 16) and crops.inputs.shape == (4, 26, 26, 2)
  for inputs, labels in zip(crops.inputs, crops.labels, strict=True):
    assert labels.sum() == 9
    assert (inputs[5:-5, 5:-5, 0][labels > 0] == 200 / 255).all()
  with pytest.raises(ValueError, match="no cohort image"):
    speck_labels.crops([image], patients={"8"}, halo=5)


def test_a_real_cluster_known_as_a_circle_labels_its_brightest_spots_and_leaves_the_rest_unknown(
  tmp_path,
):
  pixels = breast_image((200, 200))
  inside, outside = [(100, 150), (105, 156), (111, 152)], (60, 170)
  for r, c in [*inside, outside]:
    pixels[r - 1 : r + 2, c - 1 : c + 2] = 200
  m = read_mammogram_of(pixels, tmp_path)
  circle = (105.0, 153.0, 10.0)  # ORIGINAL pixels: the breast was on the right
  labelled = speck_labels.weakly_labelled(m, "mdb001.png", "1", np.array([circle]))
  flip = 199  # canonical col = width - 1 - original col
  found = {(int(r), int(c)) for r, c in np.argwhere(labelled.labels)}
  specks = {(r + dr, flip - c - dc) for r, c in inside for dr in (-1, 0, 1) for dc in (-1, 0, 1)}
  assert found == specks  # each 3x3 speck in the circle, nothing else
  assert labelled.weights[105, flip - 145] == 0  # plain tissue in the circle: unknown
  r, c = outside
  assert labelled.labels[r, flip - c] == 0 and labelled.weights[r, flip - c] == 1  # background
  crops = speck_labels.cluster_crops([labelled], per_cluster=3, size=16, halo=5)
  assert crops.labels.shape == (3, 16, 16) and crops.patients.tolist() == ["1"] * 3
  assert all(labels.sum() > 0 for labels in crops.labels)  # each crop holds the cluster's specks


def read_mammogram_of(pixels: np.ndarray, folder):
  """`pixels` saved into `folder` and read as a 0.2-mm film mammogram (flipped to canonical)."""
  Image.fromarray(pixels).save(folder / "film.png")
  return read_mammogram(str(folder / "film.png"), spacing_options(0.2))


def passing_cnr(detector: speck_detector.SpeckDetector) -> speck_detector.SpeckDetector:
  """The detector made by hand into sigmoid(4 log(1 + CNR) - 8): the top-hat CNR channel through
  the centre taps of every layer."""

  def centre_tap(variable: nnx.Param, value: float) -> None:
    kernel = np.zeros(variable.shape, np.float32)
    kernel[kernel.shape[0] // 2, kernel.shape[1] // 2, 0, 0] = value
    variable[...] = kernel

  for member in detector.members:
    for conv in member.convs:
      centre_tap(conv.kernel, 1.0)
      conv.bias[...] = np.zeros(conv.bias.shape, np.float32)
    centre_tap(member.mix.kernel, 1.0)
    member.mix.bias[...] = np.zeros(member.mix.bias.shape, np.float32)
    centre_tap(member.out.kernel, 4.0)
    member.out.bias[...] = np.full(member.out.bias.shape, -8.0, np.float32)
  return detector


@pytest.mark.parametrize("spacing_mm", [0.2, 0.1])
def test_network_marks_map_back_to_the_original_pixels_of_a_flipped_image(tmp_path, spacing_mm):
  scale = round(0.2 / spacing_mm)
  pixels = breast_image((200 * scale, 160 * scale))
  centre_mm = np.array([20.0, 24.0])  # row, col in the ORIGINAL image
  for offset in ((0, 0), (2, 0), (0, 2), (2, 2)):
    top, left = ((centre_mm + offset - 1) / spacing_mm).astype(int)
    pixels[top : top + 2 * scale, left : left + 2 * scale] = 200  # 0.4-mm specks
  Image.fromarray(pixels).save(tmp_path / "flipped.png")
  mammogram = read_mammogram(tmp_path / "flipped.png", spacing_options(spacing_mm))
  assert mammogram.flipped
  speck_map = specks.network_speck_map(passing_cnr(speck_detector.create(TINY)), mammogram)
  assert speck_map.values.shape == (200, 160) and speck_map.pixel_mm == 0.2
  (mark,) = marks.mark_image(speck_map, "flipped", speck_rule=specks.SpeckRule(threshold=0.5))
  assert mark.specks == 4
  expected = centre_mm / spacing_mm + scale - 0.5  # the specks' mean centre, original pixels
  np.testing.assert_allclose([mark.row, mark.col], expected, atol=0.5 * scale)


def test_a_classifier_that_names_its_detector_marks_new_images_on_that_detectors_map(tmp_path):
  pixels = breast_image((200, 160))
  for top, left in ((100, 110), (100, 120), (110, 110), (110, 120)):  # 0.4-mm specks 2 mm apart
    pixels[top : top + 2, left : left + 2] = 200
  Image.fromarray(pixels).save(tmp_path / "image.png")
  mammogram = read_mammogram(tmp_path / "image.png", spacing_options(0.2))
  speck_detector.save(tmp_path / "run" / "detector", passing_cnr(speck_detector.create(TINY)))
  model = reranking.TileReranker(("specks",), np.ones(1), -3.0, np.zeros(1), np.ones(1))
  rule = specks.SpeckRule(threshold=0.5)  # a probability on the detector's map
  classifier = marks.ClusterClassifier(model, speck_rule=rule, detector="detector")
  reranking.save(tmp_path / "run" / "classifier.json", classifier)

  loaded = marks.load(tmp_path / "run" / "classifier.json")  # the detector found beside it
  assert loaded.detector == str(tmp_path / "run" / "detector")
  (mark,) = marks.mark_mammogram(mammogram, "image", loaded)
  assert mark.specks == 4 and mark.features["mean_value"] <= 1.0  # probabilities, not CNRs
  (tmp_path / "run" / "detector" / speck_detector.PARAMS_FILE).unlink()
  with pytest.raises(reranking.RerankerError, match="classifier.json: its speck detector"):
    marks.load(tmp_path / "run" / "classifier.json")
