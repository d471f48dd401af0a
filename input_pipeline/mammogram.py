"""Reading mammograms (DICOM, PNG, PGM) into one canonical, lossless form.

`read_mammogram` returns native-bit-depth uint16 pixels with dense tissue bright and the chest
wall on the left, whatever the file's photometric interpretation, rescale or orientation, so
every later stage sees one kind of image. Every failure is a `MammogramError` subclass naming the
file and the reason. Nothing here logs tag values: patient details never reach a log.

Decisions worth knowing:
- Pixel values go through one lookup table over every stored code (at most 2**16 entries) that
  composes the bit mask, the Modality LUT / rescale, the optional VOI LUT / window and the
  MONOCHROME1 inversion; the image itself is indexed once and never converted to float.
  Transformed values that would go negative are shifted up so the range starts at 0;
  `bits_stored` is then the bits that range needs (capped at 16 by scaling).
- Chest-wall side: from (0020,0020) PatientOrientation when its row direction is A or P, else
  from the side the breast lies on. Laterality: tags, then `ReadOptions.laterality_hint`, then the
  file name (`..._L_CC`, `LEFT`, `RMLO`), then the breast side (standard display: a left breast
  lies on the left half).
- Spacing: PixelSpacing, else ImagerPixelSpacing, each only when plausible for a mammogram
  (some headers carry scaled nonsense); otherwise `default_spacing_mm` with `spacing_assumed`.
- Tiny images (the OpenREM headers hold 1-16 pixels) are read, not rejected: they are valid
  DICOM, and whether an image is large enough is the consumer's question. Only images with no
  pixels or a single value raise EmptyImageError.
- Binary PGM is parsed here (Pillow would stretch 16-bit values): native values, bits from
  maxval. PNG and other formats go through Pillow; a 16-bit container's `bits_stored` is
  `ReadOptions.bits_stored` or else the smallest of 10/12/14/16 bits that holds the brightest
  pixel (PNG rarely records it).
- DICOM files without the 128-byte preamble and 'DICM' marker are not read (NotDicomError).
- Cost is bounded before decoding: the header's size (`SizeLimits`: pixels, frames, aspect ratio)
  is checked first, a Deflated data set is measured while it inflates, and only regular files
  are opened (a FIFO or a device never blocks a batch). A malformed tag is named in the reason.
- ROI masks: `read_mask` reads them in the grid of their mammogram (same flip, any Modality).
"""

from __future__ import annotations

import dataclasses
import math
import os
import re
import stat
import warnings
import zlib
from collections.abc import Callable

import numpy as np
import pydicom
from PIL import Image, UnidentifiedImageError
from pydicom.dataelem import DataElement, RawDataElement
from pydicom.errors import InvalidDicomError
from pydicom.pixels import apply_modality_lut, apply_voi_lut, get_decoder, pixel_array

from input_pipeline import breast, errors


@dataclasses.dataclass(frozen=True)
class Orientation:
  """How the canonical form (chest wall on the left) maps to the original file of an image
  `width` pixels wide: a left-right flip or none, its own inverse. The one mapping that pixels,
  tiles, annotations and heatmaps all go through."""

  flipped: bool
  width: int

  def col(self, col: float) -> float:
    """A pixel's column (or a point in pixel-centre coordinates) in the other frame."""
    return self.width - 1 - col if self.flipped else col

  def edge(self, x: float) -> float:
    """A pixel-edge coordinate (pixel c spans [c, c + 1)) in the other frame."""
    return self.width - x if self.flipped else x

  def array(self, values: np.ndarray) -> np.ndarray:
    """A 2-D array laid on the image (pixels, a map) in the other frame."""
    return np.fliplr(values) if self.flipped else values


