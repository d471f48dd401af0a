"""Crash-safe file writes: a killed job leaves the old file, the new file or none, never half.

Every output a job may be killed while writing (score grids, overlays, CSV logs being repaired,
cross-validation predictions and fold assignments, evaluation outputs) goes through
`atomic_write`: a hidden temporary file beside the target, flushed and fsynced, then renamed
over it (a rename within one folder is atomic on POSIX file systems). A temporary's name holds
its process's id, so two processes writing one file never write into each other's temporary.
"""

from __future__ import annotations

import contextlib
import errno
import os
from collections.abc import Iterable, Iterator
from typing import IO

_SUFFIX = ".tmp"


def printable(text: str) -> str:
  """`text` with the undecodable bytes of a file name (surrogate escapes) written as backslash
  escapes: a log or CSV line that names such a file stays valid UTF-8."""
  return text.encode(errors="backslashreplace").decode()


def temporary_path(path: str | os.PathLike) -> str:
  """The hidden file this process writes `path` to before the rename (left only by a kill)."""
  head, tail = os.path.split(os.fspath(path))
  return os.path.join(head, f".{tail}.{os.getpid()}{_SUFFIX}")


@contextlib.contextmanager
def named(path: str | os.PathLike) -> Iterator[None]:
  """Adds `path` to an OSError raised without one (a full disk's write names no file)."""
  try:
    yield
  except OSError as e:
    if e.filename is not None or e.errno is None:
      raise
    raise OSError(e.errno, e.strerror, os.fspath(path)) from e


@contextlib.contextmanager
def atomic_write(path: str | os.PathLike, mode: str = "wb", **open_kwargs) -> Iterator[IO]:
  """Opens a temporary file that replaces `path` only once it is complete and on disk."""
  tmp = temporary_path(path)
  try:
    with named(path), open(tmp, mode, **open_kwargs) as f:
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


def remove_stale_temporaries(folder: str | os.PathLike, names: Iterable[str]) -> None:
  """Removes the temporaries that killed writes of the files `names` in `folder` left, whichever
  process wrote them: call it only where no live process writes those files (a job holding the
  folder's lock), in one pass over the folder however many names."""
  names = set(names)
  with os.scandir(folder) as entries:
    stale = [entry.path for entry in entries if _target(entry.name) in names]
  for path in stale:
    with contextlib.suppress(FileNotFoundError):
      os.remove(path)


def _target(name: str) -> str:
  """The file a temporary's `name` was to become ('' if it is no temporary); with or without
  the process id that temporaries written before it carried none of."""
  if not (name.startswith(".") and name.endswith(_SUFFIX)):
    return ""
  stem = name[1 : -len(_SUFFIX)]
  target, _, pid = stem.rpartition(".")
  return target if pid.isdigit() else stem


def check_writable(path: str | os.PathLike) -> None:
  """Raises OSError naming the folder (or `path`) unless a file `path` can be written there:
  checked before long work, so a job fails in a second rather than after it."""
  path = os.path.abspath(os.fspath(path))
  folder = os.path.dirname(path)
  if os.path.isdir(path):
    raise IsADirectoryError(errno.EISDIR, "is a folder, not a file", path)
  if not os.path.isdir(folder):
    raise FileNotFoundError(errno.ENOENT, "no such folder", folder)
  if not os.access(folder, os.W_OK):
    raise PermissionError(errno.EACCES, "the folder is not writable", folder)
