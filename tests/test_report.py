"""mcalc-report: evaluated runs -> the paper's Table 2 layout, checked against golden files."""

from __future__ import annotations

import json
import pathlib
import subprocess
import sys

import numpy as np
import pytest

from mcalc_jax.reports import evaluation, report
from mcalc_jax.whole_image import froc, tiling

GOLDEN = pathlib.Path(__file__).parent / "golden"


def fixed_predictions(patients: int, per_patient: int, offset: int) -> dict[str, np.ndarray]:
  """Deterministic predictions (no random generator), so the golden table never drifts."""
  i = np.arange(patients * per_patient) + offset
  label = (i * 7 % 5 < 2).astype(int)
  prob = np.round(0.35 * label + 0.65 * (i * 37 % 61) / 61, 3)
  patient = np.array([f"P{k // per_patient:03d}" for k in i])
  return {
    "prob": prob,
    "label": label,
    "patient_id": patient,
    "image_id": patient,
    "finding_id": np.full(i.size, ""),
    "patch_id": np.array([f"p{k}" for k in i]),
  }


def write_run(run_dir: pathlib.Path, task: int, network: str, test: dict) -> None:
  """What mcalc-evaluate leaves in RUN_DIR/eval/test/metrics.json (without the plots)."""
  val = fixed_predictions(patients=12, per_patient=5, offset=1000)
  result = evaluation.evaluate_predictions(val, test, seed=0, resamples=200)
  result["run"] = {"task": task, "network": network, "checkpoint": "best"}
  (run_dir / "eval" / "test").mkdir(parents=True)
  (run_dir / "eval" / "test" / "metrics.json").write_text(json.dumps(result))


@pytest.fixture
def runs(tmp_path, monkeypatch) -> list[str]:
  """Three evaluated runs, not in Table 2's order; the first has benign test patches only."""
  monkeypatch.chdir(tmp_path)
  benign_only = fixed_predictions(patients=3, per_patient=4, offset=0)
  benign_only["label"][:] = 0
  specs = {
    "runs/t2_resnet34": (2, "resnet34", benign_only),
    "runs/t1_alexnet": (1, "alexnet", fixed_predictions(patients=16, per_patient=5, offset=0)),
    "runs/t2_alexnet": (2, "alexnet", fixed_predictions(patients=10, per_patient=4, offset=300)),
  }
  for run_dir, (task, network, test) in specs.items():
    write_run(tmp_path / run_dir, task, network, test)
  return list(specs)


def test_report_matches_golden_markdown_and_csv(runs):
  md_path, csv_path = report.write_report(runs, "out/table2")
  assert (md_path, csv_path) == ("out/table2.md", "out/table2.csv")
  assert pathlib.Path(md_path).read_text(encoding="utf-8") == (GOLDEN / "table2.md").read_text(
    encoding="utf-8"
  )
  assert pathlib.Path(csv_path).read_text(encoding="utf-8") == (GOLDEN / "table2.csv").read_text(
    encoding="utf-8"
  )


def test_cells_say_why_a_value_is_missing_and_never_show_nan(runs):
  rows = report.table_rows([report.load_evaluation(d) for d in runs])
  benign_only = [r for r in rows if r["Run"] == "runs/t2_resnet34"]
  assert benign_only[0]["Sensitivity"] == (
    "n/a (no positive examples; test: 12 examples (0 positive, 12 negative))"
  )
  assert all("nan" not in cell.lower() for row in rows for cell in row.values())


def test_format_cell():
  metric = {
    "value": 0.9512,
    "denominator": 300,
    "ci": {"paper": {"low": 0.94, "high": 0.9624}, "wald": {"reason": "n = 0"}},
  }
  assert report.format_cell(metric, "paper") == "0.95 (0.94–0.96)"
  assert report.format_cell(metric, "paper", digits=3) == "0.951 (0.940–0.962)"
  assert report.format_cell(metric, "wald") == "0.95 (n/a: n = 0)"