@dataclasses.dataclass(frozen=True)
class Mammogram:
  """A mammogram at native bit depth, chest wall on the left, with the geometry to map back.

  `pixels` is 2-D uint16 with dense tissue bright; `flipped` says whether the stored
  pixels are the original flipped left-right, so coordinates map back to the original file.
  """

  pixels: np.ndarray
  max_value: int
  bits_stored: int
  pixel_spacing_mm: tuple[float, float]
  spacing_assumed: bool
  laterality: str
  view: str
  flipped: bool
  original_shape: tuple[int, int]
  path: str

  @property
  def orientation(self) -> Orientation:
    return Orientation(self.flipped, self.original_shape[1])

  def from_original(self, row: float, col: float) -> tuple[float, float]:
    """Maps a point of the original file's pixel grid to `pixels`."""
    return row, self.orientation.col(col)

  def to_original(self, row: float, col: float) -> tuple[float, float]:
    """Maps a point of `pixels` back to the original file's pixel grid."""
    return self.from_original(row, col)  # a left-right flip is its own inverse


@dataclasses.dataclass(frozen=True)
class SizeLimits:
  """What a file's header may claim before its pixels are decoded, so that one small file (a
  compression bomb, a 3 x 65535 strip) cannot exhaust the memory of the batch it is in.

  The defaults admit every real mammogram: FFDM detectors reach about 4,800 x 6,000 pixels
  (29 MP, 50 um), digitised film about 5,000 x 7,000 (35 MP, DDSM at 43.5 um), single frame,
  sides within about 1:2.5 of each other (and header-only test files of 1 x 2 pixels).
  """

  max_pixels: int = 100_000_000  # rows x columns x frames
  max_aspect_ratio: float = 20.0  # longer side / shorter side

  def check(self, path: str, rows: int, cols: int, frames: int = 1) -> None:
    """Raises ImageTooLargeError (EmptyImageError for no pixels) unless the size is admitted."""
    if min(rows, cols, frames) < 1:
      raise errors.EmptyImageError(path, f"the header gives {rows} x {cols} pixels")
    frames_text = f" x {frames} frames" if frames > 1 else ""
    if rows * cols * frames > self.max_pixels:
      raise errors.ImageTooLargeError(
        path,
        f"the header claims {rows} x {cols} pixels{frames_text}, more than the limit of "
        f"{self.max_pixels / 1e6:g} megapixels (SizeLimits.max_pixels, --max_megapixels)",
      )
    if max(rows, cols) > self.max_aspect_ratio * min(rows, cols):
      raise errors.ImageTooLargeError(
        path,
        f"the header claims {rows} x {cols} pixels, thinner than the limit of "
        f"{self.max_aspect_ratio:g}:1 (SizeLimits.max_aspect_ratio, --max_aspect_ratio)",
      )


DEFAULT_LIMITS = SizeLimits()


@dataclasses.dataclass(frozen=True)
class ReadOptions:
  """How to read a mammogram.

  Attributes:
    apply_voi: apply the VOI LUT or window (index `voi_index`) after the Modality LUT. Off by
      default: a window throws away the raw detector range the model can learn from.
    voi_index: which of several windows / VOI LUTs to apply.
    require_mg: reject DICOMs whose Modality is present and not MG.
    default_spacing_mm: (row, col) spacing assumed when the file records none and none is known
      (`spacing_assumed` is then True).
    known_spacing_mm: (row, col) spacing of files that record none but whose source documents
      it (mini-MIAS: 0.2 mm; a manifest's `pixel_spacing_mm`); not flagged as assumed.
    laterality_hint: 'L'/'LEFT' or 'R'/'RIGHT' for files whose tags do not say (e.g. a PNG).
    view_hint: 'CC', 'MLO', ... likewise.
    filename_hints: look for laterality and view in the file name when tags do not give them.
    canonical: flip images so the chest wall is on the left.
    bits_stored: the bit depth of PNG/PGM values (e.g. 12 for 12-bit values in a 16-bit PNG).
    limits: the largest and thinnest image whose pixels are decoded.
  """

  apply_voi: bool = False
  voi_index: int = 0
  require_mg: bool = True
  default_spacing_mm: tuple[float, float] = (0.07, 0.07)
  known_spacing_mm: tuple[float, float] | None = None
  laterality_hint: str = ""
  view_hint: str = ""
  filename_hints: bool = True
  canonical: bool = True
  bits_stored: int | None = None
  limits: SizeLimits = DEFAULT_LIMITS


