"""The images an archive scoring job reads: a folder's or a manifest's, each with its key.

Every DICOM (.dcm, .dicom, or no extension with a DICOM preamble), PNG and PGM under a folder,
recursively, in sorted order (hidden entries excluded); a single image; or the images of a
manifest CSV (`input_pipeline.manifest`), with its findings as circles to draw. A key is the
first 16 hex digits of the sha1 of the image's path relative to the folder (or the manifest's
folder): stable across reruns, and never a patient tag. `mcalc_jax.archives.dicomweb` gives a server's
instances the same shape (`InputLike`).

Discovery never aborts on an entry: a broken link, a link loop, a file without permission, a
FIFO or device, a name that is not UTF-8, each becomes an input whose reading fails (one error
row, `input_pipeline.mammogram.file_head` never waits on a FIFO); a folder that cannot be listed
becomes an `Unlisted` input, whose error row says so.

No JAX here: inputs are pickled to the decode worker processes (`mcalc_jax.archives.decoding`).
"""

from __future__ import annotations

import collections
import dataclasses
import hashlib
import os
from collections.abc import Iterable
from typing import Protocol

import pydicom

from input_pipeline import errors, manifest
from input_pipeline.mammogram import (
  DEFAULT_LIMITS,
  Mammogram,
  SizeLimits,
  file_head,
  is_dicom,
  read_mammogram,
  spacing_options,
)
from mcalc_jax.whole_image.tiling import Circle

IMAGE_SUFFIXES = (".dcm", ".dicom", ".png", ".pgm")
_DEFAULT_RADIUS = 50.0  # pixels, for findings without a radius


@dataclasses.dataclass(frozen=True)
class Input:
  """One image to score: its key, where it is, and the findings to draw."""

  key: str
  path: str
  relative_path: str
  annotations: tuple[Circle, ...] = ()
  pixel_spacing_mm: float | None = None  # documented by the manifest's source, if the file lacks it
  limits: SizeLimits = DEFAULT_LIMITS

  def read(self, with_header: bool = False) -> tuple[Mammogram, pydicom.Dataset | None]:
    """The decoded image and, when asked and the file is DICOM, its header (for DICOM results)."""
    options = spacing_options(self.pixel_spacing_mm, self.limits)
    mammogram = read_mammogram(self.path, options)
    if not with_header or not is_dicom(file_head(self.path)):
      return mammogram, None
    return mammogram, pydicom.dcmread(self.path, stop_before_pixels=True)


@dataclasses.dataclass(frozen=True)
class Unlisted:
  """A folder of the archive that cannot be listed: its error row says why (its images are not
  known, so they are not silently missing)."""

  key: str
  path: str
  relative_path: str
  reason: str
  annotations: tuple[Circle, ...] = ()

  def read(self, with_header: bool = False) -> tuple[Mammogram, pydicom.Dataset | None]:
    raise errors.UnreadableImageError(self.path, self.reason)


class InputLike(Protocol):
  """What scoring needs of an input: an `Input` (a file) or a `dicomweb.DicomwebInput`."""

  key: str
  path: str
  relative_path: str
  annotations: tuple[Circle, ...]

  def read(self, with_header: bool = False) -> tuple[Mammogram, pydicom.Dataset | None]: ...


def image_key(relative_path: str) -> str:
  """A stable, non-identifying name for an image: a hash of its path relative to the input (its
  bytes as the file system holds them, so a name that is not UTF-8 has a key too)."""
  return hashlib.sha1(os.fsencode(relative_path)).hexdigest()[:16]


def find_inputs(source: str, limits: SizeLimits = DEFAULT_LIMITS) -> list[Input | Unlisted]:
  """The images of a folder (recursive, sorted, hidden entries skipped), of a manifest, or the
  single image `source` names; each read within `limits`."""
  if os.path.isfile(source):
    if _is_image(source):
      name = os.path.basename(source)
      return [Input(image_key(name), source, name, limits=limits)]
    return _manifest_inputs(source, limits)
  if not os.path.isdir(source):
    raise FileNotFoundError(f"--input {source} is neither a folder nor a manifest file")
  found: list[Input | Unlisted] = []

  def unlisted(error: OSError) -> None:
    relative = _relative(error.filename, source)
    reason = f"the folder cannot be listed ({error.strerror or error})"
    found.append(Unlisted(image_key(relative), error.filename, relative, reason))

  for folder, dirs, names in os.walk(source, onerror=unlisted):
    dirs[:] = sorted(d for d in dirs if not d.startswith("."))
    for name in sorted(names):
      path = os.path.join(folder, name)
      if not name.startswith(".") and _is_image(path):
        relative = _relative(path, source)
        found.append(Input(image_key(relative), path, relative, limits=limits))
  return found


def _relative(path: str, source: str) -> str:
  return os.path.relpath(path, source).replace(os.sep, "/")


def _is_image(path: str) -> bool:
  """By its suffix, or for a file without one by its DICOM preamble; an entry that cannot be
  opened counts as an image, so that reading it gives its error row."""
  suffix = os.path.splitext(path)[1].lower()
  if suffix:
    return suffix in IMAGE_SUFFIXES
  try:
    return is_dicom(file_head(path))
  except errors.MammogramError:
    return True


def _manifest_inputs(path: str, limits: SizeLimits) -> list[Input]:
  base = os.path.dirname(os.path.abspath(path))
  return inputs_from_findings(manifest.read_manifest(path), base, limits)


def inputs_from_findings(
  findings: Iterable[manifest.Finding], base: str, limits: SizeLimits = DEFAULT_LIMITS
) -> list[Input]:
  """One input per image of `findings` (absolute paths), keyed by its path relative to `base`,
  with its findings as circles to draw and the spacing its source documents."""
  circles: dict[str, list[Circle]] = collections.defaultdict(list)
  spacing: dict[str, float | None] = {}
  for finding in findings:
    found = circles[finding.image_path]  # creates the entry: images without findings count too
    spacing[finding.image_path] = spacing.get(finding.image_path) or finding.pixel_spacing_mm
    if finding.row is not None and finding.col is not None:
      found.append(Circle(finding.row, finding.col, finding.radius or _DEFAULT_RADIUS))
  inputs = []
  for image_path, drawn in circles.items():
    relative = _relative(image_path, base)
    key = image_key(relative)
    inputs.append(Input(key, image_path, relative, tuple(drawn), spacing[image_path], limits))
  return inputs