def test_missing_evaluation_says_how_to_make_it(tmp_path):
  with pytest.raises(FileNotFoundError, match="run `mcalc-evaluate --workdir="):
    report.load_evaluation(tmp_path)


def test_command_line_writes_both_tables(runs):
  command = [sys.executable, "-m", "mcalc_jax.cli.report", *runs, "--output=cli/table2"]
  printed = subprocess.run(command, check=True, capture_output=True, text=True).stdout
  assert printed.split() == ["cli/table2.md", "cli/table2.csv"]
  assert pathlib.Path("cli/table2.csv").read_text(encoding="utf-8") == (
    GOLDEN / "table2.csv"
  ).read_text(encoding="utf-8")


def test_cross_validated_runs_add_the_spread_across_folds(runs):
  summary = {
    "folds": 3,
    "task": 2,
    "network": "alexnet",
    "per_fold": [
      {"auc": 0.5, "patients": 4},
      {"auc": None, "patients": 3},
      {"auc": 0.75, "patients": 3},
    ],
    "spread": {
      "auc": {"mean": 0.625, "std": 0.1768, "folds_defined": 2},
      "accuracy": {"mean": 0.6, "std": None, "folds_defined": 1},
    },
  }
  pathlib.Path("runs/t2_alexnet/cv_summary.json").write_text(json.dumps(summary))
  md_path, _ = report.write_report(runs, "out/table2")
  text = pathlib.Path(md_path).read_text(encoding="utf-8")
  assert "## Spread across cross-validation folds" in text
  assert (
    "| runs/t2_alexnet | 2 | AlexNet | 3 | 0.50, n/a, 0.75 | 0.62 ± 0.18 (2) | 0.60 ± n/a (1) "
    "| 4, 3, 3 |" in text
  )
  assert "Spread" not in report.markdown_report([report.load_evaluation("runs/t1_alexnet")])


def test_localised_cross_validations_add_a_whole_image_table(runs):
  metrics = {
    "sensitivity_at_0.5_fp": 0.5,
    "sensitivity_at_1_fp": 0.75,
    "sensitivity_at_2_fp": 1.0,
    "image_auc": 0.8,
    "breast_auc": None,  # undefined, e.g. no breast without a cluster
    "median_cluster_rank": 2.5,
  }
  ci = {name: {"low": 0.25, "high": 1.0} for name in metrics}
  ci["median_cluster_rank"] = {"low": 1.0, "high": 6.0}
  ci["sensitivity_at_2_fp"] = {"reason": "undefined in 600 of 1000 resamples"}  # as froc says
  summary = {
    "folds": 2,
    "task": 1,
    "network": "tophat",
    "per_fold": [{"auc": 0.7, "patients": 8}, {"auc": 0.9, "patients": 8}],
    "spread": {
      "auc": {"mean": 0.8, "std": 0.14, "folds_defined": 2},
      "accuracy": {"mean": 0.7, "std": 0.1, "folds_defined": 2},
    },
    "whole_image": {
      "metrics": metrics,
      "ci": ci,
      "counts": {"images": 32, "images_with_clusters": 4, "clusters": 4, "patients": 16},
    },
  }
  reranked = {
    **summary["whole_image"],
    "mode": "classical",
    "metrics": {**metrics, "image_auc": 0.9},
  }
  reranked["bilateral"] = {**reranked, "weight": 0.5, "metrics": {**metrics, "image_auc": 0.95}}
  summary["whole_image"]["reranked"] = reranked
  counts = {**summary["whole_image"]["counts"], "marks_per_image": 2.9}
  summary["whole_image"]["marks"] = {**reranked, "counts": counts}
  summary["whole_image"]["marks"]["bilateral"] = {**reranked["bilateral"], "counts": counts}
  summary["whole_image"]["image_reading"] = {
    "counts": summary["whole_image"]["counts"],
    "metrics": {"image_auc": 0.97},
    "ci": {"image_auc": {"low": 0.9, "high": 1.0}},
  }
  pathlib.Path("runs/t1_alexnet/cv_summary.json").write_text(json.dumps(summary))
  text = report.markdown_report([report.load_evaluation(r) for r in runs])
  assert "## Whole images, out of fold" in text
  assert (
    "| runs/t1_alexnet | 1 | Top-hat floor | 0.50 (0.25–1.00) | 0.75 (0.25–1.00) "
    "| 1.00 (n/a: undefined in 600 of 1000 resamples) | 0.80 (0.25–1.00) | n/a | 2.5 (1.0–6.0) "
    "| 4 clusters in 4 of 32 images, 16 patients |" in text
  )
  assert "| runs/t1_alexnet | 1 | Top-hat floor + tile reranker (classical) | 0.50" in text
  assert "| 0.90 (0.25–1.00) | n/a | 2.5" in text  # the reranker's row, after the network's
  bilateral = (
    "| runs/t1_alexnet | 1 | Top-hat floor + tile reranker (classical) + other breast (0.5)"
  )
  assert f"{bilateral} | 0.50" in text and "| 0.95 (0.25–1.00) |" in text
  rows = [line for line in text.splitlines() if line.startswith("| runs/t1_alexnet | 1 | Top-hat")]
  assert [row.split(" | ")[2] for row in rows][-6:] == [
    "Top-hat floor",
    "Top-hat floor + tile reranker (classical)",
    "Top-hat floor + tile reranker (classical) + other breast (0.5)",
    "Top-hat floor + CAD marks",
    "Top-hat floor + CAD marks + other breast (0.5)",
    "Top-hat floor + marks and tiles read together",
  ]
  assert rows[-3].endswith("16 patients, 2.9 marks per image |")
  assert "| n/a | 0.97 (0.90–1.00) | n/a |" in rows[-1]  # an image AUC, no FROC of its own


