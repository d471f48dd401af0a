"""read_mammogram on the real public files and on DICOMs written here with pydicom."""

from __future__ import annotations

import logging
import os
import pathlib
import pickle

import numpy as np
import pydicom
import pytest
from PIL import Image
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.encaps import encapsulate
from pydicom.pixels import get_decoder
from pydicom.uid import (
  DeflatedExplicitVRLittleEndian,
  DigitalMammographyXRayImageStorageForPresentation,
  ExplicitVRLittleEndian,
  HTJ2KLossless,
  JPEGLosslessSV1,
  JPEGLSLossless,
  RLELossless,
  generate_uid,
)

from input_pipeline import errors, mammogram
from input_pipeline.breast import breast_side
from input_pipeline.mammogram import ReadOptions, SizeLimits, read_mammogram, read_mask

CBIS_SHAPES = {
  "Mass-Test_P_00820_LEFT_CC.dcm": (4736, 2624),
  "Mass-Test_P_00820_LEFT_MLO.dcm": (4680, 2576),
  "Mass-Test_P_00820_RIGHT_CC.dcm": (4688, 2592),
  "Mass-Test_P_00820_RIGHT_MLO.dcm": (4672, 2632),
}


def phantom(shape=(64, 48), side="left", bits=12) -> np.ndarray:
  """A half-disc of 'tissue' against the chest wall on `side`, black background."""
  rows, cols = np.mgrid[: shape[0], : shape[1]]
  centre_row, radius = shape[0] / 2, 0.8 * shape[1]
  inside = (rows - centre_row) ** 2 + cols**2 < radius**2
  pixels = np.where(inside, (2**bits - 1) * (1 - cols / shape[1]), 0).astype(np.uint16)
  return pixels if side == "left" else pixels[:, ::-1].copy()


def write_dicom(path, pixels: np.ndarray, **tags) -> pathlib.Path:
  """Writes a minimal For Presentation MG file; `tags` add or override elements."""
  meta = FileMetaDataset()
  meta.MediaStorageSOPClassUID = DigitalMammographyXRayImageStorageForPresentation
  meta.MediaStorageSOPInstanceUID = generate_uid()
  meta.TransferSyntaxUID = ExplicitVRLittleEndian
  ds = Dataset()
  ds.file_meta = meta
  ds.SOPClassUID = meta.MediaStorageSOPClassUID
  ds.SOPInstanceUID = meta.MediaStorageSOPInstanceUID
  ds.Modality = "MG"
  ds.PatientName = "Doe^Jane"
  ds.Rows, ds.Columns = pixels.shape
  ds.SamplesPerPixel = 1
  ds.PhotometricInterpretation = "MONOCHROME2"
  ds.BitsAllocated, ds.BitsStored, ds.HighBit = 16, 12, 11
  ds.PixelRepresentation = 0
  ds.PixelData = pixels.astype(np.uint16).tobytes()
  for keyword, value in tags.items():
    setattr(ds, keyword, value)
  path = pathlib.Path(path)
  path.parent.mkdir(parents=True, exist_ok=True)
  ds.save_as(path, enforce_file_format=True)
  return path


# --- real files ------------------------------------------------------------------------------


@pytest.mark.parametrize("name", sorted(CBIS_SHAPES))
def test_cbis_ddsm_rle_dicoms_read_as_16_bit_with_chest_wall_left(cbis_dir, name):
  m = read_mammogram(cbis_dir / name)

  assert m.pixels.dtype == np.uint16 and m.pixels.shape == CBIS_SHAPES[name]
  assert (m.bits_stored, m.max_value) == (16, 65535)
  assert m.laterality == ("L" if "LEFT" in name else "R")  # (0020,0060) Laterality
  assert m.view == ("CC" if name.endswith("CC.dcm") else "MLO")  # PatientOrientation misused
  assert m.flipped == ("RIGHT" in name)
  assert breast_side(m.pixels) == "left"
  assert m.spacing_assumed and m.pixel_spacing_mm == ReadOptions().default_spacing_mm


def test_flipped_pixels_map_back_to_the_file(cbis_dir):
  path = cbis_dir / "Mass-Test_P_00820_RIGHT_CC.dcm"
  m = read_mammogram(path)
  stored = pydicom.dcmread(path).pixel_array

  np.testing.assert_array_equal(m.pixels, stored[:, ::-1])
  row, col = m.from_original(100, 10)
  assert m.pixels[row, col] == stored[100, 10]
  assert m.to_original(row, col) == (100, 10)


