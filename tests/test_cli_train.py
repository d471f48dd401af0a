"""mcalc-train end to end: an experiment config with command-line overrides, and a misspelt field."""

import json
import pathlib
import subprocess
import sys

REPO = pathlib.Path(__file__).parents[1]
MCALC_TRAIN = pathlib.Path(sys.executable).parent / "mcalc-train"  # the installed console script


def _mcalc_train(*args: str) -> subprocess.CompletedProcess:
  return subprocess.run(
    [str(MCALC_TRAIN), *args], cwd=REPO, capture_output=True, text=True, timeout=300, check=False
  )


def test_trains_an_experiment_config_with_overrides(tmp_path):
  result = _mcalc_train(
    "--config=configs/default.py:task=1,model=alexnet",
    f"--workdir={tmp_path}",
    "--config.num_train_steps=2",
    "--config.dataset=noise",  # generated noise patches: no dataset to build
    "--config.batch_size=8",
    "--config.patch_size=64",
    "--config.preprocess.input_size=64",
  )
  assert result.returncode == 0, result.stderr[-3000:]
  config = json.loads((tmp_path / "config.json").read_text())
  assert (config["model"], config["num_train_steps"], config["batch_size"]) == ("alexnet", 2, 8)
  assert (tmp_path / "checkpoints" / "2" / "model").is_dir()
  assert list(tmp_path.glob("events.out.tfevents.*"))
  assert "steps/s, ETA" in result.stderr


def test_misspelt_config_field_fails_with_a_suggestion(tmp_path):
  result = _mcalc_train(
    "--config=configs/default.py:task=1,model=alexnet",
    f"--workdir={tmp_path}",
    "--config.learning_rat=3e-4",
  )
  assert result.returncode != 0
  assert "unknown --config field 'learning_rat'" in result.stderr
  assert 'Did you mean "learning_rate"' in result.stderr
  assert not (tmp_path / "config.json").exists()


def test_a_coordinator_without_the_process_count_fails_in_one_line(tmp_path):
  result = _mcalc_train(
    "--config=configs/default.py:task=1,model=alexnet",
    f"--workdir={tmp_path}",
    "--coordinator_address=127.0.0.1:29500",
  )
  assert result.returncode != 0
  assert (
    result.stderr.strip()
    .splitlines()[-1]
    .endswith(
      "coordinator 127.0.0.1:29500 given without --num_processes or --process_id: give both to "
      "every process, or launch under SLURM / Open MPI, which set them"
    )
  )
  assert not (tmp_path / "config.json").exists()
