"""Crash-safe writes: a failed or killed write leaves the old file, and no temporary behind."""

from __future__ import annotations

import errno
import os

import pytest

from mcalc_jax.base import files


def test_atomic_write_leaves_the_old_file_when_writing_fails(tmp_path):
  path = tmp_path / "c.txt"
  path.write_text("old")
  with pytest.raises(RuntimeError), files.atomic_write(path, "w") as f:
    f.write("half")
    raise RuntimeError("killed")

  assert path.read_text() == "old"
  assert sorted(p.name for p in tmp_path.iterdir()) == ["c.txt"]


def test_write_text_replaces_the_file_whole(tmp_path):
  path = tmp_path / "m.json"
  files.write_text(path, "old")
  files.write_text(path, "{}")
  assert path.read_text() == "{}"
  assert sorted(p.name for p in tmp_path.iterdir()) == ["m.json"]


def test_each_process_writes_its_own_temporary_and_stale_ones_are_cleared_by_name(tmp_path):
  mine = files.temporary_path(tmp_path / "a.npz")
  assert mine == str(tmp_path / f".a.npz.{os.getpid()}.tmp")  # a second writer has another
  for name in (".a.npz.123.tmp", ".a.npz.tmp", ".b.npz.123.tmp", ".a.npz.x.123.tmp", "a.npz"):
    (tmp_path / name).write_text("")

  files.remove_stale_temporaries(tmp_path, ["a.npz"])
  assert sorted(p.name for p in tmp_path.iterdir()) == [
    ".a.npz.x.123.tmp",
    ".b.npz.123.tmp",
    "a.npz",
  ]


def test_a_write_that_fails_without_a_file_name_names_its_target(tmp_path):
  with pytest.raises(OSError) as info, files.named(tmp_path / "scores.csv"):
    raise OSError(errno.ENOSPC, "No space left on device")
  assert info.value.filename == str(tmp_path / "scores.csv") and info.value.errno == errno.ENOSPC


def test_an_output_is_checked_before_long_work(tmp_path):
  files.check_writable(tmp_path / "reranker.json")
  with pytest.raises(FileNotFoundError, match="no such folder") as info:
    files.check_writable(tmp_path / "absent" / "reranker.json")
  assert info.value.filename == str(tmp_path / "absent")
  with pytest.raises(IsADirectoryError):
    files.check_writable(tmp_path)
