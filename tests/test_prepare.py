"""mcalc-prepare on real mini-MIAS: counts per split and label, patient-disjoint, TF-free."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys

import numpy as np
import pytest

from input_pipeline import importers, manifest, prepare, tfds_builder
from mcalc_jax.configs import data

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# Patients 105-128 hold all 16 calcification images of the shared split (and their other breast).
SUBSET = [f"mdb{n:03d}" for n in range(209, 257)]


def mias_subset(mias_dir, folder) -> str:
  """A MIAS folder with the SUBSET images that are present, and the full Info.txt."""
  (folder / "images").mkdir(parents=True)
  shutil.copy(mias_dir / "Info.txt", folder / "Info.txt")
  for ref in SUBSET:
    if (mias_dir / "images" / f"{ref}.png").exists():
      shutil.copy(mias_dir / "images" / f"{ref}.png", folder / "images")
  return str(folder)


def run_prepare(location: str, data_dir: str) -> str:
  """Runs mcalc-prepare as a user would, in a fresh interpreter; returns what it printed."""
  command = [
    sys.executable,
    "-m",
    "mcalc_jax.cli.prepare",
    f"--config={os.path.join(REPO, 'configs', 'data.py')}:source=mias",
    f"--config.location={location}",
    f"--data_dir={data_dir}",
  ]
  result = subprocess.run(command, capture_output=True, text=True, check=False)
  assert result.returncode == 0, result.stderr[-3000:]
  return result.stdout


def check_dataset(data_dir: str, mias_dir) -> None:
  """Patient-disjoint splits; every calcification centre inside its MIAS circle."""
  builder = tfds_builder.open_builder("mcalc_patches/mias", data_dir)
  circles = {}
  for f in importers.import_mias(mias_dir):
    circles.setdefault(os.path.splitext(os.path.basename(f.image_path))[0], []).append(f)
  patients = {}
  for split in builder.info.splits:
    source = builder.as_data_source(split)
    records = [source[i] for i in range(len(source))]
    patients[split] = {r["patient_id"] for r in records}
    for r in (r for r in records if r["task1_label"]):
      (f,) = [
        f for f in circles[r["image_id"].decode()] if f.finding_id == r["finding_id"].decode()
      ]
      assert np.hypot(r["center_row"] - f.row, r["center_col"] - f.col) <= f.radius + 1
  train, validation, test = patients["train"], patients["validation"], patients["test"]
  assert not (train & validation or train & test or validation & test)
  assert "tensorflow" not in sys.modules


def test_prepare_prints_patch_counts_per_split_and_label(mias_dir, tmp_path):
  location = mias_subset(mias_dir, tmp_path / "mias")
  printed = run_prepare(location, str(tmp_path / "tfds"))
  lines = printed.splitlines()
  header = next(line for line in lines if line.startswith("split"))
  assert header.split()[1:4] == ["background", "benign", "malignant"]
  rows = {
    line.split()[0]: [int(x) for x in line.split()[1:]]
    for line in lines
    if line.split() and line.split()[0] in ("train", "validation", "test")
  }
  assert set(rows) == {"train", "validation", "test"}
  assert sum(row[1] + row[2] for row in rows.values()) == 8 * 18  # 18 usable clusters, k=8
  assert sum(row[0] for row in rows.values()) >= 8 * 18  # as many background patches
  check_dataset(str(tmp_path / "tfds"), location)


@pytest.mark.slow
def test_prepare_builds_all_of_mini_mias(mias_dir, tmp_path):
  printed = run_prepare(str(mias_dir), str(tmp_path / "tfds"))
  assert "skipped: 0" in printed
  check_dataset(str(tmp_path / "tfds"), mias_dir)


def test_prepare_generates_and_builds_the_synthetic_cohort(tmp_path):
  config = data.get_config("source=synthetic")
  config.synthetic.num_patients = 4
  builder = prepare.prepare(config, str(tmp_path))
  assert os.path.isfile(tmp_path / "synthetic_cohort" / "manifest.csv")
  table = prepare.counts_table(builder)
  assert table.splitlines()[0].split()[:4] == ["split", "background", "benign", "malignant"]
  assert builder.info.metadata["skipped"] == []
  assert "tensorflow" not in sys.modules


def test_a_split_whose_images_are_all_missing_is_named_with_why(tmp_path):
  missing = [manifest.Finding(f"p{n}", f"scans/{n}.png") for n in range(5)]
  manifest.write_manifest(tmp_path / "manifest.csv", missing)
  config = data.get_config("source=manifest")
  config.location = str(tmp_path / "manifest.csv")

  with pytest.raises(tfds_builder.EmptySplitError, match=r"split '\w+' came out empty: .*no such"):
    prepare.prepare(config, str(tmp_path / "tfds"))
