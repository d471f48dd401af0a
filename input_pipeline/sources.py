"""The data sources a dataset can be built from: one registry, read by the builder and the configs.

A source turns a location (a folder or a file) into manifest findings; the TFDS builder registers
one builder config per source, `configs/data.py:source=NAME` builds a data config from it, and
`input_pipeline.prepare` generates the location first where a source says how (the synthetic
cohort). Adding a source (INbreast, say) is one importer in `input_pipeline.importers` and one
entry here.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Callable

from input_pipeline import importers
from input_pipeline.manifest import Finding, read_manifest


def read_manifest_at(location: str) -> list[Finding]:
  """The manifest at `location`: a CSV file, or a folder holding `manifest.csv`."""
  if os.path.isdir(location):
    location = os.path.join(location, "manifest.csv")
  return read_manifest(location)


@dataclasses.dataclass(frozen=True)
class DataSource:
  """How to read a source's findings, and the patch extraction that suits it."""

  description: str
  load_findings: Callable[[str], list[Finding]]
  per_cluster: int  # calcification patches per cluster annotation
  generated: bool = False  # the location is written by `input_pipeline.prepare` when absent


# Per-source extraction: MIAS clusters are few (18 usable here), so 8 ROIs per cluster; the
# synthetic and CBIS-DDSM clusters 4; a generic manifest follows the paper (one per annotation).
SOURCES: dict[str, DataSource] = {
  "mias": DataSource("mini-MIAS Info.txt findings", importers.import_mias, per_cluster=8),
  "cbis_ddsm": DataSource("CBIS-DDSM case tables", importers.import_cbis_ddsm, per_cluster=4),
  "synthetic": DataSource(
    "the synthetic cohort's manifest", read_manifest_at, per_cluster=4, generated=True
  ),
  "manifest": DataSource("a findings manifest CSV", read_manifest_at, per_cluster=1),
}


def get(name: str) -> DataSource:
  """The registered source `name`; the error lists the choices."""
  if name not in SOURCES:
    raise ValueError(f"unknown data source {name!r}; choose one of {sorted(SOURCES)}")
  return SOURCES[name]
