"""Table 2 of Pesapane et al. 2023, rebuilt from evaluated runs: one Markdown and one CSV table.

Each run contributes one row per interval method, so the paper's Wald interval (n = test-set size)
sits next to the same formula with each metric's own denominator and the patient bootstrap. A cell
the data cannot fill says 'n/a (why, with the split's counts)' instead of showing NaN. The paper's
own Table 2 follows the Markdown table for reference.
"""

from __future__ import annotations

import csv
import io
import json
import os
from collections.abc import Sequence

from mcalc_jax.base import metrics
from mcalc_jax.model import networks
from mcalc_jax.whole_image import froc

# One column per registered reported metric, in the registry's order.
_METRIC_COLUMNS = {metrics.REGISTRY[name].column: name for name in metrics.METRICS}
COLUMNS = ("Run", "Task", "Network", "CI", *_METRIC_COLUMNS, "Threshold", "n")
CI_LABELS = {
  "paper": "paper: Wald, n = test set",
  "wald": "Wald, n = metric's denominator",
  "bootstrap": "patient bootstrap",
}
FOLD_COLUMNS = (
  "Run",
  "Task",
  "Network",
  "Folds",
  "AUC per fold",
  *(f"{metrics.REGISTRY[name].column} mean ± sd" for name in metrics.FOLD_SPREAD_METRICS),
  "Patients per fold",
)
PAPER_COLUMNS = ("Task", "Network", "AUC", "Accuracy", "Sensitivity", "Specificity", "PPV", "NPV")
# Pesapane et al. 2023, Table 2 as printed (95% CIs by the paper's Wald formula; none for AUC),
# one printed row per entry (kept out of the formatter so it reads as the table does).
# fmt: off
PAPER_TABLE2 = (
  ("1", "AlexNet", "0.98", "0.95 (0.94–0.96)", "0.98 (0.98–0.98)", "0.89 (0.88–0.90)",
   "0.96 (0.95–0.97)", "0.94 (0.93–0.95)"),
  ("1", "ResNet18", "0.98", "0.95 (0.94–0.96)", "0.96 (0.95–0.97)", "0.91 (0.90–0.92)",
   "0.96 (0.95–0.97)", "0.91 (0.90–0.92)"),
  ("1", "ResNet34", "0.98", "0.95 (0.94–0.96)", "0.97 (0.96–0.98)", "0.9 (0.89–0.91)",
   "0.96 (0.95–0.97)", "0.91 (0.90–0.92)"),
  ("2", "AlexNet", "0.94", "0.87 (0.86–0.88)", "0.85 (0.84–0.86)", "0.89 (0.88–0.90)",
   "0.87 (0.86–0.88)", "0.88 (0.87–0.89)"),
  ("2", "ResNet18", "0.88", "0.80 (0.78–0.82)", "0.75 (0.73–0.77)", "0.85 (0.84–0.86)",
   "0.80 (0.78–0.82)", "0.80 (0.78–0.82)"),
  ("2", "ResNet34", "0.92", "0.84 (0.83–0.85)", "0.84 (0.83–0.85)", "0.84 (0.83–0.85)",
   "0.81 (0.79–0.83)", "0.87 (0.86–0.88)"),
)
# fmt: on


def load_evaluation(run_dir: str | os.PathLike, split: str = "test") -> dict:
  """RUN_DIR/eval/<split>/metrics.json, labelled with `run_dir` as given."""
  path = os.path.join(run_dir, "eval", split, "metrics.json")
  if not os.path.isfile(path):
    hint = f"run `mcalc-evaluate --workdir={run_dir} --split={split}`"
    raise FileNotFoundError(f"{path} not found: {hint}")
  with open(path) as f:
    evaluation = json.load(f)
  evaluation.setdefault("run", {})["dir"] = os.fspath(run_dir)
  summary = os.path.join(run_dir, "cv_summary.json")
  if os.path.isfile(summary):  # a cross-validation: its pooled predictions, and the folds' spread
    with open(summary) as f:
      evaluation["cv"] = json.load(f)
  return evaluation


def fold_spread_rows(evaluations: Sequence[dict], digits: int = 2) -> list[list[str]]:
  """One row per cross-validated run: each fold's AUC, and mean +- sd of the fold-spread metrics."""
  rows = []
  for evaluation in sorted(evaluations, key=_sort_key):
    if "cv" not in evaluation:
      continue
    cv, run = evaluation["cv"], evaluation["run"]

    def mean_sd(name: str, cv: dict = cv) -> str:
      spread = cv["spread"][name]
      mean, sd = (
        "n/a" if spread[k] is None else f"{spread[k]:.{digits}f}" for k in ("mean", "std")
      )
      return f"{mean} ± {sd} ({spread['folds_defined']})"

    per_fold = ", ".join(
      "n/a" if fold["auc"] is None else f"{fold['auc']:.{digits}f}" for fold in cv["per_fold"]
    )
    rows.append(
      [
        run.get("dir", ""),
        str(cv["task"]),
        networks.display_name(cv["network"]),
        str(cv["folds"]),
        per_fold,
        *(mean_sd(name) for name in metrics.FOLD_SPREAD_METRICS),
        ", ".join(f"{fold['patients']}" for fold in cv["per_fold"]),
      ]
    )
  return rows