@dataclasses.dataclass(frozen=True)
class _Decoded:
  """What a format reader found, before the common canonicalisation."""

  pixels: np.ndarray  # uint16, dense tissue bright, the file's orientation
  bits_stored: int
  spacing_mm: tuple[float, float] | None = None
  laterality: str = ""
  view: str = ""
  chest_wall: str = ""  # 'left' | 'right' | '' (unknown: look at the breast)


VIEWS = ("CC", "MLO", "ML", "LM", "LMO", "FB", "SIO", "XCC", "XCCL", "XCCM", "AT")
_VIEW_MEANINGS = {
  "cranio-caudal": "CC",
  "medio-lateral oblique": "MLO",
  "medio-lateral": "ML",
  "latero-medial": "LM",
  "latero-medial oblique": "LMO",
  "caudo-cranial (from below)": "FB",
  "superolateral to inferomedial oblique": "SIO",
  "exaggerated cranio-caudal": "XCC",
  "cranio-caudal exaggerated laterally": "XCCL",
  "cranio-caudal exaggerated medially": "XCCM",
  "axillary tail": "AT",
}
_LATERALITY_WORDS = {"L": "L", "LEFT": "L", "R": "R", "RIGHT": "R"}
PLAUSIBLE_SPACING_MM = (0.005, 2.0)  # pixel sizes a mammogram's tags (or manifest) may give
_INFERRED_BITS = (10, 12, 14, 16)
_PGM_FIELD = re.compile(rb"(?:\s|#[^\n]*\n)*(\d+)")
_PGM_HEADER_BYTES = 2**16  # a PGM header, comments included, fits in this
_DEFLATED_HEADER_BYTES = 2**26  # a data set's room for tags besides its pixels, once inflated
_FILE_KINDS = {
  stat.S_IFDIR: "a folder",
  stat.S_IFIFO: "a FIFO",
  stat.S_IFCHR: "a character device",
  stat.S_IFBLK: "a block device",
  stat.S_IFSOCK: "a socket",
}
_CODEC_HINT = (
  "install a decoder: pip install 'mcalc_jax[codecs]' (pylibjpeg) or 'mcalc_jax[gdcm]' "
  "(python-gdcm)"
)


def spacing_options(spacing_mm: float | None, limits: SizeLimits = DEFAULT_LIMITS) -> ReadOptions:
  """Read options for a file whose source documents its pixel spacing (None: not known)."""
  known = (spacing_mm, spacing_mm) if spacing_mm else None
  return ReadOptions(known_spacing_mm=known, limits=limits)


def read_mammogram(path: str | os.PathLike, options: ReadOptions | None = None) -> Mammogram:
  """Reads a DICOM, PNG or PGM mammogram into canonical form.

  Raises:
    errors.MammogramError: a subclass naming the file and why it cannot be read.
  """
  options = options or ReadOptions()
  path = os.fspath(path)
  try:
    head = file_head(path)
    if is_dicom(head):
      decoded = _read_dicom(path, options)
    else:
      read = _read_pgm if head[:2] == b"P5" else _read_pillow
      pixels, bits = read(path, options.limits)
      decoded = _image(path, pixels, options.bits_stored or bits)
    return _canonical(path, decoded, options)
  except (errors.MammogramError, MemoryError):
    raise
  except Exception as e:  # a malformed tag value no check foresaw: still one typed, logged skip
    raise errors.UnreadableImageError(path, f"malformed file ({type(e).__name__})") from e


def read_mask(path: str | os.PathLike, like: Mammogram | None = None) -> np.ndarray:
  """Reads an ROI mask image (non-zero inside) into the pixel grid of `like`, or as stored.

  A mask is never flipped by its own content (a small ROI says nothing about where the breast
  lies) and may have any Modality; it takes the flip of the mammogram it belongs to.

  Raises:
    errors.MammogramError: unreadable or empty mask, or (UnreadableImageError) a mask whose
      shape differs from `like`'s original shape.
  """
  options = ReadOptions(require_mg=False, canonical=False, filename_hints=False)
  mask = read_mammogram(path, options).pixels > 0
  if like is None:
    return mask
  if mask.shape != like.original_shape:
    raise errors.UnreadableImageError(
      path, f"mask shape {mask.shape} differs from the mammogram's {like.original_shape}"
    )
  return mask[:, ::-1] if like.flipped else mask


