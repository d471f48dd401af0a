"""Append-only CSV logs keyed by their first column, whose rows survive kill -9 whole.

A long job (scoring an archive, say) records each finished item as one row, so that a rerun
skips what is done. Each row is one write of a whole line, fsynced; reading drops a torn last
line and repeated keys. Logs of several processes (shards) merge into one, a row per key.
"""

from __future__ import annotations

import csv
import io
import os
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any

from input_pipeline.errors import UserError
from mcalc_jax.base import files


class CsvLog:
  """An open log: `append` writes one row; opening repairs a torn or repeated tail first, and
  upgrades a log an earlier version wrote with fewer columns (its rows get empty new cells)."""

  def __init__(self, path: str, columns: tuple[str, ...]):
    header, rows, clean = read_log(path)
    if header is not None and tuple(header) != columns:
      if tuple(header) != columns[: len(header)]:
        raise UserError(
          f"{path} has columns {header}, this run writes {list(columns)}: "
          "use another --output (or the same --keep_identifiers as before)"
        )
      rows, clean = [[*row, *[""] * (len(columns) - len(header))] for row in rows], False
    if header is None or not clean:
      write_log(path, columns, rows)
    self._fd = os.open(path, os.O_WRONLY | os.O_APPEND)
    self._path = path

  def append(self, row: Iterable[object]) -> None:
    text = io.StringIO()
    csv.writer(text, lineterminator="\n").writerow(
      [str(v).replace("\n", " ").replace("\r", " ") for v in row]
    )
    line = files.printable(text.getvalue()).encode()
    with files.named(self._path):
      while line:  # one write in practice; a short write (disk nearly full) continues the line
        line = line[os.write(self._fd, line) :]
      os.fsync(self._fd)

  def close(self) -> None:
    os.close(self._fd)


def read_log(path: str) -> tuple[list[str] | None, list[list[str]], bool]:
  """Header and rows of a CSV log minus a torn last line and repeated keys; whether it had none."""
  if not os.path.exists(path):
    return None, [], True
  with open(path, newline="") as f:
    lines = f.read().splitlines(keepends=True)
  whole = [line for line in lines if line.endswith("\n")]
  rows = list(csv.reader(whole))
  header, body = (rows[0], rows[1:]) if rows else (None, [])
  seen: set[str] = set()
  unique = []
  for row in body:
    if row and row[0] not in seen:
      seen.add(row[0])
      unique.append(row)
  return header, unique, len(whole) == len(lines) and len(unique) == len(body)


def write_log(path: str, header: Sequence[str], rows: Iterable[Sequence[str]]) -> None:
  """Writes a whole log atomically."""
  with files.atomic_write(path, "w") as f:
    csv.writer(f, lineterminator="\n").writerows([header, *rows])


def merge(
  paths: Sequence[str],
  into: str,
  order: Mapping[str, int],
  rank: Callable[[Sequence[str], Mapping[str, int]], Any] | None = None,
) -> None:
  """Writes the union of the logs at `paths` (the first log with a key wins) to `into`, rows in
  `order` of their keys (keys not in it follow in the order found), or by `rank(row, order)`;
  logs an earlier version wrote with fewer columns get empty new cells."""
  logs = [(path, *read_log(path)[:2]) for path in paths]
  logs = [(path, columns, body) for path, columns, body in logs if columns is not None]
  if not logs:
    return
  header = max((columns for _, columns, _ in logs), key=len)
  rows = {}
  for path, columns, body in logs:
    if columns != header[: len(columns)]:
      raise UserError(f"{path} has columns {columns}, other logs {header}: cannot merge them")
    for row in body:
      rows.setdefault(row[0], [*row, *[""] * (len(header) - len(columns))])
  ranked = sorted(rows.values(), key=lambda row: (rank or _by_key)(row, order))
  write_log(into, header, ranked)


def _by_key(row: Sequence[str], order: Mapping[str, int]) -> int:
  return order.get(row[0], len(order))