def test_openrem_header_without_pixel_data_names_the_file(openrem_dir):
  path = openrem_dir / "MG-Im-Hologic-PropProj.dcm"
  with pytest.raises(errors.NoPixelDataError, match="MG-Im-Hologic-PropProj.dcm") as info:
    read_mammogram(path)
  assert info.value.path == str(path) and "PixelData" in info.value.reason


def test_openrem_monochrome1_is_inverted_within_bits_stored(openrem_dir):
  path = openrem_dir / "MG-Im-GE-SenDS-scaled.dcm"  # 4x4 pixels, 14 bits, MONOCHROME1
  m = read_mammogram(path)

  stored = pydicom.dcmread(path).pixel_array
  np.testing.assert_array_equal(m.pixels, 16383 - stored)
  assert (m.bits_stored, m.max_value, m.flipped) == (14, 16383, False)  # PatientOrientation A\R
  assert (m.laterality, m.view) == ("L", "CC")  # ImageLaterality, ViewPosition
  # PixelSpacing (53.96 mm) is implausible after the file was scaled: ImagerPixelSpacing is used.
  assert m.pixel_spacing_mm == pytest.approx((0.0941, 0.0941), abs=1e-4)
  assert not m.spacing_assumed


def test_openrem_voi_lut_applies_only_when_asked(openrem_dir):
  path = openrem_dir / "MG-Im-GE_Seno_1_ForPresentation.dcm"  # VOILUTSequence x3, SIGMOID
  stored = sorted(pydicom.dcmread(path).pixel_array.ravel())

  raw = read_mammogram(path)
  windowed = read_mammogram(path, ReadOptions(apply_voi=True))
  softer = read_mammogram(path, ReadOptions(apply_voi=True, voi_index=2))

  assert sorted(raw.pixels.ravel()) == stored and raw.bits_stored == 12
  assert sorted(windowed.pixels.ravel()) != stored and windowed.bits_stored == 12  # LUT: 12 bits
  assert sorted(softer.pixels.ravel()) != sorted(windowed.pixels.ravel())


@pytest.mark.parametrize(
  "name, bits",
  [
    ("breast_cancer_classifier/1_L_CC.png", 16),
    ("breast_cancer_classifier/2_R_CC.png", 16),
    ("gmic_exam0/0_L-MLO.png", 12),
    ("gmic_exam0/0_R-CC.png", 12),
  ],
)
def test_nyu_16_bit_pngs_keep_their_value_range(nyu_dir, name, bits):
  m = read_mammogram(nyu_dir / name)

  assert m.pixels.dtype == np.uint16 and m.max_value == 2**bits - 1
  assert int(m.pixels.max()) == m.max_value
  assert m.laterality == ("L" if "_L" in name else "R")  # from the file name
  assert m.flipped == (m.laterality == "R")
  assert m.spacing_assumed


def test_mias_pngs_read_as_8_bit_with_side_inferred(mias_dir):
  right, left = (read_mammogram(mias_dir / "images" / f"mdb00{n}.png") for n in (1, 2))

  assert (right.bits_stored, right.max_value, right.pixels.shape) == (8, 255, (1024, 1024))
  assert (right.laterality, right.flipped) == ("R", True)  # odd MIAS numbers: right breasts
  assert (left.laterality, left.flipped) == ("L", False)


# --- DICOMs written by the tests -------------------------------------------------------------


def test_monochrome1_makes_dense_tissue_bright(tmp_path):
  pixels = phantom()
  path = write_dicom(tmp_path / "m1.dcm", 4095 - pixels, PhotometricInterpretation="MONOCHROME1")

  np.testing.assert_array_equal(read_mammogram(path).pixels, pixels)


def test_rescale_slope_and_intercept_widen_the_range(tmp_path):
  pixels = phantom()
  path = write_dicom(tmp_path / "rescaled.dcm", pixels, RescaleSlope=2, RescaleIntercept=10)
  m = read_mammogram(path)

  np.testing.assert_array_equal(m.pixels, 2 * pixels + 10)
  assert m.bits_stored == 14  # 2 * 4095 + 10 = 8200 needs 14 bits


def test_negative_rescaled_values_shift_to_start_at_zero(tmp_path):
  pixels = phantom()
  path = write_dicom(tmp_path / "offset.dcm", pixels, RescaleSlope=1, RescaleIntercept=-1000)
  m = read_mammogram(path)

  np.testing.assert_array_equal(m.pixels, pixels)  # -1000..3095 shifted back to 0..4095
  assert m.bits_stored == 12


def test_bits_above_bits_stored_are_ignored(tmp_path):
  pixels = phantom()
  path = write_dicom(tmp_path / "overlay.dcm", pixels | 0x8000)  # an overlay bit in bit 15

  np.testing.assert_array_equal(read_mammogram(path).pixels, pixels)