def file_head(path: str | os.PathLike) -> bytes:
  """The first 132 bytes of a regular file, which tell its format (`is_dicom`).

  Raises:
    errors.MammogramError: no such file, not a regular file (a FIFO, a device, a folder: never
      waited on), or it cannot be opened (no permission, a link loop, an I/O error).
  """
  path = os.fspath(path)
  try:
    fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK)  # a FIFO opens without waiting for a writer
  except FileNotFoundError as e:
    raise errors.MammogramNotFoundError(path, "no such file (or a broken link)") from e
  except OSError as e:  # no permission, a link loop, a socket, an I/O error
    raise errors.UnreadableImageError(path, f"cannot be opened ({e.strerror or e})") from e
  try:
    mode = os.fstat(fd).st_mode
    if not stat.S_ISREG(mode):
      kind = _FILE_KINDS.get(stat.S_IFMT(mode), "a special file")
      raise errors.UnreadableImageError(path, f"not a regular file ({kind})")
    with os.fdopen(fd, "rb", closefd=False) as f:
      return f.read(132)
  except OSError as e:
    raise errors.UnreadableImageError(path, f"cannot be read ({e.strerror or e})") from e
  finally:
    os.close(fd)


def is_dicom(head: bytes) -> bool:
  """Whether a file's first bytes (`file_head`) hold the DICOM preamble's 'DICM' marker."""
  return head[128:132] == b"DICM"


def _canonical(path: str, decoded: _Decoded, options: ReadOptions) -> Mammogram:
  """Checks content, fills laterality/view/spacing from hints, flips to chest wall left."""
  pixels = decoded.pixels
  if pixels.size == 0 or pixels.min() == pixels.max():
    raise errors.EmptyImageError(path, f"image of shape {pixels.shape} has a single value")
  name_laterality, name_view = _filename_hints(path) if options.filename_hints else ("", "")
  hint = _LATERALITY_WORDS.get(options.laterality_hint.upper(), "")
  laterality = decoded.laterality or hint or name_laterality
  view = decoded.view or options.view_hint.upper() or name_view
  side = decoded.chest_wall
  if not side and (options.canonical or not laterality):  # the breast mask costs ~10 ms
    side = breast.breast_side(pixels)
  laterality = laterality or {"left": "L", "right": "R"}.get(side, "")
  flipped = options.canonical and side == "right"
  if flipped:
    pixels = np.ascontiguousarray(pixels[:, ::-1])
  spacing = decoded.spacing_mm or options.known_spacing_mm
  return Mammogram(
    pixels=pixels,
    max_value=2**decoded.bits_stored - 1,
    bits_stored=decoded.bits_stored,
    pixel_spacing_mm=tuple(float(s) for s in spacing or options.default_spacing_mm),
    spacing_assumed=spacing is None,
    laterality=laterality,
    view=view,
    flipped=flipped,
    original_shape=tuple(pixels.shape),
    path=path,
  )


def _filename_hints(path: str) -> tuple[str, str]:
  """Laterality and view from name tokens such as `1_L_CC`, `0_R-MLO`, `LEFT_CC`, `RMLO`."""
  stem = os.path.splitext(os.path.basename(path))[0].upper()
  laterality, view = "", ""
  for token in re.split(r"[^A-Z0-9]+", stem):
    side = _LATERALITY_WORDS.get(token, "")
    if not side and token[:1] in ("L", "R") and token[1:] in VIEWS:
      side, token = token[:1], token[1:]
    laterality = laterality or side
    view = view or (token if token in VIEWS else "")
  return laterality, view


# --- DICOM -----------------------------------------------------------------------------------


