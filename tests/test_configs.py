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
from mcalc_jax.configs import data, default, paper

MCALC_TRAIN = pathlib.Path(sys.executable).parent / "mcalc-train"  # the installed console script


def test_arguments_choose_the_task_and_the_network():
  config = default.get_config("task=2,model=resnet34")
  assert (config.task, config.model) == (2, "resnet34")
  assert default.get_config().to_dict() == default.get_config("task=1,model=alexnet").to_dict()


def test_arguments_are_typed_like_their_defaults_and_typos_fail():
  args = config_args.parse_arg("n=3,rate=0.5,paper", n=1, rate=0.1, paper=False, name="x")
  assert (args.n, args.rate, args.paper, args.name) == (3, 0.5, True, "x")
  with pytest.raises(
    ValueError, match="unknown config argument 'modle'; known: model, recipe, task"
  ):
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
    f"{MCALC_TRAIN}: ValueError: unknown config argument 'tsk'; known: model, recipe, task"
  ]


def test_the_default_recipe_keeps_the_specks_and_the_papers_is_a_named_config():
  ours, theirs = default.get_config(), paper.get_config()
  assert (ours.recipe, theirs.recipe) == ("mcalc", "paper")
  assert ours.dataset == "mcalc_patches/mias_11p2mm" and theirs.dataset == "mcalc_patches/mias"
  assert (ours.preprocess.blur_sigma, ours.preprocess.normalization) == (0.0, "unit")
  assert (theirs.preprocess.blur_sigma, theirs.preprocess.normalization) == (1.0, "zscore")
  assert (ours.front_end, theirs.front_end) == ("tophat", "")
  assert (
    (theirs.batch_size, theirs.learning_rate) == (16, 1e-4) == (ours.batch_size, ours.learning_rate)
  )
  assert default.get_config("model=tophat").front_end == ""  # the floor is no CNN
  speck = default.get_config("model=specknet")  # 0.2-mm pixels, patience for noisy validation
  assert (speck.preprocess.input_size, speck.early_stopping_patience) == (56, 10)
  assert (
    paper.get_config("task=2,model=resnet34").to_dict()
    == default.get_config("task=2,model=resnet34,recipe=paper").to_dict()
  )
