"""TFDS generation through Apache Beam (DirectRunner) gives exactly the plain loop's dataset."""

from __future__ import annotations

import numpy as np
import pytest

from input_pipeline import prepare, sources
from input_pipeline.manifest import Finding, write_manifest
from mcalc_jax.configs import data

pytest.importorskip("apache_beam", reason="the beam extra (pip install 'mcalc_jax[beam]')")

DIRECT = "runner=DirectRunner,direct_num_workers=2,direct_running_mode=multi_processing"


def examples(builder) -> dict[str, dict[str, dict]]:
  """Every example of every split, by patch id."""
  out = {}
  for split in builder.info.splits:
    source = builder.as_data_source(split)
    out[split] = {r["patch_id"]: r for r in (source[i] for i in range(len(source)))}
  return out


def assert_same_dataset(plain, beam) -> None:
  a, b = examples(plain), examples(beam)
  assert a.keys() == b.keys() and all(a[s].keys() == b[s].keys() for s in a)
  for split in a:
    for patch_id, example in a[split].items():
      for feature, value in example.items():
        np.testing.assert_array_equal(value, b[split][patch_id][feature], err_msg=feature)
  for key in ("counts", "skipped", "patients", "patch_settings"):
    assert plain.info.metadata[key] == beam.info.metadata[key], key


def build_both(config, tmp_path):
  plain = prepare.prepare(config, str(tmp_path / "plain"))
  beam = prepare.prepare(config, str(tmp_path / "beam"), beam_options=DIRECT)
  return plain, beam


def test_beam_records_skipped_files_like_the_plain_build(mias_dir, tmp_path):
  findings = sources.get("mias").load_findings(str(mias_dir))
  patients = sorted({f.patient_id for f in findings if f.abnormality == "calcification"})[:6]
  patients += sorted({f.patient_id for f in findings} - set(patients))[:10]
  chosen = [f for f in findings if f.patient_id in patients]
  chosen.append(Finding(patients[-1], str(tmp_path / "missing.png")))  # skipped, with its reason
  write_manifest(tmp_path / "manifest.csv", chosen)
  config = data.get_config("source=manifest,field_of_view_mm=11.2")
  config.location, config.patch.per_cluster = str(tmp_path / "manifest.csv"), 4

  plain, beam = build_both(config, tmp_path)

  assert_same_dataset(plain, beam)
  assert [s["path"] for s in beam.info.metadata["skipped"]] == [str(tmp_path / "missing.png")]
  assert sum(len(split) for split in examples(beam).values()) > 0


def test_beam_builds_the_plain_mias_dataset(mias_dir, tmp_path):
  config = data.get_config("source=mias,field_of_view_mm=11.2")
  config.location = str(mias_dir)
  assert_same_dataset(*build_both(config, tmp_path))