def _read_dicom(path: str, options: ReadOptions) -> _Decoded:
  _check_inflated_size(path, options.limits)
  _check_header(path, _parsed(path, stop_before_pixels=True), options)
  ds = _read_dataset(path)
  stored = _decode_pixels(path, ds)
  pixels, bits = _apply_value_table(path, stored, ds, options)
  return _Decoded(
    pixels=pixels,
    bits_stored=bits,
    spacing_mm=_spacing(ds),
    laterality=_dicom_laterality(ds),
    view=_dicom_view(ds),
    chest_wall=_chest_wall_from_orientation(ds),
  )


def _check_inflated_size(path: str, limits: SizeLimits) -> None:
  """A Deflated data set inflates whole in memory before pydicom reads its header: here it is
  measured while it inflates, in bounded steps, against what `limits` admit."""
  meta = _parsed(path, pydicom.filereader.read_file_meta_info)
  if meta.get("TransferSyntaxUID") != pydicom.uid.DeflatedExplicitVRLittleEndian:
    return
  group_length = meta.get("FileMetaInformationGroupLength")
  if group_length is None:
    raise errors.UnreadableImageError(
      path, "a Deflated file without FileMetaInformationGroupLength"
    )
  limit = 2 * limits.max_pixels + _DEFLATED_HEADER_BYTES  # at most 16 bits a pixel are read
  inflate, size = zlib.decompressobj(-zlib.MAX_WBITS), 0
  with open(path, "rb") as f:
    f.seek(132 + 12 + int(group_length))  # preamble, 'DICM', the group length element itself
    while (chunk := f.read(2**20)) and size <= limit:
      while chunk and size <= limit:
        size += len(inflate.decompress(chunk, 2**24))
        chunk = inflate.unconsumed_tail
  if size > limit:
    raise errors.ImageTooLargeError(
      path,
      f"its Deflated data set inflates to more than {limit / 2**20:.0f} MiB, more than "
      f"{limits.max_pixels / 1e6:g} megapixels need (SizeLimits.max_pixels, --max_megapixels)",
    )


def _check_header(path: str, ds: pydicom.Dataset, options: ReadOptions) -> None:
  """Modality, layout and size from the header alone, before any pixel is read."""
  modality = str(ds.get("Modality", "")).upper()
  if options.require_mg and modality and modality != "MG":
    raise errors.NonMammogramModalityError(
      path, f"Modality is {modality}, not MG (set ReadOptions.require_mg=False to read it)"
    )
  frames = _integer(path, ds, "NumberOfFrames", 1)
  samples = _integer(path, ds, "SamplesPerPixel", 1)
  if (frames, samples) != (1, 1):
    raise errors.UnreadableImageError(
      path,
      f"NumberOfFrames {frames}, SamplesPerPixel {samples}: only single-frame "
      "greyscale images are read",
    )
  allocated = _integer(path, ds, "BitsAllocated", 16)  # absent: the decoder names it
  if allocated not in (8, 16):
    raise errors.UnreadableImageError(path, f"BitsAllocated {allocated}: only 8 and 16 are read")
  if "Rows" in ds and "Columns" in ds:  # without them, the decoder names what is missing
    options.limits.check(path, _integer(path, ds, "Rows", 0), _integer(path, ds, "Columns", 0))


def _integer(path: str, ds: pydicom.Dataset, keyword: str, default: int) -> int:
  """An integer tag's value (`default` when absent or empty); a malformed one names the tag."""
  try:
    value = _quietly(ds.get, keyword)
    return default if value is None or value == "" else int(value)
  except (TypeError, ValueError, OverflowError) as e:
    raise errors.UnreadableImageError(path, f"{keyword} is not an integer") from e


def _number(path: str, ds: pydicom.Dataset, keyword: str, default: float) -> float:
  """A numeric tag's finite value (`default` when absent, empty or 0, as the reader always
  took it); a malformed one names the tag."""
  try:
    value = float(_quietly(ds.get, keyword) or default)
  except (TypeError, ValueError, OverflowError) as e:
    raise errors.UnreadableImageError(path, f"{keyword} is not a number") from e
  if not math.isfinite(value):
    raise errors.UnreadableImageError(path, f"{keyword} is not finite")
  return value


