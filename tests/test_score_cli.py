"""mcalc-score over real archives: every image scored, failures listed, nothing lost to kill -9."""

from __future__ import annotations

import csv
import dataclasses
import os
import pathlib
import signal
import subprocess
import sys
import time

import jax
import numpy as np
import pytest
from flax import nnx
from PIL import Image

from input_pipeline import manifest
from mcalc_jax.archives import archive, discovery, scored
from mcalc_jax.base import csvlog, parallel
from mcalc_jax.configs import default
from mcalc_jax.model import checkpointing, inference, networks
from mcalc_jax.whole_image import froc, heatmaps, reranking, scoring, tiling
from tests.test_scoring import PATCH, speck_probabilities, synthetic_mammogram

REPO = pathlib.Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory) -> pathlib.Path:
  """A randomly initialised ResNet18 run: 224-pixel tiles shrunk to 32 pixels, unblurred: cheap."""
  workdir = tmp_path_factory.mktemp("run")
  config = default.get_config()
  config.model = "resnet18"
  config.patch_size = 224
  config.preprocess.input_size = 32
  config.preprocess.blur_sigma = 0.0
  config.async_checkpointing = False
  config.field_of_view_mm = 0.0  # native pixels, as a run trained on such patches records
  _, params, batch_stats = nnx.split(
    networks.create_model(config, nnx.Rngs(0)), nnx.Param, nnx.BatchStat
  )
  checkpointing.save_config(config, workdir)
  with checkpointing.create_manager(workdir, config) as manager:
    checkpointing.save(
      manager,
      1,
      {"model": {"params": params, "batch_stats": batch_stats}},
      progress={},
      validation={config.early_stopping_metric: 0.5},
    )
  return workdir


def archive_of(tmp_path: pathlib.Path, *folders: pathlib.Path) -> pathlib.Path:
  """Links every file of the real data folders into one archive, plus two corrupt files."""
  root = tmp_path / "archive"
  for folder in folders:
    for path in folder.rglob("*"):
      if path.is_file() and path.suffix.lower() in discovery.IMAGE_SUFFIXES:
        link = root / folder.name / path.relative_to(folder)
        link.parent.mkdir(parents=True, exist_ok=True)
        link.symlink_to(path)
  (root / "corrupt").mkdir(parents=True)
  (root / "corrupt" / "truncated.dcm").write_bytes(b"\0" * 128 + b"DICM" + b"\x02\x00" * 40)
  (root / "corrupt" / "noise.png").write_bytes(b"\x89PNG\r\n\x1a\n" + os.urandom(200))
  return root


def mcalc_score(*args: str, **kwargs) -> subprocess.Popen:
  """Starts mcalc-score (the console script's module) in a subprocess."""
  return subprocess.Popen(
    [sys.executable, "-m", "mcalc_jax.cli.score", *args],
    cwd=REPO,
    stdout=subprocess.PIPE,
    stderr=subprocess.STDOUT,
    text=True,
    **kwargs,
  )


def finish(process: subprocess.Popen, timeout: float = 300) -> None:
  out, _ = process.communicate(timeout=timeout)
  assert process.returncode == 0, out[-3000:]


def rows_of(path: pathlib.Path) -> list[dict[str, str]]:
  with open(path, newline="") as f:
    return list(csv.DictReader(f))


def assert_complete(output: pathlib.Path, folder: pathlib.Path, scored: int, failed: int):
  """Every image has exactly one whole row; every scored one has its npz and overlay."""
  scores, errors = rows_of(output / "scores.csv"), rows_of(output / "errors.csv")
  keys = [r["key"] for r in scores + errors]
  expected = {i.key for i in discovery.find_inputs(str(folder))}
  assert sorted(keys) == sorted(expected) and len(keys) == len(set(keys))
  assert (len(scores), len(errors)) == (scored, failed)
  for row in scores:
    assert None not in row.values() and float(row["tiles_scored"]) > 0
    loaded = heatmaps.read_scores(output / f"{row['key']}.npz")
    assert loaded.tiles_scored == int(row["tiles_scored"])
    assert np.nanmax(loaded.task1) == pytest.approx(float(row["task1_max"]), abs=1e-6)
    assert (output / f"{row['key']}.png").stat().st_size > 0
  assert not [p for p in output.iterdir() if p.name.startswith(".")]  # no temporaries left