def format_cell(metric: dict, method: str, digits: int = 2) -> str:
  """'0.95 (0.94–0.96)', '0.95 (n/a: why)' or 'n/a (why)'."""
  if metric["value"] is None:
    return f"n/a ({metric['reason']})"
  ci = metric["ci"][method]
  if "reason" in ci:
    interval = f"n/a: {ci['reason']}"
  else:
    interval = f"{ci['low']:.{digits}f}–{ci['high']:.{digits}f}"
  return f"{metric['value']:.{digits}f} ({interval})"


def _n_cell(evaluation: dict) -> str:
  c = evaluation["counts"]
  return (
    f"{c['examples']} patches, {c['patients']} patients "
    f"({c['positives']} positive, {c['negatives']} negative)"
  )


def _sort_key(evaluation: dict) -> tuple:
  network = evaluation["run"].get("network", "")
  order = list(networks.NETWORKS)
  rank = order.index(network) if network in order else len(order)
  return (evaluation["run"].get("task", 0), rank)


def table_rows(evaluations: Sequence[dict], digits: int = 2) -> list[dict[str, str]]:
  """Rows in Table 2's order (task, then network), one per run and interval method."""
  rows = []
  for evaluation in sorted(evaluations, key=_sort_key):
    run = evaluation["run"]
    threshold = evaluation["threshold"]
    common = {
      "Run": run.get("dir", run.get("workdir", "")),
      "Task": str(run.get("task", "")),
      "Network": networks.display_name(run.get("network", "")),
      "Threshold": f"{threshold['value']:.3f} ({threshold['policy']} on {threshold['chosen_on']})",
      "n": _n_cell(evaluation),
    }
    for method in metrics.CI_METHODS:
      cells = {
        column: format_cell(evaluation["metrics"][name], method, digits)
        for column, name in _METRIC_COLUMNS.items()
      }
      rows.append({**common, "CI": CI_LABELS[method], **cells})
  return rows


