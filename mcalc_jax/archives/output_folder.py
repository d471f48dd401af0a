"""An output folder of `mcalc-score`: one writer at a time, one setting for all its images.

`claimed(output, settings)` holds an exclusive lock on OUTPUT/mcalc-score.I.lock (I: the process
index; every run has a process 0, so a second run refuses in one line instead of writing the
same rows) and checks the folder's record of what produced its images, settings.json (models,
tiling, thresholds, reranker): the first run writes it, a resume with other settings refuses in
one line, so that no output mixes images scored two ways. An output written before the record
existed takes the resuming run's settings. `check_outside` refuses an output inside the input
folder (by real path: a symlink does not hide it), whose overlays a rerun would read as images.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
from collections.abc import Iterator, Mapping

from input_pipeline.errors import UserError
from mcalc_jax.base import files

SETTINGS_FILE = "settings.json"


class OutputFolderError(UserError):
  """An output this run may not write: another process writes it, other settings made it, or
  it lies inside the input."""


@contextlib.contextmanager
def claimed(output: str, settings: Mapping[str, object], index: int = 0) -> Iterator[None]:
  """Holds `output` (created if need be) for process `index` while the block runs, once its
  recorded settings are `settings` (recorded now if it has none)."""
  os.makedirs(output, exist_ok=True)
  lock = os.path.join(output, f"mcalc-score.{index}.lock")
  fd = os.open(lock, os.O_WRONLY | os.O_CREAT, 0o644)
  try:
    try:
      fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError as e:
      raise OutputFolderError(
        f"{output}: another mcalc-score process is writing here (it holds {lock}): wait for it "
        "to finish, or use another --output"
      ) from e
    _check_settings(output, settings)
    yield
  finally:
    os.close(fd)  # and with it the lock


def _check_settings(output: str, settings: Mapping[str, object]) -> None:
  path = os.path.join(output, SETTINGS_FILE)
  settings = json.loads(json.dumps(settings))  # as they read back: lists, not tuples
  if not os.path.exists(path):
    files.write_text(path, json.dumps(settings, indent=2, sort_keys=True) + "\n")
    return
  try:
    with open(path, encoding="utf-8") as f:
      recorded = json.load(f)
  except ValueError as e:
    raise OutputFolderError(f"{path}: damaged ({e}); use another --output") from e
  differ = sorted(k for k in set(recorded) | set(settings) if recorded.get(k) != settings.get(k))
  if differ:
    raise OutputFolderError(
      f"{path}: this output was scored with {_items(recorded, differ)}, this run has "
      f"{_items(settings, differ)}: use another --output, or the same settings"
    )


def _items(settings: Mapping[str, object], keys: list[str]) -> str:
  return ", ".join(f"{k}={settings.get(k, '(none)')}" for k in keys)


def check_outside(output: str, source: str) -> None:
  """Raises OutputFolderError if `output` is the folder `source` or lies inside it."""
  if not os.path.isdir(source):
    return
  inside, out = os.path.realpath(source), os.path.realpath(output)
  if out == inside or out.startswith(inside.rstrip(os.sep) + os.sep):
    raise OutputFolderError(
      f"{output}: the output lies inside --input {source}, where a rerun would read its "
      "overlays as mammograms: write it elsewhere"
    )