def test_every_real_image_scores_and_corrupt_files_are_listed(
  tmp_path, checkpoint, nyu_dir, cbis_dir
):
  folder = archive_of(tmp_path, nyu_dir, cbis_dir)
  output = tmp_path / "scores"
  finish(
    mcalc_score(
      f"--workdir={checkpoint}",
      f"--input={folder}",
      f"--output={output}",
      f"--task2_workdir={checkpoint}",
      "--task1_threshold=0.735",
    )
  )

  assert_complete(output, folder, scored=12, failed=2)
  for row in rows_of(output / "scores.csv"):  # Task 2 ran where Task 1 reached the threshold
    assert (row["task2_at_max"] != "") == (float(row["task1_max"]) >= 0.735)
  assert "archive" not in (output / "errors.csv").read_text()  # no paths without the flag


def test_the_scorer_gives_what_the_classifier_gives_tile_by_tile(checkpoint):
  classifier = inference.load_classifier(checkpoint)
  mammogram = synthetic_mammogram((700, 500))
  scores = scoring.Scorer(classifier, min_breast_fraction=0).score(mammogram)

  size, g = classifier.patch_size, scores.geometry
  tiles = np.stack(
    [mammogram.pixels[r : r + size, c : c + size] for r in g.tile_rows for c in g.tile_cols]
  )
  expected = classifier.probabilities(tiles[..., None] / np.float32(mammogram.max_value))[:, 1]
  np.testing.assert_allclose(scores.task1.ravel(), expected, atol=1e-5)


def test_kill_9_then_rerun_leaves_no_duplicate_or_partial_rows(tmp_path, checkpoint, nyu_dir):
  folder = archive_of(tmp_path, nyu_dir)
  output = tmp_path / "scores"
  args = (f"--workdir={checkpoint}", f"--input={folder}", f"--output={output}", "--num_workers=1")
  first = mcalc_score(*args)
  deadline = time.monotonic() + 240
  while not (output / "scores.csv").exists() or len(rows_of(output / "scores.csv")) < 1:
    assert first.poll() is None and time.monotonic() < deadline, "no image scored in time"
    time.sleep(0.2)
  first.send_signal(signal.SIGKILL)
  first.wait()
  with open(output / "scores.csv", "a") as f:
    f.write("deadbeef,L,CC,3328,25")  # what a kill in the middle of a row would leave
  done_before = len(rows_of(output / "scores.csv")) - 1

  finish(mcalc_score(*args))

  assert done_before < 8
  assert_complete(output, folder, scored=8, failed=2)


@pytest.fixture
def synthetic_archive(tmp_path) -> pathlib.Path:
  """Three 12-bit PNG mammograms with speck clusters, a corrupt one, and a manifest."""
  root = tmp_path / "archive"
  (root / "site").mkdir(parents=True)
  for n in range(3):
    pixels = synthetic_mammogram((600 + 100 * n, 450), clusters=[(300, 200)], seed=n).pixels
    Image.fromarray(pixels).save(root / "site" / f"case{n}.png")
  (root / "site" / "broken.png").write_bytes(b"not a png")
  findings = [
    manifest.Finding(
      "p0", "site/case0.png", "f1", "calcification", "benign", col=200, row=300, radius=40
    ),
    manifest.Finding("p1", "site/case1.png"),
    manifest.Finding("p2", "site/broken.png"),
  ]
  manifest.write_manifest(root / "manifest.csv", findings)
  return root


