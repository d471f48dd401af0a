"""Two real processes on localhost give one process's numbers: mcalc-train, -evaluate, -score, -cv.

Each job runs once alone (4 CPU devices) and once as 2 processes of 2 CPU devices each, joined
through a coordinator on 127.0.0.1, so both see the same 4-device mesh. Predictions must agree to
1e-6, AUCs to 1e-6, and only process 0 writes files.
"""

from __future__ import annotations

import contextlib
import csv
import json
import os
import pathlib
import shutil
import socket
import subprocess
import sys
import tempfile
from collections.abc import Callable

import numpy as np
import pytest
from PIL import Image

from tests.test_cv import build_dataset
from tests.test_scoring import synthetic_mammogram

REPO = pathlib.Path(__file__).resolve().parents[1]
TIMEOUT_S = 300
TINY_TRAINING = (
  "--config=configs/default.py:task=1,model=specknet",  # a small CNN: quick to compile
  "--config.dataset=noise",  # generated noise patches: no dataset to build
  "--config.num_train_steps=2",
  "--config.batch_size=8",
  "--config.eval_batch_size=32",
  "--config.patch_size=32",
  "--config.preprocess.input_size=32",
  "--config.async_checkpointing=False",
)
SCORE_COLUMNS_COMPARED = ("key", "rows", "cols", "task1_max", "task1_max_row", "task1_max_col")


def _env(devices: int) -> dict[str, str]:
  return dict(
    os.environ,
    XLA_FLAGS=f"--xla_force_host_platform_device_count={devices}",
    JAX_PLATFORMS="cpu",
    PYTHONPATH=os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")]),
    MCALC_JAX_COMPILATION_CACHE="off",
  )


def _command(job: str, *args: str) -> list[str]:
  return [sys.executable, "-m", f"mcalc_jax.cli.{job}", *args]


def run_alone(job: str, *args: str) -> None:
  """The job as one process with 4 devices."""
  result = subprocess.run(
    _command(job, *args), cwd=REPO, env=_env(4), capture_output=True, text=True, timeout=TIMEOUT_S
  )
  assert result.returncode == 0, result.stderr[-3000:]


def run_as_two_processes(job: str, *args: str) -> None:
  """The job as 2 processes with 2 devices each, joined through a coordinator on localhost."""
  two_processes(lambda cluster: _command(job, *args, *cluster))


def two_processes(command: Callable[[tuple[str, ...]], list[str]]) -> None:
  """Runs `command(cluster flags)` as processes 0 and 1 of a localhost cluster; both must pass."""
  with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
  cluster = (f"--coordinator_address=127.0.0.1:{port}", "--num_processes=2")
  with contextlib.ExitStack() as stack:
    logs = [stack.enter_context(tempfile.TemporaryFile("w+")) for _ in range(2)]  # no pipe stalls
    processes = [
      subprocess.Popen(
        command((*cluster, f"--process_id={i}")),
        cwd=REPO,
        env=_env(2),
        stdout=subprocess.DEVNULL,
        stderr=log,
      )
      for i, log in enumerate(logs)
    ]
    try:
      for p in processes:
        p.wait(timeout=TIMEOUT_S)
    finally:
      for p in processes:
        p.kill()
    for p, log in zip(processes, logs, strict=True):
      log.seek(0)
      assert p.returncode == 0, log.read()[-3000:]


def predictions(folder: pathlib.Path) -> tuple[list[tuple[str, ...]], np.ndarray]:
  """(split and ids, label) rows and probabilities of an evaluation's predictions.csv."""
  with open(folder / "predictions.csv", newline="") as f:
    rows = list(csv.DictReader(f))
  keys = [tuple(v for k, v in r.items() if k not in ("prob", "called")) for r in rows]
  return keys, np.array([float(r["prob"]) for r in rows])


def auc(folder: pathlib.Path) -> float:
  return json.loads((folder / "metrics.json").read_text())["metrics"]["auc"]["value"]


def assert_same_evaluation(alone: pathlib.Path, together: pathlib.Path) -> None:
  alone_keys, alone_probs = predictions(alone)
  together_keys, together_probs = predictions(together)
  assert together_keys == alone_keys and len(alone_keys) == 128  # validation and test rows
  np.testing.assert_allclose(together_probs, alone_probs, atol=1e-6)
  assert auc(together) == pytest.approx(auc(alone), abs=1e-6)