def test_a_whole_image_metric_added_to_the_froc_registry_reaches_the_report(runs, monkeypatch):
  """One entry in `froc.METRICS` is all a new operating point needs: froc computes it and the
  report prints its column."""
  monkeypatch.setitem(
    froc.METRICS, froc.sensitivity_name(4.0), froc._sensitivity(4.0, "at 4 FP/image")
  )
  geometry = tiling.TileGeometry(
    np.array([0, 10]), np.array([0]), 10, 10, (20, 10), (20, 10), flipped=False
  )
  cluster = froc.Cluster("c", "benign", row=15.0, col=5.0, radius=2.0)
  images = [
    froc.ScoredImage(
      f"i{n}",
      f"p{n}",
      f"p{n}/L",
      tiling.ImageScores(geometry, np.array([[0.9], [0.1 * n]]), None, 0.5, 0.0),
      (cluster,),
    )
    for n in range(4)
  ]
  evaluation = froc.evaluate(images, resamples=20)
  assert evaluation["metrics"]["sensitivity_at_4_fp"] == 1.0  # every cluster, below 4 FP/image
  summary = {
    "folds": 2,
    "task": 1,
    "network": "tophat",
    "per_fold": [{"auc": 0.7, "patients": 2}, {"auc": 0.9, "patients": 2}],
    "spread": {m: {"mean": 0.8, "std": 0.1, "folds_defined": 2} for m in ("auc", "accuracy")},
    "whole_image": {k: evaluation[k] for k in ("metrics", "ci", "counts")},
  }
  pathlib.Path("runs/t1_alexnet/cv_summary.json").write_text(json.dumps(summary))
  text = report.markdown_report([report.load_evaluation(r) for r in runs])
  header = next(
    line for line in text.splitlines() if line.startswith("| Run | Task | Network | Clu")
  )
  assert header.split(" | ")[-2] == "at 4 FP/image"
  rows = [line for line in text.splitlines() if line.startswith("| runs/t1_alexnet | 1 | Top")]
  assert rows[-1].split(" | ")[-2].startswith("1.00 (")  # the whole-image row
