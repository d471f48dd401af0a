"""Each image read by its CAD marks and its tiles together: the sum of the two logits."""

import csv

import numpy as np
import pytest
from scipy import special

from input_pipeline.manifest import Finding
from mcalc_jax.archives import scored
from mcalc_jax.experiments import localization
from mcalc_jax.whole_image import image_reading


def rows(scores: dict[str, float], clusters: dict[str, int]) -> list[dict]:
  return [
    {"image": key, "patient_id": f"p-{key}", "clusters": clusters[key], "score": score}
    for key, score in scores.items()
  ]


# Two images with a cluster (a, b), two without (c, d): the tiles rank b below c, the marks rank
# a below d; each reader alone has an image AUC of 0.75.
CLUSTERS = {"a": 1, "b": 2, "c": 0, "d": 0}
TILES = rows({"a": 0.9, "b": 0.3, "c": 0.8, "d": 0.2}, CLUSTERS)
MARKS = rows({"a": 0.2, "b": 0.9, "c": 0.1, "d": 0.8}, CLUSTERS)


def test_an_images_score_is_the_sum_of_its_readers_logits():
  together = {row["image"]: row["score"] for row in image_reading.combined(TILES, MARKS)}
  assert together["a"] == pytest.approx(special.logit(0.9) + special.logit(0.2))
  assert together["d"] == pytest.approx(0.0)  # logit(0.2) + logit(0.8)


def test_an_image_without_a_mark_counts_as_the_floor_and_one_the_marks_skipped_is_left_out():
  marks = rows({"a": 0.0, "b": 0.9}, CLUSTERS)
  together = {row["image"]: row["score"] for row in image_reading.combined(TILES, marks)}
  assert sorted(together) == ["a", "b"]
  assert together["a"] == pytest.approx(special.logit(0.9) + special.logit(image_reading.P_FLOOR))


def test_read_together_the_two_readers_rank_every_cluster_image_first(tmp_path):
  evaluation = image_reading.evaluate(TILES, MARKS, resamples=50)
  assert evaluation["metrics"]["image_auc"] == 1.0
  assert evaluation["counts"] == {
    "images": 4,
    "images_with_clusters": 2,
    "clusters": 3,
    "patients": 4,
  }
  assert evaluation["reading"] == image_reading.READING
  scored.write_image_reading(tmp_path, evaluation)
  saved = scored.read_images(tmp_path)
  assert [row["image"] for row in saved] == ["a", "b", "c", "d"]
  assert np.allclose(
    [float(row["score"]) for row in saved], [r["score"] for r in evaluation["images"]]
  )
  assert (tmp_path / "image_reading.json").exists()


def write_images(folder, images: list[dict]) -> None:
  folder.mkdir(parents=True)
  with open(folder / "images.csv", "w", newline="") as f:
    writer = csv.DictWriter(f, fieldnames=scored.IMAGE_COLUMNS)
    writer.writeheader()
    writer.writerows(images)


def test_a_cross_validation_reads_its_marks_with_its_last_tile_reading(tmp_path):
  findings = [Finding("p", "/x/a.png")]
  whole = localization.WholeImagePass(findings, rerank="classical", bilateral_weight=0.5)
  write_images(tmp_path / "froc_reranked_bilateral", TILES)
  write_images(tmp_path / "froc_marks", MARKS)
  result = localization.read_together(tmp_path, whole, seed=0, resamples=20)
  assert result["tiles"] == "froc_reranked_bilateral" and result["metrics"]["image_auc"] == 1.0
  assert len(scored.read_images(tmp_path / "image_reading")) == 4
  plain = localization.WholeImagePass(findings, rerank="", bilateral_weight=0.0)
  write_images(tmp_path / "froc", MARKS)  # the network's own tiles, read alone
  assert localization.read_together(tmp_path, plain, 0, 20)["tiles"] == "froc"