def _quietly(get: Callable[[str], object], keyword: str) -> object:
  """A tag's value without pydicom's warning about a malformed one (it would log the value)."""
  with warnings.catch_warnings():
    warnings.simplefilter("ignore")
    return get(keyword)


def _read_dataset(path: str) -> pydicom.Dataset:
  """The whole data set, checked for truncation and for pixel data."""
  ds = _parsed(path)
  short = [e.tag for e in ds.elements() if _is_short(e)]
  if short:
    raise errors.TruncatedError(path, f"the file ends inside element {short[-1]}")
  if "PixelData" not in ds:
    raise errors.NoPixelDataError(path, "the DICOM file has no PixelData element")
  return ds


def _parsed(path: str, read: Callable[..., pydicom.Dataset] = pydicom.dcmread, **kwargs):
  """`read(path, **kwargs)` (dcmread, or the file meta's reader) with its failures, and the
  truncation it only warns about, turned into typed errors."""
  with warnings.catch_warnings(record=True) as caught:
    warnings.simplefilter("always")  # also keeps pydicom's warnings out of logs
    try:
      ds = read(path, **kwargs)
    except InvalidDicomError as e:
      raise errors.NotDicomError(path, "not a valid DICOM file") from e
    except EOFError as e:
      raise errors.TruncatedError(path, "the DICOM header ends early") from e
    except Exception as e:  # pydicom raises many types on malformed headers
      raise errors.UnreadableImageError(
        path, f"the DICOM header cannot be parsed ({type(e).__name__})"
      ) from e
  if any("End of file reached" in str(w.message) for w in caught):
    raise errors.TruncatedError(path, "the file ends inside the encapsulated pixel data")
  return ds


def _is_short(element: DataElement | RawDataElement) -> bool:
  """Whether a raw element holds fewer bytes than its header declares (the file was cut)."""
  length = getattr(element, "length", None)
  value = element.value
  if length is None or length == 0xFFFFFFFF or not isinstance(value, bytes):
    return False
  return len(value) < length


def _decode_pixels(path: str, ds: pydicom.Dataset) -> np.ndarray:
  """The stored values, decoded; compressed syntaxes need a plugin from an extra."""
  syntax = ds.file_meta.get("TransferSyntaxUID")
  if syntax is None:
    raise errors.UnsupportedTransferSyntaxError(path, "the file meta has no TransferSyntaxUID")
  try:
    decoder = get_decoder(syntax)
  except NotImplementedError as e:
    raise errors.UnsupportedTransferSyntaxError(
      path, f"transfer syntax {syntax} ({syntax.name}) has no decoder in pydicom"
    ) from e
  if not decoder.is_available:
    raise errors.MissingCodecError(path, f"{syntax.name} pixel data: {_CODEC_HINT}")
  try:
    return pixel_array(ds)
  except Exception as e:  # decoders raise ValueError, RuntimeError, plugin-specific errors
    raise errors.UnreadableImageError(
      path, f"the pixel data cannot be decoded ({type(e).__name__}: {e})"
    ) from e


