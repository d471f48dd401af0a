"""The crash-safe CSV logs: a folder an earlier version scored (fewer columns) resumes."""

from __future__ import annotations

import pytest

from input_pipeline.errors import UserError
from mcalc_jax.base import csvlog


def test_a_log_with_fewer_columns_from_an_earlier_version_is_upgraded_and_resumed(tmp_path):
  path = str(tmp_path / "scores.csv")
  csvlog.write_log(path, ("key", "task1_max"), [["a", "0.9"]])
  log = csvlog.CsvLog(path, ("key", "task1_max", "in_domain"))
  log.append(["b", "0.1", "yes"])
  log.close()
  header, rows, clean = csvlog.read_log(path)
  assert header == ["key", "task1_max", "in_domain"] and clean
  assert rows == [["a", "0.9", ""], ["b", "0.1", "yes"]]
  with pytest.raises(UserError, match="has columns"):  # other columns, not an earlier version's
    csvlog.CsvLog(path, ("key", "path", "task1_max", "in_domain"))


def test_shards_of_two_versions_merge_into_the_newer_columns(tmp_path):
  old, new = str(tmp_path / "s.0-of-2.csv"), str(tmp_path / "s.1-of-2.csv")
  csvlog.write_log(old, ("key", "task1_max"), [["a", "0.9"]])
  csvlog.write_log(new, ("key", "task1_max", "in_domain"), [["b", "0.1", "no"]])
  csvlog.merge([old, new], str(tmp_path / "s.csv"), {"b": 0, "a": 1})
  header, rows, _ = csvlog.read_log(str(tmp_path / "s.csv"))
  assert header == ["key", "task1_max", "in_domain"]
  assert rows == [["b", "0.1", "no"], ["a", "0.9", ""]]