def test_signed_pixels_become_unsigned(tmp_path):
  pixels = phantom()
  signed = (pixels.astype(np.int32) - 2048).astype(np.int16)
  path = write_dicom(tmp_path / "signed.dcm", signed.view(np.uint16), PixelRepresentation=1)

  np.testing.assert_array_equal(read_mammogram(path).pixels, pixels)


def test_window_is_applied_when_asked(tmp_path):
  pixels = phantom()
  path = write_dicom(tmp_path / "window.dcm", pixels, WindowCenter=1024, WindowWidth=1024)
  m = read_mammogram(path, ReadOptions(apply_voi=True))

  assert m.pixels[pixels >= 1536].min() == 4095 and m.pixels[pixels < 512].max() == 0
  np.testing.assert_array_equal(read_mammogram(path).pixels, pixels)  # off by default


def test_spacing_from_tags_or_assumed(tmp_path):
  pixels = phantom()
  imager = write_dicom(tmp_path / "imager.dcm", pixels, ImagerPixelSpacing=[0.085, 0.085])
  both = write_dicom(
    tmp_path / "both.dcm", pixels, PixelSpacing=[0.07, 0.07], ImagerPixelSpacing=[0.085, 0.085]
  )
  none = write_dicom(tmp_path / "none.dcm", pixels)

  assert read_mammogram(imager).pixel_spacing_mm == (0.085, 0.085)
  assert read_mammogram(both).pixel_spacing_mm == (0.07, 0.07)
  m = read_mammogram(none, ReadOptions(default_spacing_mm=(0.1, 0.1)))
  assert m.spacing_assumed and m.pixel_spacing_mm == (0.1, 0.1)


def test_orientation_from_patient_orientation_else_the_breast(tmp_path):
  right = phantom(side="right")
  tagged = write_dicom(
    tmp_path / "tagged.dcm",
    right,
    PatientOrientation=["P", "L"],
    ImageLaterality="R",
    ViewPosition="MLO",
  )
  untagged = write_dicom(tmp_path / "untagged.dcm", right)

  m = read_mammogram(tagged)
  assert (m.flipped, m.laterality, m.view) == (True, "R", "MLO")
  m = read_mammogram(untagged)
  assert (m.flipped, m.laterality) == (True, "R")  # inferred from the breast side
  np.testing.assert_array_equal(m.pixels, phantom(side="left"))
  assert not read_mammogram(untagged, ReadOptions(canonical=False)).flipped


def test_truncated_file(tmp_path):
  path = write_dicom(tmp_path / "cut.dcm", phantom())
  path.write_bytes(path.read_bytes()[:-1000])  # an interrupted copy

  with pytest.raises(errors.TruncatedError, match="cut.dcm"):
    read_mammogram(path)


def test_half_downloaded_rle_dicom_is_truncated(cbis_dir, tmp_path):
  path = tmp_path / "partial.dcm"
  path.write_bytes((cbis_dir / "Mass-Test_P_00820_LEFT_CC.dcm").read_bytes()[:4_000_000])

  with pytest.raises(errors.TruncatedError, match="partial.dcm"):
    read_mammogram(path)


def test_not_dicom_and_not_an_image(tmp_path):
  path = tmp_path / "notes.dcm"
  path.write_text("not a mammogram\n" * 20)

  with pytest.raises(errors.NotDicomError, match="notes.dcm"):
    read_mammogram(path)


def test_missing_file_is_also_a_file_not_found_error(tmp_path):
  with pytest.raises(FileNotFoundError, match="absent.dcm") as info:
    read_mammogram(tmp_path / "absent.dcm")
  assert isinstance(info.value, errors.MammogramNotFoundError)


def test_non_mg_modality_is_rejected_unless_allowed(tmp_path):
  path = write_dicom(tmp_path / "ct.dcm", phantom(), Modality="CT")

  with pytest.raises(errors.NonMammogramModalityError, match="CT"):
    read_mammogram(path)
  assert read_mammogram(path, ReadOptions(require_mg=False)).pixels.shape == (64, 48)


def test_constant_image_is_empty(tmp_path):
  path = write_dicom(tmp_path / "flat.dcm", np.full((16, 16), 7, np.uint16))

  with pytest.raises(errors.EmptyImageError, match="single value"):
    read_mammogram(path)


@pytest.mark.parametrize(
  "pixels, tags, reason",
  [
    (phantom(), dict(BitsStored=20, HighBit=19), "Bits Stored"),
    (np.concatenate([phantom(), phantom()]), dict(Rows=64, NumberOfFrames=2), "single-frame"),
  ],
)
def test_layouts_the_reader_does_not_handle(tmp_path, pixels, tags, reason):
  path = write_dicom(tmp_path / "odd.dcm", pixels, **tags)

  with pytest.raises(errors.UnreadableImageError, match=reason):
    read_mammogram(path)