def _apply_value_table(
  path: str, stored: np.ndarray, ds: pydicom.Dataset, options: ReadOptions
) -> tuple[np.ndarray, int]:
  """Stored values -> uint16 dense-bright values and their bit depth, via one lookup table."""
  container = 8 * stored.itemsize
  bits = _integer(path, ds, "BitsStored", container) or container  # pydicom's decode checked it
  signed = _integer(path, ds, "PixelRepresentation", 0) == 1
  modality_tags = (
    "ModalityLUTSequence" if "ModalityLUTSequence" in ds else "RescaleSlope / RescaleIntercept"
  )
  has_modality = "ModalityLUTSequence" in ds or (
    _number(path, ds, "RescaleSlope", 1.0),
    _number(path, ds, "RescaleIntercept", 0.0),
  ) != (1.0, 0.0)
  voi_tags = "VOILUTSequence" if "VOILUTSequence" in ds else "WindowCenter / WindowWidth"
  has_voi = options.apply_voi and (
    "VOILUTSequence" in ds or ("WindowCenter" in ds and "WindowWidth" in ds)
  )
  inverted = str(ds.get("PhotometricInterpretation", "")).upper() == "MONOCHROME1"
  if not (signed or has_modality or has_voi or inverted or bits < container):
    return stored.astype(np.uint16, copy=False), bits

  codes = np.arange(2**container, dtype=np.int64)
  values = codes & (2**bits - 1)
  if signed:
    values = np.where(values >= 2 ** (bits - 1), values - 2**bits, values)
  if has_modality:
    values = _transformed(path, modality_tags, apply_modality_lut, values, ds)
  if has_voi:
    values = _transformed(path, voi_tags, apply_voi_lut, values, ds, index=options.voi_index)
  table, out_bits = _to_unsigned(values)
  if inverted:
    table = (2**out_bits - 1) - table
  return table[stored.view(f"u{stored.itemsize}")], out_bits


def _transformed(path: str, tags: str, transform, values: np.ndarray, ds, **kwargs) -> np.ndarray:
  """`transform` (pydicom's Modality or VOI LUT) of the code values; what fails, or maps a code
  to a non-finite value (a short LUT, an absurd slope), names its tags."""
  try:
    values = np.asarray(transform(values, ds, **kwargs), np.float64)
  except Exception as e:  # pydicom raises IndexError, ValueError, TypeError on malformed LUTs
    raise errors.UnreadableImageError(
      path, f"{tags} cannot be applied ({type(e).__name__}: {e})"
    ) from e
  if not np.isfinite(values).all():
    raise errors.UnreadableImageError(path, f"{tags} give non-finite pixel values")
  return values


def _to_unsigned(values: np.ndarray) -> tuple[np.ndarray, int]:
  """Shifts values to start at >= 0, rounds to uint16; returns them and the bits they need."""
  values = np.asarray(values, dtype=np.float64)
  values = values - min(0.0, float(values.min()))
  top = float(values.max())
  bits = max(1, round(top).bit_length())
  if bits > 16:
    values = values * (65535 / top)
    bits = 16
  return np.rint(values).astype(np.uint16), bits


def _spacing(ds: pydicom.Dataset) -> tuple[float, float] | None:
  """(row, col) mm from the first plausible spacing tag; malformed values count as absent."""
  for keyword in ("PixelSpacing", "ImagerPixelSpacing"):
    try:
      spacing = tuple(float(v) for v in ds.get(keyword) or ())
    except (TypeError, ValueError):
      continue
    if len(spacing) != 2:
      continue
    low, high = PLAUSIBLE_SPACING_MM
    if all(low <= s <= high for s in spacing):
      return spacing
  return None


def _dicom_laterality(ds: pydicom.Dataset) -> str:
  for keyword in ("ImageLaterality", "Laterality"):
    value = str(ds.get(keyword) or "").upper()
    if value in ("L", "R"):
      return value
  return ""


def _dicom_view(ds: pydicom.Dataset) -> str:
  """ViewPosition, else ViewCodeSequence, else PatientOrientation misused as a view (CBIS-DDSM)."""
  position = str(ds.get("ViewPosition") or "").upper()
  if position in VIEWS:
    return position
  for item in ds.get("ViewCodeSequence") or ():
    view = _VIEW_MEANINGS.get(str(item.get("CodeMeaning") or "").strip().lower())
    if view:
      return view
  orientation = _orientation(ds)
  return orientation[0] if len(orientation) == 1 and orientation[0] in VIEWS else ""


def _chest_wall_from_orientation(ds: pydicom.Dataset) -> str:
  """'left' when rows run towards anterior (chest wall at column 0), 'right' if posterior."""
  orientation = _orientation(ds)
  first = orientation[0][:1] if len(orientation) == 2 else ""
  return {"A": "left", "P": "right"}.get(first, "")


