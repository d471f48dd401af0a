"""Reading each breast against the other: pairing and the score shift on hand-built grids, and
mcalc-froc applying it to a scored archive."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

from input_pipeline import manifest
from mcalc_jax.archives import archive, discovery
from mcalc_jax.base import calibration
from mcalc_jax.whole_image import bilateral, froc
from tests.test_froc import cluster, grid_image
from tests.test_score_cli import REPO, speck_scorer
from tests.test_scoring import synthetic_mammogram

NAN = np.nan


def test_partners_are_the_same_patients_same_view_of_the_other_breast():
  views = {
    "p1-l-mlo": bilateral.View("1", "L", "MLO"),
    "p1-r-mlo": bilateral.View("1", "R", "MLO"),
    "p1-l-cc": bilateral.View("1", "L", "CC"),  # no right CC: unpaired
    "p2-l": bilateral.View("2", "L", ""),
    "p2-r": bilateral.View("2", "R", ""),
    "p2-r-again": bilateral.View("2", "R", ""),  # two right images: which one is ambiguous
    "p3-?": bilateral.View("3", "", "MLO"),  # laterality unknown
  }
  assert bilateral.partners(views) == {"p1-l-mlo": "p1-r-mlo", "p1-r-mlo": "p1-l-mlo"}


def test_an_image_drops_by_the_weighted_peak_of_the_other_breast_and_keeps_its_own_order():
  grids = {
    "left": grid_image([[0.9, 0.2], [NAN, 0.6]]),
    "right": grid_image([[0.5, 0.8]]),
    "alone": grid_image([[0.7]]),
  }
  pairs = {"left": "right", "right": "left"}
  compared = bilateral.compare(grids, pairs, weight=0.5)

  left = calibration.logit(compared["left"].task1)
  expected = calibration.logit(grids["left"].task1) - 0.5 * calibration.logit(0.8)
  np.testing.assert_allclose(left, expected, rtol=1e-5)  # NaN where it was not scored
  right = calibration.logit(compared["right"].task1)
  expected = calibration.logit(grids["right"].task1) - 0.5 * calibration.logit(0.9)
  np.testing.assert_allclose(right, expected, rtol=1e-5)
  np.testing.assert_allclose(compared["alone"].task1, grids["alone"].task1)  # no partner
  assert compared["left"].hottest() == grids["left"].hottest() == (0, 0)


def test_a_finding_in_both_breasts_falls_below_one_in_a_single_breast():
  """A patient with the same bright spot in both breasts (symmetric, benign-looking) and one whose
  cluster shows on one side only: read against the other breast, the one-sided cluster comes
  first, so it is found before any false positive."""
  images = [
    froc.ScoredImage("1L", "1", "1/L", grid_image([[0.95, 0.96]]), (), "L", "MLO"),
    froc.ScoredImage("1R", "1", "1/R", grid_image([[0.96, 0.95]]), (), "R", "MLO"),
    froc.ScoredImage("2L", "2", "2/L", grid_image([[0.9, 0.1]]), (cluster(50, 50),), "L", "MLO"),
    froc.ScoredImage("2R", "2", "2/R", grid_image([[0.1, 0.1]]), (), "R", "MLO"),
  ]
  alone = froc.summarize([froc.evaluate_image(im) for im in images])
  compared = froc.against_other_breast(images, weight=1.0)
  read = froc.summarize([froc.evaluate_image(im) for im in compared])
  assert alone["sensitivity_at_0.5_fp"] == 0.0 and alone["image_auc"] == pytest.approx(1 / 3)
  assert read["sensitivity_at_0.5_fp"] == 1.0 and read["image_auc"] == 1.0
  assert [im.clusters for im in compared] == [im.clusters for im in images]


def test_a_negative_weight_is_refused():
  with pytest.raises(ValueError, match="bilateral weight must be >= 0"):
    bilateral.compare({"a": grid_image([[0.5]])}, {}, weight=-1)


def test_mcalc_froc_reads_each_breast_against_the_other_from_the_manifest(tmp_path):
  """Score two patients' left and right breasts, then evaluate from the command line: the bright
  spot in both of patient 1's breasts outranks patient 2's one-sided cluster, until each image
  is read against the other breast (pairs from the manifest's patient, laterality and view)."""
  root, findings = tmp_path / "archive", []
  root.mkdir()
  spots = {("1", "L"): [(600, 300, 7)], ("1", "R"): [(500, 350, 7)], ("2", "L"): [], ("2", "R"): []}
  spots[("2", "L")] = [(400 + 6 * k, 300 + 6 * k, 3) for k in range(4)]  # a cluster of 4 specks
  for (patient, side), marks in spots.items():
    pixels = synthetic_mammogram(clusters=[], seed=len(findings)).pixels
    for row, col, size in marks:
      pixels[row : row + size, col : col + size] = 4000
    name = f"p{patient}_{side}.png"
    Image.fromarray(pixels).save(root / name)
    cluster = dict(finding_id="c1", abnormality="calcification", label="benign", col=309, row=409)
    extra = dict(cluster, radius=40) if marks and patient == "2" else {}
    findings.append(manifest.Finding(patient, name, view="MLO", laterality=side, **extra))
  manifest.write_manifest(root / "manifest.csv", findings)
  inputs = discovery.find_inputs(str(root / "manifest.csv"))
  archive.score_archive(speck_scorer(), inputs, str(tmp_path / "scores"), overlays=False)

  def mcalc_froc(*flags: str) -> dict:
    out = tmp_path / f"froc{len(flags)}"
    command = [sys.executable, "-m", "mcalc_jax.cli.froc", f"--scores={tmp_path / 'scores'}"]
    command += [f"--manifest={root / 'manifest.csv'}", f"--output={out}", *flags]
    result = subprocess.run(command, capture_output=True, text=True, timeout=300, cwd=REPO)
    assert result.returncode == 0, result.stderr[-2000:]
    return json.loads((out / "froc.json").read_text())

  alone, read = mcalc_froc(), mcalc_froc("--bilateral_weight=1")
  assert alone["counts"]["clusters"] == read["counts"]["clusters"] == 1
  assert alone["metrics"]["image_auc"] == pytest.approx(1 / 3)  # both spots above the cluster
  assert read["metrics"]["image_auc"] == 1.0 and read["bilateral_weight"] == 1.0
  assert [c["rank"] for c in alone["clusters"]] == [c["rank"] for c in read["clusters"]] == [1]
