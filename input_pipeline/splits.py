"""Patient-grouped splits: every image and patch of a patient lands in one split or fold.

Patches of one patient are strongly correlated (both views show the same breast tissue and the
same clusters), so splitting patches or images would leak; the paper grouped by patient too.
Patients are stratified by their worst calcification label (malignant > benign > none) so small
cohorts still get both classes in every split where the counts allow it.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence

import numpy as np

from input_pipeline.manifest import Finding

SPLITS = ("train", "validation", "test")
_RANK = {"": 0, "benign": 1, "malignant": 2}
_NAMES = ("none", "benign", "malignant")


def patient_labels(
  findings: Iterable[Finding], abnormalities: Sequence[str] = ("calcification",)
) -> dict[str, str]:
  """Patient -> 'malignant' | 'benign' | 'none', from its findings of the given abnormalities."""
  return worst_labels(
    (f.patient_id, f.label if f.abnormality in abnormalities else "") for f in findings
  )


def worst_labels(labelled: Iterable[tuple[str, str]]) -> dict[str, str]:
  """Patient -> the worst of its (patient, label) pairs' labels: malignant > benign > none (any
  other label). The one rule for findings here and for patches in cross-validation."""
  rank: dict[str, int] = {}
  for patient, label in labelled:
    rank[patient] = max(rank.get(patient, 0), _RANK.get(label, 0))
  return {p: _NAMES[r] for p, r in rank.items()}


def _strata(labels: Mapping[str, str], rng: np.random.Generator) -> list[list[str]]:
  """Patients grouped by label (sorted, so the result depends on the seed only), shuffled."""
  groups: dict[str, list[str]] = {}
  for patient in sorted(labels):
    groups.setdefault(labels[patient], []).append(patient)
  return [
    [groups[label][i] for i in rng.permutation(len(groups[label]))] for label in sorted(groups)
  ]


def _allocate(n: int, fractions: Sequence[float]) -> list[int]:
  """Largest-remainder rounding of n * fractions (ties go to the later, smaller parts)."""
  exact = [n * f / sum(fractions) for f in fractions]
  counts = [int(x) for x in exact]
  # Remainders rounded, so float noise (5 * 0.7 = 3.4999...) does not decide ties.
  order = sorted(range(len(exact)), key=lambda i: (round(counts[i] - exact[i], 9), -i))
  for i in order[: n - sum(counts)]:
    counts[i] += 1
  return counts


def split_patients(
  labels: Mapping[str, str],
  fractions: Sequence[float] = (0.7, 0.2, 0.1),
  seed: int = 0,
  names: Sequence[str] = SPLITS,
  *,
  every_label_everywhere: bool = False,
) -> dict[str, str]:
  """Patient -> split name: each label stratum is cut in `fractions`, seeded.

  With `every_label_everywhere`, a stratum with at least one patient per split gives each split
  one even where rounding would leave it none, so small cohorts keep both classes in validation.
  """
  if len(fractions) != len(names) or min(fractions) < 0 or sum(fractions) <= 0:
    raise ValueError(f"fractions {fractions} do not match split names {names}")
  assignment = {}
  for stratum in _strata(labels, np.random.default_rng(seed)):
    counts = _allocate(len(stratum), fractions)
    if every_label_everywhere and len(stratum) >= len(names):
      counts = _at_least_one_each(counts)
    start = 0
    for name, count in zip(names, counts, strict=True):
      assignment.update((p, name) for p in stratum[start : start + count])
      start += count
  return assignment


def _at_least_one_each(counts: list[int]) -> list[int]:
  """Moves one patient from the largest part to each empty part."""
  counts = list(counts)
  for i, count in enumerate(counts):
    if count == 0:
      counts[int(np.argmax(counts))] -= 1
      counts[i] = 1
  return counts


def kfold_assignments(
  patients: Sequence[str],
  labels: Sequence[str] | Mapping[str, str],
  k: int,
  seed: int = 0,
  validation_fraction: float = 0.2,
) -> list[dict[str, list[str]]]:
  """k patient-grouped, stratified folds, each with a grouped validation part in its training part.

  Returns one dict per fold with sorted patient lists 'train', 'validation' (for early stopping and
  the operating threshold) and 'test' (the fold predicted out-of-fold). Every patient is in
  exactly one 'test' list and never in the training or validation part of that fold.
  """
  if not isinstance(labels, Mapping):
    labels = dict(zip(patients, labels, strict=True))
  labels = {p: labels[p] for p in patients}
  if not 2 <= k <= len(labels):
    raise ValueError(f"k={k} needs 2 <= k <= number of patients ({len(labels)})")
  folds: list[list[str]] = [[] for _ in range(k)]
  dealt = 0  # continue dealing where the previous stratum stopped, so fold sizes stay even
  for stratum in _strata(labels, np.random.default_rng(seed)):
    for patient in stratum:
      folds[dealt % k].append(patient)
      dealt += 1
  out = []
  for i, test in enumerate(folds):
    rest = {p: labels[p] for f in folds[:i] + folds[i + 1 :] for p in f}
    inner = split_patients(
      rest,
      (1 - validation_fraction, validation_fraction),
      seed + 1 + i,
      ("train", "validation"),
      every_label_everywhere=True,
    )
    out.append(
      {name: sorted(p for p, s in inner.items() if s == name) for name in ("train", "validation")}
      | {"test": sorted(test)}
    )
  return out
