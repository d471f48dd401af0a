"""The README's main job, shrunk: mcalc-demo runs every stage on a tiny synthetic cohort."""

import csv
import json
import os
import subprocess
import sys


def test_demo_runs_every_stage_end_to_end(tmp_path):
  workdir = tmp_path / "demo"
  command = [
    sys.executable,
    "-m",
    "mcalc_jax.cli.demo",
    f"--workdir={workdir}",
    "--patients=12",
    "--epochs=1",
    "--heatmaps=2",
  ]
  result = subprocess.run(command, capture_output=True, text=True, timeout=900)
  assert result.returncode == 0, result.stderr[-4000:]
  assert "mcalc-demo finished" in result.stdout

  assert (workdir / "cohort" / "manifest.csv").is_file()
  for task in (1, 2):
    metrics = json.loads(
      (workdir / f"task{task}_specknet" / "eval" / "test" / "metrics.json").read_text()
    )
    assert metrics["counts"]["examples"] > 0
    assert (workdir / f"task{task}_specknet" / "eval" / "test" / "roc.png").is_file()
  table = (workdir / "table2.md").read_text()
  assert "| 1 | SpeckNet |" in table and "| 2 | SpeckNet |" in table

  reranker = json.loads((workdir / "reranker.json").read_text())  # fitted on non-test patients
  assert reranker["features"] and reranker["field_of_view_mm"] == 11.2
  test_keys = set()
  for folder in ("heatmaps", "heatmaps_reranked"):  # the network alone, then reranked
    with open(workdir / folder / "scores.csv", newline="") as f:
      rows = list(csv.DictReader(f))
    assert len(rows) == 2
    for row in rows:
      assert 0.0 <= float(row["task1_max"]) <= 1.0
      assert os.path.isfile(workdir / folder / f"{row['key']}.png")
    froc = json.loads((workdir / folder / "froc" / "froc.json").read_text())
    assert froc["counts"]["images"] == 2 and froc["counts"]["images_with_clusters"] >= 1
    test_keys |= {row["key"] for row in rows}
  with open(workdir / "reranker_fit" / "scores.csv", newline="") as f:
    assert not test_keys & {row["key"] for row in csv.DictReader(f)}
  assert "the hottest tile is on a cluster in" in result.stdout
