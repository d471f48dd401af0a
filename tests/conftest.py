"""Shared test fixtures: where the real public data lives, and skips that say why."""

from __future__ import annotations

import os
import pathlib

import pytest

REPO = pathlib.Path(__file__).resolve().parents[1]
SHARED_DATA = pathlib.Path(os.environ.get("MCALC_SHARED_DATA", REPO.parent / "shared" / "data"))


def shared_dataset(name: str) -> pathlib.Path:
  """Returns ../shared/data/<name>, or skips the test naming the missing folder."""
  path = SHARED_DATA / name
  if not path.is_dir():
    pytest.skip(f"real data folder {path} is absent (set MCALC_SHARED_DATA to its parent)")
  return path


@pytest.fixture
def mias_dir() -> pathlib.Path:
  return shared_dataset("mias")


@pytest.fixture
def cbis_dir() -> pathlib.Path:
  return shared_dataset("cbis-ddsm-mg-dicom")


@pytest.fixture
def nyu_dir() -> pathlib.Path:
  return shared_dataset("nyu-ffdm-png")


@pytest.fixture
def openrem_dir() -> pathlib.Path:
  return shared_dataset("openrem-mg-headers")