def test_rle_compressed_reads_like_native(tmp_path):
  pixels = phantom()
  path = write_dicom(tmp_path / "rle.dcm", 4095 - pixels, PhotometricInterpretation="MONOCHROME1")
  ds = pydicom.dcmread(path)
  ds.compress(RLELossless)  # pydicom's own numpy RLE codec, as in the CBIS-DDSM files
  ds.save_as(path)

  np.testing.assert_array_equal(read_mammogram(path).pixels, pixels)


def test_compressed_syntax_without_its_plugin_names_the_extra(tmp_path):
  # highdicom (extra dicom, in dev) brings a JPEG-LS decoder: then another syntax serves
  missing = [
    s for s in (JPEGLSLossless, JPEGLosslessSV1, HTJ2KLossless) if not get_decoder(s).is_available
  ]
  if not missing:
    pytest.skip("decoders for JPEG-LS, JPEG Lossless and HTJ2K are all installed")
  path = write_dicom(tmp_path / "jls.dcm", phantom())
  ds = pydicom.dcmread(path)
  ds.file_meta.TransferSyntaxUID = missing[0]
  ds.PixelData = encapsulate([b"\xff\xd8 not really compressed"])
  ds.save_as(path)

  with pytest.raises(errors.MissingCodecError, match=r"mcalc_jax\[codecs\]"):
    read_mammogram(path)


def test_unknown_transfer_syntax(tmp_path):
  path = write_dicom(tmp_path / "odd.dcm", phantom())
  ds = pydicom.dcmread(path)
  ds.file_meta.TransferSyntaxUID = "1.2.3.4.5.6"
  ds.PixelData = encapsulate([b"opaque"])
  ds.save_as(path)

  with pytest.raises(errors.UnsupportedTransferSyntaxError, match="1.2.3.4.5.6"):
    read_mammogram(path)


def test_patient_name_never_reaches_logs_or_errors(tmp_path, caplog):
  caplog.set_level(logging.DEBUG)
  good = write_dicom(tmp_path / "good.dcm", phantom())
  bad = write_dicom(tmp_path / "bad.dcm", phantom(), Modality="CT")

  read_mammogram(good)
  with pytest.raises(errors.MammogramError) as info:
    read_mammogram(bad)
  assert "Doe" not in caplog.text and "Doe" not in str(info.value)


def test_errors_survive_pickling_to_worker_processes(tmp_path):
  error = errors.TruncatedError(tmp_path / "x.dcm", "the file ends early")

  copy = pickle.loads(pickle.dumps(error))
  assert type(copy) is errors.TruncatedError and str(copy) == str(error)


# --- PNG -------------------------------------------------------------------------------------


def test_12_bit_values_in_a_16_bit_png(tmp_path):
  path = tmp_path / "scan_R_MLO.png"
  Image.fromarray(phantom(side="right")).save(path)  # mode I;16

  m = read_mammogram(path)
  assert (m.bits_stored, m.laterality, m.view, m.flipped) == (12, "R", "MLO", True)
  assert read_mammogram(path, ReadOptions(bits_stored=16)).max_value == 65535


def test_pgm_keeps_native_values_and_bits_from_maxval(tmp_path):
  pixels = phantom(bits=12)
  path = tmp_path / "film.pgm"
  path.write_bytes(b"P5\n# a scanner comment\n48 64\n4095\n" + pixels.astype(">u2").tobytes())

  m = read_mammogram(path)
  np.testing.assert_array_equal(m.pixels, pixels)  # Pillow would stretch them to 0-65535
  assert m.bits_stored == 12
  path.write_bytes(path.read_bytes()[:-10])
  with pytest.raises(errors.TruncatedError, match="film.pgm"):
    read_mammogram(path)


def test_bad_and_truncated_pngs(tmp_path):
  good = tmp_path / "good.png"
  Image.fromarray(np.random.default_rng(0).integers(0, 255, (256, 256), np.uint8)).save(good)
  truncated, corrupt = tmp_path / "truncated.png", tmp_path / "corrupt.png"
  truncated.write_bytes(good.read_bytes()[:2000])
  data = bytearray(good.read_bytes())
  data[100:400] = bytes(300)
  corrupt.write_bytes(bytes(data))

  with pytest.raises(errors.TruncatedError, match="truncated.png"):
    read_mammogram(truncated)
  with pytest.raises(errors.UnreadableImageError, match="corrupt.png"):
    read_mammogram(corrupt)


