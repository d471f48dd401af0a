"""Crash-safe writes: a failed or killed write leaves the old file, and no temporary behind."""

from __future__ import annotations

import pytest

from mcalc_jax import files


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
