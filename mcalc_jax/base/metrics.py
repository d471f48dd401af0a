"""Binary classification metrics with the paper's confidence intervals and honest ones, in numpy.

Pesapane et al. 2023 report AUC, accuracy, sensitivity, specificity, PPV and NPV with the Wald
interval x +- 1.96 sqrt(x (1 - x) / n), n = test-set size, counting the patches of one patient as
independent. Here every metric gets three 95% intervals:
  'paper':     that formula with n = the number of examples in the split (the paper's choice);
  'wald':      the same formula with n = the metric's own denominator (positives for sensitivity);
  'bootstrap': a seeded percentile bootstrap resampling patients, so alike patches count once.
A metric the data cannot define (sensitivity without positives, AUC with one class) is None with a
reason that names the split and its counts; nothing returned here is NaN.

Convention, as in scikit-learn's roc_curve: a score at or above the threshold is called positive.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping

import numpy as np

CI_METHODS = ("paper", "wald", "bootstrap")
CI_DESCRIPTIONS = {
  "paper": "paper's Wald interval, x +- 1.96 sqrt(x(1-x)/n), n = examples in the split",
  "wald": "Wald interval with n = the metric's own denominator (not defined for AUC)",
  "bootstrap": "percentile bootstrap resampling patients (seeded), threshold held fixed",
}
Z_95 = 1.96  # the paper's constant
_CONFUSION_CELLS = ("tp", "fp", "tn", "fn")


@dataclasses.dataclass(frozen=True)
class MetricInfo:
  """A registered metric: its column in reports and how it is computed and compared.

  A proportion gives its numerator and denominator confusion cells and what an empty
  denominator means; the rank metrics (AUC, loss) have none.
  """

  column: str
  numerator: tuple[str, ...] = ()
  denominator: tuple[str, ...] = ()
  empty: str = ""
  higher_is_better: bool = True
  reported: bool = True  # a column of the Table 2 report (with three intervals)
  fold_spread: bool = False  # summarised per cross-validation fold (mean +- sd)


# The one list of metrics: report columns (in this order), early stopping's comparison and the
# cross-validation spread all read it. 'loss' is the validation loss training watches.
REGISTRY: dict[str, MetricInfo] = {
  "auc": MetricInfo("AUC", fold_spread=True),
  "accuracy": MetricInfo(
    "Accuracy", ("tp", "tn"), _CONFUSION_CELLS, "no examples", fold_spread=True
  ),
  "sensitivity": MetricInfo("Sensitivity", ("tp",), ("tp", "fn"), "no positive examples"),
  "specificity": MetricInfo("Specificity", ("tn",), ("tn", "fp"), "no negative examples"),
  "ppv": MetricInfo("PPV", ("tp",), ("tp", "fp"), "no example called positive at this threshold"),
  "npv": MetricInfo("NPV", ("tn",), ("tn", "fn"), "no example called negative at this threshold"),
  "loss": MetricInfo("Loss", higher_is_better=False, reported=False),
}
METRICS = tuple(name for name, info in REGISTRY.items() if info.reported)
FOLD_SPREAD_METRICS = tuple(name for name, info in REGISTRY.items() if info.fold_spread)
_PROPORTIONS = {name: info for name, info in REGISTRY.items() if info.numerator}


def is_better(metric: str, new: float, old: float | None) -> bool:
  """Whether `new` improves on `old` for registered `metric`; a NaN never improves."""
  if old is None or np.isnan(old):
    return not np.isnan(new)
  return new > old if REGISTRY[metric].higher_is_better else new < old


# Cluster bootstrap intervals are withheld when more resamples than this leave a metric undefined.
_MAX_UNDEFINED_RESAMPLES = 0.5
_BOOTSTRAP_CHUNK_ELEMENTS = 4_000_000  # resamples x examples per chunk, bounds memory


class UndefinedMetricError(ValueError):
  """The data cannot define the requested quantity; the message names the split and its counts."""


@dataclasses.dataclass(frozen=True)
class Confusion:
  """Counts at one threshold."""

  tp: int
  fp: int
  tn: int
  fn: int

  def as_array(self) -> np.ndarray:
    """[[tn, fp], [fn, tp]]: rows true class, columns predicted class (scikit-learn's layout)."""
    return np.array([[self.tn, self.fp], [self.fn, self.tp]])


@dataclasses.dataclass(frozen=True)
class Interval:
  """A confidence interval, or the reason there is none."""

  low: float | None = None
  high: float | None = None
  reason: str = ""

  def to_json(self) -> dict:
    return {"reason": self.reason} if self.reason else {"low": self.low, "high": self.high}


@dataclasses.dataclass(frozen=True)
class Metric:
  """A value with its intervals; value None (with a reason) when the data cannot define it."""

  value: float | None
  denominator: int | None  # the count the proportion is taken over; None for AUC
  reason: str = ""
  ci: Mapping[str, Interval] = dataclasses.field(default_factory=dict)

  def to_json(self) -> dict:
    out = {"value": self.value, "denominator": self.denominator}
    if self.reason:
      out["reason"] = self.reason
    if self.ci:
      out["ci"] = {name: interval.to_json() for name, interval in self.ci.items()}
    return out


@dataclasses.dataclass(frozen=True)
class ThresholdPolicy:
  """How the operating threshold is chosen: 'youden', 'fixed:T' or 'sensitivity:S'."""

  kind: str = "youden"
  value: float | None = None

  @classmethod
  def parse(cls, spec: str) -> ThresholdPolicy:
    kind, _, value = spec.partition(":")
    if kind == "youden" and not value:
      return cls("youden")
    if kind in ("fixed", "sensitivity") and value:
      try:
        number = float(value)
      except ValueError:
        number = float("nan")
      if not 0.0 <= number <= 1.0:
        raise ValueError(f"threshold policy {spec!r}: the value must be a number in [0, 1]")
      return cls(kind, number)
    raise ValueError(f"threshold policy {spec!r}: expected 'youden', 'fixed:T' or 'sensitivity:S'")

  def __str__(self) -> str:
    return self.kind if self.value is None else f"{self.kind}:{self.value:g}"


@dataclasses.dataclass(frozen=True)
class Reliability:
  """Equal-width reliability bins of P(class 1); mean_prob and frac_pos are None in empty bins."""

  edges: np.ndarray
  counts: np.ndarray
  mean_prob: list[float | None]
  frac_pos: list[float | None]
  ece: float


def class_counts(labels: np.ndarray, split: str) -> str:
  """'test: 40 examples (0 positive, 40 negative)', for messages about what the data lacks."""
  labels = np.asarray(labels)
  positives = int(np.sum(labels == 1))
  negatives = labels.size - positives
  return f"{split}: {labels.size} examples ({positives} positive, {negatives} negative)"


def _check_binary(labels: np.ndarray, scores: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
  labels = np.asarray(labels)
  scores = np.asarray(scores, dtype=np.float64)
  if labels.shape != scores.shape or labels.ndim != 1:
    raise ValueError(f"labels {labels.shape} and scores {scores.shape} must be 1-D of one length")
  if not np.isin(labels, (0, 1)).all():
    raise ValueError(f"labels must be 0 or 1, got {np.unique(labels)[:10]}")
  if not np.isfinite(scores).all():
    raise ValueError("scores must be finite")
  return labels.astype(bool), scores


def _require_both_classes(labels: np.ndarray, split: str, what: str) -> None:
  if labels.all() or not labels.any():
    raise UndefinedMetricError(f"{what} needs both classes; {class_counts(labels, split)}")


def confusion_matrix(labels: np.ndarray, scores: np.ndarray, threshold: float) -> Confusion:
  """Counts with `score >= threshold` called positive."""
  truth, scores = _check_binary(labels, scores)
  called = scores >= threshold
  return Confusion(
    tp=int(np.sum(truth & called)),
    fp=int(np.sum(~truth & called)),
    tn=int(np.sum(~truth & ~called)),
    fn=int(np.sum(truth & ~called)),
  )


def _divide(numerator: np.ndarray, denominator: np.ndarray) -> np.ndarray:
  """Elementwise ratio, NaN where the denominator is 0 (internal: callers turn NaN into reasons)."""
  numerator = np.asarray(numerator, dtype=np.float64)
  denominator = np.asarray(denominator, dtype=np.float64)
  out = np.full(np.broadcast(numerator, denominator).shape, np.nan)
  return np.divide(numerator, denominator, out=out, where=denominator != 0)


def _proportions(cells: Mapping[str, np.ndarray]) -> dict[str, tuple[np.ndarray, np.ndarray]]:
  """(value, denominator) of every proportion; works on counts and on arrays of weighted counts."""
  out = {}
  for name, info in _PROPORTIONS.items():
    den = sum(cells[c] for c in info.denominator)
    out[name] = (_divide(sum(cells[c] for c in info.numerator), den), den)
  return out


def _sorted_groups(scores: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
  """Ascending order of the scores, and where each run of tied scores starts in that order."""
  order = np.argsort(scores, kind="stable")
  ordered = scores[order]
  starts = np.flatnonzero(np.r_[True, ordered[1:] != ordered[:-1]])
  return order, starts


def _weighted_auc(
  pos_weights: np.ndarray, neg_weights: np.ndarray, starts: np.ndarray
) -> np.ndarray:
  """Mann-Whitney AUC, ties count one half; weights in ascending score order, batched on axis 0."""
  pos = np.add.reduceat(pos_weights, starts, axis=-1)
  neg = np.add.reduceat(neg_weights, starts, axis=-1)
  neg_below = np.cumsum(neg, axis=-1) - neg
  wins = np.sum(pos * (neg_below + 0.5 * neg), axis=-1)
  return _divide(wins, pos.sum(axis=-1) * neg.sum(axis=-1))


def roc_auc(labels: np.ndarray, scores: np.ndarray, *, split: str = "data") -> float:
  """Exact area under the ROC curve (the Mann-Whitney statistic; tied scores count one half)."""
  truth, scores = _check_binary(labels, scores)
  _require_both_classes(truth, split, "AUC")
  order, starts = _sorted_groups(scores)
  return float(_weighted_auc(truth[order].astype(float), (~truth[order]).astype(float), starts))


def roc_curve(
  labels: np.ndarray, scores: np.ndarray, *, split: str = "data"
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
  """(fpr, tpr, thresholds), one point per distinct score, descending; the first threshold is inf.

  Equals scikit-learn's roc_curve(..., drop_intermediate=False).
  """
  truth, scores = _check_binary(labels, scores)
  _require_both_classes(truth, split, "a ROC curve")
  order, starts = _sorted_groups(-scores)  # descending scores
  last_of_group = np.r_[starts[1:], scores.size] - 1
  tps = np.cumsum(truth[order])[last_of_group]
  fps = last_of_group + 1 - tps
  fpr = np.r_[0.0, fps / fps[-1]]
  tpr = np.r_[0.0, tps / tps[-1]]
  return fpr, tpr, np.r_[np.inf, scores[order][starts]]


def choose_threshold(
  labels: np.ndarray, scores: np.ndarray, policy: ThresholdPolicy, *, split: str = "validation"
) -> float:
  """The operating threshold by `policy`; among equally good thresholds, the highest."""
  if policy.kind == "fixed":
    return float(policy.value)
  fpr, tpr, thresholds = roc_curve(labels, scores, split=split)
  fpr, tpr, thresholds = fpr[1:], tpr[1:], thresholds[1:]  # an infinite threshold calls nothing
  if policy.kind == "youden":
    return float(thresholds[np.argmax(tpr - fpr)])
  if policy.kind == "sensitivity":
    return float(thresholds[np.argmax(tpr >= policy.value)])
  raise ValueError(f"unknown threshold policy {policy}")


def wald_interval(value: float, n: int) -> Interval:
  """The paper's x +- 1.96 sqrt(x (1 - x) / n), clipped to [0, 1] (its Table 2 never needs it)."""
  if n <= 0:
    return Interval(reason="n = 0")
  half = Z_95 * float(np.sqrt(value * (1.0 - value) / n))
  return Interval(max(0.0, value - half), min(1.0, value + half))


def _bootstrap_values(
  truth: np.ndarray,
  scores: np.ndarray,
  threshold: float,
  patient_draws: np.ndarray,
  patient_index: np.ndarray,
) -> dict[str, np.ndarray]:
  """Every metric on every resample, with weights = how often each example's patient was drawn."""
  resamples, num_patients = patient_draws.shape
  offsets = np.arange(resamples)[:, None] * num_patients
  drawn = np.bincount((patient_draws + offsets).ravel(), minlength=resamples * num_patients)
  example_weights = drawn.reshape(resamples, num_patients)[:, patient_index].astype(float)
  called = scores >= threshold
  masks = {
    "tp": truth & called,
    "fp": ~truth & called,
    "tn": ~truth & ~called,
    "fn": truth & ~called,
  }
  cells = {name: example_weights @ mask for name, mask in masks.items()}
  values = {name: value for name, (value, _) in _proportions(cells).items()}
  order, starts = _sorted_groups(scores)
  ordered = example_weights[:, order]
  values["auc"] = _weighted_auc(ordered * truth[order], ordered * ~truth[order], starts)
  return values


def bootstrap_intervals(
  labels: np.ndarray,
  scores: np.ndarray,
  patient_ids: np.ndarray,
  threshold: float,
  *,
  resamples: int = 1000,
  seed: int = 0,
  split: str = "data",
) -> dict[str, Interval]:
  """95% percentile intervals from resampling patients with replacement; the threshold is fixed.

  Resamples that leave a metric undefined (no positives drawn, say) are left out of its interval;
  when they are more than half, the interval is withheld with the reason.
  """
  truth, scores = _check_binary(labels, scores)
  patients, patient_index = np.unique(np.asarray(patient_ids), return_inverse=True)
  if patients.size < 2:
    reason = f"a patient bootstrap needs 2 or more patients; {split} has {patients.size}"
    return {name: Interval(reason=reason) for name in METRICS}
  draws = np.random.default_rng(seed).integers(0, patients.size, size=(resamples, patients.size))
  chunk = max(1, _BOOTSTRAP_CHUNK_ELEMENTS // max(1, scores.size))
  parts = [
    _bootstrap_values(truth, scores, threshold, draws[i : i + chunk], patient_index)
    for i in range(0, resamples, chunk)
  ]
  out = {}
  for name in METRICS:
    values = np.concatenate([part[name] for part in parts])
    defined = values[np.isfinite(values)]
    if defined.size < (1 - _MAX_UNDEFINED_RESAMPLES) * resamples:
      out[name] = Interval(
        reason=f"undefined in {resamples - defined.size} of {resamples} patient resamples "
        f"({class_counts(labels, split)}, {patients.size} patients)"
      )
    else:
      low, high = np.quantile(defined, [0.025, 0.975])
      out[name] = Interval(float(low), float(high))
  return out


def point_metrics(
  labels: np.ndarray, scores: np.ndarray, threshold: float, *, split: str = "data"
) -> dict[str, Metric]:
  """Every metric's value and denominator, without intervals."""
  truth, scores = _check_binary(labels, scores)
  confusion = confusion_matrix(truth, scores, threshold)
  cells = {name: getattr(confusion, name) for name in _CONFUSION_CELLS}
  out = {}
  try:
    out["auc"] = Metric(roc_auc(truth, scores, split=split), None)
  except UndefinedMetricError as e:
    out["auc"] = Metric(None, None, str(e))
  for name, (value, denominator) in _proportions(cells).items():
    if denominator == 0:
      reason = f"{_PROPORTIONS[name].empty}; {class_counts(truth, split)}"
      out[name] = Metric(None, 0, reason)
    else:
      out[name] = Metric(float(value), int(denominator))
  return out


def summarize(
  labels: np.ndarray,
  scores: np.ndarray,
  patient_ids: np.ndarray,
  threshold: float,
  *,
  resamples: int = 1000,
  seed: int = 0,
  split: str = "data",
) -> dict[str, Metric]:
  """Every metric at `threshold` with its 'paper', 'wald' and 'bootstrap' intervals."""
  points = point_metrics(labels, scores, threshold, split=split)
  boot = bootstrap_intervals(
    labels, scores, patient_ids, threshold, resamples=resamples, seed=seed, split=split
  )
  out = {}
  for name, metric in points.items():
    if metric.value is None:
      missing = Interval(reason=metric.reason)
      out[name] = dataclasses.replace(metric, ci={method: missing for method in CI_METHODS})
      continue
    wald = (
      wald_interval(metric.value, metric.denominator)
      if metric.denominator is not None
      else Interval(reason="AUC has no binomial denominator")
    )
    ci = {"paper": wald_interval(metric.value, len(labels)), "wald": wald, "bootstrap": boot[name]}
    out[name] = dataclasses.replace(metric, ci=ci)
  return out


def reliability(labels: np.ndarray, probs: np.ndarray, n_bins: int = 10) -> Reliability:
  """Equal-width bins of P(class 1) and the expected calibration error sum_b n_b/N |p_b - y_b|.

  Bins are (edge_k, edge_k+1], the first one closed, as in scikit-learn's calibration_curve.
  """
  truth, probs = _check_binary(labels, probs)
  edges = np.linspace(0.0, 1.0, n_bins + 1)
  which = np.searchsorted(edges[1:-1], probs, side="left")
  counts = np.bincount(which, minlength=n_bins)
  prob_sums = np.bincount(which, weights=probs, minlength=n_bins)
  pos_sums = np.bincount(which, weights=truth.astype(float), minlength=n_bins)
  ece = float(np.sum(np.abs(prob_sums - pos_sums)) / max(1, truth.size))
  mean_prob = [float(s / c) if c else None for s, c in zip(prob_sums, counts, strict=True)]
  frac_pos = [float(s / c) if c else None for s, c in zip(pos_sums, counts, strict=True)]
  return Reliability(edges, counts, mean_prob, frac_pos, ece)