def markdown_table(columns: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
  lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
  lines += ["| " + " | ".join(cell.replace("|", "\\|") for cell in row) + " |" for row in rows]
  return "\n".join(lines) + "\n"


def markdown_report(evaluations: Sequence[dict], digits: int = 2) -> str:
  """The Markdown document: our Table 2, how to read it, and the paper's Table 2."""
  rows = table_rows(evaluations, digits)
  splits = sorted({e["split"] for e in evaluations})
  boot = sorted({(e["bootstrap"]["resamples"], e["bootstrap"]["seed"]) for e in evaluations})
  return "\n".join(
    [
      f"# Table 2: patch-level performance on the {', '.join(splits)} split",
      "",
      "Cells: value (95% CI). The threshold is chosen on the validation split and applied unchanged.",
      f"CI rows: {metrics.CI_DESCRIPTIONS['paper']}; {metrics.CI_DESCRIPTIONS['wald']}; "
      f"{metrics.CI_DESCRIPTIONS['bootstrap']} (resamples, seed: "
      f"{', '.join(f'{r}, {s}' for r, s in boot)}).",
      "",
      markdown_table(COLUMNS, [[row[c] for c in COLUMNS] for row in rows]),
      *_fold_spread_section(evaluations, digits),
      *_whole_image_section(evaluations, digits),
      "## Reference: Table 2 of Pesapane et al. 2023 (their data; CIs by their Wald formula)",
      "",
      markdown_table(PAPER_COLUMNS, PAPER_TABLE2),
    ]
  )


def _fold_spread_section(evaluations: Sequence[dict], digits: int) -> list[str]:
  rows = fold_spread_rows(evaluations, digits)
  if not rows:
    return []
  return [
    "## Spread across cross-validation folds",
    "",
    "The table above pools every fold's out-of-fold predictions (each patient predicted once, by",
    "a model that never saw it). Here each fold is scored alone, with its own threshold; mean ±",
    "sd over the folds where the metric is defined (their number in parentheses).",
    "",
    markdown_table(FOLD_COLUMNS, rows),
  ]


def whole_image_rows(evaluations: Sequence[dict], digits: int = 2) -> list[list[str]]:
  """One row per cross-validation whose folds scored their test patients' whole images, one more
  for its tile reranker where it has one, after each its bilateral reading where there is one,
  its CAD marks (mark FROC: false marks per image) where it made them, and the image AUC of the
  marks and tiles read together (`image_reading`)."""
  rows = []
  for evaluation in sorted(evaluations, key=_sort_key):
    whole = evaluation.get("cv", {}).get("whole_image")
    if not whole:
      continue
    network = networks.display_name(evaluation["cv"]["network"])
    named = [(network, whole)]
    if "reranked" in whole:
      named.append((f"{network} + tile reranker ({whole['reranked']['mode']})", whole["reranked"]))
    if "metrics" in whole.get("marks", {}):
      named.append((f"{network} + CAD marks", whole["marks"]))
    if "image_reading" in whole:  # an image AUC only: no detections of its own
      named.append((f"{network} + marks and tiles read together", whole["image_reading"]))
    for name, result in named:
      rows.append(_whole_image_row(evaluation, result, name, digits))
      if "bilateral" in result:
        compared = f"{name} + other breast ({result['bilateral']['weight']:g})"
        rows.append(_whole_image_row(evaluation, result["bilateral"], compared, digits))
  return rows


def _whole_image_row(evaluation: dict, whole: dict, network: str, digits: int) -> list[str]:
  counts = whole["counts"]
  cells = [
    _whole_image_cell(whole["metrics"].get(name), whole["ci"].get(name, {}), metric, digits)
    for name, metric in froc.METRICS.items()
  ]
  return [
    evaluation["run"].get("dir", ""),
    str(evaluation["cv"]["task"]),
    network,
    *cells,
    f"{counts['clusters']} clusters in {counts['images_with_clusters']} of "
    f"{counts['images']} images, {counts['patients']} patients"
    + (f", {counts['tiles_per_image']:.0f} tiles per image" if "tiles_per_image" in counts else "")
    + (f", {counts['marks_per_image']:.1f} marks per image" if "marks_per_image" in counts else ""),
  ]


def _whole_image_cell(
  value: float | None, ci: dict, metric: froc.WholeImageMetric, digits: int
) -> str:
  """'0.50 (0.25–1.00)'; an interval the bootstrap could not give says why (froc.bootstrap)."""
  if value is None:
    return "n/a"
  fmt = f".{metric.digits if metric.digits is not None else digits}f"
  if "reason" in ci or not ci:
    interval = f"n/a: {ci.get('reason', 'not computed')}"
  else:
    interval = f"{ci['low']:{fmt}}–{ci['high']:{fmt}}"
  return f"{value:{fmt}} ({interval})"


def _whole_image_section(evaluations: Sequence[dict], digits: int) -> list[str]:
  rows = whole_image_rows(evaluations, digits)
  if not rows:
    return []
  columns = ("Run", "Task", "Network", *(m.column for m in froc.METRICS.values()), "n")
  return [
    "## Whole images, out of fold",
    "",
    "Each fold's model scored the whole mammograms of its own test patients",
    "(mcalc_jax.whole_image.froc): cluster sensitivity at mean false-positive regions per image, image and breast AUC from the",
    "maximum tile score, each cluster's rank among its image's tiles (1: the hottest); 95% patient",
    "bootstrap CIs in parentheses. A CAD marks row (mcalc_jax.experiments.marking) counts false",
    "marks per image, takes the AUC from the top mark and the rank among the image's marks; the",
    "marks and tiles read together give an image AUC only (mcalc_jax.whole_image.image_reading).",
    "",
    markdown_table(columns, rows),
  ]


def csv_report(evaluations: Sequence[dict], digits: int = 2) -> str:
  """The same table as CSV, one row per run and interval method."""
  out = io.StringIO()
  writer = csv.DictWriter(out, fieldnames=COLUMNS, lineterminator="\n")
  writer.writeheader()
  writer.writerows(table_rows(evaluations, digits))
  return out.getvalue()


def write_report(
  run_dirs: Sequence[str | os.PathLike],
  output: str | os.PathLike,
  *,
  split: str = "test",
  digits: int = 2,
) -> tuple[str, str]:
  """Writes OUTPUT.md and OUTPUT.csv from the runs' metrics.json; returns the two paths."""
  evaluations = [load_evaluation(d, split) for d in run_dirs]
  output = os.fspath(output)
  if os.path.dirname(output):
    os.makedirs(os.path.dirname(output), exist_ok=True)
  paths = (output + ".md", output + ".csv")
  texts = (markdown_report(evaluations, digits), csv_report(evaluations, digits))
  for path, text in zip(paths, texts, strict=True):
    with open(path, "w", encoding="utf-8", newline="") as f:
      f.write(text)
  return paths