def _orientation(ds: pydicom.Dataset) -> list[str]:
  value = ds.get("PatientOrientation")
  if value is None:
    return []
  values = [value] if isinstance(value, str) else list(value)
  return [str(v).strip().upper() for v in values if str(v).strip()]


# --- PNG / PGM -------------------------------------------------------------------------------


def _image(path: str, pixels: np.ndarray, bits: int) -> _Decoded:
  if pixels.size and int(pixels.max()) >= 2**bits:
    raise errors.UnreadableImageError(path, f"values exceed the configured {bits} bits")
  return _Decoded(pixels=pixels, bits_stored=bits)


def _read_pgm(path: str, limits: SizeLimits) -> tuple[np.ndarray, int]:
  """A binary PGM at its native values (Pillow stretches 16-bit PGM to 0-65535); bits from maxval."""
  with open(path, "rb") as f:
    data = f.read(_PGM_HEADER_BYTES)
    fields, position = [], 2
    for _ in range(3):  # width, height, maxval, with optional comments between them
      match = _PGM_FIELD.match(data, position)
      if not match:
        raise errors.UnreadableImageError(path, "malformed PGM header")
      fields.append(int(match.group(1)))
      position = match.end()
    position += 1  # exactly one whitespace character separates maxval from the pixels
    width, height, maxval = fields
    if not 0 < maxval < 2**16:
      raise errors.UnreadableImageError(path, f"PGM maxval {maxval} is not 1-65535")
    limits.check(path, height, width)
    data += f.read()
  dtype = np.dtype(">u2" if maxval > 255 else "u1")
  count = width * height
  if len(data) - position < count * dtype.itemsize:
    raise errors.TruncatedError(path, "the PGM file ends before its pixels do")
  pixels = np.frombuffer(data, dtype, count, position).reshape(height, width)
  return pixels.astype(np.uint16), maxval.bit_length()


def _read_pillow(path: str, limits: SizeLimits) -> tuple[np.ndarray, int]:
  """PNG (or any greyscale format Pillow reads) as uint16, and its inferred bit depth."""
  try:
    image = Image.open(path)
  except UnidentifiedImageError as e:
    raise errors.NotDicomError(
      path, "neither DICOM (no 'DICM' marker) nor an image format Pillow reads"
    ) from e
  except (OSError, ValueError, Image.DecompressionBombError) as e:
    raise errors.UnreadableImageError(path, f"cannot be opened ({type(e).__name__}: {e})") from e
  with image:
    limits.check(path, image.height, image.width, getattr(image, "n_frames", 1))
    try:
      image.load()
    except OSError as e:
      if "truncated" in str(e):
        raise errors.TruncatedError(path, f"the {image.format} file ends early") from e
      raise errors.UnreadableImageError(path, f"{image.format} cannot be decoded ({e})") from e
    except Exception as e:  # Pillow plugins raise SyntaxError, ValueError, zlib.error, ...
      raise errors.UnreadableImageError(
        path, f"{image.format} cannot be decoded ({type(e).__name__}: {e})"
      ) from e
    pixels, container = _image_array(path, image)
  return pixels, _inferred_bits(pixels, container)


def _image_array(path: str, image: Image.Image) -> tuple[np.ndarray, int]:
  """Greyscale uint16 pixels and the container's bit depth (8 or 16)."""
  if image.mode.startswith("I;16"):
    return np.asarray(image).astype(np.uint16), 16
  if image.mode == "I":
    pixels = np.asarray(image)
    if pixels.size and (pixels.min() < 0 or pixels.max() > 65535):
      raise errors.UnreadableImageError(path, "32-bit values outside the 16-bit range")
    return pixels.astype(np.uint16), 16
  if image.mode == "F":
    raise errors.UnreadableImageError(path, "floating-point images are not read")
  grey = image if image.mode == "L" else image.convert("L")
  return np.asarray(grey).astype(np.uint16), 8


def _inferred_bits(pixels: np.ndarray, container: int) -> int:
  if container == 8 or not pixels.size:
    return container
  top = int(pixels.max())
  return next(b for b in _INFERRED_BITS if top < 2**b)
