"""The images an archive scoring job reads: a folder's or a manifest's, each with its key.

Every DICOM (.dcm, .dicom, or no extension with a DICOM preamble), PNG and PGM under a folder,
recursively, in sorted order (hidden entries and the output folder excluded); or the images of a
manifest CSV (`input_pipeline.manifest`), with its findings as circles to draw. A key is the
first 16 hex digits of the sha1 of the image's path relative to the folder (or the manifest's
folder): stable across reruns, and never a patient tag. `mcalc_jax.dicomweb` gives a server's
instances the same shape (`InputLike`).

No JAX here: inputs are pickled to the decode worker processes (`mcalc_jax.decoding`).
"""

from __future__ import annotations

import collections
import dataclasses
import hashlib
import os
from collections.abc import Iterable
from typing import Protocol

import pydicom

from input_pipeline import manifest
from input_pipeline.mammogram import Mammogram, read_mammogram, spacing_options
from mcalc_jax.tiling import Circle

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

  def read(self, with_header: bool = False) -> tuple[Mammogram, pydicom.Dataset | None]:
    """The decoded image and, when asked and the file is DICOM, its header (for DICOM results)."""
    mammogram = read_mammogram(self.path, spacing_options(self.pixel_spacing_mm))
    if not with_header or not _is_dicom(self.path):
      return mammogram, None
    return mammogram, pydicom.dcmread(self.path, stop_before_pixels=True)


class InputLike(Protocol):
  """What scoring needs of an input: an `Input` (a file) or a `dicomweb.DicomwebInput`."""

  key: str
  path: str
  relative_path: str
  annotations: tuple[Circle, ...]

  def read(self, with_header: bool = False) -> tuple[Mammogram, pydicom.Dataset | None]: ...


def image_key(relative_path: str) -> str:
  """A stable, non-identifying name for an image: a hash of its path relative to the input."""
  return hashlib.sha1(relative_path.encode()).hexdigest()[:16]


def find_inputs(source: str, exclude: str = "") -> list[Input]:
  """The images of a folder (recursive, sorted, `exclude` and hidden entries skipped) or manifest."""
  if os.path.isfile(source):
    return _manifest_inputs(source)
  if not os.path.isdir(source):
    raise FileNotFoundError(f"--input {source} is neither a folder nor a manifest file")
  exclude = os.path.abspath(exclude) if exclude else ""
  found = []
  for folder, dirs, names in os.walk(source):
    dirs[:] = sorted(
      d
      for d in dirs
      if not d.startswith(".") and os.path.abspath(os.path.join(folder, d)) != exclude
    )
    for name in sorted(names):
      path = os.path.join(folder, name)
      if not name.startswith(".") and _is_image(path):
        relative = os.path.relpath(path, source).replace(os.sep, "/")
        found.append(Input(image_key(relative), path, relative))
  return found


def _is_image(path: str) -> bool:
  suffix = os.path.splitext(path)[1].lower()
  if suffix:
    return suffix in IMAGE_SUFFIXES
  return _is_dicom(path)


def _is_dicom(path: str) -> bool:
  with open(path, "rb") as f:
    return f.read(132)[128:] == b"DICM"


def _manifest_inputs(path: str) -> list[Input]:
  return inputs_from_findings(manifest.read_manifest(path), os.path.dirname(os.path.abspath(path)))


def inputs_from_findings(findings: Iterable[manifest.Finding], base: str) -> list[Input]:
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
    relative = os.path.relpath(image_path, base).replace(os.sep, "/")
    key = image_key(relative)
    inputs.append(Input(key, image_path, relative, tuple(drawn), spacing[image_path]))
  return inputs