def speck_scorer() -> scoring.Scorer:
  return scoring.Scorer(speck_probabilities, patch_size=PATCH, batch_size=64)


def test_a_rerun_skips_finished_images_and_keeps_identifiers_out(synthetic_archive):
  inputs = discovery.find_inputs(str(synthetic_archive))
  output = synthetic_archive.parent / "out"
  archive.score_archive(speck_scorer(), inputs[:2], str(output))
  first = (output / "scores.csv").read_text()
  archive.score_archive(speck_scorer(), inputs, str(output))

  scores, errors = rows_of(output / "scores.csv"), rows_of(output / "errors.csv")
  assert (output / "scores.csv").read_text().startswith(first)  # old rows untouched
  assert [r["key"] for r in scores] == [i.key for i in inputs if "broken" not in i.path]
  assert [r["key"] for r in errors] == [inputs[0].key] and errors[0]["reason"]
  assert "site" not in (output / "scores.csv").read_text() + (output / "errors.csv").read_text()
  assert inputs[1].key == discovery.image_key("site/case0.png")


TIMING_COLUMNS = ("read_seconds", "score_seconds")


def test_decode_worker_processes_score_exactly_like_one_thread(synthetic_archive, tmp_path):
  inputs = discovery.find_inputs(str(synthetic_archive))
  clocks = {
    workers: archive.score_archive(
      speck_scorer(), inputs, str(tmp_path / str(workers)), num_workers=workers
    )
    for workers in (0, 2)
  }

  def untimed(folder):
    return [{k: v for k, v in r.items() if k not in TIMING_COLUMNS} for r in rows_of(folder)]

  for name in ("scores.csv", "errors.csv"):
    assert untimed(tmp_path / "0" / name) == untimed(tmp_path / "2" / name)
  for key in (r["key"] for r in rows_of(tmp_path / "0" / "scores.csv")):
    one, two = (heatmaps.read_scores(tmp_path / w / f"{key}.npz") for w in ("0", "2"))
    np.testing.assert_array_equal(one.task1, two.task1)
  assert [clock.images for clock in clocks.values()] == [len(inputs)] * 2


def test_manifest_input_with_identifiers_locates_the_cluster(synthetic_archive, tmp_path):
  inputs = discovery.find_inputs(str(synthetic_archive / "manifest.csv"))
  output = tmp_path / "out"
  archive.score_archive(speck_scorer(), inputs, str(output), keep_identifiers=True)

  case0 = next(r for r in rows_of(output / "scores.csv") if r["path"] == "site/case0.png")
  assert float(case0["task1_max"]) == 1.0
  assert (
    abs(float(case0["task1_max_row"]) - 300) < PATCH
    and abs(float(case0["task1_max_col"]) - 200) < PATCH
  )
  assert inputs[0].annotations == (tiling.Circle(300, 200, 40),)
  assert "site/broken.png" in (output / "errors.csv").read_text()


def test_a_tile_reranker_rescores_every_grid_before_it_is_written(
  synthetic_archive, tmp_path, checkpoint
):
  inputs = [i for i in discovery.find_inputs(str(synthetic_archive)) if "broken" not in i.path]
  model = reranking.TileReranker(
    features=("specks_0.03", reranking.NETWORK_FEATURE),
    weights=np.array([1.0, 0.5]),
    bias=-1.0,
    mean=np.zeros(2),
    std=np.ones(2),
  )
  archive.score_archive(speck_scorer(), inputs, str(tmp_path / "plain"))
  archive.score_archive(speck_scorer(), inputs, str(tmp_path / "reranked"), reranker=model)
  for item in inputs:
    plain = heatmaps.read_scores(tmp_path / "plain" / f"{item.key}.npz")
    mammogram, _ = item.read()
    pixels = mammogram.pixels / mammogram.max_value
    expected = reranking.rerank_image(pixels, plain, model).task1
    got = heatmaps.read_scores(tmp_path / "reranked" / f"{item.key}.npz").task1
    np.testing.assert_allclose(got, expected, rtol=1e-6)
    assert not np.allclose(got, plain.task1, equal_nan=True)

  reranking.save(tmp_path / "r.json", dataclasses.replace(model, field_of_view_mm=11.2))
  options = archive.ScoreOptions(
    workdir=str(checkpoint),
    input=str(synthetic_archive),
    output=str(tmp_path / "refused"),
    reranker=str(tmp_path / "r.json"),
  )
  with pytest.raises(ValueError, match="fitted on 11.2-mm tiles"):  # the run tiles native pixels
    archive.score_job(options)


