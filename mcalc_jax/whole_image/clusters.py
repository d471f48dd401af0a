"""Specks grouped into clusters, the unit a CAD mark stands for.

Clinically a cluster is three or more calcifications within about 1 cm²; the grouping is what
keeps isolated bright dots (noise, dust, a lone benign speck) from becoming marks. `ClusterRule`
states the grouping in millimetres, so it means the same at any pixel size: specks are linked when
their centres lie within `link_mm` of each other (single linkage), and a linked group is a cluster
when at least `min_specks` of its specks lie in one axis-aligned square of `region_mm` a side.

`FEATURES` is the one registry of what a cluster looks like (name -> function): the cluster
classifier (`mcalc_jax.whole_image.marks`) lists the names it was fitted on.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence

import numpy as np
from scipy import sparse, spatial
from scipy.sparse import csgraph

from mcalc_jax.whole_image.reranking import linearity
from mcalc_jax.whole_image.specks import Speck

MIN_SIDE_MM = 1.0  # a cluster's extent is at least this on each side (three specks on a line)


@dataclasses.dataclass(frozen=True)
class ClusterRule:
  """When specks form a cluster (module docstring), in millimetres."""

  link_mm: float = 5.0
  min_specks: int = 3
  region_mm: float = 10.0  # 10 mm: the clinical 1 cm²


# The default. On mini-MIAS's 216 films (0.2 mm) with the classical map and `specks.SPECK_RULE`,
# 14 of 18 clusters get a mark at 2.9 marks per normal image; 3-mm links give 12 at 2.2.
CLUSTER_RULE = ClusterRule()


@dataclasses.dataclass(frozen=True)
class SpeckCluster:
  """A group of specks that `ClusterRule` calls a cluster."""

  specks: tuple[Speck, ...]

  @property
  def points_mm(self) -> np.ndarray:
    """float64 [n, 2]: the specks' centres (row, col) in mm."""
    return np.array([(s.row_mm, s.col_mm) for s in self.specks])

  @property
  def centre(self) -> tuple[float, float]:
    """The mean of the specks' centres, in the image's canonical pixels (row, col)."""
    row, col = np.mean([(s.row, s.col) for s in self.specks], 0)
    return float(row), float(col)

  @property
  def box(self) -> tuple[float, float, float, float]:
    """(top, left, bottom, right) of the specks' centres, in the image's canonical pixels."""
    rows, cols = [s.row for s in self.specks], [s.col for s in self.specks]
    return min(rows), min(cols), max(rows), max(cols)


def group(specks: Sequence[Speck], rule: ClusterRule = CLUSTER_RULE) -> list[SpeckCluster]:
  """The clusters among `specks` (module docstring), in the order of their first speck."""
  if len(specks) < rule.min_specks:
    return []
  points = np.array([(s.row_mm, s.col_mm) for s in specks])
  pairs = spatial.cKDTree(points).query_pairs(rule.link_mm, output_type="ndarray")
  links = sparse.coo_matrix((np.ones(len(pairs)), pairs.T), shape=(len(specks),) * 2)
  _, component = csgraph.connected_components(links, directed=False)
  clusters = []
  for label in dict.fromkeys(component):  # in order of first appearance
    members = np.flatnonzero(component == label)
    if most_in_square(points[members], rule.region_mm) >= rule.min_specks:
      clusters.append(SpeckCluster(tuple(specks[i] for i in members)))
  return clusters


def most_in_square(points: np.ndarray, side: float) -> int:
  """The most of [n, 2] `points` that one axis-aligned square of `side` holds (edges included):
  a best square can always be slid until a point lies on its top edge and one on its left."""
  best = 0
  for left in points[:, 1]:
    rows = np.sort(points[(points[:, 1] >= left) & (points[:, 1] <= left + side), 0])
    below = np.searchsorted(rows, rows + side, "right") - np.arange(len(rows))
    best = max(best, int(below.max()))
  return best


def _extent_sides_mm(c: SpeckCluster) -> np.ndarray:
  """Height and width of the box around the specks' centres, each at least `MIN_SIDE_MM`."""
  points = c.points_mm
  return np.maximum(points.max(0) - points.min(0), MIN_SIDE_MM)


def _extent_mm(c: SpeckCluster) -> float:
  """The largest distance between two specks' centres."""
  return float(spatial.distance.pdist(c.points_mm).max())


def _stat(field: str, reduce: Callable[[np.ndarray], float]) -> Callable[[SpeckCluster], float]:
  return lambda c: float(reduce(np.array([getattr(s, field) for s in c.specks])))


# Every cluster feature, by name (a classifier's JSON lists the ones it uses).
FEATURES: dict[str, Callable[[SpeckCluster], float]] = {
  "specks": lambda c: float(len(c.specks)),
  "density_per_cm2": lambda c: len(c.specks) / (np.prod(_extent_sides_mm(c)) / 100),
  "extent_mm": _extent_mm,
  "mean_area_mm2": _stat("area_mm2", np.mean),
  "max_area_mm2": _stat("area_mm2", np.max),
  "mean_peak": _stat("peak", np.mean),
  "max_peak": _stat("peak", np.max),
  "std_peak": _stat("peak", np.std),
  "mean_value": _stat("mean", np.mean),
  "mean_elongation": _stat("elongation", np.mean),
  "linearity": lambda c: linearity(c.points_mm),
}


def describe(cluster: SpeckCluster) -> dict[str, float]:
  """Every registered feature of `cluster`, in registry order."""
  return {name: feature(cluster) for name, feature in FEATURES.items()}
