"""Configs as code with arguments: one file per job, `file.py:key=value,...`, installed with the package."""

from __future__ import annotations

import os
import pathlib
import subprocess
import sys

import pytest

from input_pipeline import tfds_builder
from mcalc_jax.cli import common
from mcalc_jax.configs import common as config_args
from mcalc_jax.configs import data, default

MCALC_TRAIN = pathlib.Path(sys.executable).parent / "mcalc-train"  # the installed console script


def test_arguments_choose_the_task_and_the_network():
  config = default.get_config("task=2,model=resnet34")
  assert (config.task, config.model) == (2, "resnet34")
  assert default.get_config().to_dict() == default.get_config("task=1,model=alexnet").to_dict()


def test_arguments_are_typed_like_their_defaults_and_typos_fail():
  args = config_args.parse_arg("n=3,rate=0.5,paper", n=1, rate=0.1, paper=False, name="x")
  assert (args.n, args.rate, args.paper, args.name) == (3, 0.5, True, "x")
  with pytest.raises(ValueError, match="unknown config argument 'modle'; known: model, task"):
    default.get_config("modle=resnet18")


def test_a_data_config_is_the_registered_builder_config_of_its_source():
  for source in ("mias", "cbis_ddsm", "synthetic", "manifest"):
    config = data.get_config(f"source={source},location=/nowhere")
    registered = tfds_builder.McalcPatches.builder_configs[source]
    assert tfds_builder.builder_config(config) is registered


def test_a_config_path_outside_the_checkout_names_the_installed_copy(tmp_path, monkeypatch):
  monkeypatch.chdir(tmp_path)  # no configs/ folder here
  resolved = common.packaged_config("configs/default.py:task=2")
  path, _, args = resolved.partition(":")
  assert os.path.isfile(path) and path.endswith(os.path.join("configs", "default.py"))
  assert args == "task=2"
  with pytest.raises(FileNotFoundError, match="configs/nothere.py"):
    common.packaged_config("configs/nothere.py")


def test_a_bad_config_argument_is_a_one_line_error(tmp_path):
  command = [str(MCALC_TRAIN), "--config=configs/default.py:tsk=2", f"--workdir={tmp_path}"]
  result = subprocess.run(command, cwd=tmp_path, capture_output=True, text=True, check=False)
  assert result.returncode != 0
  assert result.stderr.strip().splitlines() == [
    f"{MCALC_TRAIN}: ValueError: unknown config argument 'tsk'; known: model, task"
  ]
