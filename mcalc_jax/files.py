"""Crash-safe file writes: a killed job leaves the old file, the new file or none, never half.

Every output a job may be killed while writing (score grids, overlays, CSV logs being repaired,
cross-validation predictions and fold assignments, evaluation outputs) goes through
`atomic_write`: a hidden temporary file beside the target, flushed and fsynced, then renamed
over it (a rename within one folder is atomic on POSIX file systems).
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from typing import IO


def temporary_path(path: str | os.PathLike) -> str:
  """The hidden file `path` is written to before the rename (left behind only by a kill)."""
  head, tail = os.path.split(os.fspath(path))
  return os.path.join(head, f".{tail}.tmp")


@contextlib.contextmanager
def atomic_write(path: str | os.PathLike, mode: str = "wb", **open_kwargs) -> Iterator[IO]:
  """Opens a temporary file that replaces `path` only once it is complete and on disk."""
  tmp = temporary_path(path)
  try:
    with open(tmp, mode, **open_kwargs) as f:
      yield f
      f.flush()
      os.fsync(f.fileno())
    os.replace(tmp, path)
  finally:
    with contextlib.suppress(FileNotFoundError):
      os.remove(tmp)


def write_text(path: str | os.PathLike, text: str) -> None:
  """Writes `text` (UTF-8) to `path` atomically."""
  with atomic_write(path, "w", encoding="utf-8", newline="") as f:
    f.write(text)


def remove_stale_temporary(path: str | os.PathLike) -> None:
  """Removes the temporary file a killed write of `path` may have left."""
  with contextlib.suppress(FileNotFoundError):
    os.remove(temporary_path(path))
