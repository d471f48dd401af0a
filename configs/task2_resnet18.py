"""Task 2 (malignant vs benign calcification patch) with ResNet18, the paper's settings.

  mcalc-train --config=configs/task2_resnet18.py --workdir=runs/task2_resnet18

Override any field on the command line, e.g. `--config.batch_size=64 --config.learning_rate=3e-4`.
"""

import pathlib
import runpy

import ml_collections

_DEFAULT = runpy.run_path(str(pathlib.Path(__file__).with_name("default.py")))


def get_config() -> ml_collections.ConfigDict:
  config = _DEFAULT["get_config"]()
  config.task = 2
  config.model = "resnet18"
  return config
