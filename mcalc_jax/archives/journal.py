"""Which images a scoring process had in its hands, so that a rerun after the process died does
not die again on the image that killed it (a crash loop), and loses no other image.

A process appends `KEY,STAGE` to its journal as each image moves through it: `decoding` (in this
process, not in a worker), `scoring` (on the devices, then reranked), `writing` (its files and
its row), and `waiting` between them. After a death, the images whose last mark is a working
stage and that have no row in scores or errors were in the process's hands: suspects.

A rerun first retries every suspect alone (read, scored and written with nothing else in
flight; its marks then end in ` alone`). A suspect whose last mark is a working stage taken
alone killed the process a second time, by itself: it gets an error row ("stopped the previous
run") and is skipped. So a poisonous file costs at most two reruns, whatever else was in flight,
and an image in flight when the run was killed from outside (kill -9, a reboot) is retried, not
failed; only a kill during a suspect's retry alone counts against that suspect.

Marks are plain appends, not fsynced: they guard against the death of the process, after which
the kernel still holds every completed write (a machine crash loses at most the marks, and so
only the retry).
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Collection, Iterable, Iterator

from mcalc_jax.base import files

DECODING, SCORING, WRITING, WAITING = "decoding", "scoring", "writing", "waiting"
_WORKING = (DECODING, SCORING, WRITING)
_ALONE = " alone"


class Journal:
  """This process's journal; `alone` marks the retry of a suspect."""

  def __init__(self, path: str):
    self._fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
    self._path = path
    self.alone = False

  def clear(self) -> None:
    """Forgets the last run's marks (once its suspects are known and those it condemned failed)."""
    os.ftruncate(self._fd, 0)

  def mark(self, key: str, stage: str) -> None:
    """`key` enters `stage` (one append: whole lines, whichever thread marks)."""
    with files.named(self._path):
      os.write(self._fd, f"{key},{stage}{_ALONE if self.alone else ''}\n".encode())

  @contextlib.contextmanager
  def working(self, key: str, stage: str) -> Iterator[None]:
    """Marks `key` in `stage` while the block runs, and waiting after it (whatever happened)."""
    self.mark(key, stage)
    try:
      yield
    finally:
      self.mark(key, WAITING)

  def close(self) -> None:
    os.close(self._fd)


def suspects(paths: Iterable[str], unfinished: Collection[str]) -> dict[str, tuple[str, bool]]:
  """The `unfinished` keys a process had in its hands when it died, by any journal at `paths`:
  each one's working stage, and whether it was alone then (so it killed the process twice)."""
  found: dict[str, tuple[str, bool]] = {}
  for path in paths:
    for key, stage in _last_marks(path).items():
      working, alone = stage.removesuffix(_ALONE), stage.endswith(_ALONE)
      if key in unfinished and working in _WORKING and not found.get(key, ("", False))[1]:
        found[key] = (working, alone)
  return found


def _last_marks(path: str) -> dict[str, str]:
  """Each key's last stage in one journal (lines that are not `KEY,STAGE` are skipped)."""
  last: dict[str, str] = {}
  with contextlib.suppress(FileNotFoundError), open(path, errors="replace") as f:
    for line in f:
      key, comma, stage = line.rstrip("\n").partition(",")
      if comma and line.endswith("\n"):
        last[key] = stage
  return last