@pytest.fixture(scope="module")
def trained(tmp_path_factory) -> pathlib.Path:
  """A tiny run trained and then evaluated on its test split (mcalc-evaluate's) by one process."""
  workdir = tmp_path_factory.mktemp("alone")
  run_alone("train", *TINY_TRAINING, f"--workdir={workdir}")
  return workdir


def test_two_processes_train_and_evaluate_like_one(trained, tmp_path):
  workdir = tmp_path / "together"
  run_as_two_processes("train", *TINY_TRAINING, f"--workdir={workdir}")

  assert_same_evaluation(trained / "eval" / "test", workdir / "eval" / "test")


def test_two_processes_evaluate_a_run_like_one(trained, tmp_path):
  workdir = tmp_path / "run"
  shutil.copytree(trained, workdir)
  shutil.rmtree(workdir / "eval")
  run_as_two_processes("evaluate", f"--workdir={workdir}", "--bootstrap_resamples=100")

  assert_same_evaluation(trained / "eval" / "test", workdir / "eval" / "test")


def scores(folder: pathlib.Path) -> list[tuple]:
  """The compared columns, the score as a float: a process scoring only its own images batches
  their tiles differently, and XLA:CPU may round a differently shaped batch in the last digit."""
  with open(folder / "scores.csv", newline="") as f:
    rows = [[r[c] for c in SCORE_COLUMNS_COMPARED] for r in csv.DictReader(f)]
  return [(*r[:3], float(r[3]), *r[4:]) for r in rows]


def test_two_processes_score_an_archive_into_one_merged_log(trained, tmp_path):
  archive = tmp_path / "archive"
  archive.mkdir()
  for n in range(3):
    image = synthetic_mammogram((300 + 40 * n, 240), clusters=[(150, 120)], seed=n)
    Image.fromarray(image.pixels).save(archive / f"case{n}.png")
  (archive / "broken.png").write_bytes(b"not a png")
  score = (f"--workdir={trained}", f"--input={archive}", "--nooverlays", "--num_workers=1")
  run_alone("score", *score, f"--output={tmp_path / 'alone'}")
  run_as_two_processes("score", *score, f"--output={tmp_path / 'together'}")

  alone, together = tmp_path / "alone", tmp_path / "together"
  want = scores(alone)
  assert scores(together) == [(*r[:3], pytest.approx(r[3], abs=2e-6), *r[4:]) for r in want]
  assert len(want) == 3
  assert (together / "errors.csv").read_text() == (alone / "errors.csv").read_text()
  assert sorted(p.name for p in together.glob("scores.*-of-2.csv")) == [
    "scores.0-of-2.csv",
    "scores.1-of-2.csv",
  ]
  for npz in alone.glob("*.npz"):
    with np.load(npz) as a, np.load(together / npz.name) as b:
      np.testing.assert_allclose(b["task1"], a["task1"], atol=1e-6)


@pytest.mark.slow
def test_two_processes_cross_validate_like_one(tmp_path):
  data_dir = build_dataset(tmp_path)
  cross_validation = (
    "--config=configs/default.py:task=1,model=specknet",
    "--config.dataset=mcalc_patches/cvtiny",
    f"--config.data_dir={data_dir}",
    "--config.num_train_steps=2",
    "--config.batch_size=4",
    "--config.eval_batch_size=8",
    "--config.patch_size=32",
    "--config.preprocess.input_size=32",
    "--config.async_checkpointing=False",
    "--folds=2",
  )
  run_alone("cv", *cross_validation, f"--workdir={tmp_path / 'alone'}")
  run_as_two_processes("cv", *cross_validation, f"--workdir={tmp_path / 'together'}")

  alone, together = tmp_path / "alone" / "eval" / "test", tmp_path / "together" / "eval" / "test"
  assert predictions(together)[0] == predictions(alone)[0]
  np.testing.assert_allclose(predictions(together)[1], predictions(alone)[1], atol=1e-6)
  assert auc(together) == pytest.approx(auc(alone), abs=1e-6)


LATE_AT_THE_BARRIER = """
import sys, time, jax
from mcalc_jax.base import parallel
flags = dict(arg[2:].split("=") for arg in sys.argv[1:])
jax.distributed.initialize(flags["coordinator_address"], 2, int(flags["process_id"]))
jax.devices()
time.sleep(35 * int(flags["process_id"]))  # past the 30 s after which XLA:CPU collectives fail
parallel.barrier("late")
"""


@pytest.mark.slow  # it waits 35 s on purpose
def test_a_process_may_reach_the_barrier_long_after_the_others():
  two_processes(lambda cluster: [sys.executable, "-c", LATE_AT_THE_BARRIER, *cluster])