def test_scores_csv_counts_the_tiles_flagged_at_the_rerankers_operating_threshold(
  synthetic_archive, tmp_path
):
  """Without a reranker a tile is flagged from the scorer's task1_threshold; with one, from
  the threshold its cross-validation chose."""
  inputs = [i for i in discovery.find_inputs(str(synthetic_archive)) if "broken" not in i.path]
  model = reranking.TileReranker(
    features=(reranking.NETWORK_FEATURE,),
    weights=np.array([1.0]),
    bias=0.0,
    mean=np.zeros(1),
    std=np.ones(1),
    threshold=0.0,  # every tile: the identity reranker then flags more than the scorer's 0.5
  )
  archive.score_archive(speck_scorer(), inputs, str(tmp_path / "plain"))
  archive.score_archive(speck_scorer(), inputs, str(tmp_path / "reranked"), reranker=model)
  for name, threshold in (("plain", 0.5), ("reranked", 0.0)):
    for row in rows_of(tmp_path / name / "scores.csv"):
      task1 = heatmaps.read_scores(tmp_path / name / f"{row['key']}.npz").task1
      assert int(row["tiles_flagged"]) == np.sum(task1 >= threshold) <= int(row["tiles_scored"])
  flagged = {
    name: [int(r["tiles_flagged"]) for r in rows_of(tmp_path / name / "scores.csv")]
    for name in ("plain", "reranked")
  }
  assert 0 < sum(flagged["plain"]) < sum(flagged["reranked"])


def test_mcalc_rerank_fits_on_a_scored_manifest_and_puts_each_cluster_first(tmp_path):
  """Score a labelled archive, fit a reranker on it with the CLI, and its clusters outrank the
  lone bright specks that the (speck-counting) network scores as high."""
  root, findings = tmp_path / "archive", []
  root.mkdir()
  clusters = [(300, 200), (700, 300), (500, 450), (800, 250)]
  lone_specks = [(600, 500), (350, 500), (850, 200), (450, 150)]  # as bright as a cluster's
  for n, ((row, col), (r, c)) in enumerate(zip(clusters, lone_specks, strict=True)):
    pixels = synthetic_mammogram(clusters=[(row, col)], seed=n).pixels
    pixels[r - 3 : r + 4, c - 3 : c + 4] = 4000
    Image.fromarray(pixels).save(root / f"case{n}.png")
    findings.append(
      manifest.Finding(f"p{n}", f"case{n}.png", "f1", "calcification", "benign", col, row, 40)
    )
  manifest.write_manifest(root / "manifest.csv", findings)
  inputs = discovery.find_inputs(str(root / "manifest.csv"))
  archive.score_archive(speck_scorer(), inputs, str(tmp_path / "scores"), overlays=False)

  def mcalc_rerank(manifest_path: pathlib.Path) -> subprocess.CompletedProcess:
    command = [sys.executable, "-m", "mcalc_jax.cli.rerank", f"--scores={tmp_path / 'scores'}"]
    command += [f"--manifest={manifest_path}", f"--output={tmp_path / 'reranker.json'}"]
    return subprocess.run(command, capture_output=True, text=True, timeout=300, cwd=REPO)

  result = mcalc_rerank(root / "manifest.csv")
  assert result.returncode == 0, result.stderr[-2000:]
  model = reranking.load(tmp_path / "reranker.json")
  images, readers = scored.read_scored_folder(tmp_path / "scores", root / "manifest.csv")
  assert len(images) == 4
  for image in images:
    mammogram, _ = readers[image.key].read()
    plain = froc.evaluate_image(image)
    scores = reranking.rerank_image(mammogram.pixels / mammogram.max_value, image.scores, model)
    assert froc.evaluate_image(dataclasses.replace(image, scores=scores)).cluster_ranks == (1,)
    assert plain.false_positives.max() >= 0.9 * max(plain.cluster_scores)  # the speck competed

  manifest.write_manifest(root / "normal.csv", [manifest.Finding("p0", "case0.png")])
  refused = mcalc_rerank(root / "normal.csv")
  assert refused.returncode != 0
  assert "no scored image has a calcification cluster" in refused.stderr.strip().splitlines()[-1]


