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
import pathlib
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


# Sources whose images are digitised film; a run trained on clusters inserted into one
# (`inserted_mias_0_11p2mm`) learned from its film too (`mcalc_jax.archives.domain`).
FILM_SOURCES = ("mias", "cbis_ddsm")
# Per-source extraction: MIAS clusters are few (18 usable here), so 8 ROIs per cluster; the
# synthetic and CBIS-DDSM clusters 4; inserted clusters, hundreds of them, 2; a generic manifest
# follows the paper (one per annotation).
SOURCES: dict[str, DataSource] = {
  "mias": DataSource("mini-MIAS Info.txt findings", importers.import_mias, per_cluster=8),
  "cbis_ddsm": DataSource("CBIS-DDSM case tables", importers.import_cbis_ddsm, per_cluster=4),
  "synthetic": DataSource(
    "the synthetic cohort's manifest", read_manifest_at, per_cluster=4, generated=True
  ),
  "inserted": DataSource(
    "clusters inserted into a source's images without calcifications (input_pipeline.insertion)",
    read_manifest_at,
    per_cluster=2,
    generated=True,
  ),
  "manifest": DataSource("a findings manifest CSV", read_manifest_at, per_cluster=1),
  "folder": DataSource(
    "every mammogram of a folder, without findings (backgrounds to insert into)",
    importers.import_folder,
    per_cluster=1,
  ),
}


# Where each public source lies under the shared data folder beside a checkout.
_SHARED_FOLDERS = {"mias": "mias", "cbis_ddsm": "cbis-ddsm-mg-dicom"}


def default_location(source: str) -> str:
  """The source's folder under $MCALC_SHARED_DATA or the checkout's ../shared/data, if there."""
  checkout_shared = pathlib.Path(__file__).resolve().parents[2] / "shared" / "data"
  root = os.environ.get("MCALC_SHARED_DATA") or checkout_shared
  path = pathlib.Path(root) / _SHARED_FOLDERS.get(source, "")
  return str(path) if source in _SHARED_FOLDERS and path.is_dir() else ""


def dataset_name(source: str, field_of_view_mm: float = 0.0) -> str:
  """The patch dataset's builder config name: the source, and its patches' millimetres when they
  are cut in millimetres (`mias_11p2mm`; `mias` at native pixels)."""
  return f"{source}_{field_of_view_mm:g}mm".replace(".", "p") if field_of_view_mm > 0 else source


def load_findings(source: str, location: str = "") -> list[Finding]:
  """The findings of `source` at `location` (default: its shared folder)."""
  location = location or default_location(source)
  if not location:
    raise FileNotFoundError(f"data source {source!r} needs a location: no shared folder for it")
  return get(source).load_findings(location)


def get(name: str) -> DataSource:
  """The registered source `name`; the error lists the choices."""
  if name not in SOURCES:
    raise ValueError(f"unknown data source {name!r}; choose one of {sorted(SOURCES)}")
  return SOURCES[name]
