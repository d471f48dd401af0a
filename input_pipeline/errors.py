"""Typed reading failures, so an archive run can log one bad file and carry on; user errors.

Every error names the file and the reason; none carries tag values, so a message can be logged
without leaking patient details. `UserError` is the base of every other mistake a user can fix
(a bad manifest, output folder or setting): jobs report these, and `MammogramError`s, in one line
(`mcalc_jax.cli.common.run`), not with a traceback.
"""

from __future__ import annotations

import os


class UserError(ValueError):
  """A bad input, output or setting the user can fix; the message names the path and the reason."""


class MammogramError(Exception):
  """A mammogram that cannot be read; `path` and `reason` say which and why."""

  def __init__(self, path: str | os.PathLike, reason: str):
    self.path = os.fspath(path)
    self.reason = reason
    super().__init__(f"{self.path}: {reason}")

  def __reduce__(self):  # keeps errors picklable across worker processes
    return type(self), (self.path, self.reason)


class MammogramNotFoundError(MammogramError, FileNotFoundError):
  """The path does not exist (also a built-in FileNotFoundError)."""


class NotDicomError(MammogramError):
  """Neither a DICOM file nor an image format the reader knows."""


class TruncatedError(MammogramError):
  """The file ends before its data does (an interrupted copy or download)."""


class NoPixelDataError(MammogramError):
  """A DICOM header without a PixelData element."""


class UnsupportedTransferSyntaxError(MammogramError):
  """A transfer syntax that no pydicom decoder handles."""


class MissingCodecError(UnsupportedTransferSyntaxError):
  """A compressed transfer syntax whose decoder is not installed; the reason names the extra."""


class NonMammogramModalityError(MammogramError):
  """Modality is not MG (only raised when ReadOptions.require_mg is set)."""


class EmptyImageError(MammogramError):
  """No pixels, or every pixel the same value: nothing to learn from or score."""


class UnreadableImageError(MammogramError):
  """The pixel data exists but cannot be decoded (corrupt PNG/PGM, bad DICOM pixel layout)."""


class ImageTooLargeError(MammogramError):
  """The header claims more pixels, or a thinner shape, than `ReadOptions.limits` admit: refused
  before decoding, so that one file cannot exhaust the memory of a whole batch."""