def score_as_processes(inputs, output: pathlib.Path, monkeypatch, order=(1, 0)) -> None:
  """One process plays a 2-process run in turn, process 0 last (as the barrier makes it)."""
  monkeypatch.setattr(parallel, "barrier", lambda name: None)
  monkeypatch.setattr(jax, "process_count", lambda: 2)
  for index in order:
    monkeypatch.setattr(jax, "process_index", lambda index=index: index)
    archive.score_archive(speck_scorer(), inputs, str(output))


def test_each_process_scores_its_own_share_and_process_0_merges_them(
  synthetic_archive, tmp_path, monkeypatch
):
  inputs = discovery.find_inputs(str(synthetic_archive))
  output = tmp_path / "out"
  score_as_processes(inputs, output, monkeypatch)

  for index in (0, 1):
    keys = [r["key"] for r in rows_of(output / f"scores.{index}-of-2.csv")]
    assert keys == [i.key for i in inputs[index::2] if "broken" not in i.path]
  assert [r["key"] for r in rows_of(output / "scores.csv")] == [
    i.key for i in inputs if "broken" not in i.path
  ]
  assert [r["key"] for r in rows_of(output / "errors.csv")] == [inputs[0].key]
  assert archive.finished_keys(str(output)) == {i.key for i in inputs}


def test_a_rerun_after_a_killed_process_merges_one_whole_row_per_image(
  synthetic_archive, tmp_path, monkeypatch
):
  inputs = discovery.find_inputs(str(synthetic_archive))
  output = tmp_path / "out"
  score_as_processes(inputs, output, monkeypatch, order=(1,))  # process 0 never got going
  shard = output / "scores.1-of-2.csv"
  header, kept, last = shard.read_text().splitlines()
  shard.write_text(f"{header}\n{kept}\n{last[:20]}")  # process 1 killed mid-row
  assert not (output / "scores.csv").exists()

  score_as_processes(inputs, output, monkeypatch)  # the rerun, with the same processes
  merged = (output / "scores.csv").read_text()
  archive.merge_logs(str(output), [i.key for i in inputs])

  scores = rows_of(output / "scores.csv")
  assert [r["key"] for r in scores] == [i.key for i in inputs if "broken" not in i.path]
  assert all(r["tile_mm"] for r in scores)  # whole rows: the last column is there
  assert [r["key"] for r in rows_of(output / "errors.csv")] == [inputs[0].key]
  assert (output / "scores.csv").read_text() == merged  # merging again changes nothing


def test_opening_a_log_drops_a_torn_row_and_repeated_keys(tmp_path):
  path = tmp_path / "scores.csv"
  path.write_text("key,value\na,1\nb,2\na,3\nc,")
  log = csvlog.CsvLog(str(path), ("key", "value"))
  log.append(["c", "4"])
  log.close()

  assert path.read_text() == "key,value\na,1\nb,2\nc,4\n"