def test_roi_mask_follows_its_mammogram_not_its_own_content(tmp_path):
  mammogram = read_mammogram(write_dicom(tmp_path / "r.dcm", phantom(side="right")))
  roi = np.zeros((64, 48), np.uint16)
  roi[5:9, 2:6] = 255  # near the left edge of the file: would look like a left 'breast'
  path = write_dicom(tmp_path / "roi.dcm", roi, Modality="OT")

  mask = read_mask(path, like=mammogram)
  assert mammogram.flipped and mask[5:9, 42:46].all() and mask.sum() == 16
  np.testing.assert_array_equal(read_mask(path), roi > 0)
  small = write_dicom(tmp_path / "crop.dcm", roi[:10, :10], Modality="OT")
  with pytest.raises(errors.UnreadableImageError, match="shape"):
    read_mask(small, like=mammogram)


# --- adversarial files: bounded cost, named reasons ---------------------------------------------


def deflated_bomb(path) -> pathlib.Path:
  """A Deflated DICOM of a few kilobytes whose data set inflates to 70 MiB of zero pixels."""
  write_dicom(path, phantom(), Rows=6000, Columns=6000)
  ds = pydicom.dcmread(path)
  ds.file_meta.TransferSyntaxUID = DeflatedExplicitVRLittleEndian
  ds.PixelData = bytes(6000 * 6000 * 2)
  ds.save_as(path)
  return path


LIMITS = ReadOptions(limits=SizeLimits(max_pixels=100_000, max_aspect_ratio=8))


@pytest.mark.parametrize(
  "write, claim",
  [
    (lambda p: write_dicom(p / "big.dcm", phantom(), Rows=4000, Columns=3000), "4000 x 3000"),
    (lambda p: write_dicom(p / "thin.dcm", phantom(), Rows=16, Columns=192), "thinner than"),
    (lambda p: deflated_bomb(p / "bomb.dcm"), "inflates to more than"),
    (lambda p: Image.fromarray(np.ones((2, 300), np.uint8)).save(p / "a.png"), "2 x 300"),
    (lambda p: (p / "b.pgm").write_bytes(b"P5\n3000 4000\n255\n" + bytes(10)), "4000 x 3000"),
  ],
)
def test_a_header_claiming_too_much_is_refused_before_decoding(tmp_path, monkeypatch, write, claim):
  write(tmp_path)
  [path] = tmp_path.iterdir()
  monkeypatch.setattr(mammogram, "pixel_array", lambda ds: pytest.fail("decoded"))

  with pytest.raises(errors.ImageTooLargeError, match=claim):
    read_mammogram(path, LIMITS)


def set_raw(path: pathlib.Path, placeholder: bytes, value: bytes) -> pathlib.Path:
  """`path` with a tag value replaced by bytes pydicom would refuse to write."""
  path.write_bytes(path.read_bytes().replace(placeholder, value))
  return path


@pytest.mark.parametrize(
  "tags, raw, reason",
  [
    (dict(RescaleSlope="9.99"), b"nan ", "RescaleSlope is not finite"),
    (dict(RescaleSlope="9.99"), b"-inf", "RescaleSlope is not finite"),
    (dict(RescaleIntercept="9.99"), b"lots", "RescaleIntercept is not a number"),
    (dict(NumberOfFrames="99"), b"x ", "NumberOfFrames is not an integer"),
  ],
)
def test_a_malformed_tag_is_named(tmp_path, tags, raw, reason):
  path = write_dicom(tmp_path / "odd.dcm", phantom(), **tags)
  set_raw(path, b"9.99" if len(raw) == 4 else b"99", raw)

  with pytest.raises(errors.UnreadableImageError, match=reason):
    read_mammogram(path)


def test_a_modality_lut_shorter_than_its_descriptor_is_named(tmp_path):
  lut = Dataset()
  lut.LUTDescriptor, lut.ModalityLUTType = [4096, 0, 12], "US"
  lut.LUTData = np.arange(3, dtype="<u2").tobytes()
  path = write_dicom(tmp_path / "lut.dcm", phantom(), ModalityLUTSequence=[lut])

  with pytest.raises(errors.UnreadableImageError, match="ModalityLUTSequence cannot be applied"):
    read_mammogram(path)


def test_a_fifo_is_refused_without_waiting_for_a_writer(tmp_path):
  os.mkfifo(tmp_path / "pipe.dcm")

  with pytest.raises(errors.UnreadableImageError, match=r"not a regular file \(a FIFO\)"):
    read_mammogram(tmp_path / "pipe.dcm")
